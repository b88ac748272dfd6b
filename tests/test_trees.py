"""The tree comparison of the conformance suite catches every kind of difference.

Each test builds two trees that are equal except for one attribute and checks
that compare() reports exactly that attribute at that path; the equal trees
first prove that nothing else is reported.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina.conformance.trees import assert_same_tree, compare, snapshot

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, xattrs)")

CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service


def build(root: Path) -> None:
    """A tree with one entry of every type, special modes, owners and xattrs."""
    root.mkdir()
    (root / "dir").mkdir()
    (root / "dir" / "file").write_bytes(b"hello")
    (root / "dir" / "same-size").write_bytes(b"abcde")
    os.chown(root / "dir" / "file", 1000, 1001)  # before chmod: chown clears setuid
    os.chmod(root / "dir" / "file", 0o4755)
    os.setxattr(root / "dir" / "file", "user.note", b"v1")
    os.setxattr(root / "dir" / "file", "security.capability", CAP)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "link-a").write_bytes(b"linked")
    os.link(root / "link-a", root / "link-b")
    (root / "other").write_bytes(b"linked")
    os.symlink("dir/file", root / "sym")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", 0o20666, os.makedev(1, 3))
    os.mknod(root / "loop", 0o60660, os.makedev(7, 0))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))
    for path in [*root.rglob("*"), root]:
        os.utime(
            path, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789), follow_symlinks=False
        )


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two identical trees (the second a `cp -a` copy of the first)."""
    first = tmp_path / "expected"
    build(first)
    second = tmp_path / "actual"
    subprocess.run(["cp", "-a", str(first), str(second)], check=True)
    return first, second


def differences(pair: tuple[Path, Path], change: Callable[[Path], None], **opts) -> list[str]:
    expected, actual = pair
    change(actual)
    return compare(snapshot(expected, **opts), snapshot(actual, **opts))


def keep_mtime(path: Path) -> Callable[[], None]:
    """Restore ``path``'s (and its parent's) mtime after a change, to isolate one attribute."""
    times = [(p, os.lstat(p).st_mtime_ns) for p in (path, path.parent) if os.path.lexists(p)]

    def restore() -> None:
        for p, ns in times:
            os.utime(p, ns=(ns, ns), follow_symlinks=False)

    return restore


def test_identical_trees_compare_equal(pair: tuple[Path, Path]) -> None:
    assert compare(snapshot(pair[0]), snapshot(pair[1])) == []
    assert_same_tree(*pair)


def test_type(pair: tuple[Path, Path]) -> None:
    def change(root: Path) -> None:
        restore = keep_mtime(root / "fifo")
        os.unlink(root / "fifo")
        (root / "fifo").write_bytes(b"")
        os.chmod(root / "fifo", 0o644)
        restore()

    assert differences(pair, change) == ["/fifo: type is file, expected fifo"]


@pytest.mark.parametrize("mode", [0o755, 0o2755, 0o1755, 0o4754])
def test_mode_and_special_bits(pair: tuple[Path, Path], mode: int) -> None:
    problems = differences(pair, lambda root: os.chmod(root / "dir" / "file", mode))
    assert problems == [f"/dir/file: mode is {0o100000 | mode:o}, expected 104755"]


def test_sticky_bit_of_directory(pair: tuple[Path, Path]) -> None:
    problems = differences(pair, lambda root: os.chmod(root / "sticky", 0o777))
    assert problems == ["/sticky: mode is 40777, expected 41777"]


def test_uid(pair: tuple[Path, Path]) -> None:
    problems = differences(pair, lambda root: os.lchown(root / "sym", 5, -1))
    assert problems == ["/sym: uid is 5, expected 0"]


def test_gid(pair: tuple[Path, Path]) -> None:
    problems = differences(pair, lambda root: os.chown(root / "fifo", -1, 7))
    assert problems == ["/fifo: gid is 7, expected 0"]


def test_size_and_content(pair: tuple[Path, Path]) -> None:
    def change(root: Path) -> None:
        restore = keep_mtime(root / "dir" / "same-size")
        (root / "dir" / "same-size").write_bytes(b"abcdef")
        restore()

    problems = differences(pair, change)
    assert [p.split(":")[1].split(" is")[0] for p in problems] == [" size", " content sha256"]


def test_content_with_same_size_and_mtime(pair: tuple[Path, Path]) -> None:
    def change(root: Path) -> None:
        restore = keep_mtime(root / "dir" / "same-size")
        (root / "dir" / "same-size").write_bytes(b"ABCDE")
        restore()

    problems = differences(pair, change)
    assert len(problems) == 1 and problems[0].startswith("/dir/same-size: content sha256 is")


def test_hardlink_groups(pair: tuple[Path, Path]) -> None:
    def change(root: Path) -> None:
        restore = keep_mtime(root / "link-b")
        os.unlink(root / "link-b")
        os.link(root / "other", root / "link-b")  # same content and metadata, other inode
        restore()

    problems = differences(pair, change)
    assert problems == [
        "/link-a: hardlinked with [], expected ['/link-b']",
        "/link-b: hardlinked with ['/other'], expected ['/link-a']",
        "/other: hardlinked with ['/link-b'], expected []",
    ]


def test_symlink_target(pair: tuple[Path, Path]) -> None:
    def change(root: Path) -> None:
        restore = keep_mtime(root / "sym")
        os.unlink(root / "sym")
        os.symlink("dir/fil3", root / "sym")  # same length, so the size is equal
        restore()

    assert differences(pair, change) == ["/sym: symlink target is 'dir/fil3', expected 'dir/file'"]


@pytest.mark.parametrize("name", ["null", "loop"])
def test_device_numbers(pair: tuple[Path, Path], name: str) -> None:
    def change(root: Path) -> None:
        st = os.lstat(root / name)
        restore = keep_mtime(root / name)
        os.unlink(root / name)
        os.mknod(root / name, st.st_mode, os.makedev(os.major(st.st_rdev), 9))
        restore()

    problems = differences(pair, change)
    assert len(problems) == 1 and problems[0].startswith(f"/{name}: device is (")


@pytest.mark.parametrize(
    ("name", "value"), [("user.note", b"v2"), ("security.capability", CAP[:-1] + b"\x01")]
)
def test_xattr_value(pair: tuple[Path, Path], name: str, value: bytes) -> None:
    problems = differences(pair, lambda root: os.setxattr(root / "dir" / "file", name, value))
    assert len(problems) == 1 and problems[0].startswith("/dir/file: xattrs are {")


def test_xattr_removed(pair: tuple[Path, Path]) -> None:
    problems = differences(pair, lambda root: os.removexattr(root / "dir" / "file", "user.note"))
    assert len(problems) == 1 and "xattrs are" in problems[0]


def test_xattr_on_directory_added(pair: tuple[Path, Path]) -> None:
    problems = differences(pair, lambda root: os.setxattr(root / "dir", "user.x", b""))
    assert problems == ["/dir: xattrs are {user.x=b''}, expected {}"]


def test_overlay_and_selinux_xattrs_are_ignored(pair: tuple[Path, Path]) -> None:
    def change(root: Path) -> None:
        os.setxattr(root / "dir", "trusted.overlay.opaque", b"y")

    assert differences(pair, change) == []


def test_file_mtime_in_nanoseconds(pair: tuple[Path, Path]) -> None:
    def change(root: Path) -> None:
        ns = os.lstat(root / "other").st_mtime_ns + 1
        os.utime(root / "other", ns=(ns, ns))

    assert differences(pair, change) == [
        "/other: mtime is 1600000000123456790 ns, expected 1600000000123456789 ns"
    ]
    assert differences(pair, lambda root: None, mtimes=False) == []


def test_subsecond_false_compares_whole_seconds(pair: tuple[Path, Path]) -> None:
    def same_second(root: Path) -> None:
        os.utime(root / "other", ns=(1_600_000_000_999_999_999,) * 2)

    assert differences(pair, same_second, subsecond=False) == []

    def next_second(root: Path) -> None:
        os.utime(root / "other", ns=(1_600_000_001_000_000_000,) * 2)

    assert differences(pair, next_second, subsecond=False) == [
        "/other: mtime is 1600000001 s, expected 1600000000 s"
    ]


def test_mtimes_false_ignores_mtimes(pair: tuple[Path, Path]) -> None:
    problems = differences(pair, lambda root: os.utime(root / "other", ns=(0, 0)), mtimes=False)
    assert problems == []


def test_directory_mtime(pair: tuple[Path, Path]) -> None:
    problems = differences(pair, lambda root: os.utime(root / "sticky", ns=(5, 5)))
    assert problems == ["/sticky: mtime is 5 ns, expected 1600000000123456789 ns"]


def test_symlink_mtime(pair: tuple[Path, Path]) -> None:
    def change(root: Path) -> None:
        os.utime(root / "sym", ns=(5, 5), follow_symlinks=False)

    assert differences(pair, change) == ["/sym: mtime is 5 ns, expected 1600000000123456789 ns"]


def test_root_metadata(pair: tuple[Path, Path]) -> None:
    def change(root: Path) -> None:
        restore = keep_mtime(root)
        os.chmod(root, 0o711)
        os.chown(root, 3, 4)
        restore()

    assert differences(pair, change) == [
        "/: mode is 40711, expected 40755",
        "/: uid is 3, expected 0",
        "/: gid is 4, expected 0",
    ]


def test_missing_and_unexpected_entries(pair: tuple[Path, Path]) -> None:
    def change(root: Path) -> None:
        restore = keep_mtime(root / "dir")
        os.rename(root / "dir" / "file", root / "dir" / "moved")
        restore()

    assert differences(pair, change) == [
        "/dir/file: missing (expected a file)",
        "/dir/moved: unexpected file",
    ]


def test_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "escape")
    os.symlink("escape/secret", root / "through")
    tree = snapshot(root)
    assert sorted(tree.entries) == ["", "escape", "through"]
    assert tree.entries["escape"].kind == "symlink"
    assert tree.entries["through"].sha256 is None


def test_assert_same_tree_lists_the_differences(pair: tuple[Path, Path]) -> None:
    os.chmod(pair[1] / "dir" / "same-size", 0o600)
    with pytest.raises(AssertionError, match=r"differ in 1 way.*\n  /dir/same-size: mode is"):
        assert_same_tree(pair[0], snapshot(pair[1]))
