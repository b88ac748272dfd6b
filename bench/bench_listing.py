"""Benchmark: `lamina images` and `lamina layer ls` of a store with 5,000 entries.

The store (vfs) holds N images, each a one-layer image with its own layer, name and
config blob, registered through the image store as a pull registers them. Each
listing runs as a user runs it (the whole command, output to a pipe): as a table and
as JSON. `lamina layer ls` of the same store and `python -c pass` (the interpreter's
own start) are timed beside them. Target: every listing under 0.3 s (median).

    .venv/bin/python bench/bench_listing.py [--entries 5000] [--runs 7] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.3


def make_store(root: Path, entries: int) -> None:
    from lamina.core.config import Config
    from lamina.core.engine import Engine
    from lamina.core.images.formats import canonical_json, layer_id, parse_config
    from lamina.core.images.store import ImageLayer, ImageStore

    engine = Engine(Config(driver="vfs", driver_source="bench", root=root))
    with engine.open_store() as store:
        images = ImageStore(store)
        for n in range(entries):
            diff_id = f"sha256:{n:064x}"
            # an empty layer under the id a pulled one would have (its ChainID)
            store.create_layer(layer_id=layer_id(diff_id))
            config = canonical_json({
                "architecture": "amd64", "os": "linux", "created": "2026-12-01T00:00:00Z",
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created_by": f"layer {n}"}],
            })
            desc = images.blobs.ingest(io.BytesIO(config))
            images.register(desc.digest, parse_config(config),
                            [ImageLayer(layer_id(diff_id), diff_id, None, None, None)],
                            manifest=None, manifest_type=None,
                            names=[f"registry.example/team/app{n % 97}:v{n}"])


def timed(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-listing-", dir=args.workdir))
    root = work / "store"
    start = time.perf_counter()
    make_store(root, args.entries)
    print(f"store of {args.entries} images and layers made in "
          f"{time.perf_counter() - start:.1f} s at {root}")
    lamina = [str(REPO / ".venv/bin/lamina"), "--root", str(root), "--driver", "vfs"]
    listed = json.loads(subprocess.run([*lamina, "images", "--format", "json"], check=True,
                                       capture_output=True).stdout)
    assert len(listed) == args.entries, len(listed)
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "lamina images": [*lamina, "images"],
        "lamina images --format json": [*lamina, "images", "--format", "json"],
        "lamina images --digests": [*lamina, "images", "--digests"],
        "lamina layer ls": [*lamina, "layer", "ls"],
        "lamina layer ls --format json": [*lamina, "layer", "ls", "--format", "json"],
    }
    ok = True
    print(f"{'command':<32} {'median':>8} {'min':>8} {'max':>8}   ({args.runs} runs, "
          f"{args.entries} entries)")
    for name, cmd in cases.items():
        times = timed(cmd, args.runs)
        median = statistics.median(times)
        verdict = ""
        if name.startswith("lamina"):
            verdict = "OK" if median < TARGET else "MISSED"
            ok = ok and median < TARGET
        print(f"{name:<32} {median:8.3f} {min(times):8.3f} {max(times):8.3f}   {verdict}")
    subprocess.run(["rm", "-rf", str(work)], check=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
