"""Benchmark: creating a vfs child of a layer holding Debian minbase vs `cp -a`.

A vfs child is a full copy of its parent, so the reference is the best
general tool for the same job on the same disk: `cp -a --reflink=auto`.
Target: the child takes at most 1.2x the time of cp (best of N each).

    .venv/bin/python bench/bench_vfs_child.py [--runs 7] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from _common import FIXTURES, Contender, ensure_minbase, race, report, tree_stats

from lamina.conformance.trees import assert_same_tree
from lamina.core.host.fsinfo import filesystem_type
from lamina.core.host.treecopy import remove_tree
from lamina.drivers.vfs import VfsDriver

TARGET = 1.2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each (default 7)")
    parser.add_argument("--workdir", type=Path, default=FIXTURES / "bench-vfs",
                        help="scratch directory, on the disk to measure")
    args = parser.parse_args()
    _, tar = ensure_minbase()

    remove_tree(args.workdir)
    home = args.workdir / "vfs"
    home.mkdir(parents=True, mode=0o700)
    driver = VfsDriver(home)
    driver.create("base", [], writable=False)
    base = driver.mount("base", [], readonly=False)
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf",
                    str(tar), "-C", str(base)], check=True)
    cp_out = args.workdir / "cp"
    cp_out.mkdir()

    vfs = Contender("lamina vfs create(child, parent=base)",
                    lambda i: driver.create(f"child{i}", ["base"], writable=True))
    cp = Contender("cp -a --reflink=auto",
                   lambda i: subprocess.run(["cp", "-a", "--reflink=auto", str(base),
                                             str(cp_out / str(i))], check=True))
    try:
        race([vfs, cp], args.runs)
        # the timed copy must also be a right one: same tree as cp's, metadata included
        assert_same_tree(cp_out / "0", driver.mount("child0", ["base"], readonly=False))
        entries, size = tree_stats(base)
        ok = report(
            "vfs child of a Debian minbase layer vs cp -a",
            vfs, cp, TARGET,
            [("tree", f"{entries} entries, {size / 1e6:.0f} MB of file data"),
             ("filesystem", f"{filesystem_type(home)} ({args.workdir})"),
             ("copy method", dict(driver.status())["Copy Method"]),
             ("cpus", str(os.cpu_count()))],
        )
    finally:
        remove_tree(args.workdir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
