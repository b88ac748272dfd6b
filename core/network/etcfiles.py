"""A container's ``/etc/hosts`` and ``/etc/resolv.conf``, as Docker writes them.

The launcher bind-mounts files with these contents over the image's. ``resolv.conf``
is the host's, less what cannot work from the container: a nameserver on 127.0.0.0/8
(systemd-resolved's 127.0.0.53, a local dnsmasq) is the container's own loopback there,
and IPv6 nameservers are unreachable on an IPv4-only bridge. When none is left, the
fallback servers (``[network] dns``) take their place, as Docker's 8.8.8.8 and 8.8.4.4.
With ``--network host`` the container shares the host's network and loopback: both files
are the host's.
"""

from __future__ import annotations

from collections.abc import Iterable

HOST_RESOLV_CONF = "/etc/resolv.conf"
HOST_HOSTS = "/etc/hosts"

_LOCALHOST = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
ff00::0\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""


def hosts_file(hostname: str, address: str | None) -> str:
    """``/etc/hosts``: localhost, and the container's hostname on its address (if any)."""
    if address is None:
        return _LOCALHOST
    return f"{_LOCALHOST}{address}\t{hostname}\n"


def host_hosts_file(host_file: str = HOST_HOSTS) -> str:
    """``/etc/hosts`` for ``--network host``: the host's (localhost lines if unreadable)."""
    try:
        with open(host_file, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return _LOCALHOST


def resolv_conf(mode: str, fallback: Iterable[str], host_file: str = HOST_RESOLV_CONF) -> str:
    """``/etc/resolv.conf`` for a container on network ``mode`` (none, host, bridge)."""
    try:
        with open(host_file, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    if mode == "host":
        return text
    lines, servers = [], 0
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["nameserver"]:
            if len(words) < 2 or not _reachable(words[1]):
                continue
            servers += 1
        lines.append(line)
    if not servers:
        lines += [f"nameserver {server}" for server in fallback]
    return "\n".join(lines) + "\n"


def _reachable(server: str) -> bool:
    """Whether a nameserver can answer from a bridge: IPv4 and not on loopback."""
    return ":" not in server and not server.startswith("127.")
