"""Benchmark: overlay mount time for stacks of 1, 10, 100 and 500 layers.

Each stack is a chain of layers on one base layer holding a small tree; the
top layer is writable, so an N-layer mount is an overlay of N-1 lowers and an
upper. One layer alone needs no overlay: a writable one is its own directory
(no mount at all), a read-only one is a read-only bind mount, which is what
the 1-layer row times; the 2-layer row is the smallest real overlay. Timed
is the driver's ``mount`` (``unmount`` after it, untimed), interleaved over
the depths. Target: the 500-layer mount within 10x the 1-layer mount.

    .venv/bin/python bench/bench_overlay_mount.py [--runs 30] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tarfile
import time
from pathlib import Path

from _common import FIXTURES

from lamina.core.fsinfo import filesystem_type
from lamina.core.store import Store
from lamina.core.treecopy import remove_tree
from lamina.drivers.overlay import OverlayDriver

DEPTHS = (1, 2, 10, 100, 500)
TARGET = 10.0


def base_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(20):
            data = b"x" * 100
            info = tarfile.TarInfo(f"f{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--workdir", type=Path, default=FIXTURES / "bench-overlay-mount")
    args = parser.parse_args()
    remove_tree(args.workdir)
    (args.workdir / "overlay").mkdir(parents=True)
    store = Store(args.workdir, OverlayDriver(args.workdir / "overlay"))
    try:
        base = store.apply_layer(io.BytesIO(base_tar())).id
        tops: dict[int, tuple[str, bool]] = {}
        parent = base
        for depth in range(2, max(DEPTHS) + 1):
            if depth in DEPTHS:
                tops[depth] = (store.create_layer(parent, writable=True).id, False)
            parent = store.create_layer(parent).id
        # 1 layer: a read-only layer on nothing is a bind mount; use the base's ro mount
        tops[1] = (base, True)
        driver = store.driver
        times: dict[int, list[float]] = {d: [] for d in DEPTHS}
        for i in range(args.runs):
            for depth in DEPTHS if i % 2 == 0 else tuple(reversed(DEPTHS)):
                layer, readonly = tops[depth]
                start = time.perf_counter()
                path = driver.mount(layer, readonly=readonly)
                elapsed = time.perf_counter() - start
                driver.unmount(layer)
                times[depth].append(elapsed)
                assert path.name == "merged"
        print(f"overlay mount time, {args.runs} runs each, "
              f"on {filesystem_type(args.workdir)} ({args.workdir})")
        print(f"  {'layers':>6}  {'best ms':>8}  {'median ms':>9}")
        for depth in DEPTHS:
            print(f"  {depth:>6}  {min(times[depth]) * 1e3:8.2f}  "
                  f"{statistics.median(times[depth]) * 1e3:9.2f}")
        ok = True
        for small, what in ((1, "1 layer (bind mount)"), (2, "2 layers (smallest overlay)")):
            ratio = min(times[500]) / min(times[small])
            mratio = statistics.median(times[500]) / statistics.median(times[small])
            verdict = "OK" if ratio <= TARGET else "MISSED"
            print(f"  500 layers vs {what}: best {ratio:.1f}x, median {mratio:.1f}x "
                  f"(target <= {TARGET}x): {verdict}")
            if small == 2:
                ok = ratio <= TARGET
    finally:
        for layer in reversed(store.layers()):
            store.remove_layer(layer.id)
        store.close()
        remove_tree(args.workdir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
