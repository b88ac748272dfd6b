"""The host side of a bridge network through netlink (pyroute2): the bridge and veths.

pyroute2 costs ~115 ms to import whole: its package imports every part of it (NDB,
IPDB, conntrack, ...). Only ``pyroute2.iproute.linux`` is needed here, and importing it
below a stand-in for the package (removed again at once) takes ~75 ms of which asyncio,
which pyroute2's netlink core is built on, is a third. Only a bridge set-up or a veth
to delete imports it; naming and finding veths (:func:`host_veths`) does not. A command
that knows early that it will need netlink calls :func:`start_worker`: a forked process
(core/network/worker.py) then imports pyroute2 while this one goes on, and the calls
below go to it.

A container's host-side veth is named ``VETH_PREFIX`` + the first 12 characters of its
id, so a crashed run's leftovers are found by name (:func:`host_veths`); its peer is
made directly inside the container's namespace as ``eth0`` (one netlink request: a
pair never exists with both ends on the host).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import sys
import types
from typing import TYPE_CHECKING, Any

from ..errors import NetworkError

if TYPE_CHECKING:
    from .addresses import BridgeNetwork
    from .worker import Worker

VETH_PREFIX = "lmv"
# rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h)
NETLINK_ROUTE = 0
RTM_DELLINK = 17
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
IFLA_IFNAME = 3
_HINT = "setting up a bridge network needs root (CAP_NET_ADMIN)"


_pyroute2: tuple[Any, type[Exception]] | None = None


def _iproute() -> tuple[Any, type[Exception]]:
    """IPRoute and NetlinkError, imported on the first call."""
    global _pyroute2
    if _pyroute2 is None:
        _pyroute2 = _import_iproute()
    return _pyroute2


def _import_iproute() -> tuple[Any, type[Exception]]:
    """IPRoute and NetlinkError without running ``pyroute2/__init__.py``."""
    if "pyroute2" not in sys.modules:
        import importlib.util

        spec = importlib.util.find_spec("pyroute2")
        if spec is None or spec.submodule_search_locations is None:
            raise NetworkError("pyroute2 is not installed", hint="pip install pyroute2")
        stand_in = types.ModuleType("pyroute2")
        stand_in.__path__ = list(spec.submodule_search_locations)
        stand_in.__spec__ = spec
        sys.modules["pyroute2"] = stand_in
        try:
            from pyroute2.iproute.linux import IPRoute
            from pyroute2.netlink.exceptions import NetlinkError
        finally:
            # the real package imports later if anyone asks for it, finding its
            # submodules already loaded
            if sys.modules.get("pyroute2") is stand_in:
                del sys.modules["pyroute2"]
        return IPRoute, NetlinkError
    from pyroute2.iproute.linux import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    return IPRoute, NetlinkError


def veth_name(container_id: str) -> str:
    return VETH_PREFIX + container_id[:12]


def _failed(what: str, exc: Exception) -> NetworkError:
    code = getattr(exc, "code", 0)
    reason = errno.errorcode.get(code, "") and f"{errno.errorcode[code]}: "
    return NetworkError(f"cannot {what}: {reason}{exc}", hint=_HINT)


_worker: Worker | None = None


def start_worker() -> None:
    """Do this process's netlink calls in a worker forked now (unless pyroute2 is loaded
    here already). Call it before opening the store: the worker must not share a
    database connection, and forking sooner hides more of the import."""
    global _worker
    if _worker is None and "pyroute2.iproute.linux" not in sys.modules:
        from .worker import Worker

        _worker = Worker(_iproute, {"ensure_bridge": _ensure_bridge, "add_veth": _add_veth})


def stop_worker() -> None:
    """End the worker, if any; later calls run here again. Idempotent."""
    global _worker
    if _worker is not None:
        _worker.close()
        _worker = None


def ensure_bridge(network: BridgeNetwork) -> int:
    """Make the bridge with the gateway address and bring it up; its index. Idempotent.

    Several set-ups at once each try, and all but one find it made (EEXIST): that is
    success. An interface of the bridge's name that is not a bridge is an error.
    """
    args = (network.name, str(network.gateway), network.subnet.prefixlen)
    return _worker.call("ensure_bridge", *args) if _worker else _ensure_bridge(*args)


def _ensure_bridge(name: str, gateway: str, prefixlen: int) -> int:
    IPRoute, NetlinkError = _iproute()
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=name, kind="bridge")
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _failed(f"create the bridge {name}", exc) from None
        found = ipr.link("get", ifname=name)[0]
        kind = found.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
        if kind != "bridge":
            raise NetworkError(
                f"the interface {name} exists and is not a bridge ({kind or 'unknown'})",
                hint="name another bridge in lamina.toml's [network] table (bridge = ...)",
            )
        index: int = found["index"]
        try:
            ipr.addr("add", index=index, address=gateway, prefixlen=prefixlen)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _failed(f"give {name} the address {gateway}", exc) from None
        ipr.link("set", index=index, state="up")
    return index


def add_veth(container_id: str, pid: int, bridge_index: int) -> str:
    """A veth pair: the host end on the bridge and up, ``eth0`` in ``pid``'s namespace."""
    args = (container_id, pid, bridge_index)
    return _worker.call("add_veth", *args) if _worker else _add_veth(*args)


def _add_veth(container_id: str, pid: int, bridge_index: int) -> str:
    IPRoute, NetlinkError = _iproute()
    name = veth_name(container_id)
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=name, kind="veth",
                     peer={"ifname": "eth0", "net_ns_pid": pid})
        except NetlinkError as exc:
            raise _failed(f"create the veth pair {name} for process {pid}", exc) from None
        try:
            ipr.link("set", ifname=name, master=bridge_index, state="up")
        except NetlinkError as exc:
            with contextlib.suppress(NetworkError):
                delete_veths([name])
            raise _failed(f"attach {name} to the bridge", exc) from None
    return name


def delete_veths(names: list[str]) -> list[str]:
    """Delete these host-side veths (their peers go with them); those deleted.

    Without pyroute2: deleting a link by name is one small fixed message, and a run's
    end would otherwise wait ~75 ms on the import for a veth the kernel had not yet
    taken away with the container's namespace.
    """
    if not names:
        return []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        return [name for seq, name in enumerate(names, 1) if _delete_link(sock, name, seq)]


def _delete_link(sock: socket.socket, name: str, seq: int) -> bool:
    """RTM_DELLINK of the interface ``name``; False when there is none."""
    ifname = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(ifname), IFLA_IFNAME) + ifname
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0) + attr  # ifinfomsg, index 0
    sock.send(struct.pack("=IHHII", 16 + len(body), RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK,
                          seq, 0) + body)
    while True:
        reply = sock.recv(65536)
        _, kind, _, got, _ = struct.unpack_from("=IHHII", reply)
        if kind == NLMSG_ERROR and got == seq:
            break
    (error,) = struct.unpack_from("=i", reply, 16)
    if error in (-errno.ENODEV, -errno.ENOENT):
        return False  # gone already: its namespace went away
    if error:
        raise NetworkError(f"cannot delete {name}: {os.strerror(-error)}", hint=_HINT)
    return True




def delete_bridge(name: str) -> bool:
    """Delete a removed network's bridge; False when there was none."""
    return bool(delete_veths([name]))


def bridge_ports(name: str) -> list[str] | None:
    """The interfaces attached to the bridge ``name`` (None: there is no such bridge),
    asked of this network namespace (``/sys/class/net`` is the one sysfs was mounted in)."""
    IPRoute, NetlinkError = _iproute()
    with IPRoute() as ipr:
        try:
            index = ipr.link("get", ifname=name)[0]["index"]
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise _failed(f"look up {name}", exc) from None
        return sorted(link.get("IFLA_IFNAME") for link in ipr.get_links()
                      if link.get("IFLA_MASTER") == index)


def host_veths() -> list[str]:
    """Names of lamina's veths on the host (without netlink: ``if_nameindex``)."""
    return [name for _, name in socket.if_nameindex() if name.startswith(VETH_PREFIX)]
