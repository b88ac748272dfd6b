"""The core owns the parent graph: no built-in driver stores a layer's parents again.

Each driver is handed a layer's ancestors by the store (``parents``, nearest
first). After a three-layer chain was built, applied, mounted both ways,
diffed and mounted again by a new driver instance, no file under the
driver's home holds the id of a parent: the store's metadata is the one
record of the graph.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from tarmaker import tar_of

from lamina.core.driver import Driver
from lamina.core.layers.store import Store
from lamina.drivers.overlay import OverlayDriver
from lamina.drivers.vfs import VfsDriver

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts)"),
]

#: ids no layer content, option or probe can contain by accident
BASE, MID, TOP = "ancestor-base-q7x", "ancestor-mid-k2w", "leaf-top-z9v"




def build_chain(store: Store) -> None:
    """Every driver operation that takes ``parents``, on a base, a child and a writable top."""
    store.apply_layer(tar_of({"a": b"1"}), layer_id=BASE)
    store.apply_layer(tar_of({"b": b"2"}), BASE, layer_id=MID)
    store.create_layer(MID, writable=True, layer_id=TOP)
    (store.mount(TOP) / "c").write_bytes(b"3")
    store.unmount(TOP)
    store.mount(MID)
    store.unmount(MID)
    assert [c.path for c in store.changes(TOP)] == ["", "c"]
    store.diff(TOP, io.BytesIO())
    assert store.diff_size(TOP) == 1


def files_naming(home: Path, ids: tuple[str, ...]) -> list[str]:
    """Regular files under ``home`` whose content holds one of ``ids``.

    Names and symlink targets are not read: a layer's own directory is named
    by its id, and overlay's ``l/`` links point at their own layer.
    """
    found = []
    for directory, _, names in os.walk(home):
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            found += [f"{path}: {i}" for i in ids if i.encode() in data]
    return found


def check(root: Path, make: Callable[[Path], Driver]) -> None:
    home = root / make.__name__
    home.mkdir(mode=0o700, parents=True)
    with Store(root, make(home)) as store:
        build_chain(store)
    assert files_naming(home, (BASE, MID)) == []
    # a new instance knows nothing but what the core hands it, and mounts the chain
    with Store(root, make(home)) as store:
        path = store.mount(TOP)
        assert sorted(os.listdir(path)) == ["a", "b", "c"]
        store.unmount(TOP)
        for layer in (TOP, MID, BASE):
            store.remove_layer(layer)


def vfs(home: Path) -> Driver:
    return VfsDriver(home)


def overlay(home: Path) -> Driver:
    return OverlayDriver(home)


def btrfs(home: Path) -> Driver:
    from lamina.drivers.btrfs import BtrfsDriver

    return BtrfsDriver(home)


def test_vfs_stores_no_parents(store_root: Path) -> None:
    check(store_root, vfs)


def test_overlay_stores_no_parents(store_root: Path) -> None:
    store_root.mkdir()
    reason = OverlayDriver.check_support(store_root)
    if reason:
        pytest.skip(reason)
    check(store_root, overlay)


def test_btrfs_stores_no_parents(btrfs_root: Path) -> None:
    check(btrfs_root, btrfs)
