"""A/B of the pull path: this checkout's cold `lamina pull` of the minbase image against
another checkout's, with this checkout's `layer apply` of the same `.tar.gz` beside them,
alternated, each run on a new ext4 with an empty store (as `bench_pull.py`, which
compares with podman): whether a change moves the pull, and its ratio to the apply.

The other checkout is a clone at the commit to compare with, set up as CI sets one up:

    git clone -q . /tmp/ab-old && git -C /tmp/ab-old checkout -q COMMIT
    (cd /tmp/ab-old && bash .ci/setup)
    .venv/bin/python bench/bench_pull_ab.py --other /tmp/ab-old --runs 24

The image is `bench_pull.py`'s minbase (made once, cached next to the fixture), pushed
with skopeo to a `docker-registry` started on 127.0.0.1. Prints the median, quartiles and
best of each, and the pulls' ratios to the apply.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import FIXTURES, FreshExt4, precompile
from bench_pull import ensure_minbase_image, start_registry, stop_registry, write_layout

from lamina.core.host.treecopy import remove_tree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, required=True,
                        help="the other checkout (with its .venv, as .ci/setup makes it)")
    parser.add_argument("--runs", type=int, default=24, help="timed runs of each")
    parser.add_argument("--workdir", type=Path, default=FIXTURES / "bench-pull-ab",
                        help="scratch directory (registry storage; the fresh filesystems "
                             "are mounted at WORKDIR/mnt)")
    args = parser.parse_args()
    other = args.other / ".venv" / "bin" / "python"
    if not other.exists():
        sys.exit(f"{other} is missing: run .ci/setup in {args.other}")
    layers = ensure_minbase_image()
    precompile()
    subprocess.run([str(other), "-m", "compileall", "-q", str(args.other / "core"),
                    str(args.other / "drivers")], check=True)
    remove_tree(args.workdir)
    args.workdir.mkdir(parents=True)
    registry, host = start_registry(args.workdir / "registry")
    mnt = args.workdir / "mnt"
    fresh = FreshExt4(mnt, size_mb=3000)
    try:
        write_layout(args.workdir / "oci", "minbase", layers)
        reference = f"{host}/bench/minbase:latest"
        subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
                        f"oci:{args.workdir / 'oci'}:minbase", f"docker://{reference}"],
                       check=True)
        pull = ["-m", "lamina.core.cli", "--root", str(mnt / "root"), "pull", "-q", reference]
        commands = {
            "this pull": [sys.executable, *pull],
            "other pull": [str(other), *pull],
            "this apply": [sys.executable, "-m", "lamina.core.cli", "--root",
                           str(mnt / "root"), "layer", "apply", str(layers[0][0])],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for n in range(args.runs):
            for name in (commands if n % 2 == 0 else reversed(commands)):
                fresh.remake()
                os.sync()
                began = time.perf_counter()
                subprocess.run(commands[name], check=True, stdout=subprocess.DEVNULL)
                times[name].append(time.perf_counter() - began)
    finally:
        fresh.close()
        stop_registry(registry)
        remove_tree(args.workdir)
    print(f"cold pull of minbase and its apply, {args.runs} alternated runs each (s):")
    for name, found in times.items():
        q1, _, q3 = statistics.quantiles(found, n=4)
        print(f"  {name:<11} median {statistics.median(found):.3f}  quartiles {q1:.3f}-{q3:.3f}"
              f"  best {min(found):.3f}")
    apply = times["this apply"]
    for name in ("this pull", "other pull"):
        medians = statistics.median(times[name]) / statistics.median(apply)
        print(f"  {name} / this apply: medians {medians:.3f}x, "
              f"best / best {min(times[name]) / min(apply):.3f}x")
    difference = statistics.median(times["this pull"]) - statistics.median(times["other pull"])
    print(f"  this pull - other pull: {difference * 1e3:+.1f} ms (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
