"""The host side of a bridge network through netlink (pyroute2): the bridge and veths.

pyroute2 costs ~115 ms to import whole: its package imports every part of it (NDB,
IPDB, conntrack, ...). Only ``pyroute2.iproute.linux`` is needed here, and importing it
below a stand-in for the package (removed again at once) takes ~75 ms of which asyncio,
which pyroute2's netlink core is built on, is a third. Only a bridge set-up or a veth
to delete imports it; naming and finding veths (:func:`host_veths`) does not.

A container's host-side veth is named ``VETH_PREFIX`` + the first 12 characters of its
id, so a crashed run's leftovers are found by name (:func:`host_veths`); its peer is
made directly inside the container's namespace as ``eth0`` (one netlink request: a
pair never exists with both ends on the host).
"""

from __future__ import annotations

import errno
import socket
import sys
import types
from typing import TYPE_CHECKING, Any

from ..errors import NetworkError

if TYPE_CHECKING:
    from .addresses import BridgeNetwork

VETH_PREFIX = "lmv"
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


def ensure_bridge(network: BridgeNetwork) -> int:
    """Make the bridge with the gateway address and bring it up; its index. Idempotent.

    Several set-ups at once each try, and all but one find it made (EEXIST): that is
    success. An interface of the bridge's name that is not a bridge is an error.
    """
    IPRoute, NetlinkError = _iproute()
    gateway = str(network.gateway)
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=network.name, kind="bridge")
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _failed(f"create the bridge {network.name}", exc) from None
        found = ipr.link("get", ifname=network.name)[0]
        kind = found.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
        if kind != "bridge":
            raise NetworkError(
                f"the interface {network.name} exists and is not a bridge ({kind or 'unknown'})",
                hint="name another bridge in lamina.toml's [network] table (bridge = ...)",
            )
        index = found["index"]
        try:
            ipr.addr("add", index=index, address=gateway, prefixlen=network.subnet.prefixlen)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _failed(f"give {network.name} the address {gateway}", exc) from None
        ipr.link("set", index=index, state="up")
    return index


def add_veth(container_id: str, pid: int, bridge_index: int) -> str:
    """A veth pair: the host end on the bridge and up, ``eth0`` in ``pid``'s namespace."""
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
            _delete(ipr, name)
            raise _failed(f"attach {name} to the bridge", exc) from None
    return name


def delete_veths(names: list[str]) -> list[str]:
    """Delete these host-side veths (their peers go with them); those deleted."""
    IPRoute, _ = _iproute()
    deleted = []
    with IPRoute() as ipr:
        for name in names:
            if _delete(ipr, name):
                deleted.append(name)
    return deleted


def _delete(ipr: Any, name: str) -> bool:
    _, NetlinkError = _iproute()
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return False  # gone already: its namespace went away
        raise _failed(f"delete {name}", exc) from None
    return True


def host_veths() -> list[str]:
    """Names of lamina's veths on the host (without netlink: ``if_nameindex``)."""
    return [name for _, name in socket.if_nameindex() if name.startswith(VETH_PREFIX)]
