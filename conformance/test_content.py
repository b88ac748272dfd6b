"""Cases 13-31: content through layers, each filled from a tar and through a writable mount.

``fill="tar"``: every step is a layer tar given to ``store.apply_layer``.
``fill="commit"``: every step is done in a writable layer's mount, whose
``store.diff`` is applied onto a fresh child of the same parent (case 37).
Both are compared after every step with a reference tree built by plain file
operations, to the nanosecond where the driver keeps sub-second mtimes.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time

import pytest

from lamina.conformance.requirements import QUOTA_ERRNOS, backing_keeps_holes, require
from lamina.conformance.scenarios import (
    CAP_NET_BIND_SERVICE,
    NS,
    RICH_BASE_ENTRIES,
    T0,
    can_make_devices,
    chmod,
    chown,
    count_entries,
    device,
    diff_bytes,
    directory,
    fifo,
    file,
    hardlink,
    init_reference,
    mounted,
    recreate_dir,
    remove,
    rename,
    rich_base,
    run_scenario,
    setxattr,
    socket,
    step,
    step_time,
    symlink,
    write,
)

FILLS = ["tar", "commit"]


@pytest.fixture
def run(store, reference_dir, capabilities, assert_tree):
    """``run(steps, fill)``: the scenario through the store; returns the layer ids."""
    init_reference(reference_dir, capabilities.root_mode)

    def go(steps, fill, parent=None):
        return run_scenario(store, steps, reference_dir, assert_tree, fill=fill, parent=parent)

    return go


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.removeprefix("./").rstrip("/"): m for m in tar.getmembers()}


@pytest.mark.parametrize("fill", FILLS)
def test_13_base_tree_round_trip(run, store, fill) -> None:
    """Sticky dir 1:2 mode 0705, setuid file 0222 and every file type survive exactly."""
    (top,) = run([rich_base()], fill)
    with mounted(store, top) as path:
        sticky = os.lstat(path / "sticky")
        assert stat.S_IMODE(sticky.st_mode) == 0o1705 and (sticky.st_uid, sticky.st_gid) == (1, 2)
        assert stat.S_IMODE(os.lstat(path / "setuid").st_mode) == 0o4222
        expected = RICH_BASE_ENTRIES[1] if can_make_devices() else RICH_BASE_ENTRIES[0]
        assert count_entries(path) == expected


@pytest.mark.parametrize("fill", FILLS)
def test_14_root_chmod_inherited(run, store, fill) -> None:
    """A child's root chmod 0711 is what its grandchildren show."""
    steps = [
        rich_base(),
        step(directory(".", mode=0o711, mtime=step_time(1)), name="chmod root 0711"),
        step(name="empty child"),
        step(file("later", b"x"), name="grandchild with a file"),
    ]
    ids = run(steps, fill)
    for layer_id in ids[1:]:
        with mounted(store, layer_id) as path:
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o711


@pytest.mark.parametrize("fill", FILLS)
def test_15_delete_stays_deleted(run, store, fill) -> None:
    """A file deleted in layer 2 stays deleted in the empty layer 3 (and later)."""
    steps = [
        step(file("keep", b"k"), file("gone", b"g"), directory("d"),
             file("d/gone2", b"g2"), file("d/keep2", b"k2"), name="base"),
        step(remove("gone"), remove("d/gone2"), name="delete"),
        step(name="empty"),
        step(file("d/new", b"n"), name="add beside"),
    ]
    ids = run(steps, fill)
    for layer_id in ids[1:]:
        with mounted(store, layer_id) as path:
            assert not os.path.lexists(path / "gone")
            assert not os.path.lexists(path / "d" / "gone2")


@pytest.mark.parametrize("fill", FILLS)
def test_16_rm_rf_and_recreate_same_layer(run, fill) -> None:
    """`rm -rf d; mkdir d` in one layer: nothing of the old d shows through (opaque)."""
    steps = [
        step(directory("d", mode=0o750), file("d/x", b"old x"), file("d/y", b"old y"),
             directory("d/sub"), file("d/sub/z", b"old z"), name="base"),
        step(recreate_dir("d", mode=0o755, uid=3), file("d/x", b"new x!", mtime=step_time(1)),
             name="rm -rf, mkdir"),
        step(name="empty"),
        step(recreate_dir("d"), directory("d/sub"), name="again, with a same-named subdir"),
    ]
    run(steps, fill)


@pytest.mark.parametrize("fill", FILLS)
def test_17_dir_deleted_then_recreated(run, fill) -> None:
    """A directory deleted in one layer and recreated in the next shows none of its old entries."""
    steps = [
        step(directory("d"), file("d/x", b"x"), directory("d/sub"), file("d/sub/z", b"z"),
             name="base"),
        step(remove("d"), name="delete d"),
        step(directory("d", mode=0o700), file("d/new", b"new"), name="recreate d"),
        step(name="empty"),
    ]
    run(steps, fill)


def _deep(level: int) -> str:
    return "/".join(f"p{i}" for i in range(level + 1))


@pytest.mark.parametrize("fill", FILLS)
def test_18_delete_readd_every_depth(run, fill) -> None:
    """Delete and re-add at each depth of a 10-level path: old entries never reappear."""
    base = [directory(_deep(i)) for i in range(10)]
    base += [file(f"{_deep(i)}/f{i}", f"old {i}".encode()) for i in range(10)]
    steps = [step(*base, name="10 levels")]
    for level in range(10):
        steps.append(step(remove(_deep(level)), name=f"delete level {level}"))
        readd = [directory(_deep(i), mode=0o755 if i % 2 else 0o750) for i in range(level, 10)]
        readd.append(file(f"{_deep(9)}/gen", f"generation {level}".encode()))
        steps.append(step(*readd, name=f"re-add from level {level}"))
    run(steps, fill)


@pytest.mark.parametrize("fill", FILLS)
def test_19_replace_types(run, fill) -> None:
    """A dir becomes a file, a file a dir, a file a symlink, and the dir comes back empty-handed."""
    steps = [
        step(directory("d"), file("d/x", b"x"), directory("d/sub"), file("d/sub/y", b"y"),
             file("f", b"file f"), file("g", b"file g"), symlink("s", "f"), name="base"),
        step(file("d", b"now a file"), directory("f"), file("f/inside", b"in"),
             symlink("g", "d"), file("s", b"symlink became a file"), name="swap types"),
        step(name="empty"),
        step(directory("d"), file("d/again", b"again"), name="d is a directory again"),
    ]
    run(steps, fill)


def _check_exported(store, layer_id: str, expect: dict[str, tuple[str, int]]) -> None:
    """The layer's diff carries each path with the given (attribute, value)."""
    members = _members(diff_bytes(store, layer_id))
    for path, (attr, value) in expect.items():
        assert path in members, f"{path} missing from the exported diff: {sorted(members)}"
        got = getattr(members[path], attr)
        if attr == "mode":
            got = stat.S_IMODE(got)
        assert got == value, f"exported {path}: {attr} {got!r}, expected {value!r}"


@pytest.mark.parametrize("fill", FILLS)
def test_20_chown_only(run, store, fill, capabilities) -> None:
    """A chown-only change of a nested tree is visible and exported."""
    if fill == "commit":  # chown -h of a lower symlink copies it up
        require(capabilities, copy_up_keeps_mtimes=True)
    steps = [
        step(directory("n"), directory("n/a"), file("n/a/f", b"f"), symlink("n/a/l", "f"),
             directory("n/b"), file("n/b/g", b"g", mode=0o4755), name="base"),
        step(*[chown(p, 1000, 1001) for p in ("n", "n/a", "n/a/f", "n/a/l", "n/b", "n/b/g")],
             parent_mtime=None, name="chown -R"),
        step(name="empty"),
    ]
    ids = run(steps, fill)
    _check_exported(store, ids[1], {p: ("uid", 1000) for p in ("n", "n/a/f", "n/a/l", "n/b/g")})


@pytest.mark.parametrize("fill", FILLS)
def test_21_chmod_only(run, store, fill) -> None:
    """A chmod-only change (setuid, setgid, sticky included) is visible and exported."""
    steps = [
        step(directory("m"), file("m/f", b"f", mode=0o644), file("m/x", b"x", mode=0o755),
             directory("m/d"), name="base"),
        step(chmod("m/f", 0o600), chmod("m/x", 0o4755), chmod("m/d", 0o3770), chmod("m", 0o700),
             parent_mtime=None, name="chmod"),
        step(name="empty"),
    ]
    ids = run(steps, fill)
    _check_exported(store, ids[1], {
        "m/f": ("mode", 0o600), "m/x": ("mode", 0o4755), "m/d": ("mode", 0o3770),
        "m": ("mode", 0o700),
    })


@pytest.mark.parametrize("fill", FILLS)
def test_22_ownership_across_delete_recreate(run, fill) -> None:
    """Owners over three layers: a recreated entry has its new owner, never the old one."""
    steps = [
        step(file("o", b"o", uid=1, gid=1), directory("od", uid=2, gid=2),
             file("od/x", b"x", uid=3, gid=3), name="owned"),
        step(remove("o"), remove("od"), name="delete"),
        step(file("o", b"o2"), directory("od", uid=5, gid=6), file("od/x", b"x2"),
             name="recreate with other owners"),
        step(chown("od/x", 7, 7), parent_mtime=None, name="chown one"),
    ]
    run(steps, fill)


def test_23_same_size_rewrite_tar(run) -> None:
    """Same-size rewrites with equal or same-second mtimes still show the new content."""
    steps = [
        step(file("f", b"aaaa", mtime=T0), name="first"),
        step(file("f", b"bbbb", mtime=T0), name="same size, same mtime"),
        step(file("f", b"cccc", mtime=T0 + 1000), name="same second"),
        step(file("f", b"dddd", mtime=T0 + NS), name="next second"),
    ]
    run(steps, "tar")


def test_23_same_size_same_mtime_rewrite_commit(run) -> None:
    """A same-size rewrite that keeps the old mtime (``cp -p``, fixed build times) is committed."""
    steps = [
        step(file("f", b"aaaa", mtime=T0), name="first"),
        step(write("f", b"bbbb", mtime=T0), name="rewrite in place, same mtime"),
        step(file("f", b"cccc", mtime=T0), name="replace, same mtime"),
        step(write("f", b"dddd", mtime=T0 + 1000), name="same second"),
    ]
    run(steps, "commit")


def test_23_same_size_rewrite_commit(store, assert_tree) -> None:
    """Rewrites of the same size in writable layers, within a second and across seconds."""
    parent = store.create_layer(writable=True).id
    with mounted(store, parent) as path:
        (path / "f").write_bytes(b"0000")
    for rnd in range(6):
        if rnd == 3:  # the rest across a second boundary
            time.sleep(1 - time.time() % 1 + 0.01)
        rw = store.create_layer(parent, writable=True).id
        with mounted(store, rw) as path, open(path / "f", "r+b") as f:
            f.write(f"{rnd}{rnd}{rnd}{rnd}".encode())
        data = diff_bytes(store, rw)
        child = store.apply_layer(io.BytesIO(data), parent).id
        with mounted(store, rw) as want, mounted(store, child) as got:
            assert (got / "f").read_bytes() == f"{rnd}{rnd}{rnd}{rnd}".encode(), (
                f"rewrite {rnd} of the same size was lost by diff/apply"
            )
            assert_tree(want, got, f"rewrite {rnd}: committed layer against the writable one")
        parent = child


@pytest.mark.parametrize("fill", FILLS)
def test_24_rename(run, fill) -> None:
    """Rename a file over another, and rename a file."""
    steps = [
        step(file("a", b"content of a", mtime=T0 - NS), file("b", b"content b"), directory("d"),
             file("d/x", b"x", mode=0o600, mtime=T0 - 7 * NS), name="base"),
        step(rename("a", "b"), rename("d/x", "d/y"), name="renames"),
        step(name="empty"),
    ]
    run(steps, fill)


def test_25_rename_lower_dir(run, capabilities) -> None:
    """A lower-layer directory renamed in a writable layer, and its old name reused."""
    require(capabilities, rename_lower_dir=True)
    steps = [
        step(directory("ld", mode=0o750), file("ld/x", b"x"), directory("ld/sub"),
             file("ld/sub/y", b"y"), name="base"),
        step(rename("ld", "moved"), name="rename lower dir"),
        step(directory("ld"), file("ld/new", b"new"), name="old name reused"),
        step(rename("moved/sub", "sub2"), name="rename a nested lower dir"),
        step(name="empty"),
    ]
    run(steps, "commit")


def test_26_hardlink_lower_then_remove_original(run) -> None:
    """`ln orig moved; rm orig` over a lower file (a move), and a kept link to a lower file."""
    steps = [
        step(file("orig", b"moved content", mode=0o640), file("keep", b"kept"), name="base"),
        step(hardlink("moved", "orig", to_lower=True), remove("orig"),
             hardlink("also", "keep", to_lower=True), name="link and remove"),
        step(name="empty"),
    ]
    run(steps, "commit")


def test_27_modify_one_hardlink_name(store, reference_dir, capabilities, assert_tree) -> None:
    """Writing one name of a lower hardlinked pair keeps or breaks the link as declared."""
    init_reference(reference_dir, capabilities.root_mode)
    base = step(file("p1", b"old content", mode=0o640), hardlink("p2", "p1"), name="pair")
    base.apply(reference_dir)
    parent = store.apply_layer(io.BytesIO(base.layer_tar(reference_dir))).id
    rw = store.create_layer(parent, writable=True).id
    with mounted(store, rw) as path:
        with open(path / "p1", "r+b") as f:
            f.write(b"NEW")
        p1, p2 = os.lstat(path / "p1"), os.lstat(path / "p2")
        if capabilities.hardlinks_survive_copy_up:
            assert (p2.st_ino, p2.st_nlink) == (p1.st_ino, 2), (
                "driver declares hardlinks_survive_copy_up=True but the link broke"
            )
            assert (path / "p2").read_bytes() == b"NEW content"
        else:
            assert p1.st_ino != p2.st_ino, (
                "driver declares hardlinks_survive_copy_up=False but the link was kept"
            )
            assert (path / "p2").read_bytes() == b"old content"
        assert (path / "p1").read_bytes() == b"NEW content"
    with mounted(store, parent) as path:
        assert_tree(reference_dir, path, "parent after a write to one name in a child")
    child = store.apply_layer(io.BytesIO(diff_bytes(store, rw)), parent).id
    with mounted(store, rw) as want, mounted(store, child) as got:
        assert_tree(want, got, "committed layer against the writable one")


@pytest.mark.parametrize("fill", FILLS)
def test_28_symlinks(run, store, fill) -> None:
    """Symlink targets (relative, absolute, dangling, long) and their own mtimes are kept."""
    long_target = "/".join(["x" * 50] * 20)
    steps = [
        step(directory("d"), file("d/f", b"f"), symlink("d/up", ".."),
             symlink("s-rel", "d/f", mtime=T0 - 3 * NS + 250_000_000),
             symlink("s-abs", "/etc/passwd", uid=1, gid=2, mtime=T0 - 9 * NS),
             symlink("s-dangling", "../../nowhere"), symlink("s-dir", "d"),
             symlink("s-long", long_target), name="symlinks"),
        step(name="empty"),
        step(symlink("s-rel", "d/up/d/f", mtime=T0 + 5 * NS), name="retarget"),
    ]
    ids = run(steps, fill)
    with mounted(store, ids[-1]) as path:
        assert os.readlink(path / "s-long") == long_target
        assert os.lstat(path / "s-abs").st_mtime_ns // NS == (T0 - 9 * NS) // NS


def _nodes(devices: bool) -> list:
    ops = [fifo("fifo", mode=0o640), fifo("fifo-sgid", mode=0o2660, uid=1, gid=2)]
    if devices:
        ops += [device("null", "c", 1, 3, mode=0o666), device("loop7", "b", 7, 7),
                device("big-minor", "c", 254, 70000), device("tty", "c", 5, 0, uid=0, gid=5)]
    return ops


@pytest.mark.parametrize("fill", FILLS)
def test_29_special_files(run, store, fill) -> None:
    """fifos and char/block device nodes keep their type, numbers, mode and owner."""
    devices = can_make_devices()
    ids = run([step(*_nodes(devices), name="nodes"), step(name="empty")], fill)
    if devices:
        with mounted(store, ids[-1]) as path:
            st = os.lstat(path / "big-minor")
            assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (
                254, 70000)


def test_29_socket_in_writable_layer(store, reference_dir, capabilities, assert_tree) -> None:
    """A unix socket stays in a writable layer; its diff leaves it out and applies cleanly."""
    init_reference(reference_dir, capabilities.root_mode)
    one = step(socket("sock"), file("beside", b"b"), name="socket")
    one.apply(reference_dir)
    rw = store.create_layer(writable=True).id
    with mounted(store, rw) as path:
        one.apply(path)
    with mounted(store, rw) as path:
        assert stat.S_ISSOCK(os.lstat(path / "sock").st_mode), "the socket did not persist"
        assert_tree(reference_dir, path, "writable layer with a socket")
    data = diff_bytes(store, rw)
    assert "sock" not in _members(data), "a socket was exported into a layer tar"
    child = store.apply_layer(io.BytesIO(data)).id
    with mounted(store, child) as path:
        assert (path / "beside").read_bytes() == b"b"
        assert not os.path.lexists(path / "sock")


@pytest.mark.parametrize("fill", FILLS)
def test_30_xattrs(run, store, fill) -> None:
    """user.* and security.capability are kept; the capability survives a later chown."""
    caps = CAP_NET_BIND_SERVICE
    steps = [
        step(file("cap", b"\x7fELF", mode=0o755, xattrs={"security.capability": caps,
                                                          "user.k": b"v"}),
             directory("xd", xattrs={"user.dir": b"1"}),
             file("u", b"u", xattrs={"user.empty": b"", "user.binary": bytes(range(1, 64)),
                                     "user.high": b"\xff\xfe\x00\x80"}), name="xattrs"),
        step(chown("cap", 1000, 1000), setxattr("cap", "security.capability", caps),
             parent_mtime=None, name="chown keeps the capability"),
        step(name="empty"),
        step(chown("u", 5, 5), setxattr("xd", "user.dir", b"2"), name="change"),
    ]
    ids = run(steps, fill)
    for layer_id in ids[1:]:
        with mounted(store, layer_id) as path:
            assert os.getxattr(path / "cap", "security.capability") == caps, (
                f"security.capability lost in layer {layer_id}"
            )
            assert os.lstat(path / "cap").st_uid == 1000


def test_31_sparse_file(store, reference_dir, capabilities, assert_tree) -> None:
    """A sparse file reads right everywhere; its holes stay where sparse_files is declared."""
    init_reference(reference_dir, capabilities.root_mode)
    hole = 8 << 20
    one = step(file("sparse", b"end of file", hole=hole), file("dense", b"d" * 4096), name="sparse")
    one.apply(reference_dir)
    rw = store.create_layer(writable=True).id
    with mounted(store, rw) as path:
        one.apply(path)
    child = store.create_layer(rw).id
    committed = store.apply_layer(io.BytesIO(diff_bytes(store, rw))).id
    for layer_id in (rw, child, committed):
        with mounted(store, layer_id) as path:
            assert_tree(reference_dir, path, f"layer {layer_id} with a sparse file")
    if not capabilities.sparse_files:
        return
    if not backing_keeps_holes(store.driver.home):
        pytest.skip(f"the filesystem of {store.driver.home} does not keep holes")
    for layer_id in (rw, child):
        with mounted(store, layer_id) as path:
            used = os.lstat(path / "sparse").st_blocks * 512
            assert used < hole // 2, (
                f"driver declares sparse_files=True but layer {layer_id} stores the "
                f"{hole}-byte hole in {used} bytes"
            )


def test_34_open_fd_across_copy_up(store, reference_dir, capabilities) -> None:
    """File descriptors opened on a lower file keep working when the file is written."""
    init_reference(reference_dir, capabilities.root_mode)
    base = step(file("data", b"original" * 512), file("meta", b"m"), name="base")
    base.apply(reference_dir)
    parent = store.apply_layer(io.BytesIO(base.layer_tar(reference_dir))).id
    rw = store.create_layer(parent, writable=True).id
    with mounted(store, rw) as path:
        ro_fd = os.open(path / "data", os.O_RDONLY)
        meta_fd = os.open(path / "meta", os.O_RDONLY)
        try:
            rw_fd = os.open(path / "data", os.O_RDWR)
            try:
                os.pwrite(rw_fd, b"CHANGED!", 0)
                os.fsync(rw_fd)
                assert os.pread(rw_fd, 16, 0) == b"CHANGED!original"
            finally:
                os.close(rw_fd)
            seen = os.pread(ro_fd, 16, 0)
            assert seen in (b"originaloriginal", b"CHANGED!original"), (
                f"a read-only fd opened before the copy-up reads {seen!r}"
            )
            os.fstat(ro_fd)
            os.chmod(path / "meta", 0o600)  # a metadata-only copy-up
            assert os.pread(meta_fd, 1, 0) == b"m"
        finally:
            os.close(ro_fd)
            os.close(meta_fd)
        assert (path / "data").read_bytes()[:16] == b"CHANGED!original"
    with mounted(store, rw) as path:
        assert (path / "data").read_bytes()[:16] == b"CHANGED!original"
    with mounted(store, parent) as path:
        assert (path / "data").read_bytes()[:16] == b"originaloriginal"


def test_35_quota(store_factory, capabilities, driver_class, driver_options) -> None:
    """The `size` option is enforced with EDQUOT or ENOSPC."""
    require(capabilities, quota=True)
    option = driver_class.options.get("size")
    assert option is not None, "driver declares quota=True but has no 'size' option"
    limit = 16 << 20
    value = limit if option.type is int else "16M"
    store = store_factory(options={**driver_options, "size": value})
    rw = store.create_layer(writable=True).id
    with mounted(store, rw) as path:
        written = 0
        chunk = os.urandom(1 << 20)
        with pytest.raises(OSError) as info, open(path / "fill", "wb") as f:
            while written < 4 * limit:
                f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
                written += len(chunk)
        assert info.value.errno in QUOTA_ERRNOS, f"quota error {info.value!r}, not EDQUOT/ENOSPC"
        assert written <= 2 * limit, f"wrote {written} bytes under a {limit}-byte quota"
        os.unlink(path / "fill")


def _fill(path, limit: int) -> int:
    """Write 1 MiB chunks (each fsynced) until the quota refuses; return the bytes written."""
    written = 0
    chunk = os.urandom(1 << 20)
    with pytest.raises(OSError) as info, open(path, "wb") as f:
        while written < 4 * limit:
            f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
            written += len(chunk)
    assert info.value.errno in QUOTA_ERRNOS, f"quota error {info.value!r}, not EDQUOT/ENOSPC"
    return written


def test_46_layer_quota(store_factory, capabilities, driver_class, driver_options) -> None:
    """The per-layer ``size`` option limits that writable layer alone (EDQUOT/ENOSPC)."""
    require(capabilities, layer_quota=True)
    assert "size" in driver_class.layer_options, \
        "driver declares layer_quota=True but has no 'size' in layer_options"
    limit = 16 << 20
    store = store_factory(options={k: v for k, v in driver_options.items() if k != "size"})
    base = store.create_layer().id
    limited = store.create_layer(base, writable=True, options={"size": "16M"}).id
    free = store.create_layer(base, writable=True).id
    with mounted(store, limited) as path:
        written = _fill(path / "fill", limit)
        assert written <= 2 * limit, f"wrote {written} bytes under a {limit}-byte layer quota"
        os.unlink(path / "fill")
    with mounted(store, free) as path:  # the limit was this layer's, not every layer's
        (path / "fill").write_bytes(os.urandom(2 * limit))
        os.sync()
        os.unlink(path / "fill")

