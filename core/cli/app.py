"""The ``lamina`` command line.

Every :class:`~lamina.core.errors.LaminaError` becomes one ``lamina: error:``
line (plus a ``hint:`` line when there is one) and a non-zero exit. No traceback
reaches a user: an OSError nobody translated and any other exception (a bug)
are printed the same way, with a hint to rerun with ``--debug``, which shows the
traceback of any error. Heavy imports (rich, pytest, json) stay inside the
commands that need them, and only the sub-command that runs gets its arguments
built: every command pays for its start-up (docs/architecture.md, "Start-up").
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import load_config
from ..engine import Engine
from ..errors import LaminaError, host_error

Handler = Callable[[argparse.Namespace, Engine], int]


def _engine(args: argparse.Namespace) -> Engine:
    config = load_config(args.config, driver=args.driver, root=args.root)
    plugins: tuple[object, ...] = ()
    if args.trace or os.environ.get("LAMINA_TRACE", "") not in ("", "0"):
        from ..plugins.trace import Tracer

        plugins = (Tracer(),)
    return Engine(config, plugins=plugins)


def _print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from .tables import print_table

    tty = sys.stdout.isatty()
    # a pipe has no width: do not fold cells at 80 columns there
    print_table(title, columns, rows, width=_terminal_columns() if tty else 1000, styled=tty)


def _print_json(data: Any) -> None:
    import json

    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


# --- info and drivers ---------------------------------------------------------------


def cmd_info(args: argparse.Namespace, engine: Engine) -> int:
    from ..host.fsinfo import filesystem_type
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
        }
        layers_line = _layers_line(store, facts["layers"], facts["driver_status"])
    if args.format == "json":
        _print_json(facts)
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
        _print_json(rows)
        return 0
    _print_table(
        f"Storage drivers (root {root})",
        ["driver", "supported", "reason", "from", "description"],
        [
            [r["name"], "yes" if r["supported"] else "no", r["reason"], r["origin"],
             r["description"]]
            for r in rows
        ],
    )
    return 0


def cmd_conformance(args: argparse.Namespace, engine: Engine) -> int:
    """One driver in this process (as before), or the matrix of drivers x filesystems."""
    extra = list(args.pytest_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if args.keyword is not None:
        extra += ["-k", args.keyword]
    if args.exitfirst:
        extra.append("-x")
    driver = args.suite_driver
    matrix = any(
        v is not None for v in (args.fs, args.junit, args.json, args.workdir, args.size_mb)
    ) or (driver is not None and (driver.strip() == "all" or "," in driver))
    _check_conformance_extra()
    if matrix:
        return _conformance_matrix(args, engine, driver or "all", extra)
    import pytest

    if not driver:
        driver = engine.config.driver or engine.choice.name
    if ":" not in driver:
        engine.registry.get(driver)  # a clear error for an unknown name
    pytest_args = ["--pyargs", "lamina.conformance", f"--lamina-driver={driver}", "-p",
                   "no:cacheprovider", *extra]
    if args.config:
        pytest_args.append(f"--lamina-config={args.config}")
    return int(pytest.main(pytest_args))


def _check_conformance_extra() -> None:
    """The suite's own dependencies are an extra (``lamina[conformance]``): say so."""
    import importlib

    for name in ("pytest", "hypothesis"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise LaminaError(
                f"the conformance suite needs {name}, which is not installed",
                hint="install lamina's conformance extra: pip install 'lamina[conformance]'",
            ) from None


def _conformance_matrix(args: argparse.Namespace, engine: Engine, drivers_text: str,
                        extra: list[str]) -> int:
    from lamina.conformance import matrix

    smallest = 300  # mkfs.xfs refuses less
    if args.size_mb is not None and args.size_mb < smallest:
        raise LaminaError(
            f"--size-mb {args.size_mb} is too small for a backing filesystem",
            hint=f"give at least {smallest}",
        )
    filesystems = matrix.parse_filesystems(args.fs)
    drivers = matrix.resolve_drivers(drivers_text, engine.registry)
    for spec in drivers:  # a bad [drivers.NAME] table fails now, not once per cell
        if spec.driver_class is not None:
            spec.driver_class.validate_options(engine.config.options_for(spec.driver_class.name))
    result = matrix.run_matrix(
        drivers, filesystems,
        workdir=Path(args.workdir) if args.workdir else matrix.DEFAULT_WORKDIR,
        size_mb=args.size_mb, pytest_args=extra,
        config=Path(args.config).resolve() if args.config else None,
        timeout=args.cell_timeout,
        progress=lambda msg: print(f"lamina: {msg}", file=sys.stderr, flush=True),
    )
    matrix.render(result)
    if args.junit:
        matrix.write_junit(result, Path(args.junit))
    if args.json:
        matrix.write_json(result, Path(args.json))
    return 0 if result.ok else 1


# --- layers ---------------------------------------------------------------------------


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


def cmd_layer_create(args: argparse.Namespace, engine: Engine) -> int:
    with engine.open_store() as store:
        parent = _parent(store, args)
        layer = store.create_layer(parent, writable=args.rw, layer_id=args.id)
    print(layer.id)
    return 0


def cmd_layer_apply(args: argparse.Namespace, engine: Engine) -> int:
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


def cmd_layer_ls(args: argparse.Namespace, engine: Engine) -> int:
    from .sizes import human_size

    with engine.open_store(readonly=True) as store:
        mounts = store.mount_counts()
        rows = [_layer_dict(layer, mounts) for layer in store.layers()]
    if args.format == "json":
        _print_json(rows)
        return 0
    if args.quiet:
        for row in rows:
            print(row["id"])
        return 0
    _print_table(
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


def cmd_layer_rm(args: argparse.Namespace, engine: Engine) -> int:
    status = 0
    with engine.open_store() as store:
        for layer_id in args.ids:
            try:
                store.remove_layer(store.resolve(layer_id))
                print(layer_id)
            except LaminaError as exc:
                _report(exc)
                status = exc.exit_status
    return status


def cmd_layer_mount(args: argparse.Namespace, engine: Engine) -> int:
    with engine.open_store() as store:
        print(store.mount(store.resolve(args.id)))
    return 0


def cmd_layer_unmount(args: argparse.Namespace, engine: Engine) -> int:
    with engine.open_store() as store:
        store.unmount(store.resolve(args.id))
    return 0


def cmd_layer_diff(args: argparse.Namespace, engine: Engine) -> int:
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


def cmd_layer_changes(args: argparse.Namespace, engine: Engine) -> int:
    with engine.open_store() as store:
        # the root is the parent of every change; like `docker diff`, do not list it
        changes = [c for c in store.changes(store.resolve(args.id)) if c.path]
    if args.format == "json":
        _print_json([{"path": "/" + c.path, "kind": c.kind.value} for c in changes])
    else:
        for change in changes:
            print(f"{change.kind.value} /{change.path}")
    return 0


# --- system: the ways out of lost or damaged metadata --------------------------------


def _drivers_on_home(engine: Engine) -> Callable[[str], Any]:
    """A driver of a name on its home, for repair and reset; None if not installed."""

    def make(name: str) -> Any:
        driver_class = engine.registry.drivers.get(name)
        return None if driver_class is None else engine.make_driver(driver_class, readonly=True)

    return make


def cmd_system_repair(args: argparse.Namespace, engine: Engine) -> int:
    from ..layers.repair import repair

    for line in repair(engine.root, _drivers_on_home(engine)):
        print(line)
    return 0


def cmd_system_reset(args: argparse.Namespace, engine: Engine) -> int:
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
    for line in reset(root, _drivers_on_home(engine)):
        print(line)
    return 0


def _system_reset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="do not ask for a confirmation")


# --- argument parsing -----------------------------------------------------------------------


def _terminal_columns() -> int:
    """The width argparse wraps help to: ``$COLUMNS``, else the terminal's, else 80.

    What ``shutil.get_terminal_size`` answers. argparse's own formatter imports shutil
    for it, and shutil imports bz2 and lzma: ~2 ms of every start.
    """
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter with the width from :func:`_terminal_columns`."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _CommandParser(argparse.ArgumentParser):
    """A sub-command's parser that adds its arguments only when it is used.

    A run needs one sub-command, and argparse checks the help formatting of every
    argument as it is added: adding all of them cost ~2 ms of each start.
    ``arguments`` is called with the parser before it first parses.
    """

    def __init__(self, *args: Any,
                 arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self._add_arguments = arguments

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        # the one way argparse uses a sub-command's parser; its help and usage
        # errors are printed from inside it
        if self._add_arguments is not None:
            add, self._add_arguments = self._add_arguments, None
            add(self)
        return super().parse_known_args(args, namespace)


def _conformance_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--driver", dest="suite_driver", metavar="all|NAME[,NAME]",
                   help="driver(s) to test: registered names or module:Class, or all "
                   "(default: the chosen driver; all for a matrix)")
    p.add_argument("--fs", metavar="FS[,FS]",
                   help="run the matrix on these backing filesystems, each made on a loop "
                   "device: ext4, ext4-nodtype, xfs, xfs-noftype, btrfs, tmpfs (default: all "
                   "this machine can make)")
    p.add_argument("--size-mb", type=int, metavar="N",
                   help="size of each backing filesystem (default 1024)")
    p.add_argument("--junit", metavar="FILE",
                   help="write the matrix as JUnit XML, one testsuite per driver@fs")
    p.add_argument("--json", metavar="FILE", help="write the matrix cells as JSON")
    p.add_argument("--workdir", metavar="DIR",
                   help="where images and mounts live; leftovers of a killed run are removed "
                   "at the start (default /var/tmp/lamina-conformance)")
    p.add_argument("--cell-timeout", type=float, metavar="SECONDS", default=1800.0,
                   help="stop a matrix cell that runs longer (default 1800)")
    p.add_argument("-k", dest="keyword", metavar="EXPR", help="only cases matching EXPR (pytest)")
    p.add_argument("-x", dest="exitfirst", action="store_true",
                   help="stop each suite at its first failure (pytest)")


def _new_layer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parent")
    p.add_argument("--rw", action="store_true", help="writable layer")
    p.add_argument("--id", help="choose the id (default: random)")


def _layer_apply_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="layer tar (plain, gzip or zstd), or - for stdin")
    _new_layer_arguments(p)


def _layer_ls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="ids only")


def _layer_ids_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", nargs="+", metavar="ID")


def _layer_id_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID")


def _layer_diff_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")


class _VersionAction(argparse.Action):
    """``--version``: the installed version, read only when asked for.

    argparse's own version action takes the text when the parser is built, and
    every command would pay for reading the metadata.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print lamina's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from ..plugins.entrypoints import distribution_version

        print(f"lamina {distribution_version('lamina') or '(version unknown: not installed)'}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each sub-command's arguments are added when it is used."""
    parser = argparse.ArgumentParser(
        prog="lamina", description="Container images and layers on pluggable storage drivers.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--root", help="store root (default /var/lib/lamina for root)")
    parser.add_argument("--driver", help="storage driver (default: chosen automatically)")
    parser.add_argument("--config", help="config file (default: see docs/configuration.md)")
    parser.add_argument("--trace", action="store_true",
                        help="print each driver operation and its duration to stderr")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also LAMINA_DEBUG=1)")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_CommandParser)

    def command(parent: Any, name: str, handler: Handler, help_: str, *,
                formats: bool = False,
                arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                **kwargs: Any) -> argparse.ArgumentParser:
        def add_arguments(p: argparse.ArgumentParser) -> None:
            if formats:
                p.add_argument("--format", choices=["table", "json"], default="table")
            if arguments is not None:
                arguments(p)

        p = parent.add_parser(name, help=help_, description=help_, arguments=add_arguments,
                              **kwargs)
        p.set_defaults(handler=handler)
        return p

    command(sub, "info", cmd_info, "show the chosen driver, why, and its status", formats=True)
    command(sub, "drivers", cmd_drivers, "list installed drivers and whether they work here",
            formats=True)
    p = command(sub, "conformance", cmd_conformance,
                "run the conformance suite on a driver, or on drivers x filesystems",
                arguments=_conformance_arguments,
                epilog="Without --fs, --junit, --json, --workdir and --size-mb and with one "
                "driver, the suite runs in this process on a temporary directory. Any other "
                "arguments (-q, -v, ...) are passed on to pytest.")
    p.set_defaults(pytest_args=[])

    layer = sub.add_parser("layer", help="layer plumbing for driver authors and tests")
    lsub = layer.add_subparsers(dest="layer_command", metavar="COMMAND", required=True)
    command(lsub, "create", cmd_layer_create, "create an empty layer, print its id",
            arguments=_new_layer_arguments)
    command(lsub, "apply", cmd_layer_apply, "create a layer from a layer tar, print its id",
            arguments=_layer_apply_arguments)
    command(lsub, "ls", cmd_layer_ls, "list layers", formats=True, arguments=_layer_ls_arguments)
    command(lsub, "rm", cmd_layer_rm, "remove layers", arguments=_layer_ids_arguments)
    command(lsub, "mount", cmd_layer_mount, "mount a layer (counted), print the path",
            arguments=_layer_id_argument)
    command(lsub, "unmount", cmd_layer_unmount, "drop one mount of a layer",
            arguments=_layer_id_argument)
    command(lsub, "diff", cmd_layer_diff, "write the layer's changes as an OCI layer tar",
            arguments=_layer_diff_arguments)
    command(lsub, "changes", cmd_layer_changes, "list changed paths (A/C/D)", formats=True,
            arguments=_layer_id_argument)
    system = sub.add_parser("system", help="repair or reset the store")
    ssub = system.add_subparsers(dest="system_command", metavar="COMMAND", required=True)
    command(ssub, "repair", cmd_system_repair,
            "rebuild the metadata database from the layer records and what the drivers hold")
    command(ssub, "reset", cmd_system_reset,
            "remove every layer, blob and the metadata under the root",
            arguments=_system_reset_arguments)
    return parser


def _report(exc: LaminaError) -> None:
    print(f"lamina: error: {exc}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; ``argv`` None means the process's own (the ``lamina`` command).

    Run as the command, the process ends when this returns: everything it made is
    handed to ``gc.freeze()`` first, so that the interpreter's exit does not search
    it all for reference cycles again (~9 ms of a `layer apply`, a tenth of it).
    Exit handlers still run and files are still flushed.
    """
    try:
        return _run(argv)
    finally:
        if argv is None:
            gc.freeze()


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "conformance":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.pytest_args = extra
    debug = args.debug or os.environ.get("LAMINA_DEBUG", "") not in ("", "0")
    try:
        return args.handler(args, _engine(args))
    except KeyboardInterrupt:
        print("lamina: interrupted; nothing was left half done", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # no traceback reaches a user
        if debug:
            import traceback

            traceback.print_exc()
        error = _as_lamina_error(exc)
        _report(error)
        return error.exit_status


def _as_lamina_error(exc: Exception) -> LaminaError:
    """What to tell the user about ``exc``: itself, a translated OSError, or a bug."""
    if isinstance(exc, LaminaError):
        return exc
    debug_hint = "rerun with --debug to see where it happened"
    if isinstance(exc, OSError):
        error = host_error(exc)
        if error.hint is None:
            error.hint = debug_hint
        return error
    text = " ".join(str(exc).split())  # one line, whatever the exception holds
    return LaminaError(
        f"unexpected {type(exc).__name__}: {text}",
        hint=f"this is a bug in lamina: {debug_hint}, and report it with that output",
    )


if __name__ == "__main__":
    sys.exit(main())
