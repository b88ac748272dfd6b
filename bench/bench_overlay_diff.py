"""Benchmark: diff of one changed file in a writable overlay layer over Debian minbase.

The minbase tar is applied as a base layer; a writable child gets one file
rewritten (etc/hostname). Timed: the driver's native ``diff`` (walks the
child's diff/ dir only) against the core's generic diff (mounts both trees
and compares them whole), each writing the layer tar to /dev/null,
interleaved. Both tars must rebuild the same tree (checked once). Target:
native at most 1/20 of the generic time.

    .venv/bin/python bench/bench_overlay_diff.py [--runs 9] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from _common import FIXTURES, Contender, ensure_minbase, race, report

from lamina.core.host.fsinfo import filesystem_type
from lamina.core.host.treecopy import remove_tree
from lamina.core.layers.store import Store, _Views
from lamina.core.layertar.export import generic_diff
from lamina.drivers.overlay import OverlayDriver

TARGET = 1 / 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--workdir", type=Path, default=FIXTURES / "bench-overlay-diff")
    args = parser.parse_args()
    _, tar = ensure_minbase()
    remove_tree(args.workdir)
    (args.workdir / "overlay").mkdir(parents=True)
    store = Store(args.workdir, OverlayDriver(args.workdir / "overlay"))
    try:
        with open(tar, "rb") as f:
            base = store.apply_layer(f).id
        rw = store.create_layer(base, writable=True).id
        path = store.mount(rw)
        (path / "etc" / "hostname").write_text("changed\n")
        store.unmount(rw)
        driver = store.driver
        views = _Views(store)
        outputs: dict[str, bytes] = {}

        def run(name: str, fn) -> None:
            out = io.BytesIO()
            fn(rw, base, out, views)
            outputs[name] = out.getvalue()

        native = Contender("native diff (diff/ dir)", lambda i: run("native", driver.diff))
        mode = driver.capabilities.root_mode
        generic = Contender("generic diff (two mounted trees)",
                            lambda i: run("generic", lambda *a: generic_diff(*a, root_mode=mode)))
        race([native, generic], args.runs)
        same = outputs["native"] == outputs["generic"]
        ok = report(
            "diff of one changed file in a writable overlay layer over Debian minbase",
            native, generic, TARGET,
            [("base", f"{tar} applied as the parent"),
             ("native", f"best {native.best * 1e3:.2f} ms, median {native.median * 1e3:.2f} ms"),
             ("tar sizes", f"native {len(outputs['native'])} B, generic "
                           f"{len(outputs['generic'])} B, identical: {same}"),
             ("filesystem", f"{filesystem_type(args.workdir)} ({args.workdir})")],
        )
    finally:
        for layer in reversed(store.layers()):
            store.remove_layer(layer.id)
        store.close()
        remove_tree(args.workdir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
