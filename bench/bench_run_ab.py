"""A/B of the run path: this checkout's `lamina run --rm --network none IMAGE true`
against another checkout's, alternated on one store, to see whether a change costs a
start anything (the machine's drift hits both alike; `bench_run.py` compares with podman).

The other checkout is a clone at the commit to compare with, set up as CI sets one up:

    git clone -q . /tmp/ab-old && git -C /tmp/ab-old checkout -q COMMIT
    (cd /tmp/ab-old && bash .ci/setup)
    .venv/bin/python bench/bench_run_ab.py --other /tmp/ab-old --runs 40

Both import nothing from each other: each runs its own ``.venv/bin/python -m
lamina.core.cli`` on the same store (a busybox image made by
``examples/busybox-rootfs.sh``, imported by this checkout). Prints the median, the
quartiles and the best of each, and their differences.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, required=True,
                        help="the other checkout (with its .venv, as .ci/setup makes it)")
    parser.add_argument("--runs", type=int, default=40, help="timed runs of each")
    args = parser.parse_args()
    other = args.other / ".venv" / "bin" / "python"
    if not other.exists():
        sys.exit(f"{other} is missing: run .ci/setup in {args.other}")
    work = Path(tempfile.mkdtemp(prefix="lamina-ab-", dir="/var/tmp"))
    try:
        tar, root = work / "busybox.tar", work / "root"
        subprocess.run(["bash", str(REPO / "examples" / "busybox-rootfs.sh"), str(tar)],
                       check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "lamina.core.cli", "--root", str(root),
                        "--driver", "overlay", "import", str(tar), "ab:1"], check=True,
                       capture_output=True)
        run = ["-m", "lamina.core.cli", "--root", str(root), "--driver", "overlay", "run",
               "--rm", "--network", "none", "ab:1", "true"]
        commands = {"this": [sys.executable, *run], "other": [str(other), *run]}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for command in commands.values():
            subprocess.run(command, check=True)  # warm: page cache, compiled modules
        for n in range(args.runs):
            for name in (commands if n % 2 == 0 else reversed(commands)):
                began = time.perf_counter()
                subprocess.run(commands[name], check=True, stdout=subprocess.DEVNULL)
                times[name].append(time.perf_counter() - began)
        print(f"run --rm --network none, {args.runs} alternated runs each (ms):")
        for name, found in times.items():
            found.sort()
            quarter = len(found) // 4
            print(f"  {name:5}  median {statistics.median(found) * 1000:6.1f}  "
                  f"quartiles {found[quarter] * 1000:6.1f}-{found[-1 - quarter] * 1000:6.1f}  "
                  f"best {found[0] * 1000:6.1f}")
        diff = statistics.median(times["this"]) - statistics.median(times["other"])
        print(f"  this - other: {diff * 1000:+.1f} ms at the median, "
              f"{(min(times['this']) - min(times['other'])) * 1000:+.1f} ms best")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
