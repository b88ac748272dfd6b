"""The btrfs driver on a real loop-mounted btrfs: subvolumes, snapshots, quotas, native changes."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tarmaker import tar_of

from lamina.conformance.backing import BackingUnavailable, backing_filesystem
from lamina.core.driver import ChangeKind
from lamina.core.errors import (
    ConfigError,
    DriverError,
    LayerExists,
    LayerNotFound,
    LayerOptionError,
)
from lamina.core.layers.changes import compare_trees
from lamina.core.layers.store import Store
from lamina.core.plugins.discovery import collect_drivers, load_plugins

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, btrfs ioctls)"),
]

btrfsutil = pytest.importorskip("btrfsutil", reason="pip install 'lamina[btrfs]'")

from lamina.drivers.btrfs import BtrfsDriver, ioctl  # noqa: E402
from lamina.drivers.btrfs.size import parse_size  # noqa: E402


@pytest.fixture(scope="module")
def btrfs_fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One btrfs for the module's tests that do not switch quotas on."""
    try:
        with backing_filesystem("btrfs", tmp_path_factory.mktemp("btrfs"), size_mb=1024) as fs:
            yield fs.path
    except BackingUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def quota_fs(tmp_path: Path) -> Iterator[Path]:
    """A btrfs of its own: quotas switch on for a whole filesystem."""
    try:
        with backing_filesystem("btrfs", tmp_path / "qfs", size_mb=512) as fs:
            yield fs.path
    except BackingUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def root(btrfs_fs: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    path = btrfs_fs / request.node.name.replace("[", "-").replace("]", "")
    path.mkdir(mode=0o700)
    yield path


def new_store(root: Path, **options: object) -> Store:
    home = root / "btrfs"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Store(root, BtrfsDriver(home, options))




def wait_for_cleaner(path: Path, timeout: float = 30) -> None:
    """Wait until btrfs has fully dropped every deleted subvolume."""
    deadline = time.monotonic() + timeout
    while True:
        btrfsutil.sync(path)
        if not list(btrfsutil.deleted_subvolumes(path)):
            btrfsutil.sync(path)  # the commit that accounts the drop
            return
        if time.monotonic() > deadline:
            raise AssertionError("btrfs did not finish dropping deleted subvolumes")
        time.sleep(0.1)


# --- registration and support ------------------------------------------------------------


def test_registered_through_the_entry_point() -> None:
    assert collect_drivers(load_plugins()).get("btrfs") is BtrfsDriver


def test_check_support_on_btrfs_and_elsewhere(btrfs_fs: Path, tmp_path: Path) -> None:
    assert BtrfsDriver.check_support(btrfs_fs) is None
    with backing_filesystem("ext4", tmp_path / "ext4", size_mb=64) as fs:
        reason = BtrfsDriver.check_support(fs.path)
    assert reason == f"{fs.path} is on ext4, not btrfs"


def test_importing_lamina_does_not_import_btrfsutil() -> None:
    code = (
        "import sys; import lamina.drivers.btrfs; from lamina.core.plugins.discovery import "
        "collect_drivers, load_plugins; collect_drivers(load_plugins()); "
        "print('btrfsutil' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_btrfsutil_is_unsupported_with_the_install_hint(btrfs_fs: Path) -> None:
    code = (
        "import sys; sys.modules['btrfsutil'] = None\n"
        "from pathlib import Path\nfrom lamina.drivers.btrfs import BtrfsDriver\n"
        f"print(BtrfsDriver.check_support(Path({str(btrfs_fs)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "btrfsutil Python module is not importable" in out.stdout
    assert "pip install 'lamina[btrfs]'" in out.stdout and "libbtrfsutil-dev" in out.stdout


# --- layers as subvolumes -----------------------------------------------------------------


def test_child_is_a_snapshot_and_image_layers_are_read_only(root: Path) -> None:
    with new_store(root) as store:
        base = store.apply_layer(tar_of({"etc/hostname": b"base\n"})).id
        child = store.create_layer(base, writable=True).id
        driver = store.driver
        base_sv, child_sv = driver._subvol(base), driver._subvol(child)
        assert btrfsutil.is_subvolume(base_sv) and btrfsutil.is_subvolume(child_sv)
        assert btrfsutil.subvolume_info(child_sv).parent_uuid == \
            btrfsutil.subvolume_info(base_sv).uuid
        assert btrfsutil.get_subvolume_read_only(base_sv)
        assert not btrfsutil.get_subvolume_read_only(child_sv)
        path = store.mount(base)
        assert path == base_sv  # no mount at all: the read-only subvolume is the view
        with pytest.raises(OSError) as info:
            (path / "new").write_bytes(b"x")
        assert info.value.errno == errno.EROFS
        store.unmount(base)
        path = store.mount(child)
        (path / "etc/hostname").write_bytes(b"child\n")
        store.unmount(child)
        assert (base_sv / "etc/hostname").read_bytes() == b"base\n"


def test_writable_layer_asked_read_only_gets_a_read_only_bind(root: Path) -> None:
    with new_store(root) as store:
        rw = store.create_layer(writable=True).id
        driver = store.driver
        view = driver.mount(rw, [], readonly=True)
        assert view != driver._subvol(rw)
        with pytest.raises(OSError) as info:
            (view / "x").write_bytes(b"x")
        assert info.value.errno == errno.EROFS
        driver.unmount(rw)
        assert not os.path.lexists(view)


def test_remove_deletes_nested_subvolumes(root: Path) -> None:
    with new_store(root) as store:
        rw = store.create_layer(writable=True).id
        path = store.mount(rw)
        btrfsutil.create_subvolume(path / "nested")
        btrfsutil.create_subvolume(path / "nested" / "deeper")
        btrfsutil.create_snapshot(path / "nested", path / "frozen", read_only=True)
        store.unmount(rw)
        store.remove_layer(rw)
        assert not os.path.lexists(path)
        assert not store.driver.exists(rw)


def test_remove_of_read_only_layer_with_nested_subvolume(root: Path) -> None:
    """A subvolume made inside a layer that was made read-only afterwards still goes."""
    store = new_store(root)
    with store:
        driver = store.driver
        driver.create("img", [], writable=False)
        btrfsutil.create_subvolume(driver._subvol("img") / "inner")
        driver.finalize("img", writable=False)
        driver.remove("img")
        assert not os.path.lexists(driver._subvol("img"))


def test_create_errors_and_crash_debris(root: Path) -> None:
    with new_store(root) as store:
        driver = store.driver
        driver.create("a", [], writable=True)
        with pytest.raises(LayerExists):
            driver.create("a", [], writable=True)
        with pytest.raises(LayerNotFound):
            driver.create("b", ["missing"], writable=True)
        assert not os.path.lexists(driver._subvol("b"))
        # a crash after the snapshot, before its rename into place: debris only
        half_made = driver.subvolumes / ".tmp-c-0123abcd"
        btrfsutil.create_snapshot(driver._subvol("a"), half_made)
        other = driver.subvolumes / ".tmp-c-d-0123abcd"  # debris of the id "c-d": not ours
        btrfsutil.create_subvolume(other)
        assert not driver.exists("c")
        driver.create("c", ["a"], writable=False)
        assert driver.exists("c") and not os.path.lexists(half_made)
        assert os.path.lexists(other)
        # a remove killed right after renaming the finished, read-only layer away
        driver.finalize("c", writable=False)
        os.rename(driver._subvol("c"), driver.subvolumes / ".tmp-c-89abcdef")
        assert not driver.exists("c")
        driver.remove("c")
        assert not os.path.lexists(driver.subvolumes / ".tmp-c-89abcdef")
        driver.remove("a")
        with pytest.raises(LayerNotFound):
            driver.remove("a")
        driver.remove("c-d")
        assert os.listdir(driver.subvolumes) == []


def test_remove_refuses_to_delete_through_a_mount(root: Path, tmp_path: Path) -> None:
    with new_store(root) as store:
        driver = store.driver
        driver.create("a", [], writable=True)
        (driver._subvol("a") / "mnt").mkdir()
        (tmp_path / "src").mkdir()
        subprocess.run(["mount", "--bind", str(tmp_path / "src"), str(driver._subvol("a") / "mnt")],
                       check=True)
        try:
            with pytest.raises(DriverError, match="refusing to delete through a mount"):
                driver.remove("a")
            assert driver.exists("a")
        finally:
            subprocess.run(["umount", str(driver._subvol("a") / "mnt")], check=True)
        driver.remove("a")


# --- quotas --------------------------------------------------------------------------------


def fill(path: Path, limit: int) -> int:
    written = 0
    chunk = os.urandom(1 << 20)
    with pytest.raises(OSError) as info, open(path, "wb") as f:
        while written < 4 * limit:
            f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
            written += len(chunk)
    assert info.value.errno == errno.EDQUOT, info.value
    return written


def test_size_option_is_validated() -> None:
    assert parse_size("10G") == 10 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size(4 << 20) == 4 << 20
    assert BtrfsDriver.validate_options({"size": 8 << 20})["size"] == str(8 << 20)
    for bad in ("ten gigs", "-1G", "10Q", "100"):
        with pytest.raises(ConfigError) as info:
            BtrfsDriver.validate_options({"size": bad})
        assert "size" in str(info.value) and "10G" in info.value.hint
    with pytest.raises(ConfigError, match="unknown option"):
        BtrfsDriver.validate_options({"sise": "1G"})


def test_quota_limits_writable_layers_and_qgroups_go_with_them(quota_fs: Path) -> None:
    root = quota_fs / "store"
    with new_store(root) as plain:
        assert dict(plain.driver.status())["Quotas"] == "off"  # nothing switched on unasked
    store = new_store(root, size="16M")
    with store:
        driver = store.driver
        base = store.apply_layer(tar_of({"big": os.urandom(24 << 20)})).id  # image: no limit
        rw = store.create_layer(base, writable=True).id
        path = store.mount(rw)
        written = fill(path / "fill", 16 << 20)
        assert written <= 17 << 20
        os.unlink(path / "fill")
        store.unmount(rw)
        status = dict(driver.status())
        assert status["Quotas"].startswith("on (switched on by lamina")
        assert status["Writable Layer Size"] == "16M"
        ids = [btrfsutil.subvolume_id(driver._subvol(x)) for x in (rw, base)]
        with driver._fd(driver.home) as fd:
            assert all(ioctl.qgroup_usage(fd, i) is not None for i in ids)
        store.remove_layer(rw)
        store.remove_layer(base)
        wait_for_cleaner(quota_fs)
        assert driver.reap_qgroups() == 0
        with driver._fd(driver.home) as fd:
            assert [i for i in ids if ioctl.qgroup_usage(fd, i) is not None] == []
            flags = ioctl.quota_status(fd)
        assert flags is not None, "quotas were switched off behind the user's back"
        assert not flags & ioctl.QGROUP_STATUS_FLAG_INCONSISTENT
    assert not (driver.home / "qgroups-pending").exists()


def test_per_layer_quota(quota_fs: Path) -> None:
    with new_store(quota_fs / "store") as store:
        driver = store.driver
        rw = store.create_layer(writable=True).id
        driver.set_quota(rw, "8M")
        path = store.mount(rw)
        assert fill(path / "fill", 8 << 20) <= 9 << 20
        os.unlink(path / "fill")
        driver.set_quota(rw, None)  # lifted: 12 MiB fit now
        (path / "more").write_bytes(os.urandom(12 << 20))
        os.sync()
        store.unmount(rw)
        with pytest.raises(ConfigError):
            driver.set_quota(rw, "lots")


# --- native changes --------------------------------------------------------------------------


def build_scenario(store: Store) -> tuple[str, str]:
    """A parent image and a writable child with every kind of change in it."""
    files = {f"dir{d}/sub/f{i}": f"{d}-{i}".encode() for d in range(5) for i in range(20)}
    files.update({"keep/a": b"a", "gone/x": b"x", "moved/y": b"y", "same": b"1234"})
    base = store.apply_layer(tar_of(files)).id
    rw = store.create_layer(base, writable=True).id
    path = store.mount(rw)
    (path / "dir1/sub/f3").write_bytes(b"changed")
    (path / "dir2/sub/new").write_bytes(b"new")
    os.chmod(path / "dir3/sub/f0", 0o600)
    os.unlink(path / "dir4/sub/f19")
    subprocess.run(["rm", "-rf", str(path / "gone")], check=True)
    os.rename(path / "moved", path / "renamed")
    os.setxattr(path / "keep/a", "user.k", b"v")
    st = os.stat(path / "same")
    (path / "same").write_bytes(b"abcd")  # same size, old mtime back
    os.utime(path / "same", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.mkdir(path / "newdir")
    (path / "newdir/file").write_bytes(b"n")
    store.unmount(rw)
    return base, rw


def test_native_changes_equal_the_generic_walk(root: Path) -> None:
    with new_store(root) as store:
        base, rw = build_scenario(store)
        native = store.changes(rw)
        assert store.driver.change_log[-1] == "native"
        driver = store.driver
        generic = compare_trees(driver._subvol(base), driver._subvol(rw),
                                since_ns=store._db.execute(
                                    "SELECT created_ns FROM layers WHERE id = ?", (rw,)
                                ).fetchone()[0])
        assert native == generic
        kinds = {c.path: c.kind for c in native}
        assert kinds["dir1/sub/f3"] is ChangeKind.MODIFIED
        assert kinds["dir2/sub/new"] is ChangeKind.ADDED
        assert kinds["dir4/sub/f19"] is ChangeKind.DELETED
        assert kinds["gone"] is ChangeKind.DELETED and kinds["moved"] is ChangeKind.DELETED
        assert kinds["renamed/y"] is ChangeKind.ADDED
        assert kinds["same"] is ChangeKind.MODIFIED
        assert not any(p.startswith("dir0") for p in kinds)
        # diff and diff_size go the same way and agree with the generic ones
        out = io.BytesIO()
        store.diff(rw, out)
        with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
            names = set(tar.getnames())
        assert {"dir1/sub/f3", "dir4/sub/.wh.f19", ".wh.gone", ".wh.moved", "renamed/y"} <= names
        # changed, new, same, keep/a (xattr), newdir/file, renamed/y, dir3/sub/f0 (chmod)
        assert store.diff_size(rw) == 7 + 3 + 4 + 1 + 1 + 1 + 3


def test_native_changes_fall_back_where_they_cannot_be_exact(root: Path) -> None:
    with new_store(root) as store:
        driver = store.driver
        base = store.create_layer(writable=True).id
        (store.mount(base) / "f").write_bytes(b"1")
        child = store.create_layer(base, writable=True).id
        (store.mount(base) / "g").write_bytes(b"parent moved on")
        store.changes(child)
        assert driver.change_log[-1] == "generic: the parent changed after the layer was " \
            "snapshotted"
        (store.mount(child) / "f2").write_bytes(b"x")
        os.link(store.mount(child) / "f2", store.mount(child) / "f3")
        img = store.apply_layer(tar_of({"a": b"a"})).id
        linked = store.create_layer(img, writable=True).id
        os.link(store.mount(linked) / "a", store.mount(linked) / "b")
        store.changes(linked)
        assert driver.change_log[-1].endswith("is hardlinked")
        store.changes(img)
        assert driver.change_log[-1] == "generic: no parent"
    with new_store(root, native_changes=False) as store:
        store.changes(linked)
        assert store.driver.change_log[-1] == "generic: native_changes = false"
        assert dict(store.driver.status())["Native Changes"] == "off"


def test_status(root: Path) -> None:
    with new_store(root) as store:
        status = dict(store.driver.status())
    assert status["Backing Filesystem"] == "btrfs"
    assert status["Btrfs Progs"].startswith("btrfs-progs v")
    assert status["Library"].startswith("btrfsutil ")
    assert status["Native Changes"] == "on"
    assert status["Quotas"] in ("on", "off")


def test_storage_opt_size_limits_one_writable_layer(quota_fs: Path) -> None:
    """``--storage-opt size=10M``: that layer refuses 20 MB; a sibling without it does not."""
    with new_store(quota_fs / "store") as store:
        assert store.driver.capabilities.layer_quota
        base = store.apply_layer(tar_of({"big": os.urandom(4 << 20)})).id
        limited = store.create_layer(base, writable=True, options={"size": "10M"}).id
        free = store.create_layer(base, writable=True).id
        path = store.mount(limited)
        written = 0
        chunk = os.urandom(1 << 20)
        with pytest.raises(OSError) as info, open(path / "fill", "wb") as f:
            while written < 20 << 20:
                f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
                written += len(chunk)
        assert info.value.errno in (errno.EDQUOT, errno.ENOSPC), info.value
        assert written <= 11 << 20
        os.unlink(path / "fill")
        store.unmount(limited)
        path = store.mount(free)
        (path / "fill").write_bytes(os.urandom(20 << 20))  # no limit asked: no limit
        os.sync()
        store.unmount(free)


def test_storage_opt_size_bad_values(quota_fs: Path) -> None:
    with new_store(quota_fs / "store") as store:
        base = store.create_layer().id
        before = store.layer_count(ready_only=False)
        with pytest.raises(LayerOptionError) as info:
            store.create_layer(base, writable=True, options={"size": "lots"})
        assert "size" in str(info.value) and "10G" in info.value.hint
        with pytest.raises(LayerOptionError, match="read-only"):
            store.create_layer(base, options={"size": "10M"})
        with pytest.raises(LayerOptionError, match="no per-layer option sise"):
            store.create_layer(base, writable=True, options={"sise": "10M"})
        assert store.layer_count(ready_only=False) == before
        assert [p.name for p in store.driver.subvolumes.iterdir()] == [base]
