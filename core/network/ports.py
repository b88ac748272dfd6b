"""Published ports: ``-p [IP:]HOST:CONTAINER[/tcp|udp]`` parsed and checked.

A mapping says which host port (on one host address, or on all of them) is forwarded to
which port of the container. Two mappings conflict when they take the same port and
protocol on an address both cover. Parsing imports nothing heavy: the CLI calls it.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import NetworkError

PORT_HINT = "publish a port as HOST:CONTAINER, IP:HOST:CONTAINER, or CONTAINER (any free " \
    "host port), optionally /tcp or /udp (e.g. -p 8080:80, -p 127.0.0.1:8080:80/tcp, -p 80)"
#: Docker's range for a port published without a host port (``-p 80``, ``-P``)
EPHEMERAL = (32768, 60999)


class PortMapping(NamedTuple):
    #: 0: any free host port, chosen when the container starts (``-p 80``, ``-P``)
    host_port: int
    container_port: int
    protocol: str = "tcp"
    #: the host address it is published on; "" for every address of the host
    host_ip: str = ""

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}:{self.container_port}/{self.protocol}"

    def conflicts(self, other: PortMapping) -> bool:
        """Whether both would take one port of one address (all addresses cover any)."""
        return (
            self.protocol == other.protocol
            and self.host_port == other.host_port
            and (not self.host_ip or not other.host_ip or self.host_ip == other.host_ip)
        )


def parse_port(text: str) -> PortMapping:
    """``[[IP:]HOST:]CONTAINER[/tcp|udp]`` as a mapping (no or an empty HOST: any free
    host port, as Docker's ``-p 80`` and ``-p 127.0.0.1::80``); anything else is a
    NetworkError."""
    spec, _, protocol = text.partition("/")
    protocol = protocol or "tcp"
    if protocol not in ("tcp", "udp"):
        raise NetworkError(f"invalid port {text!r}: protocol {protocol!r} is not tcp or udp",
                           hint=PORT_HINT)
    parts = spec.split(":")
    if len(parts) == 1:
        return PortMapping(0, _port(text, parts[0]), protocol, "")
    if len(parts) == 2:
        host_ip, host, container = "", *parts
    elif len(parts) == 3:
        host_ip, host, container = parts
    else:
        raise NetworkError(f"invalid port {text!r}: expected [IP:]HOST:CONTAINER",
                           hint=PORT_HINT)
    if host_ip:
        import socket  # ~4 ms with selectors: only for a host address

        try:
            canonical = socket.inet_ntoa(socket.inet_aton(host_ip))
        except OSError:
            canonical = None
        if canonical != host_ip:  # inet_aton also takes "127.1" and "0x7f.1"
            raise NetworkError(f"invalid port {text!r}: {host_ip!r} is not an IPv4 address "
                               "written a.b.c.d", hint=PORT_HINT)
        if host_ip == "0.0.0.0":
            host_ip = ""  # every address, as Docker reads it
    return PortMapping(_port(text, host) if host else 0, _port(text, container), protocol,
                       host_ip)


def parse_exposed(text: str) -> tuple[int, str]:
    """``--expose PORT[/tcp|udp]`` (and an image's ``ExposedPorts`` key) as (port, protocol)."""
    number, _, protocol = text.partition("/")
    protocol = (protocol or "tcp").lower()
    if protocol not in ("tcp", "udp") or not number.isdigit() or not 0 < int(number) < 65536:
        raise NetworkError(f"invalid exposed port {text!r}",
                           hint="give PORT or PORT/tcp or PORT/udp, e.g. --expose 8080")
    return int(number), protocol


def _port(text: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise NetworkError(f"invalid port {text!r}: {value!r} is not a port number (1-65535)",
                           hint=PORT_HINT)
    return int(value)
