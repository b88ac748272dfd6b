"""Benchmark: `lamina layer apply` of the Debian minbase tar on overlay vs `tar -xpf`.

The whole command as a user runs it (``lamina --driver overlay layer
apply``: interpreter start, store, support check, the tar written straight
into the new layer's diff/ directory with its diff id) against GNU tar
extracting the same file into an empty directory on the same filesystem
(by default a new ext4 for each timed run, as in bench_apply.py; ``--on-disk``:
the workdir's own), interleaved, each run into a fresh destination. The overlay layer's tree is
compared with tar's afterwards (xattrs aside: plain ``tar -xpf`` drops them).
Target: at most 1.3x tar.

    .venv/bin/python bench/bench_overlay_apply.py [--runs 7] [--workdir DIR] [--on-disk]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from _common import (
    FIXTURES,
    Contender,
    FreshExt4,
    ensure_minbase,
    fresh_first,
    precompile,
    race,
    report,
)

from lamina.conformance.trees import compare, snapshot
from lamina.core.host.fsinfo import filesystem_type
from lamina.core.host.treecopy import remove_tree

TARGET = 1.3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=FIXTURES / "bench-overlay-apply")
    parser.add_argument("--on-disk", action="store_true",
                        help="run in the workdir on its own filesystem (the machine's disk, in "
                             "whatever state earlier runs left it) instead of on a new ext4 "
                             "(a loop image in /dev/shm) mounted at the workdir for each run")
    args = parser.parse_args()
    _, tar = ensure_minbase()
    precompile()
    remove_tree(args.workdir)
    args.workdir.mkdir(parents=True)
    roots, theirs = args.workdir / "lamina", args.workdir / "tar"
    command = [sys.executable, "-m", "lamina.core.cli", "--driver", "overlay"]
    lamina = Contender(
        "lamina layer apply (overlay)",
        lambda i: subprocess.run([*command, "--root", str(roots / str(i)), "layer", "apply",
                                  str(tar)], check=True, stdout=subprocess.DEVNULL),
    )
    gnu = Contender("tar -xpf",
                    lambda i: subprocess.run(["tar", "-xpf", str(tar), "-C", str(theirs / str(i))],
                                             check=True),
                    lambda i: (theirs / str(i)).mkdir(parents=True))
    fresh = None if args.on_disk else FreshExt4(args.workdir)
    if fresh is not None:
        for c in (lamina, gnu):
            c.prepare = fresh_first(fresh, c.prepare)
    try:
        race([lamina, gnu], args.runs)
        if fresh is not None:  # the timed trees went with their filesystems: make a pair
            fresh.remake()
            (theirs / "0").mkdir(parents=True)
            gnu.run(0)
            lamina.run(0)
        home = roots / "0" / "overlay"
        layer = next(p for p in home.iterdir() if (p / "link").is_file())
        problems = [p for p in compare(snapshot(theirs / "0"), snapshot(layer / "diff"))
                    if "xattrs" not in p]
        ok = report(
            "lamina layer apply (overlay) of the Debian minbase tar vs tar -xpf",
            lamina, gnu, TARGET,
            [("tar", f"{tar} ({tar.stat().st_size / 1e6:.0f} MB)"),
             ("filesystem", f"{filesystem_type(args.workdir)} ({args.workdir})"
              + (", a new one for each run" if fresh else ", the disk as it is (--on-disk)")),
             ("trees identical", "yes" if not problems else f"NO: {problems[:5]}"),
             ("cpus", str(os.cpu_count()))],
        )
    finally:
        if fresh is not None:
            fresh.close()
        remove_tree(args.workdir)
    return 0 if ok and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
