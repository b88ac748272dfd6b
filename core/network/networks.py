"""User-defined networks: ``lamina network create NAME``, then ``run --network NAME``.

As Docker's: each network is a bridge of its own with a subnet of its own, isolated
from the other lamina networks (their traffic is not forwarded between bridges), and
the containers on it find each other by name (core/launcher/peers.py writes their
names into each one's /etc/hosts). The built-in ``bridge``, ``host`` and ``none``
need no record; a user network is ``networks/<name>.json`` under the store's root,
made with ``O_EXCL`` (two creates of one name: one wins) and read by every start.

A network's bridge is ``lm-`` and 12 hex digits of its id (an interface name holds 15
characters); its subnet is the one given or the first free ``10.89.N.0/24`` (podman's
range), overlapping neither another network's nor a route of the host's.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import time
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import NetworkError
from . import MODES
from .addresses import BridgeNetwork

BUILT_IN = MODES  # the pre-defined networks: no record
BRIDGE_PREFIX = "lm-"
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
#: where subnets are chosen when none is given: 10.89.1.0/24, 10.89.2.0/24, ...
POOL = ipaddress.IPv4Network("10.89.0.0/16")


class Network(NamedTuple):
    """One user-defined network, as its record keeps it."""

    name: str
    id: str
    bridge: str
    subnet: str
    created: float
    labels: dict[str, str]
    #: ``--internal``: nothing forwarded off its bridge (no way out, no published ports)
    internal: bool = False

    def bridge_network(self, dns: tuple[str, ...]) -> BridgeNetwork:
        return BridgeNetwork(self.bridge, ipaddress.IPv4Network(self.subnet), dns,
                             self.internal)


class NetworkNotFound(NetworkError):
    pass


class NetworkStore:
    """The user-defined networks of a store (``root`` is the store's root)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "networks"

    def networks(self) -> list[Network]:
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name.endswith(".json"):
                with contextlib.suppress(NetworkNotFound):
                    found.append(self.get(name.removesuffix(".json")))
        return found

    def get(self, name: str) -> Network:
        """The network called ``name``, or whose id starts with ``name``."""
        if _NAME.fullmatch(name):
            try:
                data: dict[str, Any] = json.loads((self.dir / f"{name}.json").read_text())
                return Network(**data)
            except FileNotFoundError:
                pass
            except (ValueError, TypeError) as exc:
                raise NetworkError(f"the record of network {name} is damaged: {exc}",
                                   hint=f"remove {self.dir / name}.json and create it "
                                   "again") from None
            if re.fullmatch(r"[0-9a-f]{3,64}", name):
                by_id = [n for n in self.networks() if n.id.startswith(name)]
                if len(by_id) == 1:
                    return by_id[0]
        raise NetworkNotFound(f"network {name} not found",
                              hint="lamina network ls lists them; lamina network create "
                              f"{name} makes it")

    def create(self, name: str, *, subnet: str | None = None,
               labels: dict[str, str] | None = None, default_subnet: str = "",
               internal: bool = False) -> Network:
        """Record a new network; the bridge is made by the first container's start."""
        if name in BUILT_IN:
            raise NetworkError(f"{name} is a pre-defined network and cannot be created",
                               hint="choose another name")
        if not _NAME.fullmatch(name):
            raise NetworkError(f"invalid network name {name!r}",
                               hint="letters, digits, '_', '.' and '-', starting with a "
                               "letter or digit")
        taken = [ipaddress.IPv4Network(n.subnet) for n in self.networks()]
        if default_subnet:
            taken.append(ipaddress.IPv4Network(default_subnet))
        chosen = _checked_subnet(subnet, taken) if subnet else _free_subnet(taken)
        ident = os.urandom(32).hex()
        network = Network(name, ident, BRIDGE_PREFIX + ident[:12], str(chosen), time.time(),
                          dict(labels or {}), internal)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{name}.json"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            raise NetworkError(f"network with name {name} already exists",
                               hint=f"use it, or remove it first: lamina network rm {name}") \
                from None
        with os.fdopen(fd, "w") as f:
            json.dump(network._asdict(), f)
        return network

    def remove(self, name: str) -> Network:
        network = self.get(name)
        (self.dir / f"{network.name}.json").unlink(missing_ok=True)
        return network


def is_user_network(mode: str) -> bool:
    return mode not in BUILT_IN


def _routes() -> list[ipaddress.IPv4Network]:
    """The host's IPv4 routes (their destinations), from /proc/net/route."""
    found = []
    try:
        with open("/proc/net/route") as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) < 8 or fields[1] == "00000000":
                    continue
                address = ipaddress.IPv4Address(bytes.fromhex(fields[1])[::-1])
                mask = ipaddress.IPv4Address(bytes.fromhex(fields[7])[::-1])
                with contextlib.suppress(ValueError):
                    found.append(ipaddress.IPv4Network(f"{address}/{mask}", strict=False))
    except OSError:
        pass
    return found


def _checked_subnet(text: str, taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise NetworkError(f"invalid subnet {text!r}: {exc}",
                           hint="give an IPv4 subnet, as 10.90.0.0/24") from None
    if subnet.prefixlen > 29:
        raise NetworkError(f"subnet {subnet} is too small",
                           hint="give a /29 or larger: a gateway and containers need room")
    for other in taken:
        if subnet.overlaps(other):
            raise NetworkError(f"subnet {subnet} overlaps {other}, which another lamina "
                               "network uses", hint="give a subnet of its own")
    return subnet


def _free_subnet(taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    busy = [*taken, *_routes()]
    for candidate in POOL.subnets(new_prefix=24):
        if candidate.network_address == POOL.network_address:
            continue
        if not any(candidate.overlaps(other) for other in busy):
            return candidate
    raise NetworkError(f"no free /24 left in {POOL}",
                       hint="remove unused networks (lamina network prune), or give --subnet")
