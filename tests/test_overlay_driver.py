"""The overlay driver on real mounts: native apply semantics, deep stacks, crashes, support."""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from conftest import run_lamina

from lamina.core.errors import ConfigError, DriverError
from lamina.core.host import mounts
from lamina.core.layers.store import Store
from lamina.drivers.overlay import OverlayDriver, mountapi, support
from lamina.drivers.overlay.stack import OPAQUE_XATTR

pytestmark = pytest.mark.root


def make_store(root: Path, **options: str) -> Store:
    home = root / "overlay"
    home.mkdir(parents=True, exist_ok=True)
    return Store(root, OverlayDriver(home, options))


def tar_of(*members: tuple) -> bytes:
    """members: (name, kind, extra) with kind file/dir/symlink/link/whiteout."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, *extra in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            data = None
            if kind == "file":
                data = extra[0] if extra else b""
                info.size = len(data)
                info.mode = 0o644
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = extra[0] if extra else 0o755
                info.uid = extra[1] if len(extra) > 1 else 0
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = extra[0]
            elif kind == "link":
                info.type = tarfile.LNKTYPE
                info.linkname = extra[0]
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def apply(store: Store, parent: str | None, *members: tuple) -> str:
    return store.apply_layer(io.BytesIO(tar_of(*members)), parent).id


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


def read_tree(store: Store, layer_id: str) -> dict[str, str]:
    out = {}
    path = store.mount(layer_id)
    try:
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, path)
                st = os.lstat(full)
                if stat.S_ISDIR(st.st_mode):
                    out[rel] = f"dir {stat.S_IMODE(st.st_mode):o} {st.st_uid}"
                elif stat.S_ISLNK(st.st_mode):
                    out[rel] = "-> " + os.readlink(full)
                else:
                    with open(full, "rb") as f:
                        out[rel] = f.read().decode()
    finally:
        store.unmount(layer_id)
    return out


# --- native apply ----------------------------------------------------------------------------


def test_apply_writes_into_diff_without_mounting(store_root: Path) -> None:
    with make_store(store_root) as store:
        base = apply(store, None, ("etc", "dir", 0o700, 7), ("etc/a", "file", b"a"),
                     ("gone", "file", b"x"), ("d", "dir"), ("d/old", "file", b"o"))
        assert not mounts.mounts_under(store_root)
        child = apply(store, base, (".wh.gone", "file"), ("etc/b", "file", b"b"),
                      ("d/.wh..wh..opq", "file"), ("d/new", "file", b"n"))
        assert not mounts.mounts_under(store_root), "apply mounted something"
        diff = store.driver.diff_dir(child)
        wh = os.lstat(diff / "gone")
        assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
        assert os.getxattr(diff / "d", OPAQUE_XATTR) == b"y"
        # the implicit parent etc/ was copied up with the lower's metadata, and merges
        st = os.lstat(diff / "etc")
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, 7)
        assert read_tree(store, child) == {
            "etc": "dir 700 7", "etc/a": "a", "etc/b": "b", "d": "dir 755 0", "d/new": "n",
        }


def test_apply_follows_lower_symlinks_and_links_lower_files(store_root: Path) -> None:
    with make_store(store_root) as store:
        base = apply(store, None, ("real", "dir"), ("real/x", "file", b"x"),
                     ("var", "dir"), ("var/run", "symlink", "/real"), ("f", "file", b"lower"))
        child = apply(store, base, ("var/run/pid", "file", b"1"), ("hl", "link", "f"))
        tree = read_tree(store, child)
        assert tree["real/pid"] == "1", "the entry went through the lower symlink"
        assert tree["var/run"] == "-> /real"
        assert tree["hl"] == "lower" and tree["f"] == "lower"
        diff = store.driver.diff_dir(child)
        assert os.lstat(diff / "hl").st_ino == os.lstat(diff / "f").st_ino
        # the lower layer is untouched
        assert read_tree(store, base)["f"] == "lower"
        assert "pid" not in os.listdir(store.driver.diff_dir(base) / "real")


def test_whiteout_then_directory_hides_the_lower_tree(store_root: Path) -> None:
    with make_store(store_root) as store:
        base = apply(store, None, ("d", "dir"), ("d/lower", "file", b"l"), ("w", "file", b"w"))
        child = apply(store, base, (".wh.d", "file"), ("d", "dir"), ("d/mine", "file", b"m"),
                      (".wh.nothing-below", "file"))
        assert read_tree(store, child)["d/mine"] == "m"
        assert "d/lower" not in read_tree(store, child)
        assert not os.path.lexists(store.driver.diff_dir(child) / "nothing-below")
        out = io.BytesIO()
        store.diff(child, out)
        names = tar_names(out.getvalue())
        assert "d/.wh..wh..opq" in names and "d/mine" in names
        assert not any("nothing-below" in n for n in names)


def test_opaque_marker_only_for_a_directory_a_lower_layer_has(store_root: Path) -> None:
    with make_store(store_root) as store:
        base = apply(store, None, ("keep", "dir"), ("keep/x", "file", b"x"))
        rw = store.create_layer(base, writable=True).id
        path = store.mount(rw)
        try:
            os.mkdir(path / "brandnew")
            (path / "brandnew" / "f").write_bytes(b"f")
            (path / "keep" / "x").unlink()
            os.rmdir(path / "keep")
            os.mkdir(path / "keep")  # the kernel makes it opaque: it replaces a lower dir
        finally:
            store.unmount(rw)
        out = io.BytesIO()
        store.diff(rw, out)
        names = tar_names(out.getvalue())
        assert "keep/.wh..wh..opq" in names
        assert not any(n.startswith("brandnew/.wh.") for n in names)
        changes = {c.path: c.kind.value for c in store.changes(rw)}
        assert changes == {"": "C", "brandnew": "A", "brandnew/f": "A", "keep": "C",
                           "keep/x": "D"}


class _NoViews:
    """Views that fail: proves an operation never mounts."""

    def view(self, layer_id: str):
        raise AssertionError(f"mounted {layer_id}: the native path must not mount")

    populate = view

    def created_ns(self, layer_id: str) -> None:
        return None


def test_native_diff_reads_only_the_diff_dir(store_root: Path) -> None:
    with make_store(store_root) as store:
        base = apply(store, None, *[(f"f{i}", "file", b"x") for i in range(50)])
        child = apply(store, base, ("f3", "file", b"changed"))
        driver = store.driver
        views = _NoViews()
        assert [c.path for c in driver.changes(child, [base], views)] == ["", "f3"]
        assert driver.diff_size(child, [base], views) == len(b"changed")
        out = io.BytesIO()
        driver.diff(child, [base], out, views)
        assert tar_names(out.getvalue()) == [".", "f3"]


# --- deep stacks and the legacy mount ---------------------------------------------------------


def _chain(store: Store, depth: int) -> str:
    parent = apply(store, None, ("base", "file", b"bottom"))
    for _ in range(1, depth):
        parent = store.create_layer(parent).id
    return parent


def test_500_layers_mount_with_the_new_api(store_root: Path) -> None:
    with make_store(store_root) as store:
        top = _chain(store, 500)
        assert len(store.chain(top)) == 500
        assert read_tree(store, top) == {"base": "bottom"}
        with pytest.raises(DriverError, match="at most 500"):
            store.create_layer(top)


def test_legacy_mount_works_and_reports_its_depth_limit(store_root: Path) -> None:
    with make_store(store_root, mount_api="legacy") as store:
        status = dict(store.driver.status())
        limit = int(status["Max Depth"])
        assert 100 < limit < 500
        assert "legacy mount(2)" in status["Deep Stacks"]
        top = _chain(store, limit)
        assert read_tree(store, top) == {"base": "bottom"}
        # a writable layer bounds the limit (its upper and work paths share the page)
        rw = store.create_layer(top, writable=True).id
        assert read_tree(store, rw) == {"base": "bottom"}
        deeper = top
        for _ in range(20):
            deeper = store.create_layer(deeper).id
        with pytest.raises(DriverError, match="do not fit"):
            store.mount(deeper)
        assert not mounts.mounts_under(store_root)


def test_bad_mount_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="upperdir"):
        OverlayDriver.validate_options({"mountopt": "nodev,upperdir=/x"})
    with pytest.raises(ConfigError, match="mount_api"):
        OverlayDriver.validate_options({"mount_api": "fast"})
    assert OverlayDriver.validate_options({"mountopt": "nodev,metacopy=off"})


def test_user_mountopt_reaches_the_mount(store_root: Path) -> None:
    with make_store(store_root, mountopt="nodev,noatime") as store:
        base = apply(store, None, ("a", "file", b"a"))
        rw = store.create_layer(base, writable=True).id
        path = store.mount(rw)
        try:
            entry = next(e for e in mounts.mount_table() if e.mountpoint == str(path))
            assert entry.fstype == "overlay" and "index=on" not in entry.options
            assert os.statvfs(path).f_flag & os.ST_NODEV
        finally:
            store.unmount(rw)


def test_redirect_dir_turns_the_native_diff_off(store_root: Path) -> None:
    """With redirect_dir=on the kernel writes redirect xattrs: the probe sees it."""
    with make_store(store_root, mountopt="redirect_dir=on") as store:
        status = dict(store.driver.status())
        assert status["Native Overlay Diff"].startswith("false (redirect_dir")
        base = apply(store, None, ("d", "dir"), ("d/x", "file", b"x"))
        rw = store.create_layer(base, writable=True).id
        path = store.mount(rw)
        try:
            os.rename(path / "d", path / "moved")  # works with redirect_dir
        finally:
            store.unmount(rw)
        changes = {c.path: c.kind.value for c in store.changes(rw)}
        assert changes["d"] == "D" and changes["moved"] == "A" and changes["moved/x"] == "A"


# --- crashes ----------------------------------------------------------------------------------

_HOLDER = """
import sys, time
from pathlib import Path
from lamina.core.layers.store import Store
from lamina.drivers.overlay import OverlayDriver
root = Path(sys.argv[1])
store = Store(root, OverlayDriver(root / "overlay"))
layer = sys.argv[2]
if sys.argv[3] == "store":
    path = store.mount(layer, holder=store.process_holder)
else:  # the driver mounted, the process died before the store recorded it
    path = store.driver.mount(layer, store.parents(layer), readonly=True)
print(path, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("how", ["store", "driver"])
def test_mount_of_a_killed_process_is_gone_after_next_start(store_root: Path, how: str) -> None:
    with make_store(store_root) as store:
        base = apply(store, None, ("a", "file", b"a"))
        child = apply(store, base, ("b", "file", b"b"))
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(store_root), child, how],
                            stdout=subprocess.PIPE, text=True)
    try:
        path = proc.stdout.readline().strip()
        assert path and mounts.is_mountpoint(Path(path))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert mounts.is_mountpoint(Path(path)), "the mount should outlive the killed process"
    with make_store(store_root) as store:
        assert not mounts.mounts_under(store_root)
        assert read_tree(store, child) == {"a": "a", "b": "b"}
        store.remove_layer(child)
        assert not (store_root / "overlay" / child).exists()


def test_remove_never_deletes_through_a_mount(store_root: Path, tmp_path: Path) -> None:
    with make_store(store_root) as store:
        layer = apply(store, None, ("a", "file", b"a"))
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "precious").write_bytes(b"p")
        inner = store.driver.diff_dir(layer) / "mnt"
        inner.mkdir()
        mounts.mount(str(outside), inner, None, mounts.MS_BIND)
        try:
            with pytest.raises(DriverError, match="refusing to delete through a mount"):
                store.driver.remove(layer)
            assert (outside / "precious").read_bytes() == b"p"
        finally:
            mounts.detach(inner)


def test_crash_debris_of_create_and_remove_is_cleared(store_root: Path) -> None:
    with make_store(store_root) as store:
        driver = store.driver
        layer = apply(store, None, ("a", "file", b"a"))
        short = (driver.home / layer / "link").read_text().strip()
        # a remove killed right after renaming the layer away
        os.rename(driver.home / layer, driver.home / f".tmp-{layer}-0123abcd")
        assert not driver.exists(layer)
        driver.remove(layer)
        assert not list(driver.home.glob(f".tmp-{layer}-*"))
        assert not os.path.lexists(driver.home / "l" / short)


# --- support ------------------------------------------------------------------------------------


def test_d_type_missing_is_refused_with_the_fix(tmp_path: Path) -> None:
    """ext4 without the filetype feature reports DT_UNKNOWN, as xfs with ftype=0 does."""
    image = tmp_path / "nofiletype.img"
    point = tmp_path / "fs"
    point.mkdir()
    with open(image, "wb") as f:
        f.truncate(128 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^filetype", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(point)], check=True)
    try:
        (point / "root").mkdir()
        assert support.dirent_types(point)["root"] == support.DT_UNKNOWN
        reason = OverlayDriver.check_support(point / "root")
        assert reason and "does not report d_type" in reason
        assert os.listdir(point / "root") == [], "the check left something behind"
        out = run_lamina("drivers", root=point / "root").stdout.decode()
        line = next(x for x in out.splitlines() if x.startswith("overlay"))
        assert " no " in line and "d_type" in line
    finally:
        subprocess.run(["umount", "-d", str(point)], check=True)


def test_d_type_probe_sees_types_on_this_disk(tmp_path: Path) -> None:
    (tmp_path / "f").touch()
    (tmp_path / "d").mkdir()
    types = support.dirent_types(tmp_path)
    assert (types["f"], types["d"]) == (support.DT_REG, 4)
    assert OverlayDriver.check_support(tmp_path) is None
    assert sorted(os.listdir(tmp_path)) == ["d", "f"]  # the check leaves nothing behind


@pytest.mark.parametrize("legacy", [False, True], ids=["new-api", "legacy"])
def test_probe_mounts_are_in_no_mount_table(tmp_path: Path, legacy: bool) -> None:
    """A detached test mount works through its fd, and nobody else can see or detach it."""
    for name in ("l1", "l2", "upper", "work", "merged"):
        (tmp_path / name).mkdir()
    (tmp_path / "l1" / "one").write_bytes(b"1")
    (tmp_path / "l2" / "two").write_bytes(b"2")
    spec = mountapi.OverlaySpec([tmp_path / "l1", tmp_path / "l2"], tmp_path / "upper",
                                tmp_path / "work")
    shorts = ["l1", "l2"] if legacy else None
    fd = mountapi.mount_detached(spec, tmp_path / "merged", short_lowers=shorts, cwd=tmp_path)
    try:
        assert sorted(os.listdir(fd)) == ["one", "two"]
        os.close(os.open("three", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        assert mounts.mounts_under(tmp_path, include_self=True) == []
        assert os.listdir(tmp_path / "merged") == []
    finally:
        os.close(fd)
    assert os.listdir(tmp_path / "upper") == ["three"]
    spec.lowers = [tmp_path / "missing", tmp_path / "l2"]
    with pytest.raises(DriverError, match=r"missing|No such file"):
        mountapi.mount_detached(spec, tmp_path / "merged",
                                short_lowers=["missing", "l2"] if legacy else None, cwd=tmp_path)


def test_overlay_on_overlay_is_refused(store_root: Path, tmp_path: Path) -> None:
    with make_store(store_root) as store:
        base = apply(store, None, ("a", "file", b"a"))
        child = store.create_layer(base, writable=True).id
        path = store.mount(child)
        try:
            reason = OverlayDriver.check_support(path)
            assert reason and "overlay on overlay" in reason
        finally:
            store.unmount(child)


def test_automatic_selection_picks_overlay(backing: Path) -> None:
    run_lamina("layer", "create", root=backing / "root")  # a fresh root's info creates nothing
    out = run_lamina("info", root=backing / "root").stdout.decode()
    assert "Storage driver:      overlay" in out, out
    assert "Native Overlay Diff: true" in out
    assert "Max Depth:           500" in out


def test_status_names_every_fact(store_root: Path) -> None:
    with make_store(store_root) as store:
        keys = [k for k, _ in store.driver.status()]
        for key in ("Backing Filesystem", "Supports d_type", "Native Overlay Diff",
                    "Using metacopy", "Max Depth", "Deep Stacks"):
            assert key in keys
        # the probe ran once and is cached in the home
        assert (store_root / "overlay" / "features.json").is_file()
        started = time.monotonic()
        OverlayDriver(store_root / "overlay").features()
        assert time.monotonic() - started < 0.05


def test_volatile_layer_mounts_again_unless_the_system_went_down(store_root: Path) -> None:
    """`volatile` leaves a marker that makes the kernel refuse the next mount; the driver
    clears it when this boot made it, and refuses with the fix after a reboot."""
    with make_store(store_root, mountopt="volatile") as store:
        base = apply(store, None, ("f", "file", b"base"))
        rw = store.create_layer(base, writable=True).id
        for round_ in range(3):  # a second mount failed with EINVAL before
            path = store.mount(rw)
            try:
                (path / f"w{round_}").write_text("kept")
                assert {p.name for p in path.iterdir()} >= {"f", *(f"w{i}" for i in range(round_))}
            finally:
                store.unmount(rw)
        marker = store_root / "overlay" / rw / "work" / "work" / "incompat" / "volatile"
        assert marker.is_dir(), "the kernel's volatile marker (else this test proves nothing)"
        # as if the machine had rebooted while the layer was mounted
        (store_root / "overlay" / rw / "volatile-boot").write_text("another-boot\n")
        with pytest.raises(DriverError, match="went down") as info:
            store.mount(rw)
        assert f"lamina layer rm {rw}" in (info.value.hint or "")
        assert not mounts.is_mountpoint(store_root / "overlay" / rw / "merged")


def test_a_passed_support_probe_is_remembered_for_the_boot(tmp_path: Path, monkeypatch) -> None:
    """The test mount runs once per boot, kernel and filesystem of a root that holds
    overlay's home; any change of those, or a root without the home, probes again."""
    if reason := support.probe_mount(tmp_path):
        pytest.skip(reason)
    probes: list[Path] = []
    real = support.probe_mount

    def counting(root: Path) -> str | None:
        probes.append(root)
        return real(root)

    monkeypatch.setattr(support, "probe_mount", counting)
    record = tmp_path / support.PROBE_RECORD
    assert support.unsupported_reason(tmp_path) is None
    assert not record.exists()  # no home: a root nobody uses gets no file
    (tmp_path / "overlay").mkdir()
    for _ in range(3):
        assert support.unsupported_reason(tmp_path) is None
    assert len(probes) == 2 and record.exists()
    assert record.read_text().split()[1] == os.uname().release
    record.write_text("another-boot " + record.read_text().split(" ", 1)[1])
    assert support.unsupported_reason(tmp_path) is None
    assert len(probes) == 3 and "another-boot" not in record.read_text()
