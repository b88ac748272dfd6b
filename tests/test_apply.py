"""Applying layer tars: normal content round-trips exactly, whiteouts, duplicates, diff ids."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from tarmaker import TarBuilder

from lamina.core.errors import CorruptArchive, DriverError, NoSpace, UnsafeArchive
from lamina.core.host.treecopy import remove_at
from lamina.core.layertar import ApplyResult
from lamina.core.layertar import apply as apply_module
from lamina.core.layertar.apply import MergedWhiteouts, apply_tar, can_make_devices
from lamina.core.layertar.compression import open_layer_stream


def apply(root: Path, tar: TarBuilder | bytes, **kwargs: object):  # type: ignore[no-untyped-def]
    data = tar.bytes() if isinstance(tar, TarBuilder) else tar
    return apply_tar(io.BytesIO(data), root, **kwargs)  # type: ignore[arg-type]


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a layer promises about a tree, not following links."""
    state: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted([".", *dirnames, *filenames]):
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.relpath(path, root))
            if name == "." and rel != ".":
                continue
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            content: object = None
            if kind == stat.S_IFREG:
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif kind == stat.S_IFLNK:
                content = os.readlink(path)
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                content = (os.major(st.st_rdev), os.minor(st.st_rdev))
            xattrs = {}
            if kind != stat.S_IFLNK:
                xattrs = {k: os.getxattr(path, k) for k in sorted(os.listxattr(path))}
            link_group = None
            if kind != stat.S_IFDIR and st.st_nlink > 1:
                link_group = inodes.setdefault(st.st_ino, rel)
            state[rel] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size if kind != stat.S_IFDIR else 0,
                st.st_mtime_ns, content, xattrs, link_group,
            )  # fmt: skip
    return state


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# --- content round-trips ---------------------------------------------------------------


def test_every_kind_of_entry_with_its_metadata(tmp_path: Path) -> None:
    tar = (
        TarBuilder()
        .dir("etc", mode=0o751, uid=3, gid=4, mtime_ns=1_600_000_000_123_456_789)
        .file("etc/conf", b"conf", mode=0o640, uid=1000, gid=1001, mtime=1_500_000_000.5)
        .file("bin/ping", b"elf", mode=0o4755, xattrs={"user.a": b"1", "user.b": b"\0\xff"})
        .symlink("etc/link", "conf", uid=5, gid=6, mtime=1_400_000_000)
        .symlink("abs", "/does/not/exist")
        .hardlink("etc/conf-again", "etc/conf")
        .fifo("run/pipe", mode=0o620, uid=7, mtime=1_300_000_000)
        .file("empty", b"")
        .file("big", os.urandom(3 << 20))
    )
    data = tar.bytes()
    result = apply(tmp_path, data)
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert result.size == len(data)

    etc = os.lstat(tmp_path / "etc")
    assert (stat.S_IMODE(etc.st_mode), etc.st_uid, etc.st_gid) == (0o751, 3, 4)
    assert etc.st_mtime_ns == 1_600_000_000_123_456_789  # set after its children
    conf = os.lstat(tmp_path / "etc" / "conf")
    assert (stat.S_IMODE(conf.st_mode), conf.st_uid, conf.st_gid) == (0o640, 1000, 1001)
    assert conf.st_mtime_ns == 1_500_000_000_500_000_000
    assert conf.st_nlink == 2 and conf.st_ino == os.lstat(tmp_path / "etc/conf-again").st_ino
    ping = tmp_path / "bin" / "ping"
    assert stat.S_IMODE(os.lstat(ping).st_mode) == 0o4755
    assert {k: os.getxattr(ping, k) for k in os.listxattr(ping)} == {
        "user.a": b"1",
        "user.b": b"\0\xff",
    }
    link = os.lstat(tmp_path / "etc" / "link")
    assert stat.S_ISLNK(link.st_mode) and os.readlink(tmp_path / "etc" / "link") == "conf"
    assert (link.st_uid, link.st_gid, link.st_mtime_ns) == (5, 6, 1_400_000_000 * 10**9)
    assert os.readlink(tmp_path / "abs") == "/does/not/exist"
    pipe = os.lstat(tmp_path / "run" / "pipe")
    assert stat.S_ISFIFO(pipe.st_mode) and stat.S_IMODE(pipe.st_mode) == 0o620
    assert (pipe.st_uid, pipe.st_mtime_ns) == (7, 1_300_000_000 * 10**9)
    # parents the tar does not list are made 0755, like docker does
    assert stat.S_IMODE(os.lstat(tmp_path / "bin").st_mode) == 0o755
    assert (tmp_path / "empty").read_bytes() == b""


@pytest.mark.skipif(not can_make_devices(), reason="needs root in the initial user namespace")
def test_device_nodes(tmp_path: Path) -> None:
    apply(tmp_path, TarBuilder().chardev("zero", 1, 5, uid=9).blockdev("sda", 8, 0, mode=0o600))
    zero, sda = os.lstat(tmp_path / "zero"), os.lstat(tmp_path / "sda")
    assert stat.S_ISCHR(zero.st_mode) and zero.st_rdev == os.makedev(1, 5) and zero.st_uid == 9
    assert stat.S_ISBLK(sda.st_mode) and stat.S_IMODE(sda.st_mode) == 0o600


def test_capability_survives_because_chown_comes_first(tmp_path: Path) -> None:
    cap = bytes.fromhex("0100000200200000000000000000000000000000")
    apply(tmp_path, TarBuilder().file("ping", b"x", uid=1000, xattrs={"security.capability": cap}))
    assert os.getxattr(tmp_path / "ping", "security.capability") == cap


@pytest.mark.parametrize("fmt", ["pax1.0", "pax0.1", "oldgnu"])
def test_sparse_files_are_written_with_holes(tmp_path: Path, fmt: str) -> None:
    size = 64 << 20
    regions = [(4096 * 10, b"a" * 4096), (size // 2, b"b" * 100), (size - 3, b"end")]
    apply(tmp_path, TarBuilder().sparse("s", size, regions, format=fmt))  # type: ignore[arg-type]
    path = tmp_path / "s"
    assert path.stat().st_size == size
    assert path.stat().st_blocks * 512 <= 1 << 20
    data = path.read_bytes()
    assert data[40960 : 40960 + 4096] == b"a" * 4096 and data[-3:] == b"end"
    assert data.count(0) == size - 4096 - 100 - 3


def extract_both(layer: Path, tmp_path: Path) -> tuple[Path, Path, ApplyResult]:
    """``layer`` extracted by GNU tar into ``by-tar`` and applied by lamina into ``by-us``."""
    by_tar, by_us = tmp_path / "by-tar", tmp_path / "by-us"
    by_tar.mkdir()
    by_us.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", str(layer),
         "-C", str(by_tar)],
        check=True,
    )  # fmt: skip
    with open(layer, "rb") as f:
        return by_tar, by_us, apply_tar(f, by_us)


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_same_tree_as_gnu_tar_extracts(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d" / "sub").mkdir(parents=True)
    (src / "d" / "sub" / "f").write_bytes(b"x" * 10_000)
    (src / ("n" * 150)).mkdir()
    (src / ("n" * 150) / ("m" * 120)).write_bytes(b"long")
    (src / "exe").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "exe", 0o4711)
    os.chown(src / "exe", 123, 456)
    os.setxattr(src / "exe", "user.k", b"v")
    os.link(src / "exe", src / "exe-link")
    os.symlink("/d/sub", src / "abslink")
    os.symlink("d/sub/f", src / "rellink")
    os.mkfifo(src / "fifo", 0o640)
    os.mkdir(src / "sticky", 0o700)
    os.chmod(src / "sticky", 0o1777)
    with open(src / "holes", "wb") as f:
        f.truncate(20 << 20)
        f.seek(5 << 20)
        f.write(b"data")
    for i, p in enumerate(sorted(src.rglob("*"), reverse=True)):
        os.utime(p, ns=(0, 1_600_000_000_000_000_000 + i * 1_234_567), follow_symlinks=False)
    layer = tmp_path / "layer.tar"
    subprocess.run(
        ["tar", "--format=posix", "--xattrs", "--sparse", "--numeric-owner", "-cf", str(layer),
         "-C", str(src), "."],
        check=True,
    )  # fmt: skip
    by_tar, by_us, _ = extract_both(layer, tmp_path)
    assert tree(by_us) == tree(by_tar)


#: parts of the host's own Debian system: configuration, daemons, time zones, dpkg's
#: database and the setuid tools, ~60 MB in thousands of files and symlinks
SYSTEM_PARTS = (
    "etc",
    "usr/sbin",
    "usr/share/zoneinfo",
    "var/lib/dpkg",
    "usr/bin/passwd",
    "usr/bin/su",
    "usr/bin/mount",
    "usr/bin/newgrp",
)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_a_real_debian_system_tree_like_gnu_tar(tmp_path: Path) -> None:
    """A tree no generator wrote: what GNU tar archives of this Debian host applies the same."""
    layer = tmp_path / "system.tar"
    # every member named, in depth-first order (as `tar -C rootfs .` writes an image's),
    # the parts' parent directories with them
    members = {"."}
    for part in SYSTEM_PARTS:
        if not os.path.lexists(f"/{part}"):
            continue
        members.update(str(parent) for parent in Path(part).parents)
        members.add(part)
        for dirpath, dirnames, filenames in os.walk(f"/{part}"):
            members.update(
                os.path.relpath(os.path.join(dirpath, n), "/") for n in dirnames + filenames
            )
    listing = tmp_path / "members"
    listing.write_text("\n".join(sorted(members, key=lambda m: m.split("/"))) + "\n")
    done = subprocess.run(
        ["tar", "--format=posix", "--xattrs", "--xattrs-include=*", "--numeric-owner",
         "--warning=no-file-changed", "--ignore-failed-read", "--no-recursion",
         "-C", "/", "-cf", str(layer), "-T", str(listing)],
    )  # fmt: skip
    assert done.returncode in (0, 1), "tar could not archive the host's system files"
    by_tar, by_us, result = extract_both(layer, tmp_path)
    assert result.size == layer.stat().st_size
    assert len(tree(by_us)) > 1000
    assert tree(by_us) == tree(by_tar)


def test_diff_id_is_of_the_uncompressed_stream(tmp_path: Path) -> None:
    data = TarBuilder().file("a", os.urandom(100_000)).bytes() + bytes(10240)
    result = apply_tar(open_layer_stream(io.BytesIO(gzip.compress(data))), tmp_path)
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert result.size == len(data)


def test_deep_and_wide_trees_keep_few_fds(tmp_path: Path) -> None:
    tar = TarBuilder()
    deep = "/".join(["d"] * 1500)
    tar.file(deep + "/leaf", b"deep")
    for i in range(800):
        tar.dir(f"w{i}", mode=0o700 + (i % 8)).file(f"w{i}/f", b"%d" % i)
    for i in range(0, 800, 7):
        tar.file(f"w{i}/late", b"late")  # revisits evicted directories
    before = open_fds()
    apply(tmp_path, tar)
    assert open_fds() == before
    assert (tmp_path / deep / "leaf").read_bytes() == b"deep"
    assert (tmp_path / "w799" / "f").read_bytes() == b"799"
    assert (tmp_path / "w798" / "late").exists()
    assert stat.S_IMODE(os.lstat(tmp_path / "w3").st_mode) == 0o703
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        remove_at(fd, "d")  # too deep for shutil.rmtree's recursion (pytest's cleanup)
    finally:
        os.close(fd)


def test_no_fd_leaks_on_errors(tmp_path: Path) -> None:
    before = open_fds()
    with pytest.raises(UnsafeArchive):
        apply(tmp_path, TarBuilder().dir("a/b/c").file("a/b/c/f").file("../x"))
    assert open_fds() == before


# --- duplicates and links --------------------------------------------------------------------


def test_a_file_over_a_hardlinked_file_leaves_the_other_name_alone(tmp_path: Path) -> None:
    apply(tmp_path, TarBuilder().file("a", b"original").hardlink("b", "a").file("b", b"new"))
    assert (tmp_path / "a").read_bytes() == b"original"
    assert (tmp_path / "b").read_bytes() == b"new"


def test_a_file_over_a_symlink_replaces_the_link(tmp_path: Path) -> None:
    apply(tmp_path, TarBuilder().file("target", b"t").symlink("l", "target").file("l", b"own"))
    assert (tmp_path / "target").read_bytes() == b"t"
    assert not (tmp_path / "l").is_symlink() and (tmp_path / "l").read_bytes() == b"own"


def test_symlink_replaced_by_another_redirects_later_entries(tmp_path: Path) -> None:
    apply(
        tmp_path,
        TarBuilder()
        .dir("one")
        .dir("two")
        .symlink("cur", "one")
        .file("cur/a", b"1")
        .symlink("cur", "two")
        .file("cur/b", b"2"),
    )
    assert os.listdir(tmp_path / "one") == ["a"] and os.listdir(tmp_path / "two") == ["b"]


def test_hardlink_errors(tmp_path: Path) -> None:
    with pytest.raises(CorruptArchive, match="does not exist"):
        apply(tmp_path, TarBuilder().hardlink("l", "missing"))
    with pytest.raises(CorruptArchive, match="does not exist"):
        apply(tmp_path, TarBuilder().hardlink("l", "nodir/missing"))
    with pytest.raises(UnsafeArchive, match="directory"):
        apply(tmp_path, TarBuilder().dir("d").hardlink("l", "d"))


def test_a_path_through_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchive, match="not a directory"):
        apply(tmp_path, TarBuilder().file("f", b"x").file("f/child", b"y"))


# --- whiteouts ---------------------------------------------------------------------------------


def lower(root: Path) -> None:
    apply(
        root,
        TarBuilder()
        .dir("dir")
        .file("dir/a", b"a")
        .dir("dir/sub")
        .file("dir/sub/deep", b"d")
        .file("file", b"f")
        .symlink("link", "/dir")
        .dir("other")
        .file("other/x"),
    )


def test_whiteouts_delete_lower_entries(tmp_path: Path) -> None:
    lower(tmp_path)
    apply(tmp_path, TarBuilder().whiteout("dir").whiteout("link").whiteout("missing"))
    assert sorted(os.listdir(tmp_path)) == ["file", "other"]


def test_whiteout_of_a_symlinked_dir_keeps_its_target(tmp_path: Path) -> None:
    lower(tmp_path)
    apply(tmp_path, TarBuilder().whiteout("link"))
    assert (tmp_path / "dir" / "a").exists()


def test_whiteouts_below_a_removed_or_file_parent_are_tolerated(tmp_path: Path) -> None:
    lower(tmp_path)  # conformance case 39: .wh.foo together with foo/.wh.bar
    apply(tmp_path, TarBuilder().whiteout("dir").whiteout("dir/a").whiteout("file/x"))
    assert not (tmp_path / "dir").exists() and (tmp_path / "file").read_bytes() == b"f"


def test_whiteouts_never_hide_entries_of_their_own_layer(tmp_path: Path) -> None:
    lower(tmp_path)
    apply(
        tmp_path,
        TarBuilder()
        .file("new", b"n")
        .whiteout("new")  # after the entry
        .whiteout("file")  # before the entry: the lower one goes, the new one stays
        .file("file", b"replaced"),
    )
    assert (tmp_path / "new").read_bytes() == b"n"
    assert (tmp_path / "file").read_bytes() == b"replaced"


def test_opaque_marker_after_siblings(tmp_path: Path) -> None:
    lower(tmp_path)  # conformance case 43
    apply(
        tmp_path,
        TarBuilder()
        .dir("dir")
        .file("dir/mine", b"m")
        .file("dir/sub/also-mine", b"s")
        .opaque("dir")
        .file("dir/after", b"later"),
    )
    assert sorted(os.listdir(tmp_path / "dir")) == ["after", "mine", "sub"]
    assert os.listdir(tmp_path / "dir" / "sub") == ["also-mine"]
    assert (tmp_path / "other" / "x").exists()


def test_opaque_marker_before_entries_and_in_a_missing_dir(tmp_path: Path) -> None:
    lower(tmp_path)
    apply(tmp_path, TarBuilder().opaque("other").file("other/y", b"y").opaque("fresh"))
    assert os.listdir(tmp_path / "other") == ["y"]
    assert (tmp_path / "fresh").is_dir() and os.listdir(tmp_path / "fresh") == []


def test_opaque_root(tmp_path: Path) -> None:
    lower(tmp_path)
    apply(tmp_path, TarBuilder().file("kept", b"k").opaque(""))
    assert os.listdir(tmp_path) == ["kept"]


def test_aufs_metadata_entries_are_skipped(tmp_path: Path) -> None:
    apply(tmp_path, TarBuilder().dir(".wh..wh.plnk").file(".wh..wh.plnk/123.456").file("real"))
    assert os.listdir(tmp_path) == ["real"]


class Recording:
    """A whiteout strategy like an overlay driver's: it records instead of deleting."""

    create_parents = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def whiteout(self, dir_fd: int, name: str) -> None:
        self.calls.append(("whiteout", os.readlink(f"/proc/self/fd/{dir_fd}"), name))
        os.mknod(name, stat.S_IFCHR | 0o000, 0, dir_fd=dir_fd)

    def opaque(self, dir_fd: int, dir_path: str) -> None:
        self.calls.append(("opaque", os.readlink(f"/proc/self/fd/{dir_fd}"), dir_path))


@pytest.mark.skipif(not can_make_devices(), reason="the recording strategy makes 0/0 devices")
def test_a_custom_whiteout_strategy(tmp_path: Path) -> None:
    strategy = Recording()
    apply(
        tmp_path,
        TarBuilder().symlink("l", "/real").whiteout("a/b/gone").whiteout("l/x").opaque("o/p"),
        whiteouts=strategy,
    )
    root = str(tmp_path)
    assert strategy.calls == [
        ("whiteout", f"{root}/a/b", "gone"),
        ("whiteout", f"{root}/real", "x"),
        ("opaque", f"{root}/o/p", "o/p"),
    ]
    assert stat.S_ISCHR(os.lstat(tmp_path / "a" / "b" / "gone").st_mode)


def test_merged_whiteouts_directly(tmp_path: Path) -> None:
    (tmp_path / "d" / "keep").mkdir(parents=True)
    (tmp_path / "d" / "keep" / "inner").write_text("x")
    (tmp_path / "d" / "drop").mkdir()
    (tmp_path / "d" / "drop" / "inner").write_text("x")
    os.symlink("/", tmp_path / "d" / "rootlink")
    fd = os.open(tmp_path / "d", os.O_PATH | os.O_DIRECTORY)
    try:
        MergedWhiteouts({"d", "d/keep"}).opaque(fd, "d")
    finally:
        os.close(fd)
    assert os.listdir(tmp_path / "d") == ["keep"]
    assert os.listdir(tmp_path / "d" / "keep") == []  # below a kept dir, not listed: lower


def test_remove_at_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("p")
    victim = tmp_path / "victim"
    (victim / "a" / "b").mkdir(parents=True)
    os.symlink(outside, victim / "a" / "b" / "link")
    os.symlink(outside, victim / "a" / "link2")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        remove_at(fd, "victim")
    finally:
        os.close(fd)
    assert not victim.exists() and (outside / "precious").read_text() == "p"


# --- errors from the filesystem ------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_a_full_filesystem_is_no_space(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(NoSpace, match="cannot apply entry 'big': No space left"):
            apply(small, TarBuilder().file("big", os.urandom(4 << 20)))
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_can_make_devices_matches_the_namespace() -> None:
    with open("/proc/self/uid_map") as f:
        initial = f.read().split() == ["0", "0", "4294967295"]
    apply_module.can_make_devices.cache_clear()
    assert can_make_devices() == (initial and os.geteuid() == 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")
def test_remove_at_stops_at_a_mount(tmp_path: Path) -> None:
    inner = tmp_path / "d" / "mnt"
    inner.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(inner)], check=True)
    try:
        (inner / "data").write_text("on another filesystem")
        fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
        try:
            with pytest.raises(DriverError, match="another filesystem"):
                remove_at(fd, "d")
        finally:
            os.close(fd)
        assert (inner / "data").read_text() == "on another filesystem"
    finally:
        subprocess.run(["umount", str(inner)], check=True)


def test_apply_tar_with_runs_the_driver_steps_in_order(tmp_path: Path) -> None:
    """The public hook for drivers: their whiteouts see the live set of this layer's
    paths, ``before`` runs before each entry and ``after`` once it all is in place."""
    tar = TarBuilder().dir("d").file("d/f", b"x").file("d/.wh.gone", b"").bytes()
    seen: list[str] = []
    made: list[set[str]] = []

    class Recording(MergedWhiteouts):
        def whiteout(self, dir_fd: int, name: str) -> None:
            seen.append(f"whiteout {name}")

    def whiteouts_for(mine: set[str]) -> Recording:
        made.append(mine)
        return Recording(mine)

    def before(entry: object) -> None:
        seen.append(f"before {entry.path}")  # type: ignore[attr-defined]
        assert not (tmp_path / entry.path).exists()  # type: ignore[attr-defined]

    def after(root_fd: int) -> None:
        seen.append("after")
        assert os.stat(root_fd).st_ino == tmp_path.stat().st_ino
        assert (tmp_path / "d/f").read_bytes() == b"x"

    result = apply_module.apply_tar_with(
        io.BytesIO(tar), tmp_path, whiteouts_for=whiteouts_for, before=before, after=after
    )
    assert seen == ["before d/", "before d/f", "before d/.wh.gone", "whiteout gone", "after"]
    assert made and {"d", "d/f"} <= made[0]
    assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()


def test_errors_of_a_driver_step_are_translated(tmp_path: Path) -> None:
    def before(entry: object) -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(DriverError, match="entry 'f'"):
        apply_module.apply_tar_with(
            io.BytesIO(TarBuilder().file("f", b"1").bytes()), tmp_path, before=before
        )


def read_ahead_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name == "lamina-read"]


def test_a_stream_error_reaches_the_applier_and_the_read_ahead_thread_ends(
    tmp_path: Path,
) -> None:
    """apply_tar reads on a thread of its own: a decoder's error must still stop the
    apply at that point, and no thread may read the stream once apply_tar returned."""
    data = TarBuilder().file("a", os.urandom(3 << 20)).file("b", b"2").bytes()
    blob = gzip.compress(data)
    broken = blob[: len(blob) // 2] + bytes(b ^ 0x55 for b in blob[len(blob) // 2 :])
    with pytest.raises(CorruptArchive, match="gzip"):
        apply_tar(open_layer_stream(io.BytesIO(broken)), tmp_path)
    assert read_ahead_threads() == []
    assert not (tmp_path / "b").exists()


def test_an_applier_error_stops_the_read_ahead_before_the_stream_is_read_through(
    tmp_path: Path,
) -> None:
    class Counting(io.BytesIO):
        reads_after_error = 0
        failed = False

        def readinto(self, buffer: object) -> int:  # type: ignore[override]
            if Counting.failed:
                Counting.reads_after_error += 1
            return super().readinto(buffer)  # type: ignore[arg-type]

    tar = TarBuilder().file("../escape", b"x").file("big", os.urandom(20 << 20)).bytes()
    stream = Counting(tar)
    with pytest.raises(UnsafeArchive):
        try:
            apply_tar(stream, tmp_path)
        finally:
            Counting.failed = True
    stream.close()  # safe: apply_tar's thread is gone
    assert read_ahead_threads() == []
    assert Counting.reads_after_error == 0
