"""copy_tree and remove_tree on real trees: every file type, xattrs, holes, mounts."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.conformance.trees import assert_same_tree, snapshot
from lamina.core.errors import DriverError, NoSpace
from lamina.core.host import mounts
from lamina.core.host.treecopy import copy_tree, probe_copy_method, remove_tree

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, trusted xattrs)"),
]

#: a VFS_CAP_REVISION_2 blob, effective flag set, permitting CAP_NET_RAW (13)
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)

SPARSE_SIZE = 64 << 20
SPARSE_DATA_AT = 32 << 20


def make_rich_tree(root: Path) -> None:
    """A tree with every kind of entry and metadata a layer can hold (``root`` may exist)."""
    root.mkdir(exist_ok=True)
    (root / "etc").mkdir()
    (root / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    os.chown(root / "etc" / "hosts", 1000, 1001)
    os.setxattr(root / "etc" / "hosts", "user.origin", b"test")
    os.setxattr(root / "etc" / "hosts", "trusted.note", b"\x00\x01binary")
    os.setxattr(root / "etc", "user.dir", b"on a directory")

    (root / "bin").mkdir()
    ping = root / "bin" / "ping"
    ping.write_bytes(b"\x7fELF fake ping" * 100)
    os.chown(ping, 1000, 1000)  # a file cap on a non-root file: chown must not drop it
    os.chmod(ping, 0o755)
    os.setxattr(ping, "security.capability", CAP_NET_RAW)
    su = root / "bin" / "su"
    su.write_bytes(b"setuid program")
    os.chmod(su, 0o4755)
    sg = root / "bin" / "wall"
    sg.write_bytes(b"setgid program")
    os.chown(sg, 0, 5)
    os.chmod(sg, 0o2755)
    odd = root / "bin" / "odd"
    odd.write_bytes(b"")
    os.chmod(odd, 0o6000)

    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "private").mkdir()
    os.chmod(root / "private", 0o705)
    os.chown(root / "private", 1, 2)

    # hardlinks, one of them across directories, and a hardlinked symlink
    (root / "usr").mkdir()
    (root / "usr" / "a").write_bytes(b"linked content")
    os.link(root / "usr" / "a", root / "usr" / "b")
    os.link(root / "usr" / "a", root / "etc" / "c")
    os.symlink("a", root / "usr" / "sym")
    os.link(root / "usr" / "sym", root / "usr" / "sym-link", follow_symlinks=False)

    # symlinks: dangling absolute, relative, to a directory; owned and timed
    os.symlink("/etc/passwd", root / "abs")
    os.symlink("../etc/hosts", root / "usr" / "rel")
    os.symlink("etc", root / "dirlink")
    os.chown(root / "abs", 1000, 1000, follow_symlinks=False)
    os.setxattr(root / "abs", "trusted.on-symlink", b"yes", follow_symlinks=False)
    os.utime(root / "abs", ns=(1, 1_500_000_123), follow_symlinks=False)

    # device nodes, fifo, unix socket
    (root / "dev").mkdir()
    os.mknod(root / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "dev" / "loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
    os.chown(root / "dev" / "loop9", 0, 6)
    os.mkfifo(root / "dev" / "fifo", 0o620)
    os.mknod(root / "dev" / "sock", stat.S_IFSOCK | 0o755)
    os.setxattr(root / "dev" / "fifo", "trusted.x", b"fifo xattr")

    # a sparse file: one block of data in the middle of 64 MiB of holes
    with open(root / "sparse", "wb") as f:
        f.seek(SPARSE_DATA_AT)
        f.write(b"D" * 4096)
        f.truncate(SPARSE_SIZE)
    (root / "empty").write_bytes(b"")
    (root / "big").write_bytes(os.urandom(3 << 20))
    name = os.fsdecode(b"caf\xe9 \n name")  # not UTF-8, with a newline
    (root / name).write_bytes(b"odd name")

    # directory times last, after everything inside them exists
    for i, d in enumerate(["etc", "bin", "tmp", "private", "usr", "dev", ""]):
        os.utime(root / d, ns=(1_000_000_007, 1_600_000_000_000_000_000 + i * 1001))


def _blocks(path: Path) -> int:
    return os.lstat(path).st_blocks


@pytest.fixture
def rich(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    make_rich_tree(src)
    return src


def test_copy_keeps_every_entry_and_its_metadata(rich: Path, tmp_path: Path) -> None:
    expected = snapshot(rich)
    dst = tmp_path / "dst"
    stats = copy_tree(rich, dst)
    assert_same_tree(expected, dst)
    # the source is untouched by the copy
    assert_same_tree(expected, rich)
    assert stats.hardlinks == 3  # usr/b, etc/c and usr/sym-link
    assert stats.specials == 4
    assert stats.symlinks == 4
    assert stats.files == 10
    assert stats.directories == 6


def test_capability_and_setuid_survive_ownership_change(rich: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    copy_tree(rich, dst)
    ping = dst / "bin" / "ping"
    assert os.getxattr(ping, "security.capability") == CAP_NET_RAW
    assert (os.stat(ping).st_uid, os.stat(ping).st_gid) == (1000, 1000)
    assert stat.S_IMODE(os.stat(dst / "bin" / "su").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(dst / "bin" / "wall").st_mode) == 0o2755
    assert stat.S_IMODE(os.stat(dst / "bin" / "odd").st_mode) == 0o6000
    assert stat.S_IMODE(os.stat(dst / "tmp").st_mode) == 0o1777
    if subprocess.run(["which", "getcap"], capture_output=True).returncode == 0:
        out = subprocess.run(["getcap", str(ping)], capture_output=True, text=True).stdout
        assert "cap_net_raw" in out


def test_hardlinks_stay_one_inode(rich: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    copy_tree(rich, dst)
    a, b, c = (os.lstat(dst / p) for p in ("usr/a", "usr/b", "etc/c"))
    assert a.st_ino == b.st_ino == c.st_ino
    assert a.st_nlink == 3
    assert a.st_ino != os.lstat(rich / "usr" / "a").st_ino
    s1, s2 = os.lstat(dst / "usr" / "sym"), os.lstat(dst / "usr" / "sym-link")
    assert stat.S_ISLNK(s1.st_mode) and s1.st_ino == s2.st_ino


def test_sparse_file_keeps_its_holes(rich: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    copy_tree(rich, dst)
    copied = dst / "sparse"
    assert os.path.getsize(copied) == SPARSE_SIZE
    assert _blocks(copied) * 512 <= 64 * 1024, "holes were filled with zeros"
    with open(copied, "rb") as f:
        f.seek(SPARSE_DATA_AT - 1)
        assert f.read(4098) == b"\0" + b"D" * 4096 + b"\0"


def test_symlinks_are_copied_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not copy")
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(outside, src / "escape")
    os.symlink("escape/secret", src / "chain")
    dst = tmp_path / "dst"
    copy_tree(src, dst)
    assert os.readlink(dst / "escape") == str(outside)
    assert os.readlink(dst / "chain") == "escape/secret"
    assert sorted(os.listdir(dst)) == ["chain", "escape"]
    assert os.listdir(outside) == ["secret"]


def test_directory_mtimes_are_set_after_children(rich: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    copy_tree(rich, dst)
    for d in ["etc", "bin", "usr", "dev", ""]:
        assert os.lstat(dst / d).st_mtime_ns == os.lstat(rich / d).st_mtime_ns, d
    assert os.lstat(dst / "abs").st_mtime_ns == 1_500_000_123


def test_deep_tree_does_not_recurse(tmp_path: Path) -> None:
    src = tmp_path / "src"
    deep = src
    for _ in range(400):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"bottom")
    dst = tmp_path / "dst"
    copy_tree(src, dst)
    assert_same_tree(src, dst)
    remove_tree(dst)
    assert not dst.exists()


def test_cross_filesystem_copy_falls_back_to_plain(tmpfs: Path, tmp_path: Path) -> None:
    src = tmpfs / "src"
    make_rich_tree(src)
    dst = tmp_path / "dst"  # ext4 or whatever the disk is: another filesystem
    stats = copy_tree(src, dst)
    assert_same_tree(src, dst)
    assert stats.methods["plain"] > 0, stats
    assert _blocks(dst / "sparse") * 512 <= 64 * 1024, "plain copy filled the holes"


def test_copy_on_the_same_disk_uses_the_kernel(rich: Path, tmp_path: Path) -> None:
    stats = copy_tree(rich, tmp_path / "dst")
    assert stats.methods["plain"] == 0, stats
    assert stats.method in ("reflink", "copy_file_range")
    assert probe_copy_method(tmp_path) == stats.method
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]  # the probe left nothing


@pytest.fixture
def btrfs(tmp_path: Path) -> Iterator[Path]:
    """A small btrfs on a loop device, where copies can reflink."""
    if subprocess.run(["which", "mkfs.btrfs"], capture_output=True).returncode != 0:
        pytest.skip("mkfs.btrfs is not installed (btrfs-progs)")
    image = tmp_path / "btrfs.img"
    with open(image, "wb") as f:
        f.truncate(256 << 20)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True)
    point = tmp_path / "btrfs"
    point.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(point)], check=True)
    try:
        yield point
    finally:
        mounts.detach(point)


def test_reflink_where_the_filesystem_can(btrfs: Path) -> None:
    src = btrfs / "src"
    make_rich_tree(src)
    stats = copy_tree(src, btrfs / "dst")
    assert_same_tree(src, btrfs / "dst")
    assert stats.methods["reflink"] == 8, stats  # every regular file with data, once
    assert stats.methods["plain"] == stats.methods["copy_file_range"] == 0
    assert _blocks(btrfs / "dst" / "sparse") * 512 <= 64 * 1024


def test_destination_must_not_exist(rich: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    with pytest.raises(DriverError, match=r"must not exist|File exists") as info:
        copy_tree(rich, dst)
    assert info.value.hint and "must not exist" in info.value.hint
    assert os.listdir(dst) == []


def test_source_must_be_a_real_directory(rich: Path, tmp_path: Path) -> None:
    os.symlink(rich, tmp_path / "link")
    with pytest.raises(DriverError, match="cannot copy"):
        copy_tree(tmp_path / "link", tmp_path / "dst")
    with pytest.raises(DriverError, match="cannot copy"):
        copy_tree(tmp_path / "missing", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_failed_copy_leaves_nothing_behind(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        src = tmp_path / "src"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "big").write_bytes(os.urandom(4 << 20))
        with pytest.raises(NoSpace, match=r"cannot copy .*src/sub/big: No space left"):
            copy_tree(src, small / "dst")
        assert os.listdir(small) == []
    finally:
        mounts.detach(small)


# --- remove_tree ------------------------------------------------------------------


def test_remove_tree_deletes_everything(rich: Path) -> None:
    os.chmod(rich / "private", 0o000)
    remove_tree(rich)
    assert not os.path.lexists(rich)


def test_remove_tree_does_not_follow_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    tree = tmp_path / "tree"
    tree.mkdir()
    os.symlink(outside, tree / "to-outside")
    os.symlink(outside / "keep", tree / "to-keep")
    remove_tree(tree)
    assert not tree.exists()
    assert (outside / "keep").is_dir()


def test_remove_tree_of_missing_path_or_single_file(tmp_path: Path) -> None:
    remove_tree(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"x")
    remove_tree(tmp_path / "file")
    assert not (tmp_path / "file").exists()
    os.symlink(tmp_path, tmp_path / "self")
    remove_tree(tmp_path / "self")
    assert not os.path.lexists(tmp_path / "self") and tmp_path.is_dir()


def test_remove_tree_refuses_a_bind_mount_inside(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "precious").write_bytes(b"keep me")
    tree = tmp_path / "tree"
    (tree / "a" / "mnt").mkdir(parents=True)
    (tree / "a" / "file").write_bytes(b"x")
    mounts.mount(str(data), tree / "a" / "mnt", None, mounts.MS_BIND)
    try:
        with pytest.raises(DriverError, match=r"refusing to delete through a mount at .*a/mnt"):
            remove_tree(tree)
        assert (tree / "a" / "file").exists(), "deleted something before refusing"
    finally:
        mounts.detach(tree / "a" / "mnt")
    assert (data / "precious").read_bytes() == b"keep me"
    remove_tree(tree)
    assert not tree.exists()


def test_remove_tree_refuses_a_mount_point_itself(tmpfs: Path) -> None:
    (tmpfs / "x").write_bytes(b"x")
    with pytest.raises(DriverError, match="refusing to delete through a mount"):
        remove_tree(tmpfs)
    assert (tmpfs / "x").exists()
