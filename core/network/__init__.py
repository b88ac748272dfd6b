"""Container networks (none, host, bridge) through netlink (pyroute2) and nftables."""
