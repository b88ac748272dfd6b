"""Benchmark: commit of a container that changed one file in the Debian minbase image (overlay).

The minbase tar is imported as an image; before each timed run (untimed) a
container's writable layer is made on its top layer, mounted, one file rewritten
(etc/hostname, new content each run, so no run finds its layer made already) and
unmounted. Timed: ``commit`` (core/containers/commit.py: export, hash, apply as
the ChainID layer, keep the tar as the blob, config, registration) with overlay's
native diff (the layer's own diff/ directory) against the same commit with the
core's generic diff (both trees mounted and compared whole): the overlay driver
with its ``diff`` replaced by the contract's default, as a driver without a native
diff has it. Interleaved. Both images must hold the same tree (checked once).
Target: native at most 0.1x the generic time.

    .venv/bin/python bench/bench_commit.py [--runs 9] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import ClassVar

from _common import FIXTURES, Contender, ensure_minbase, race, report

from lamina.conformance.trees import compare, snapshot
from lamina.core.containers.commit import commit
from lamina.core.driver import Capabilities, Driver
from lamina.core.host.fsinfo import filesystem_type
from lamina.core.host.treecopy import remove_tree
from lamina.core.images.rootfs import import_rootfs
from lamina.core.images.store import ImageStore
from lamina.core.layers.store import Store
from lamina.drivers.overlay import OverlayDriver

TARGET = 0.1


class GenericDiffOverlay(OverlayDriver):
    """overlay with the core's generic diff: what a driver without a native one gets."""

    capabilities: ClassVar[Capabilities] = OverlayDriver.capabilities._replace(native_diff=False)
    diff = Driver.diff


def spread(c: Contender) -> str:
    return (f"median {c.median * 1e3:.1f} ms, min {min(c.times) * 1e3:.1f}, "
            f"max {max(c.times) * 1e3:.1f}, stdev {statistics.pstdev(c.times) * 1e3:.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--workdir", type=Path, default=FIXTURES / "bench-commit")
    args = parser.parse_args()
    _, tar = ensure_minbase()
    remove_tree(args.workdir)
    home = args.workdir / "overlay"
    home.mkdir(parents=True)
    native_store = Store(args.workdir, OverlayDriver(home))
    generic_store = Store(args.workdir, GenericDiffOverlay(home))
    stores = {"native": native_store, "generic": generic_store}
    made: dict[str, list[tuple[str, str]]] = {"native": [], "generic": []}  # (container, image)
    pending: dict[str, str] = {}  # kind -> the container prepared for its next run
    ok = False
    try:
        images = ImageStore(native_store)
        base = import_rootfs(images, str(tar), names=["docker.io/bench/minbase:1"])
        base_top = images.image(base).top_layer

        def prepare(kind: str, i: int) -> None:
            store = stores[kind]
            rw = store.create_layer(base_top, writable=True).id
            path = store.mount(rw)
            (path / "etc" / "hostname").write_text(f"{kind} {i}\n")
            store.unmount(rw)
            pending[kind] = rw

        def run(kind: str) -> None:
            store = stores[kind]
            rw = pending.pop(kind)
            image = commit(store, ImageStore(store), layer_id=rw, base_image_id=base,
                           created_by="/bin/sh -c 'echo x > /etc/hostname'")
            made[kind].append((rw, image))

        native = Contender("commit, native diff (diff/ dir)", lambda i: run("native"),
                           prepare=lambda i: prepare("native", i))
        generic = Contender("commit, generic diff (two trees)", lambda i: run("generic"),
                            prepare=lambda i: prepare("generic", i))
        race([native, generic], args.runs)

        # the first image of each holds the tree of its container
        problems = []
        for kind, store in stores.items():
            rw, image = made[kind][0]
            top = images.image(image).top_layer
            a, b = store.mount(rw), store.mount(top)
            try:
                problems += compare(snapshot(a, subsecond=False), snapshot(b, subsecond=False),
                                    mtime_kinds={"file", "symlink"})
            finally:
                store.unmount(top)
                store.unmount(rw)
        problems = [p for p in problems if not p.startswith("/:")]
        ok = report(
            "commit of one changed file over Debian minbase (overlay)",
            native, generic, TARGET,
            [("base", f"{tar} imported as an image"),
             ("native", spread(native)),
             ("generic", spread(generic)),
             ("trees", "identical" if not problems else f"DIFFER: {problems[:5]}"),
             ("filesystem", f"{filesystem_type(args.workdir)} ({args.workdir})")],
        ) and not problems
    finally:
        images = ImageStore(native_store)
        for kind in made:
            for rw, image in made[kind]:
                native_store.remove_layer(rw)
                images.remove(image)
        for rw in pending.values():
            native_store.remove_layer(rw)
        for image in images.images():
            images.remove(image.id)
        generic_store.close()
        native_store.close()
        remove_tree(args.workdir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
