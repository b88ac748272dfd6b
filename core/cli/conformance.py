"""``lamina conformance``: the suite on one driver in this process, or the matrix of
drivers x backing filesystems (:mod:`lamina.conformance.matrix`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..engine import Engine
from ..errors import LaminaError


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


def conformance_arguments(p: argparse.ArgumentParser) -> None:
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
