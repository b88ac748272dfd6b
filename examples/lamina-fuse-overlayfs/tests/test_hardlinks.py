"""A write through one name of a hardlinked lower file reaches every name, and stays.

fuse-overlayfs copies up only the name a write comes through; the mount
hides that until it is remounted (see ``_look_up_everything`` in the
driver). The driver copies every name up itself when it mounts a layer
writable. These tests write, unmount and look again, as case 44 does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from lamina_fuse_overlayfs import FuseOverlayDriver

#: the conftest's ``writing`` fixture
Writing = Callable[..., AbstractContextManager[Path]]

T_OLD = 1_609_459_202_123_456_789
T_NEW = 1_609_459_206_987_654_321


def _base_with_pair(writing: Writing, names: tuple[str, str]) -> None:
    """Layer ``base``: one file under both ``names``, made through a writable mount."""
    with writing("base") as root:
        (root / "d").mkdir()
        (root / names[0]).write_bytes(b"old content")
        os.link(root / names[0], root / names[1])
        os.utime(root / names[0], ns=(T_OLD, T_OLD))


def _seen(root: Path, names: tuple[str, str]) -> list[tuple[bytes, int, int, int]]:
    out = []
    for name in names:
        st = os.lstat(root / name)
        out.append(((root / name).read_bytes(), st.st_mtime_ns, st.st_nlink, st.st_ino))
    return out


@pytest.mark.parametrize("names", [("a", "d/a"), ("d/a", "a"), ("p1", "p2")],
                         ids=["two-dirs", "two-dirs-reversed", "one-dir"])
@pytest.mark.parametrize("write", ["truncate", "overwrite"])
def test_write_through_one_name_reaches_both_after_remount(
        driver: FuseOverlayDriver, writing: Writing, names: tuple[str, str], write: str) -> None:
    _base_with_pair(writing, names)
    with writing("child", "base") as root:
        if write == "truncate":
            os.truncate(root / names[0], 3)
            want = b"old"
        else:
            with open(root / names[0], "r+b") as f:
                f.truncate(0)
                f.write(b"NEW")
            want = b"NEW"
        os.utime(root / names[0], ns=(T_NEW, T_NEW))
    diff = driver.layers / "child" / "diff"
    stored = [os.lstat(diff / n) for n in names]  # both names, one inode, in the upper
    assert stored[0].st_ino == stored[1].st_ino and stored[0].st_nlink == 2
    for readonly in (False, True):
        root = driver.mount("child", ["base"], readonly=readonly)
        try:
            seen = _seen(root, names)
        finally:
            driver.unmount("child")
        assert [s[:3] for s in seen] == [(want, T_NEW, 2)] * 2, (readonly, seen)
        assert seen[0][3] == seen[1][3]
    driver.create("grandchild", ["child", "base"], writable=False)
    root = driver.mount("grandchild", ["child", "base"], readonly=True)
    try:
        assert [s[:3] for s in _seen(root, names)] == [(want, T_NEW, 2)] * 2
    finally:
        driver.unmount("grandchild")
    root = driver.mount("base", [], readonly=True)
    try:  # the parent is untouched
        assert [s[:3] for s in _seen(root, names)] == [(b"old content", T_OLD, 2)] * 2
    finally:
        driver.unmount("base")


def test_a_lone_lower_file_is_not_copied_up(driver: FuseOverlayDriver, writing: Writing) -> None:
    """Only hardlinked files are copied up by the mount: a plain file stays below."""
    with writing("base") as root:
        (root / "alone").write_bytes(b"x")
        (root / "one").write_bytes(b"y")
        os.link(root / "one", root / "two")
        os.unlink(root / "one")  # "two" is left alone: st_nlink 1 again
    with writing("child", "base"):
        pass
    assert os.listdir(driver.layers / "child" / "diff") == []


def test_a_link_to_a_lower_file_from_a_new_directory_stays_one_inode(
        driver: FuseOverlayDriver, writing: Writing) -> None:
    """``ln b c/a`` with ``b`` below and ``c`` new: after remounting, still one inode.

    fuse-overlayfs copies ``b`` up with an origin mark; unless the driver
    clears it, the next mount numbers ``b`` by the lower file and ``c/a``
    by the upper one, two files with ``st_nlink`` 1 each.
    """
    with writing("base") as root:
        (root / "b").write_bytes(b"lower")
    with writing("child", "base") as root:
        (root / "c").mkdir()
        os.link(root / "b", root / "c" / "a")
    for readonly in (False, True):
        root = driver.mount("child", ["base"], readonly=readonly)
        try:
            b, a = os.lstat(root / "b"), os.lstat(root / "c" / "a")
        finally:
            driver.unmount("child")
        assert (b.st_ino, b.st_nlink) == (a.st_ino, 2), (readonly, b, a)
    assert not (driver.layers / "child" / "wrote").exists()
