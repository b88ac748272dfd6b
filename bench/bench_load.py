"""Benchmark: `lamina load` of a docker archive of Debian minbase vs `podman load` of the same file.

The archive is made once per run of the script: the minbase tar imported into
a scratch store (``lamina import``) and written with ``lamina save`` (Docker
25's layout, the layer uncompressed as ``docker save`` writes it; podman reads
it, test_archives checks that). Then, interleaved, each contender loads it
into an empty store of its own: ``lamina --driver overlay load -i`` and
``podman --root R --runroot RR load -i`` (overlay too), each on a new ext4 per
run (``FreshExt4``, as the apply benchmarks) unless ``--on-disk``. Both
commands as a user runs them, interpreter or binary start included.
Target: at most 0.5x podman.

    .venv/bin/python bench/bench_load.py [--runs 5] [--workdir DIR] [--on-disk]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
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

from lamina.core.host.treecopy import remove_tree

TARGET = 0.5


def unmounting_first(workdir: Path, prepare: Callable[[int], object]) -> Callable[[int], object]:
    def run(i: int) -> None:
        from lamina.core.host import mounts

        for point in mounts.mounts_under(workdir):
            mounts.detach(Path(point))
        prepare(i)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=FIXTURES / "bench-load")
    parser.add_argument("--on-disk", action="store_true",
                        help="load into the workdir on its own filesystem instead of a new "
                             "ext4 (a loop image in /dev/shm) mounted there for each run")
    args = parser.parse_args()
    if shutil.which("podman") is None:
        sys.exit("podman is missing: apt-get install -y podman runc")
    _, tar = ensure_minbase()
    precompile()
    remove_tree(args.workdir)
    args.workdir.mkdir(parents=True)
    scratch = Path(tempfile.mkdtemp(prefix="lamina-bench-load-", dir=FIXTURES))
    archive = scratch / "minbase-docker.tar"
    command = [sys.executable, "-m", "lamina.core.cli"]
    subprocess.run([*command, "--driver", "vfs", "--root", str(scratch / "store"), "import",
                    str(tar), "bench/minbase:1"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*command, "--driver", "vfs", "--root", str(scratch / "store"), "save", "-o",
                    str(archive), "bench/minbase:1"], check=True)
    # podman refuses a runroot path longer than 50 characters
    runroots = Path(tempfile.mkdtemp(prefix="lbl-", dir="/tmp"))
    mine, theirs = args.workdir / "lamina", args.workdir / "podman"
    lamina = Contender(
        "lamina load (overlay)",
        lambda i: subprocess.run([*command, "--driver", "overlay", "--root", str(mine / str(i)),
                                  "load", "-i", str(archive)], check=True,
                                 stdout=subprocess.DEVNULL),
    )
    podman = Contender(
        "podman load (overlay)",
        lambda i: subprocess.run(["podman", "--root", str(theirs / str(i)), "--runroot",
                                  str(runroots / str(i)), "--storage-driver", "overlay", "load",
                                  "-q", "-i", str(archive)], check=True,
                                 stdout=subprocess.DEVNULL),
    )
    fresh = None if args.on_disk else FreshExt4(args.workdir)
    if fresh is not None:
        for c in (lamina, podman):
            c.prepare = fresh_first(fresh, c.prepare)
    for c in (lamina, podman):  # containers/storage leaves its home bind-mounted
        c.prepare = unmounting_first(args.workdir, c.prepare)
    try:
        race([lamina, podman], args.runs)
        ok = report(
            "lamina load vs podman load of a docker archive of Debian minbase",
            lamina, podman, TARGET,
            [("archive", f"{archive} ({archive.stat().st_size / 1e6:.0f} MB, one uncompressed "
              "layer, written by lamina save)"),
             ("filesystem", "a new ext4 for each run" if fresh else f"{args.workdir} as it is"),
             ("cpus", str(os.cpu_count()))],
        )
        print(f"spread: lamina {min(lamina.times):.3f}-{max(lamina.times):.3f} s, "
              f"podman {min(podman.times):.3f}-{max(podman.times):.3f} s; "
              f"median ratio {lamina.median / podman.median:.2f}x")
    finally:
        if fresh is not None:
            fresh.close()
        for path in (args.workdir, scratch, runroots):
            subprocess.run(["umount", "-R", str(path)], capture_output=True, check=False)
            remove_tree(path)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
