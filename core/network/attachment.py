"""A container's network: attached while its process waits, detached when it ends.

The launcher's order of calls::

    child = <fork; the child unshares its namespaces (a new network namespace for
             "none" and "bridge"), calls ifconfig.loopback_up(), and waits on a pipe>
    attachment = attach(store, container_id, mode, child_pid, ports, hostname,
                        settings=config.network)
    <write attachment.hosts and attachment.resolv_conf where the child bind-mounts them,
     release the child>
    ...
    <the container's process has ended>
    detach(store, container_id)

and, from any command that finds containers a crash left "running":
``sweep(store, alive_ids)``.

Modes: ``none`` (the container's own namespace, loopback only: nothing to do here),
``host`` (the host's namespace: nothing to do) and ``bridge``, Docker's default: an
address leased in the store (core/network/addresses.py), a veth pair into the
container's namespace on the bridge (core/network/links.py, the only user of pyroute2),
``eth0`` and its default route set from inside the namespace with ioctls
(core/network/ifconfig.py), masquerade and published ports in nftables
(core/network/nat.py). A user network (core/network/networks.py) is a bridge of its own
attached the same way, with an isolation chain. Only those import any of that.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from ..errors import NetworkError
from ..layers.metadata import transaction
from . import MODES
from .etcfiles import host_hosts_file, hosts_file, resolv_conf
from .ports import PortMapping

DEFAULT_MODE = "bridge"


class Attachment(NamedTuple):
    """What a container got: its address (bridge only) and its two name files."""

    mode: str  # bridge, host, none or a user network's name
    #: /etc/hosts and /etc/resolv.conf contents (core/network/etcfiles.py)
    hosts: str
    resolv_conf: str
    address: str | None = None
    prefixlen: int | None = None
    gateway: str | None = None
    bridge: str | None = None
    #: the host side of the container's veth pair
    veth: str | None = None
    ports: tuple[PortMapping, ...] = ()


def check_mode(mode: str) -> str:
    """``--network``'s value, checked (the CLI calls this before anything starts; a user
    network's existence it checks with core/network/networks.py)."""
    if mode in MODES:
        return mode
    from .networks import _NAME  # not on the built-in modes' path (a run's start)

    if not _NAME.fullmatch(mode):
        raise NetworkError(f"unknown network mode {mode!r}", hint="--network takes bridge "
                           "(the default), host, none or a network lamina network create made")
    return mode


def is_bridged(mode: str) -> bool:
    """Whether containers of ``mode`` get an address on a bridge (the default network's
    or a user network's)."""
    return mode not in ("host", "none")


def _check_ports(mode: str, ports: Sequence[PortMapping]) -> None:
    if ports and not is_bridged(mode):
        raise NetworkError(f"ports cannot be published with --network {mode}",
                           hint="publish ports (-p) on the bridge network, the default")
    for i, port in enumerate(ports):
        for other in ports[:i]:
            if port.host_port and port.conflicts(other):
                raise NetworkError(f"port {port} is published twice ({other})",
                                   hint="give each -p its own host port")


def attach(
    store: Any,
    container_id: str,
    mode: str,
    pid: int,
    ports: Sequence[PortMapping] = (),
    hostname: str = "",
    *,
    settings: dict[str, Any] | None = None,
    address: str | None = None,
) -> Attachment:
    """Connect process ``pid`` (the container's init, in its own network namespace for
    ``bridge``) to network ``mode``, and publish ``ports``.

    ``store``: the open store (its ``db`` holds the address leases; ``container_id``
    must have its row in ``containers``). ``settings``: ``Config.network`` (defaults
    when None). ``address``: the one asked for (``--ip``), else the lowest free. All or
    nothing: on failure what was set up is taken down again and a NetworkError says why.
    A port another container publishes, or a host process listens on, is refused.
    """
    check_mode(mode)
    ports = tuple(ports)
    _check_ports(mode, ports)
    settings = settings or _default_settings()
    if ports and mode not in MODES:
        from .networks import NetworkStore

        if NetworkStore(store.root).get(mode).internal:
            raise NetworkError(f"ports cannot be published on the internal network {mode}",
                               hint="publish them on a network that is not --internal")
    if not is_bridged(mode):
        hosts = host_hosts_file() if mode == "host" else hosts_file(hostname, None)
        return Attachment(mode, hosts, resolv_conf(mode, settings["dns"]))
    from .addresses import BridgeNetwork

    default = BridgeNetwork.from_settings(settings)
    if mode == "bridge":
        network = default
    else:
        from .networks import NetworkStore

        network = NetworkStore(store.root).get(mode).bridge_network(default.dns)
    try:
        address, ports = _attach_bridge(store, network, container_id, pid, ports,
                                        default.name, address)
    finally:
        from .links import stop_worker, veth_name

        stop_worker()  # its part (creating links) is done; deleting them needs none

    return Attachment(
        mode, hosts_file(hostname, address), resolv_conf(mode, network.dns), address,
        network.subnet.prefixlen, str(network.gateway), network.name,
        veth_name(container_id), ports,
    )  # fmt: skip


def _default_settings() -> dict[str, Any]:
    from ..config import NETWORK_KEYS

    return {key: value[1] for key, value in NETWORK_KEYS.items()}


def _attach_bridge(store: Any, network: Any, container_id: str, pid: int,
                   ports: tuple[PortMapping, ...], default_bridge: str,
                   wanted: str | None = None) -> tuple[str, tuple[PortMapping, ...]]:
    """The address leased and the ports published (those without a host port given one)."""
    from . import addresses, ifconfig, links, nat, netns
    from .nftables import run

    bridge_index = links.ensure_bridge(network)
    _enable_forwarding(network.name)
    db = store.db
    try:
        with transaction(db):
            address = addresses.lease(db, network, container_id, wanted)
            held = []
            others = []
            for rule in nat.published():
                if rule.container_id == container_id:
                    held.append(rule)  # a crashed start's: replaced below
                    continue
                others.append(rule.port)
                for port in ports:
                    if port.host_port and port.conflicts(rule.port):
                        raise NetworkError(
                            f"port {port.host_port}/{port.protocol} is already published by "
                            f"container {rule.container_id[:12]}",
                            hint="choose another host port, or stop that container",
                        )
            for port in ports:
                if port.host_port:
                    _probe(port)
            ports = _free_ports(ports, others)  # under the transaction: no other start's
            run(nat.setup_script(network) + nat.isolation_script(network, default_bridge)
                + nat.delete_script(held)
                + nat.publish_script(container_id, address, ports))
    except sqlite3.IntegrityError as exc:
        raise NetworkError(f"cannot lease an address to container {container_id[:12]}: {exc}",
                           hint="the container must be recorded in the store first") from None
    try:
        links.add_veth(container_id, pid, bridge_index)
        with netns.entered(pid):
            ifconfig.loopback_up()
            ifconfig.set_address("eth0", address, network.subnet.prefixlen)
            ifconfig.announce_on_up("eth0")
            ifconfig.link_up("eth0")
            if not network.internal:  # an internal network's containers have no way out
                ifconfig.add_default_route(str(network.gateway))
    except BaseException as exc:
        links.delete_veths([links.veth_name(container_id)])  # the process may live on
        detach(store, container_id)
        if isinstance(exc, OSError):
            raise NetworkError(f"cannot configure eth0 of process {pid}: {exc.strerror}",
                               hint="the container's process may have ended") from None
        raise
    return address, ports


def _free_ports(ports: tuple[PortMapping, ...],
                taken: list[PortMapping]) -> tuple[PortMapping, ...]:
    """Each port without a host port given a free one of Docker's range (``-p 80``,
    ``-P``): not published by another container or by this one, nothing listening."""
    import random

    from .ports import EPHEMERAL

    chosen: list[PortMapping] = []
    used = [*taken, *(p for p in ports if p.host_port)]
    for port in ports:
        if port.host_port:
            chosen.append(port)
            continue
        low, high = EPHEMERAL
        start = random.randint(low, high)
        for n in range(high - low + 1):
            candidate = port._replace(host_port=low + (start - low + n) % (high - low + 1))
            if any(candidate.conflicts(other) for other in used):
                continue
            try:
                _probe(candidate)
            except NetworkError:
                continue
            break
        else:
            raise NetworkError(f"no free host port to publish {port.container_port}/"
                               f"{port.protocol} on", hint="free some ports of "
                               f"{low}-{high}, or publish on a given one (-p HOST:CONTAINER)")
        chosen.append(candidate)
        used.append(candidate)
    return tuple(chosen)


def published_ports(container_id: str) -> tuple[PortMapping, ...]:
    """The ports the running container publishes now, as its rules say (a port asked
    for without a host port has the one it got)."""
    from . import nat

    return tuple(rule.port for rule in nat.published() if rule.container_id == container_id)


def _enable_forwarding(bridge: str) -> None:
    """ip_forward (routing for the containers: NAT needs it, as Docker sets it) and
    route_localnet on the bridge (127.0.0.1:PORT reaches a published port)."""
    for path in ("/proc/sys/net/ipv4/ip_forward",
                 f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet"):
        try:
            with open(path, "r+b", buffering=0) as f:
                if f.read().strip() != b"1":
                    f.seek(0)
                    f.write(b"1")
        except OSError as exc:
            raise NetworkError(f"cannot set {path} to 1: {exc.strerror}",
                               hint="a bridge network needs root") from None


def _probe(port: PortMapping) -> None:
    """Refuse a host port a process of the host listens on: DNAT would hide it."""
    import socket  # ~4 ms with selectors: for published ports only

    kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if port.protocol == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            sock.bind((port.host_ip or "0.0.0.0", port.host_port))
        except OSError as exc:
            where = f"{port.host_ip or '*'}:{port.host_port}/{port.protocol}"
            if exc.errno == errno.EADDRNOTAVAIL:
                raise NetworkError(f"cannot publish {where}: {port.host_ip} is not an address "
                                   "of this host", hint="publish on an address the host has, "
                                   "or leave the address out for all of them") from None
            raise NetworkError(f"cannot publish {where}: the host port is in use "
                               f"({exc.strerror})",
                               hint="choose another host port, or stop what listens on it") \
                from None


def detach(store: Any, container_id: str) -> None:
    """Free the container's address, delete its published ports and its veth. Idempotent.

    The kernel would take the veth pair with the container's network namespace, but
    only later, from a work queue: deleting it here means nothing of the container is
    left on the bridge when the command returns. A container that held no address
    (``none``, ``host``, or not attached) costs one database statement.
    """
    db = store.db
    with transaction(db):
        from .addresses import release

        if release(db, [container_id]):
            from .nat import unpublish

            unpublish({container_id})  # inside the transaction: the address outlives a failure
    from .links import delete_veths, host_veths, veth_name

    name = veth_name(container_id)
    if name in host_veths():
        delete_veths([name])


def sweep(store: Any, alive_ids: Iterable[str]) -> list[str]:
    """Remove what crashed runs left: leases and port rules of containers not in
    ``alive_ids``, and host-side veths none of them owns. A line per action.

    ``alive_ids`` must hold every container whose process lives, including one being
    started (the launcher records its pid before it calls :func:`attach`), or the
    sweep takes that one's address.
    """
    from .addresses import holders, release
    from .links import VETH_PREFIX, delete_veths, host_veths
    from .nat import unpublish

    alive = set(alive_ids)
    actions = []
    db = store.db
    with transaction(db):
        dead = sorted(holders(db) - alive)
        if dead:
            release(db, dead)
            actions += [f"freed the address of container {c[:12]}" for c in dead]
        removed = unpublish(keep=alive)
        if removed:
            actions.append(f"deleted {removed} published-port rule(s) of ended containers")
    owned = {VETH_PREFIX + c[:12] for c in alive}
    strays = [name for name in host_veths() if name not in owned]
    if strays:
        actions += [f"deleted the stray veth {name}" for name in delete_veths(strays)]
    return actions
