"""``lamina layer ...``: layer plumbing for driver authors and tests.

Every id argument takes any unique prefix of an id, as Docker's do
(:meth:`lamina.core.layers.store.Store.resolve`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..engine import Engine
from ..errors import LaminaError, host_error
from .output import print_json, print_table, report


def _layer_dict(layer: Any, mounts: dict[str, int]) -> dict[str, Any]:
    return {
        "id": layer.id,
        "parent": layer.parent,
        "writable": layer.writable,
        "diff_id": layer.diff_id,
        "size": layer.size,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(layer.created)),
        "mounts": mounts.get(layer.id, 0),
    }


def _parent(store: Any, args: argparse.Namespace) -> str | None:
    """The full id of ``--parent`` (any unique prefix of it names it), or None."""
    return None if args.parent is None else store.resolve(args.parent)


def cmd_create(args: argparse.Namespace, engine: Engine) -> int:
    with engine.open_store() as store:
        parent = _parent(store, args)
        layer = store.create_layer(parent, writable=args.rw, layer_id=args.id)
    print(layer.id)
    return 0


def cmd_apply(args: argparse.Namespace, engine: Engine) -> int:
    with engine.open_store() as store:
        parent = _parent(store, args)
        if args.file == "-":
            layer = store.apply_layer(
                sys.stdin.buffer, parent, writable=args.rw, layer_id=args.id
            )
        else:
            try:
                f = open(args.file, "rb")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise LaminaError(
                    f"cannot read {args.file}: {exc.strerror}",
                    hint="give the path of a layer tar (plain, gzip or zstd), or - for stdin",
                ) from None
            with f:
                layer = store.apply_layer(f, parent, writable=args.rw, layer_id=args.id)
    print(layer.id)
    return 0


def cmd_ls(args: argparse.Namespace, engine: Engine) -> int:
    from .sizes import human_size

    with engine.open_store(readonly=True) as store:
        mounts = store.mount_counts()
        rows = [_layer_dict(layer, mounts) for layer in store.layers()]
    if args.format == "json":
        print_json(rows, listing=True)
        return 0
    if args.quiet:
        for row in rows:
            print(row["id"])
        return 0
    print_table(
        None,
        ["ID", "PARENT", "MODE", "SIZE", "DIFF ID", "MOUNTS", "CREATED"],
        [
            [r["id"][:12], (r["parent"] or "")[:12], "rw" if r["writable"] else "ro",
             human_size(r["size"]) if r["size"] is not None else "", (r["diff_id"] or "")[:19],
             r["mounts"], r["created"]]
            for r in rows
        ],
    )
    return 0


def cmd_rm(args: argparse.Namespace, engine: Engine) -> int:
    status = 0
    with engine.open_store() as store:
        for layer_id in args.ids:
            try:
                store.remove_layer(store.resolve(layer_id))
                print(layer_id)
            except LaminaError as exc:
                report(exc)
                status = exc.exit_status
    return status


def cmd_mount(args: argparse.Namespace, engine: Engine) -> int:
    with engine.open_store() as store:
        print(store.mount(store.resolve(args.id)))
    return 0


def cmd_unmount(args: argparse.Namespace, engine: Engine) -> int:
    with engine.open_store() as store:
        store.unmount(store.resolve(args.id))
    return 0


def cmd_diff(args: argparse.Namespace, engine: Engine) -> int:
    with engine.open_store() as store:
        layer_id = store.resolve(args.id)
        if args.output and args.output != "-":
            _diff_to_file(store, layer_id, Path(args.output))
        else:
            if sys.stdout.isatty():
                raise LaminaError(
                    "refusing to write a tar to a terminal",
                    hint="redirect the output or use -o FILE",
                )
            try:
                store.diff(layer_id, sys.stdout.buffer)
                sys.stdout.buffer.flush()
            except BrokenPipeError:
                raise
            except OSError as exc:
                if exc.filename is not None:  # not the output's: reading the layer failed
                    raise
                raise host_error(exc, "write the layer tar to", "standard output") from None
    return 0


def _diff_to_file(store: Any, layer_id: str, target: Path) -> None:
    """Write the diff to ``.NAME.part`` beside ``target``, rename it into place at the end.

    A reader never sees half a tar; a failure (no such directory, no space) is one
    error naming ``target`` and leaves no part file.
    """
    tmp = target.with_name(f".{target.name}.part")
    try:
        out = open(tmp, "wb")  # noqa: SIM115 - closed below
    except OSError as exc:
        if exc.errno == errno.ENOENT and target.parent.is_dir():  # /proc, /sys
            raise host_error(exc, "create a file in", target.parent,
                             hint="choose an output path on a writable filesystem") from None
        raise host_error(exc, "write", target) from None
    try:
        with out:
            store.diff(layer_id, out)
        os.replace(tmp, target)
    except OSError as exc:
        if exc.filename not in (None, str(tmp), str(target)):
            raise  # reading the layer failed, not writing the tar
        raise host_error(exc, "write", target) from None
    finally:
        with contextlib.suppress(OSError):  # never made, or the directory refuses even that
            tmp.unlink(missing_ok=True)


def cmd_changes(args: argparse.Namespace, engine: Engine) -> int:
    with engine.open_store() as store:
        # the root is the parent of every change; like `docker diff`, do not list it
        changes = [c for c in store.changes(store.resolve(args.id)) if c.path]
    if args.format == "json":
        print_json([{"path": "/" + c.path, "kind": c.kind.value} for c in changes])
    else:
        for change in changes:
            print(f"{change.kind.value} /{change.path}")
    return 0


def new_layer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parent")
    p.add_argument("--rw", action="store_true", help="writable layer")
    p.add_argument("--id", help="choose the id (default: random)")


def apply_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="layer tar (plain, gzip or zstd), or - for stdin")
    new_layer_arguments(p)


def ls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="ids only")


def ids_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", nargs="+", metavar="ID")


def id_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID")


def diff_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
