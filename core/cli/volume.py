"""``volume create/ls/inspect/rm/prune`` and the volumes a new container asks for.

The volumes themselves are core/containers/volumes.py; a new, empty one is filled
here from what the container's image has at its mount point, copied from inside the
container's layer (core/launcher/copy.py: the image's symlinks stay inside it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import TYPE_CHECKING

from ..errors import LaminaError, VolumeInUse, VolumeNotFound
from .filters import parse_filters
from .output import for_each, print_table, report

if TYPE_CHECKING:
    from ..containers.store import Container
    from ..engine import Engine
    from ..layers.store import Store
    from .filters import PruneFilter


def prepare(store: Store, container: Container) -> None:
    """Make the container's volumes that are missing, and fill each empty one with what
    the image has there (owner and mode of the directory too), as Docker's."""
    from ..containers.volumes import VolumeStore
    from ..launcher import copy

    volumes = VolumeStore(store)
    empty = []
    for v in container.spec.volumes:
        if v.kind != "volume":
            continue
        info, _ = volumes.create(v.source, anonymous=v.options == "anonymous")
        if not any(os.scandir(info.path)):
            empty.append((v.target, info))
    if not empty:
        return
    with copy.Inside(store, container, layer_only=True) as inside:
        for target, info in empty:
            found = inside.run(lambda t=target: _directory(t))
            if found is None:
                continue  # nothing there in the image: the volume stays empty
            source = copy.Source(found[0], found[1], True)
            copy.copy_out(inside, source, copy.Target(str(info.path), ""), with_top=False,
                          owner=None)
            os.chown(info.path, found[2], found[3])
            os.chmod(info.path, found[4])


def _directory(path: str) -> tuple[str, str, int, int, int] | None:
    """Inside the container: ``path``'s directory (parent, name, uid, gid, mode), symlinks
    followed; None when it is not a directory."""
    import posixpath
    import stat

    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or real == "/":
        return None
    parent, name = posixpath.split(real)
    return parent, name, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


# -- the commands ---------------------------------------------------------------------------


def create_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", metavar="NAME", help="default: a random 64-hex name")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY[=VALUE]")


def cmd_create(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.volumes import VolumeStore

    labels = {}
    for text in args.label:
        key, _, value = text.partition("=")
        labels[key] = value
    with engine.open_store() as store:
        info, _ = VolumeStore(store).create(args.name, labels=labels)
    print(info.name)
    return 0


#: ``volume ls --filter`` keys, as Docker's
FILTERS = {
    "dangling": "true for volumes no container uses, false for the others",
    "name": "a part of the volume's name",
    "label": "KEY or KEY=VALUE of the volume's labels",
}


def ls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="only names")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="; ".join(f"{k}: {v}" for k, v in FILTERS.items()))


def cmd_ls(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.volumes import VolumeStore, as_dict
    from .filters import InvalidFilter

    filters = parse_filters(args.filter, FILTERS)
    with engine.open_store(readonly=True) as store:
        volumes = VolumeStore(store)
        found = volumes.volumes()
        used = {v.source for c in _containers(store) for v in c.spec.volumes
                if v.kind == "volume"}
    for value in filters.get("dangling", []):
        if value.lower() not in ("true", "false", "1", "0"):
            raise InvalidFilter(f"invalid value for the dangling filter: {value}",
                                hint="dangling=true or dangling=false")
    rows = []
    for info in found:
        dangling = info.name not in used
        if "dangling" in filters and not any(
                dangling == (v.lower() in ("true", "1")) for v in filters["dangling"]):
            continue
        if "name" in filters and not any(v in info.name for v in filters["name"]):
            continue
        if "label" in filters and not any(
                _has_label(info.labels, v) for v in filters["label"]):
            continue
        rows.append(info)
    if args.quiet:
        for info in rows:
            print(info.name)
    elif args.format == "json":
        for info in rows:
            print(json.dumps(as_dict(info)))
    else:
        print_table(None, ["DRIVER", "VOLUME NAME"], [["local", i.name] for i in rows])
    return 0


def _has_label(labels: dict[str, str], wanted: str) -> bool:
    key, eq, value = wanted.partition("=")
    return key in labels and (not eq or labels[key] == value)


def _containers(store: Store) -> list[Container]:
    from ..containers.store import ContainerStore

    return ContainerStore(store).containers()


def inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="+", metavar="VOLUME")


def cmd_inspect(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.volumes import VolumeStore, as_dict

    out = []
    status = 0
    with engine.open_store(readonly=True) as store:
        volumes = VolumeStore(store)
        for name in args.names:
            try:
                out.append(as_dict(volumes.get(name)))
            except LaminaError as exc:
                report(exc)
                status = 1
    print(json.dumps(out, indent=4))
    return status


def rm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true",
                   help="no error for a volume that is not there")
    p.add_argument("names", nargs="+", metavar="VOLUME")


def cmd_rm(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.volumes import VolumeStore

    with engine.open_store() as store:
        return for_each(args.names, VolumeStore(store).remove, missing=VolumeNotFound,
                        force=args.force)


def prune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true",
                   help="named volumes too (default: anonymous ones only, as Docker's)")
    p.add_argument("-f", "--force", action="store_true", help="do not ask (lamina never asks)")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="label=KEY[=VALUE]: only volumes with that label; label!=...: only "
                   "those without")


def cmd_prune(args: argparse.Namespace, engine: Engine) -> int:
    """Remove the volumes no container uses: anonymous ones, or all with ``-a``."""
    from .filters import PruneFilter
    from .sizes import human_size

    wanted = PruneFilter(args.filter, until=False)  # Docker's volumes have no until
    with engine.open_store() as store:
        removed, reclaimed = prune_volumes(store, wanted, every=args.all)
    if removed:
        print("Deleted Volumes:")
        for name in removed:
            print(name)
        print()
    print(f"Total reclaimed space: {human_size(reclaimed)}")
    sys.stdout.flush()
    return 0


def prune_volumes(store: Store, wanted: PruneFilter, *,
                  every: bool) -> tuple[list[str], int]:
    """Remove the anonymous volumes (``every``: all) no container uses that ``wanted``
    admits (by label): their names and the bytes they held."""
    from ..containers.volumes import VolumeStore

    removed, reclaimed = [], 0
    volumes = VolumeStore(store)
    volumes.sweep()
    used = {v.source for c in _containers(store) for v in c.spec.volumes
            if v.kind == "volume"}
    for info in volumes.volumes():
        if info.name in used or not (every or info.anonymous) \
                or not wanted.admits(info.created, info.labels):
            continue
        size = volumes.size(info.name)
        with contextlib.suppress(VolumeInUse):
            volumes.remove(info.name)
            removed.append(info.name)
            reclaimed += size
    return removed, reclaimed
