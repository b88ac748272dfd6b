"""What the driver's own behaviour tests share: a driver on the chosen backing filesystem."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lamina_fuse_overlayfs import FuseOverlayDriver

#: layer ids the tests use, children first: the order they are removed in
LAYERS = ("grandchild", "child", "base")


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[FuseOverlayDriver]:
    """A fresh driver under ``LAMINA_TEST_ROOT`` (default: a temporary directory);
    skipped with the reason where fuse-overlayfs cannot work."""
    root = Path(os.environ.get("LAMINA_TEST_ROOT") or tmp_path)
    reason = FuseOverlayDriver.check_support(root)
    if reason:
        pytest.skip(reason)
    drv = FuseOverlayDriver(root / f"fuse-overlayfs-{os.urandom(4).hex()}")
    yield drv
    for layer in LAYERS:
        if drv.exists(layer):
            drv.remove(layer)


@pytest.fixture
def writing(
    driver: FuseOverlayDriver,
) -> Callable[..., contextlib.AbstractContextManager[Path]]:
    """``with writing("child", "base") as root:`` makes a writable layer on its
    ancestors, nearest first (or none), and has it mounted for the block,
    unmounted after it."""

    @contextlib.contextmanager
    def make(layer_id: str, *parents: str) -> Iterator[Path]:
        driver.create(layer_id, parents, writable=True)
        root = driver.mount(layer_id, parents, readonly=False)
        try:
            yield root
        finally:
            driver.unmount(layer_id)

    return make
