"""A bridge network's addresses, leased to containers in the store's database.

The lease table ``network_addresses(network, address, container_id)`` has
``PRIMARY KEY (network, address)`` and ``UNIQUE (network, container_id)``: no address
is ever held twice and a container holds at most one per network, whatever races.
Callers lease inside :func:`lamina.core.layers.metadata.transaction` (``BEGIN
IMMEDIATE``), so two starts at once pick in turn instead of colliding. The subnet's
network and broadcast addresses and the gateway (its first address) are never leased.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from collections.abc import Iterable
from typing import Any, NamedTuple

from ..errors import NetworkError


class BridgeNetwork(NamedTuple):
    """One bridge network: the bridge's name, its subnet, the gateway (the bridge's own)."""

    name: str
    subnet: ipaddress.IPv4Network
    #: nameservers for containers when the host has only 127.x ones
    dns: tuple[str, ...] = ("8.8.8.8", "8.8.4.4")
    #: a user network made ``--internal``: its containers reach only each other
    internal: bool = False

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> BridgeNetwork:
        """From the configuration's ``[network]`` table (``Config.network``)."""
        return cls(settings["bridge"], ipaddress.IPv4Network(settings["subnet"]),
                   tuple(settings["dns"]))


def lease(db: sqlite3.Connection, network: BridgeNetwork, container_id: str,
          wanted: str | None = None) -> str:
    """The container's address on ``network``: the one it holds, else ``wanted`` (``--ip``)
    if given, else the lowest free one.

    Call inside a write transaction. Raises NetworkError when the subnet is full, or when
    ``wanted`` is not free or not a container's address of the subnet.
    """
    held = db.execute(
        "SELECT address FROM network_addresses WHERE network = ? AND container_id = ?",
        (network.name, container_id),
    ).fetchone()
    if held and (wanted is None or held[0] == wanted):
        return held[0]
    taken = {row[0] for row in db.execute(
        "SELECT address FROM network_addresses WHERE network = ?", (network.name,))}
    taken.add(str(network.gateway))
    if wanted is not None:
        check_address(network, wanted)
        if wanted in taken:
            raise NetworkError(f"address {wanted} is already in use on network "
                               f"{network.name}", hint="give another --ip, or stop the "
                               "container that holds it")
        db.execute("INSERT INTO network_addresses(network, address, container_id) "
                   "VALUES (?, ?, ?)", (network.name, wanted, container_id))
        return wanted
    for candidate in network.subnet.hosts():
        address = str(candidate)
        if address not in taken:
            db.execute(
                "INSERT INTO network_addresses(network, address, container_id) VALUES (?, ?, ?)",
                (network.name, address, container_id),
            )
            return address
    raise NetworkError(
        f"no free address left in {network.subnet} (network {network.name})",
        hint="remove stopped containers, or give [network] a larger subnet in lamina.toml",
    )


def check_address(network: BridgeNetwork, address: str) -> None:
    """``--ip``: an address of the subnet a container may have (not the gateway, nor the
    network's or broadcast address)."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise NetworkError(f"invalid IPv4 address {address!r}",
                           hint="give --ip as four numbers, as 10.89.1.50") from None
    if ip not in network.subnet or ip in (network.subnet.network_address,
                                          network.subnet.broadcast_address, network.gateway):
        raise NetworkError(f"address {address} is not a container's address of subnet "
                           f"{network.subnet}", hint=f"give an address of {network.subnet} "
                           f"other than its gateway {network.gateway}")


def release(db: sqlite3.Connection, container_ids: Iterable[str]) -> int:
    """Free every address the containers hold; the number freed. Idempotent."""
    freed = 0
    for container_id in container_ids:
        freed += db.execute(
            "DELETE FROM network_addresses WHERE container_id = ?", (container_id,)
        ).rowcount
    return freed


def holders(db: sqlite3.Connection) -> set[str]:
    """Every container that holds an address on any network."""
    return {row[0] for row in db.execute("SELECT DISTINCT container_id FROM network_addresses")}
