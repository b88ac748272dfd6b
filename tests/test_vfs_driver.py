"""The vfs driver used directly (no store): layers as real copies, views as real mounts."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_treecopy import SPARSE_SIZE, make_rich_tree

from lamina.conformance.trees import assert_same_tree, snapshot
from lamina.core.errors import (
    DriverError,
    LayerExists,
    LayerNotFound,
    StoreClosed,
)
from lamina.core.host import mounts
from lamina.core.host.fsinfo import filesystem_type
from lamina.core.plugins.discovery import collect_drivers, load_plugins
from lamina.drivers.vfs import VfsDriver

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bind mounts, chown, mknod)"),
]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """The driver's home; no mount may be left below it after the test."""
    home = tmp_path / "vfs"
    home.mkdir(mode=0o700)
    yield home
    leftover = mounts.mounts_under(tmp_path)
    for point in leftover:
        mounts.detach(Path(point))
    assert not leftover, f"mounts leaked: {leftover}"


@pytest.fixture
def driver(home: Path) -> VfsDriver:
    return VfsDriver(home)


@pytest.fixture
def base(driver: VfsDriver) -> Path:
    """A finished read-only layer ``base`` holding the rich tree; returns a snapshot path."""
    driver.create("base", [], writable=False)
    path = driver.mount("base", [], readonly=False)  # how the core populates a layer
    make_rich_tree(path)
    driver.unmount("base")
    driver.finalize("base", writable=False)
    return path


def _write_fails_with_erofs(path: Path) -> None:
    with pytest.raises(OSError) as info:
        (path / "new-file").write_bytes(b"x")
    assert info.value.errno == errno.EROFS


def test_registered_through_the_entry_point() -> None:
    registry = collect_drivers(load_plugins())
    assert registry.drivers["vfs"] is VfsDriver


def test_check_support(tmp_path: Path) -> None:
    assert VfsDriver.check_support(tmp_path) is None
    ro = tmp_path / "ro"
    ro.mkdir()
    mounts.bind_readonly(ro, ro)
    try:
        reason = VfsDriver.check_support(ro)
        assert reason is not None and "not writable" in reason
    finally:
        mounts.detach(ro)
    assert os.listdir(ro) == []


def test_new_layer_without_parent_is_an_empty_root(driver: VfsDriver) -> None:
    assert not driver.exists("a")
    driver.create("a", [], writable=True)
    assert driver.exists("a")
    path = driver.mount("a", [], readonly=False)
    assert os.listdir(path) == []
    st = os.stat(path)
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o755, 0, 0)


def test_child_shows_the_parent_tree_exactly(driver: VfsDriver, base: Path) -> None:
    expected = snapshot(base)
    driver.create("child", ["base"], writable=True)
    view = driver.mount("child", ["base"], readonly=True)
    try:
        assert_same_tree(expected, view)
        assert os.stat(view / "sparse").st_size == SPARSE_SIZE
        assert os.stat(view / "sparse").st_blocks * 512 <= 64 * 1024, "holes were filled"
    finally:
        driver.unmount("child")
    driver.create("grandchild", ["child", "base"], writable=True)
    assert_same_tree(expected, driver.mount("grandchild", ["child", "base"], readonly=False))


def test_readonly_view_refuses_writes(driver: VfsDriver, base: Path) -> None:
    view = driver.mount("base", [], readonly=True)
    assert view != base
    try:
        _write_fails_with_erofs(view)
        with pytest.raises(OSError) as info:
            os.chmod(view / "etc" / "hosts", 0o600)
        assert info.value.errno == errno.EROFS
        with pytest.raises(OSError) as info:
            (view / "etc" / "hosts").write_bytes(b"changed")
        assert info.value.errno == errno.EROFS
        # mounting again while mounted gives the same, still read-only, view
        assert driver.mount("base", [], readonly=True) == view
        _write_fails_with_erofs(view)
    finally:
        driver.unmount("base")
    assert not view.exists()
    assert not (base / "new-file").exists()
    driver.unmount("base")  # idempotent


def test_writable_mount_writes_into_the_layer_only(driver: VfsDriver, base: Path) -> None:
    before = snapshot(base)
    driver.create("rw", ["base"], writable=True)
    path = driver.mount("rw", ["base"], readonly=False)
    (path / "added").write_bytes(b"new")
    with open(path / "usr" / "b", "ab") as f:  # one name of a hardlinked trio
        f.write(b" appended")
    (path / "etc" / "hosts").unlink()
    driver.unmount("rw")
    assert_same_tree(before, base)
    again = driver.mount("rw", ["base"], readonly=True)
    try:
        assert (again / "added").read_bytes() == b"new"
        assert (again / "usr" / "a").read_bytes() == b"linked content appended"
        assert (again / "etc" / "c").read_bytes() == b"linked content appended"
        assert os.stat(again / "usr" / "a").st_ino == os.stat(again / "usr" / "b").st_ino
        assert not (again / "etc" / "hosts").exists()
    finally:
        driver.unmount("rw")


def test_create_fails_on_an_existing_id(driver: VfsDriver, base: Path) -> None:
    with pytest.raises(LayerExists) as info:
        driver.create("base", [], writable=True)
    assert info.value.layer_id == "base" and info.value.hint
    assert (base / "etc" / "hosts").exists()


def test_create_fails_on_a_missing_parent_and_leaves_nothing(driver: VfsDriver) -> None:
    with pytest.raises(LayerNotFound) as info:
        driver.create("orphan", ["nope"], writable=True)
    assert info.value.layer_id == "nope"
    assert not driver.exists("orphan")
    assert os.listdir(driver.layers) == []
    driver.create("orphan", [], writable=True)  # the id is still free
    assert driver.exists("orphan")


def test_remove(driver: VfsDriver, base: Path) -> None:
    driver.create("gone", ["base"], writable=True)
    driver.remove("gone")
    assert not driver.exists("gone")
    assert os.listdir(driver.layers) == ["base"]
    with pytest.raises(LayerNotFound):
        driver.remove("gone")
    with pytest.raises(LayerNotFound):
        driver.remove("never-was")
    with pytest.raises(LayerNotFound):
        driver.mount("gone", ["base"], readonly=True)
    driver.create("gone", [], writable=True)  # the id can be reused
    assert os.listdir(driver.mount("gone", [], readonly=False)) == []


def test_remove_detaches_a_leftover_view(driver: VfsDriver, base: Path) -> None:
    view = driver.mount("base", [], readonly=True)
    driver.remove("base")
    assert not mounts.is_mountpoint(view)
    assert not driver.exists("base") and not view.exists()


def test_remove_refuses_to_delete_through_a_mount(
    driver: VfsDriver, base: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")
    driver.create("busy", ["base"], writable=True)
    path = driver.mount("busy", ["base"], readonly=False)
    mounts.mount(str(outside), path / "tmp", None, mounts.MS_BIND)
    try:
        with pytest.raises(DriverError, match="refusing to delete through a mount"):
            driver.remove("busy")
        assert driver.exists("busy")
        assert (path / "etc" / "hosts").exists()
    finally:
        mounts.detach(path / "tmp")
    assert (outside / "precious").read_bytes() == b"keep"
    driver.remove("busy")
    assert not driver.exists("busy")


def test_a_new_instance_sees_the_layers(driver: VfsDriver, base: Path, home: Path) -> None:
    driver.create("child", ["base"], writable=True)
    driver.close()
    again = VfsDriver(home)
    assert again.exists("base") and again.exists("child")
    view = again.mount("child", ["base"], readonly=True)
    try:
        assert (view / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    finally:
        again.unmount("child")


def test_crash_debris_does_not_block_a_later_create(
    driver: VfsDriver, base: Path, home: Path
) -> None:
    # what a process killed mid-create or mid-remove can leave
    half_copy = driver.layers / ".tmp-x-0123abcd"
    (half_copy / "etc").mkdir(parents=True)
    (half_copy / "etc" / "partial").write_bytes(b"half")
    half_removed = driver.layers / ".tmp-x-89abcdef"  # renamed away, not yet deleted
    (half_removed / "stale").mkdir(parents=True)
    stale_view = driver.mounts / "x"
    stale_view.mkdir()
    mounts.mount(str(base), stale_view, None, mounts.MS_BIND)  # a writable leftover
    other = driver.layers / ".tmp-x-y-0123abcd"  # debris of the id "x-y": not ours
    other.mkdir()

    fresh = VfsDriver(home)  # as after a restart
    assert not fresh.exists("x")
    fresh.create("x", ["base"], writable=False)
    assert fresh.exists("x")
    assert not half_copy.exists() and not half_removed.exists()
    assert not (driver.layers / "x" / "stale").exists()
    assert other.exists()
    view = fresh.mount("x", ["base"], readonly=True)
    try:
        _write_fails_with_erofs(view)
        assert_same_tree(base, view)
    finally:
        fresh.unmount("x")


def test_remove_finishes_a_half_done_remove(driver: VfsDriver, base: Path) -> None:
    driver.create("half", ["base"], writable=True)
    # a crash right after the commit point: renamed away, not deleted
    os.rename(driver.layers / "half", driver.layers / ".tmp-half-0123abcd")
    assert not driver.exists("half")
    driver.remove("half")
    assert sorted(os.listdir(driver.layers)) == ["base"]
    with pytest.raises(LayerNotFound):
        driver.remove("half")


def test_unmount_of_an_unmounted_layer_is_fine(driver: VfsDriver, base: Path) -> None:
    driver.unmount("base")
    driver.unmount("never-was")
    driver.mount("base", [], readonly=True)
    driver.unmount("base")
    driver.unmount("base")
    assert os.listdir(driver.mounts) == []


def test_status_reports_filesystem_and_copy_method(driver: VfsDriver, base: Path) -> None:
    facts = dict(driver.status())
    assert facts["Backing Filesystem"] == filesystem_type(driver.home)
    assert facts["Copy Method"] in ("reflink", "copy_file_range")
    assert facts["Layers"] == "1"
    df = subprocess.run(["stat", "-f", "-c", "%T", str(driver.home)], capture_output=True,
                        text=True, check=True).stdout.strip()
    assert facts["Backing Filesystem"].startswith(df[:3])  # "ext2/ext3" -> "ext4"
    assert sorted(os.listdir(driver.layers)) == ["base"]  # the probe cleaned up


def test_closed_driver_refuses_work(driver: VfsDriver, base: Path) -> None:
    driver.close()
    driver.close()
    with pytest.raises(StoreClosed):
        driver.create("late", [], writable=True)
    with pytest.raises(StoreClosed):
        driver.mount("base", [], readonly=True)


def test_a_layer_exists_by_its_directory_alone(driver: VfsDriver) -> None:
    """No file besides the tree: the rename into ``dir/<id>`` is the commit point."""
    driver.create("m", [], writable=True)
    assert sorted(os.listdir(driver.home)) == ["dir", "mnt"]
    assert os.listdir(driver.layers) == ["m"]
