"""Names on a user network: each container's /etc/hosts lists the others, as Docker's
embedded DNS answers them.

A container on a network made by ``lamina network create`` reaches the others on it by
their names, their short ids, their ``--hostname``s and ``--network-alias``es. Without
a daemon there is no DNS server to ask, so the names go where every resolver looks
first: a block at the end
of each member's /etc/hosts (the file its monitor bound into it, rewritten in place),
between two marker lines, the rest of the file left as it is. The block is written
whole from the network's address leases, for every running member, whenever one joins
or leaves (and after a sweep of crashed ones), under the store's write lock: whatever
the order of starts and stops, the last writer sees them all.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..containers.store import Container, ContainerStore
from ..errors import LaminaError
from ..layers.metadata import transaction
from ..layers.store import Store
from ..network.networks import NetworkNotFound, NetworkStore, is_user_network

BEGIN = "# lamina: the containers of network {} (rewritten as they come and go)\n"
END = "# lamina: end of network {}\n"


def refresh(store: Store, mode: str) -> None:
    """Rewrite the block of every running member of the user network ``mode``."""
    if not is_user_network(mode):
        return
    try:
        network = NetworkStore(store.root).get(mode)
    except NetworkNotFound:
        return
    containers = ContainerStore(store)
    with transaction(store.db):
        leases = dict(store.db.execute(
            "SELECT container_id, address FROM network_addresses WHERE network = ?",
            (network.bridge,)))
        members = [c for c in containers.containers() if c.id in leases and c.running]
        for member in members:
            lines = "".join(f"{leases[c.id]}\t{' '.join(_names(c))}\n"
                            for c in members if c.id != member.id)
            _rewrite(containers.directory(member.id) / "hosts", network.name, lines)


def refresh_all(store: Store) -> None:
    """Every user network's blocks (after a sweep freed the addresses of crashed runs)."""
    for network in NetworkStore(store.root).networks():
        with contextlib.suppress(LaminaError, OSError):
            refresh(store, network.name)


def _names(container: Container) -> list[str]:
    names = [container.name, container.id[:12]]
    for name in (container.spec.hostname, *container.spec.network_aliases):
        if name and name not in names:
            names.append(name)
    return names


def _rewrite(path: Path, network: str, lines: str) -> None:
    """The block replaced in place (the container has this very inode bound)."""
    begin, end = BEGIN.format(network), END.format(network)
    try:
        with open(path, "r+", encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
            head, found, rest = text.partition(begin)
            if found:
                _, _, tail = rest.partition(end)
                text = head + tail
            f.seek(0)
            f.truncate()
            f.write(text + (begin + lines + end if lines else ""))
    except FileNotFoundError:
        pass  # removed meanwhile
