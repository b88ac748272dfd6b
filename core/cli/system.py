"""``lamina info``, ``lamina drivers`` and ``lamina system``: the store as a whole.

``info`` and ``drivers`` only read (they create nothing, not even the root);
``system repair`` and ``system reset`` are the ways out of lost or damaged metadata.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..engine import Engine
from ..errors import LaminaError
from .output import print_json, print_table, report


def cmd_info(args: argparse.Namespace, engine: Engine) -> int:
    from ..host.fsinfo import filesystem_type
    from ..launcher.cgroups import detect as cgroup_layout
    from ..plugins.selection import existing_dir

    choice = engine.choice
    with engine.open_store(readonly=True) as store:
        facts: dict[str, Any] = {
            "driver": choice.name,
            "why": choice.reason,
            "root": str(store.root),
            "backing_filesystem": filesystem_type(existing_dir(store.root)),
            "config_file": str(engine.config.source) if engine.config.source else None,
            "layers": store.layer_count(),
            "driver_status": dict(store.driver.status()),
            "skipped": dict(choice.skipped),
            "cgroups": cgroup_layout(),
        }
        layers_line = _layers_line(store, facts["layers"], facts["driver_status"])
    if args.format == "json":
        print_json(facts)
        return 0
    print(f"Storage driver:      {facts['driver']}")
    print(f"  chosen because:    {facts['why']}")
    for name, reason in choice.skipped:
        print(f"  passed over:       {name}: {reason}")
    print(f"Root:                {facts['root']}")
    print(f"Backing filesystem:  {facts['backing_filesystem']}")
    print(f"Config file:         {facts['config_file'] or '(none found, defaults)'}")
    print(f"Layers:              {layers_line}")
    status = {k: v for k, v in facts["driver_status"].items() if k != "Layers"}
    pad = max((len(k) for k in status), default=0) + 1
    for key, value in status.items():
        print(f"  {key + ':':<{pad}} {value}")
    print(f"Cgroups:             {facts['cgroups']}")
    return 0


def _layers_line(store: Any, ready: int, status: dict[str, str]) -> str:
    """The store's count of layers, and the driver's own count where it differs.

    One line, so that ``info`` lists layers once; a driver home holding more or
    fewer layers than the metadata knows is said, never hidden.
    """
    try:
        on_disk = int(status["Layers"])
    except (KeyError, ValueError):
        return str(ready)
    if on_disk == ready:
        return str(ready)
    every = store.layer_count(ready_only=False)
    if on_disk == every:
        return f"{ready} (and {every - ready} being written or removed)"
    return (f"{ready} (but the {store.driver.name} driver's home holds {on_disk}: "
            "the metadata and the disk disagree)")


def cmd_drivers(args: argparse.Namespace, engine: Engine) -> int:
    from ..plugins.selection import support_reason

    registry = engine.registry
    root = engine.root
    rows = []
    for name in sorted(registry.drivers):
        cls = registry.drivers[name]
        try:
            reason = support_reason(cls, root)
        except LaminaError as exc:
            reason = str(exc)
        rows.append(
            {
                "name": name,
                "supported": reason is None,
                "reason": reason or "",
                "origin": registry.origins.get(name, ""),
                "description": cls.description,
            }
        )
    for name, error in sorted(registry.broken.items()):
        rows.append(
            {"name": name, "supported": False, "reason": f"plugin failed to load: {error}",
             "origin": "", "description": ""}
        )
    if args.format == "json":
        print_json(rows)
        return 0
    print_table(
        f"Storage drivers (root {root})",
        ["driver", "supported", "reason", "from", "description"],
        [
            [r["name"], "yes" if r["supported"] else "no", r["reason"], r["origin"],
             r["description"]]
            for r in rows
        ],
    )
    return 0


def _drivers_on_home(engine: Engine) -> Callable[[str], Any]:
    """A driver of a name on its home, for repair and reset; None if not installed."""

    def make(name: str) -> Any:
        driver_class = engine.registry.drivers.get(name)
        return None if driver_class is None else engine.make_driver(driver_class, readonly=True)

    return make


def cmd_boot(args: argparse.Namespace, engine: Engine) -> int:
    """Start every container whose restart policy says so after a reboot: what Docker's
    daemon does when it starts. lamina has no daemon, so the machine's init runs this
    once at boot (examples/lamina-boot.service); it prints what it started."""
    from ..containers.store import ContainerStore
    from ..launcher import monitor

    with engine.open_store() as store:
        monitor.reconcile(store)  # containers whose monitor the reboot took: exited
        containers = ContainerStore(store)
        due = [c for c in containers.containers() if monitor.restarts_at_boot(containers, c)]
    status = 0
    for container in due:
        try:
            monitor.start_detached(engine, container.id)
        except LaminaError as exc:
            report(exc)
            status = exc.exit_status
        else:
            print(container.name)
    return status


def cmd_repair(args: argparse.Namespace, engine: Engine) -> int:
    from ..layers.repair import repair

    for line in repair(engine.root, _drivers_on_home(engine)):
        print(line)
    if (engine.root / "lamina.db").exists():
        # the layers are back: now the images standing on them (core/images/records.py)
        import sqlite3

        from ..images.records import restore
        from ..layers import metadata

        db = metadata.connect(engine.root / "lamina.db", create=False)
        try:
            for line in restore(engine.root, db, engine.root / "blobs" / "sha256"):
                print(line)
        except sqlite3.Error as exc:
            raise LaminaError(f"cannot restore the images: {exc}") from exc
        finally:
            db.close()
    return 0


def cmd_reset(args: argparse.Namespace, engine: Engine) -> int:
    from ..layers.repair import reset

    root = engine.root
    if not args.force:
        if not sys.stdin.isatty():
            raise LaminaError(
                f"refusing to remove every layer, blob and the metadata under {root} "
                "without a confirmation",
                hint="run `lamina system reset --force` to remove them",
            )
        answer = input(f"Remove every layer, blob and the metadata under {root}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing was removed")
            return 1
    from ..network.networks import NetworkStore
    from .network import remove_links

    try:
        networks = NetworkStore(root).networks()  # what the store made outside its root
    except LaminaError as exc:  # a damaged record: its bridge stays, said so
        report(exc)
        networks = []
    for network in networks:
        try:
            remove_links(network.bridge)
            print(f"removed the bridge and rules of network {network.name}")
        except LaminaError as exc:
            report(exc)
    for line in reset(root, _drivers_on_home(engine)):
        print(line)
    try:
        for line in _reset_default_network(engine.config.network["bridge"]):
            print(line)
    except LaminaError as exc:
        report(exc)
    return 0


def _reset_default_network(bridge: str) -> list[str]:
    """The default network's bridge and rules, and lamina's nftables table once empty.

    Not a bridge that interfaces still use: another store on this host (another root,
    the same ``[network] bridge``) may have containers on it.
    """
    from ..network import links, nat
    from ..network.nftables import NftablesMissing, run
    from .network import remove_links

    ports = links.bridge_ports(bridge)
    if ports:
        return [f"left the default network's bridge {bridge}: {len(ports)} interface(s) "
                f"still use it ({', '.join(ports[:3])}): another store's containers?"]
    lines = []
    try:
        if ports is not None or any(c.endswith(f"-{bridge}") for c in nat.chains()):
            remove_links(bridge)
            lines.append(f"removed the default network's bridge {bridge} and its rules")
        script = nat.remove_table_script()
        if script:
            run(script)
            lines.append("removed lamina's nftables table")
    except NftablesMissing:
        pass
    return lines


def reset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="do not ask for a confirmation")


def prune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true",
                   help="every image no container uses, not only untagged ones")
    p.add_argument("--volumes", action="store_true",
                   help="also the anonymous volumes no container uses")
    p.add_argument("-f", "--force", action="store_true", help="do not ask (lamina never asks)")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="until=24h, label=KEY[=VALUE], label!=KEY[=VALUE]: for containers "
                   "and images (volumes: the labels)")


def cmd_prune(args: argparse.Namespace, engine: Engine) -> int:
    """Docker's ``system prune``: stopped containers, networks no container is on,
    (``--volumes``) unused anonymous
    volumes, untagged (``-a``: unused) images, then the layers, blobs, build cache
    entries and dead pulls' leftovers nothing uses any more (``lamina prune``)."""
    from ..build.cache import BuildCache
    from ..images.space import prune
    from ..images.store import ImageStore
    from .container import prune_containers
    from .filters import PruneFilter
    from .image import prune_images
    from .network import prune_networks
    from .sizes import human_size
    from .volume import prune_volumes

    wanted = PruneFilter(args.filter)
    by_label = PruneFilter([f for f in args.filter if not f.lower().startswith("until=")],
                           until=False)
    with engine.open_store() as store:
        containers, reclaimed = prune_containers(store, wanted)
        networks = prune_networks(store)
        volumes, size = (prune_volumes(store, by_label, every=False) if args.volumes
                         else ([], 0))
        reclaimed += size
        images, size = prune_images(store, wanted, every=args.all)
        reclaimed += size
        rest = prune(ImageStore(store), layer_blobs=False)
        BuildCache(store).prune()  # the entries whose layers just went
        reclaimed += rest.reclaimed
    for title, lines in (("Deleted Containers:", containers), ("Deleted Networks:", networks),
                         ("Deleted Volumes:", volumes),
                         ("Deleted Images:", images),
                         ("Deleted Layers:", rest.layers),
                         ("Deleted Blobs:", rest.blobs)):
        if lines:
            print(title)
            print("\n".join(lines))
            print()
    print(f"Total reclaimed space: {human_size(reclaimed)}")
    return 0
