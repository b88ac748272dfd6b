"""Interface set-up through the classic ``ioctl`` calls: no netlink, no pyroute2.

These work in whatever network namespace the calling thread is in, need nothing but
``_socket`` and ``fcntl``, and cost microseconds. :func:`loopback_up` is what a
container's child runs before ``exec`` (its own namespace, ``--network none`` or any
other); the rest configures a container's ``eth0`` from the parent, inside
:func:`lamina.core.network.netns.entered`.
"""

from __future__ import annotations

import _socket  # socket's C half: socket.py costs ~4 ms (selectors, enum conversions)
import fcntl
import struct

SIOCADDRT = 0x890B
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
IFF_UP = 0x1
RTF_UP = 0x1
RTF_GATEWAY = 0x2
_IFREQ = 40  # sizeof(struct ifreq) on Linux's 64-bit and 32-bit ABIs alike


def _ifreq(name: str, payload: bytes = b"") -> bytes:
    encoded = name.encode()
    if not 0 < len(encoded) < 16:
        raise ValueError(f"invalid interface name {name!r}")
    return struct.pack("16s", encoded) + payload.ljust(_IFREQ - 16, b"\0")


def _sockaddr_in(address: str) -> bytes:
    return struct.pack("=HH4s8x", _socket.AF_INET, 0, _socket.inet_aton(address))


def _ioctl(request: int, arg: bytes) -> bytes:
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        return fcntl.ioctl(sock.fileno(), request, arg)
    finally:
        sock.close()


def link_up(name: str) -> None:
    """Set interface ``name`` up (IFF_UP), keeping its other flags."""
    flags = struct.unpack_from("h", _ioctl(SIOCGIFFLAGS, _ifreq(name)), 16)[0]
    _ioctl(SIOCSIFFLAGS, _ifreq(name, struct.pack("h", flags | IFF_UP)))


def announce_on_up(name: str) -> None:
    """``arp_notify``: a gratuitous ARP when ``name`` comes up, so that the containers
    on the bridge forget whoever had this address before (a freed address is leased
    again at once: without this, their ARP caches send to the old one's MAC for a while)."""
    with open(f"/proc/sys/net/ipv4/conf/{name}/arp_notify", "w") as f:
        f.write("1")


def loopback_up() -> None:
    """Bring up ``lo`` in the calling thread's network namespace (a new one has it down).

    Runs in a container's child before ``exec``: import this module before
    ``pivot_root`` (it needs only ``_socket``, ``fcntl`` and ``struct``).
    """
    link_up("lo")


def set_address(name: str, address: str, prefixlen: int) -> None:
    """Give ``name`` the IPv4 ``address``/``prefixlen`` (replacing its primary one)."""
    netmask = _socket.inet_ntoa(struct.pack("!I", (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF))
    _ioctl(SIOCSIFADDR, _ifreq(name, _sockaddr_in(address)))
    _ioctl(SIOCSIFNETMASK, _ifreq(name, _sockaddr_in(netmask)))


#: struct rtentry: pad, dst, gateway, genmask, flags, pad, pad, pad, metric, dev, mtu,
#: window, irtt, in the platform's own alignment
_RTENTRY = "@L16s16s16sHhLPhPLLH0L"


def add_default_route(gateway: str) -> None:
    """Route everything not on a local subnet through ``gateway``."""
    any_address = _sockaddr_in("0.0.0.0")
    entry = struct.pack(_RTENTRY, 0, any_address, _sockaddr_in(gateway), any_address,
                        RTF_UP | RTF_GATEWAY, 0, 0, 0, 0, 0, 0, 0, 0)
    _ioctl(SIOCADDRT, entry)
