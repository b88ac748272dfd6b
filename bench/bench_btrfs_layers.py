"""Benchmark: btrfs layers over Debian minbase, on a fresh loop-mounted btrfs.

Three measurements, all on the same filesystem:

1. creating a child of the minbase layer: btrfs snapshot vs vfs copy
   (reflinks on btrfs, so vfs is at its best here); target: btrfs faster;
2. disk used by 100 writable layers over that image (statfs free blocks
   before and after, committed); target: under 5 MB beyond the image;
3. ``changes`` of a child with one changed file: native (generation numbers)
   vs the generic walk of both trees (on a twin child with the same change,
   since the walk's reads rewrite atimes, which the native path must then
   check); target: at most 1/20 of the time.

    .venv/bin/python bench/bench_btrfs_layers.py [--runs 9] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from _common import FIXTURES, Contender, ensure_minbase, race, report, tree_stats

from lamina.conformance.backing import backing_filesystem
from lamina.core.layers.changes import compare_trees
from lamina.core.layers.store import Store
from lamina.drivers.btrfs import BtrfsDriver
from lamina.drivers.vfs import VfsDriver

CHILD_TARGET = 1.0
SPACE_TARGET = 5 << 20
CHANGES_TARGET = 1 / 20


def free_bytes(path: Path) -> int:
    import btrfsutil

    btrfsutil.sync(path)
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def bench_child(fs: Path, tar: Path, runs: int) -> bool:
    btrfs_home, vfs_home = fs / "child" / "btrfs", fs / "child" / "vfs"
    for home in (btrfs_home, vfs_home):
        home.mkdir(parents=True, mode=0o700)
    btrfs, vfs = BtrfsDriver(btrfs_home), VfsDriver(vfs_home)
    with open(tar, "rb") as f:
        btrfs.create("base", [], writable=False)
        with _populate(btrfs, "base") as path:
            _untar(f, path)
        btrfs.finalize("base", writable=False)
    vfs.create("base", [], writable=False)
    _untar_file(tar, vfs.mount("base", [], readonly=False))
    snap = Contender("btrfs create(child, parent=base)",
                     lambda i: btrfs.create(f"child{i}", ["base"], writable=True))
    copy = Contender("vfs create(child, parent=base)",
                     lambda i: vfs.create(f"child{i}", ["base"], writable=True))
    race([snap, copy], runs)
    entries, size = tree_stats(btrfs.mount("base", readonly=True))
    return report(
        "child of a Debian minbase layer: btrfs snapshot vs vfs copy (same btrfs)",
        snap, copy, CHILD_TARGET,
        [("tree", f"{entries} entries, {size / 1e6:.0f} MB of file data"),
         ("vfs copy method", dict(vfs.status())["Copy Method"]),
         ("cpus", str(os.cpu_count()))],
    )


def bench_space(fs: Path, tar: Path) -> bool:
    root = fs / "space"
    with Store(root, _driver(root)) as store:
        with open(tar, "rb") as f:
            base = store.apply_layer(f).id
        before = free_bytes(fs)
        started = time.perf_counter()
        for _ in range(100):
            store.create_layer(base, writable=True)
        seconds = time.perf_counter() - started
        used = before - free_bytes(fs)
    ok = used < SPACE_TARGET
    print(f"100 writable layers over minbase: {used / 1e6:.2f} MB of disk beyond the image "
          f"(statfs free blocks, after a commit), made in {seconds:.2f} s; "
          f"target < {SPACE_TARGET / 1e6:.0f} MB: {'OK' if ok else 'MISSED'}")
    return ok


def bench_changes(fs: Path, tar: Path, runs: int) -> bool:
    root = fs / "changes"
    with Store(root, _driver(root)) as store:
        with open(tar, "rb") as f:
            base = store.apply_layer(f).id
        # twins with the same one change: the generic walk reads (and so updates the
        # atimes of) its own twin only; the native one is never walked whole
        child, twin = (store.create_layer(base, writable=True).id for _ in range(2))
        for layer in (child, twin):
            (store.mount(layer) / "etc" / "hostname").write_text("changed\n")
            store.unmount(layer)
        driver = store.driver
        created = store._db.execute("SELECT created_ns FROM layers WHERE id = ?",
                                    (twin,)).fetchone()[0]
        lower, upper = driver._subvol(base), driver._subvol(twin)
        results = {}

        def native(i: int) -> None:
            results["native"] = store.changes(child)

        def generic(i: int) -> None:
            results["generic"] = compare_trees(lower, upper, since_ns=created)

        fast = Contender("btrfs native changes (generations)", native)
        slow = Contender("generic changes (walk both trees)", generic)
        race([fast, slow], runs)
        assert results["native"] == results["generic"], "native and generic changes differ"
        assert driver.change_log[-1] == "native", driver.change_log[-1]
        return report(
            "changes of a minbase child with one changed file: native vs generic",
            fast, slow, CHANGES_TARGET,
            [("changes", ", ".join(f"{c.kind.value} /{c.path}" for c in results["native"]))],
        )


def _driver(root: Path) -> BtrfsDriver:
    home = root / "btrfs"
    home.mkdir(parents=True, mode=0o700)
    return BtrfsDriver(home)


class _populate:
    def __init__(self, driver: BtrfsDriver, layer_id: str) -> None:
        self.driver, self.layer_id = driver, layer_id

    def __enter__(self) -> Path:
        return self.driver.mount(self.layer_id, [], readonly=False)

    def __exit__(self, *exc: object) -> None:
        self.driver.unmount(self.layer_id)


def _untar(stream, path: Path) -> None:
    from lamina.core.layertar.apply import apply_tar

    apply_tar(stream, path)


def _untar_file(tar: Path, path: Path) -> None:
    with open(tar, "rb") as f:
        _untar(f, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs of each (default 9)")
    parser.add_argument("--workdir", type=Path, default=FIXTURES / "bench-btrfs",
                        help="where the loop btrfs image and mount point go")
    args = parser.parse_args()
    _, tar = ensure_minbase()
    results = []
    with backing_filesystem("btrfs", args.workdir, size_mb=4096) as fs:
        results.append(bench_child(fs.path, tar, args.runs))
        results.append(bench_space(fs.path, tar))
        results.append(bench_changes(fs.path, tar, args.runs))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
