"""Container networks (none, host, bridge) through netlink (pyroute2) and nftables."""

#: the pre-defined networks (``--network``'s values that need no ``network create``)
MODES = ("bridge", "host", "none")
