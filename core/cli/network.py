"""``network create/ls/inspect/rm/prune``: Docker's user-defined bridge networks.

The networks themselves are core/network/networks.py; a container joins one with
``run --network NAME`` (core/network/attachment.py) and finds the others on it by
name (core/launcher/peers.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import TYPE_CHECKING, Any

from ..errors import LaminaError, NetworkError
from .output import print_table, report

if TYPE_CHECKING:
    from ..engine import Engine
    from ..layers.store import Store
    from ..network.networks import Network


def container_networks(store: Store, container: Any,
                       settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Docker's ``NetworkSettings.Networks`` of a container: its network, with the address
    it holds while it runs (``settings``: the config's ``[network]``)."""
    import ipaddress

    mode = container.spec.network
    entry: dict[str, Any] = {"NetworkID": "", "IPAddress": "", "IPPrefixLen": 0,
                             "Gateway": "", "Aliases": list(container.spec.network_aliases)}
    subnet, bridge = None, None
    if mode == "bridge":
        subnet, bridge = settings["subnet"], settings["bridge"]
        entry["NetworkID"] = _builtin_id(mode)
    elif mode in ("host", "none"):
        entry["NetworkID"] = _builtin_id(mode)
    else:
        from ..network.networks import NetworkNotFound, NetworkStore

        try:
            network = NetworkStore(store.root).get(mode)
            subnet, bridge, entry["NetworkID"] = network.subnet, network.bridge, network.id
        except NetworkNotFound:
            pass  # removed since: the container cannot start on it
    if bridge is not None:
        row = store.db.execute("SELECT address FROM network_addresses WHERE network = ? "
                               "AND container_id = ?", (bridge, container.id)).fetchone()
        if row:
            net = ipaddress.IPv4Network(subnet)
            entry.update(IPAddress=row[0], IPPrefixLen=net.prefixlen, Gateway=str(net[1]))
    return {mode: entry}


def create_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--driver", dest="network_driver", default="bridge", choices=["bridge"],
                   help="the network's driver (bridge, the only one)")
    p.add_argument("--subnet", help="its IPv4 subnet (default: a free 10.89.N.0/24)")
    p.add_argument("--internal", action="store_true",
                   help="its containers reach only each other: no way out, no ports")
    p.add_argument("--label", action="append", default=[], metavar="KEY[=VALUE]",
                   help="a label of the network")
    p.add_argument("name", metavar="NAME")


def cmd_create(args: argparse.Namespace, engine: Engine) -> int:
    from ..network.networks import NetworkStore

    labels = {}
    for text in args.label:
        key, _, value = text.partition("=")
        if not key:
            raise NetworkError(f"invalid label {text!r}", hint="--label KEY[=VALUE]")
        labels[key] = value
    with engine.open_store() as store:
        network = NetworkStore(store.root).create(
            args.name, subnet=args.subnet, labels=labels,
            default_subnet=engine.config.network["subnet"], internal=args.internal)
    print(network.id)
    return 0


def ls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--no-trunc", action="store_true", help="full ids")
    p.add_argument("--format", default="table",
                   help="table (default), or a Go template as Docker's: '{{.Name}}'")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="; ".join(f"{k}: {v}" for k, v in LS_FILTERS.items()))


#: ``network ls --filter`` keys, as Docker's
LS_FILTERS = {
    "name": "a part of its name",
    "id": "the start of its id",
    "driver": "bridge, host or null",
    "label": "KEY or KEY=VALUE of its labels",
    "type": "builtin or custom",
}


def _rows(store: Store) -> list[dict[str, Any]]:
    from ..network.networks import BUILT_IN, NetworkStore

    rows: list[dict[str, Any]] = [
        {"ID": _builtin_id(name), "Name": name, "Driver": name if name != "none" else "null",
         "Scope": "local", "Labels": {}, "Internal": False, "Custom": False}
        for name in BUILT_IN]
    rows += [{"ID": n.id, "Name": n.name, "Driver": "bridge", "Scope": "local",
              "Labels": n.labels, "Internal": n.internal, "Custom": True}
             for n in NetworkStore(store.root).networks()]
    return rows


def _admits(row: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    """Docker's rule: values of one key are alternatives, keys must all hold."""
    labels = row["Labels"]
    tests = {
        "name": lambda v: v in row["Name"],
        "id": lambda v: row["ID"].startswith(v),
        "driver": lambda v: row["Driver"] == v,
        "label": lambda v: (v.partition("=")[0] in labels
                            and (not v.partition("=")[1]
                                 or labels[v.partition("=")[0]] == v.partition("=")[2])),
        "type": lambda v: v == ("custom" if row["Custom"] else "builtin"),
    }
    return all(any(tests[key](value) for value in values) for key, values in filters.items())


def _builtin_id(name: str) -> str:
    """A stable id for a pre-defined network (Docker's are random, made by its daemon)."""
    return hashlib.sha256(f"lamina network {name}".encode()).hexdigest()


def cmd_ls(args: argparse.Namespace, engine: Engine) -> int:
    from .filters import parse_filters

    filters = parse_filters(args.filter, LS_FILTERS)
    with engine.open_store(readonly=True) as store:
        rows = [row for row in _rows(store) if _admits(row, filters)]
    for row in rows:  # as Docker's template fields
        row["ID"] = row["ID"] if args.no_trunc else row["ID"][:12]
        row["Labels"] = ",".join(f"{k}={v}" for k, v in sorted(row["Labels"].items()))
        row["Internal"] = str(row["Internal"]).lower()
        del row["Custom"]
    if args.quiet:
        print("\n".join(row["ID"] for row in rows))
    elif args.format != "table":
        from .gotemplate import render_rows

        sys.stdout.write(render_rows(args.format, rows, {
            "ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE"}))
    else:
        print_table(None, ["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
                    [[r["ID"], r["Name"], r["Driver"], r["Scope"]] for r in rows])
    return 0


def inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="a Go template, as Docker's: '{{.IPAM.Config}}'")
    p.add_argument("names", nargs="+", metavar="NETWORK")


def _details(store: Store, network: Network) -> dict[str, Any]:
    import ipaddress
    from datetime import UTC, datetime

    from ..containers.store import ContainerStore

    leases = dict(store.db.execute(
        "SELECT container_id, address FROM network_addresses WHERE network = ?",
        (network.bridge,)))
    subnet = ipaddress.IPv4Network(network.subnet)
    return {
        "Name": network.name, "Id": network.id,
        "Created": datetime.fromtimestamp(network.created, UTC).isoformat()
        .replace("+00:00", "Z"),
        "Scope": "local", "Driver": "bridge", "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": {},
                 "Config": [{"Subnet": str(subnet), "Gateway": str(subnet[1])}]},
        "Internal": network.internal, "Attachable": False,
        "Containers": {c.id: {"Name": c.name,
                              "IPv4Address": f"{leases[c.id]}/{subnet.prefixlen}"}
                       for c in ContainerStore(store).containers() if c.id in leases},
        "Options": {"com.docker.network.bridge.name": network.bridge},
        "Labels": network.labels,
    }


def cmd_inspect(args: argparse.Namespace, engine: Engine) -> int:
    from ..network.networks import NetworkStore

    found, status = [], 0
    with engine.open_store(readonly=True) as store:
        networks = NetworkStore(store.root)
        for name in args.names:
            try:
                found.append(_details(store, networks.get(name)))
            except LaminaError as exc:
                report(exc)
                status = 1
    if args.format:
        from .gotemplate import render_rows

        sys.stdout.write(render_rows(args.format, found, {}))
    else:
        print(json.dumps(found, indent=4))
    return status


def rm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true",
                   help="no error for a network that is not there")
    p.add_argument("names", nargs="+", metavar="NETWORK")


def _users(store: Store, network: Network, *, running_only: bool) -> list[str]:
    from ..containers.store import ContainerStore

    return [c.name for c in ContainerStore(store).containers()
            if c.spec.network == network.name and (c.running or not running_only)]


def _remove(store: Store, network: Network) -> None:
    """The record, then the bridge and the nftables chains its containers' starts made."""
    from ..network.networks import NetworkStore

    NetworkStore(store.root).remove(network.name)
    remove_links(network.bridge)


def remove_links(bridge: str) -> None:
    """A network's bridge and nftables chains (``network rm``, ``system reset``)."""
    from ..network import links, nat
    from ..network.nftables import NftablesMissing, run

    links.delete_bridge(bridge)
    try:
        script = nat.remove_network_script(bridge)
        if script:
            run(script)
    except NftablesMissing:
        pass


def cmd_rm(args: argparse.Namespace, engine: Engine) -> int:
    from ..network.networks import BUILT_IN, NetworkNotFound, NetworkStore
    from .output import for_each

    with engine.open_store() as store:
        from .container import _reconcile

        _reconcile(store)
        networks = NetworkStore(store.root)

        def remove(name: str) -> None:
            if name in BUILT_IN:
                raise NetworkError(f"{name} is a pre-defined network and cannot be removed",
                                   hint="remove the networks you made")
            network = networks.get(name)
            users = _users(store, network, running_only=True)
            if users:
                raise NetworkError(
                    f"error while removing network {name}: network {name} has active "
                    f"endpoints ({', '.join(users)})",
                    hint="stop those containers first (lamina stop)")
            _remove(store, network)

        return for_each(args.names, remove, missing=NetworkNotFound, force=args.force)


def prune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="do not ask (lamina never asks)")


def prune_networks(store: Store) -> list[str]:
    """Remove every user network no container (in any state) is on; their names. Shared
    by ``network prune`` and ``system prune``."""
    from ..network.networks import NetworkStore

    removed = []
    for network in NetworkStore(store.root).networks():
        if not _users(store, network, running_only=False):
            _remove(store, network)
            removed.append(network.name)
    return removed


def cmd_prune(args: argparse.Namespace, engine: Engine) -> int:
    with engine.open_store() as store:
        removed = prune_networks(store)
    if removed:
        print("Deleted Networks:")
        print("\n".join(removed))
    return 0
