"""A lower entry deleted in a writable layer stays deleted, whatever comes in its place.

fuse-overlayfs 1.10 decides from an entry's own history, not from what
lies below its name, whether a lower entry must stay hidden, and some
sequences bring a deleted lower entry back (case 44 found them). The one
a mount option avoids is tested here as a promise; those no option and
no driver code can reach (the daemon serves renames and deletes alone)
are strict ``xfail``: each asserts the right behaviour and fails, so the
day a fixed fuse-overlayfs passes one, pytest reports it, and the README's
"Known problem" and CI's case-44 settings can change.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

BUG = "fuse-overlayfs 1.10 brings the deleted lower entry back (see the README)"


@pytest.fixture
def child(writing: Callable[..., AbstractContextManager[Path]]) -> Iterator[Path]:
    """A writable layer over a base holding ``x/f`` (a directory), ``z`` (a file) and ``k``."""
    with writing("base") as root:
        (root / "x").mkdir()
        (root / "x" / "f").write_bytes(b"lower")
        (root / "z").write_bytes(b"lower")
        (root / "k").write_bytes(b"keep")
    with writing("child", "base") as root:
        yield root


def _gone(path: Path) -> bool:
    return not os.path.lexists(path)


def test_a_new_directory_does_not_show_what_the_deleted_one_held(child: Path) -> None:
    """``rm -r x; mkdir x; ls x``, then look up ``x/f``: gone (the driver's ``static_nlink``)."""
    shutil.rmtree(child / "x")
    (child / "x").mkdir()
    assert os.listdir(child / "x") == []
    assert _gone(child / "x" / "f")
    fd = os.open(child / "x", os.O_RDONLY | os.O_DIRECTORY)
    try:  # what `mv`'s copy does: make the file in the new directory
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd))
    finally:
        os.close(fd)


@pytest.mark.xfail(strict=True, reason=BUG)
def test_a_new_directory_after_a_rename_in_its_parent(child: Path) -> None:
    """The trigger ``static_nlink`` leaves: a rename in the parent, then reading the parent."""
    shutil.rmtree(child / "x")
    (child / "x").mkdir()
    os.rename(child / "k", child / "k2")
    os.listdir(child)
    assert _gone(child / "x" / "f")


@pytest.mark.xfail(strict=True, reason=BUG)
@pytest.mark.parametrize("lower", ["x", "z"])
def test_renaming_away_a_directory_made_where_a_lower_entry_was(child: Path, lower: str) -> None:
    """``rm -r x; mkdir x; mv x y``: ``x`` stays gone (it comes back: no whiteout is left)."""
    if lower == "x":
        shutil.rmtree(child / lower)
    else:
        os.unlink(child / lower)
    (child / lower).mkdir()
    os.rename(child / lower, child / "y")
    assert sorted(os.listdir(child)) == ["k", "y"]


@pytest.mark.xfail(strict=True, reason=BUG)
@pytest.mark.parametrize("kind", ["file", "fifo", "symlink"])
def test_deleting_an_entry_renamed_onto_a_lower_name(child: Path, kind: str) -> None:
    """``mkfifo n; mv n z; rm z``: ``z`` stays gone (the lower file comes back)."""
    if kind == "file":
        (child / "n").write_bytes(b"new")
    elif kind == "fifo":
        os.mkfifo(child / "n")
    else:
        os.symlink("q", child / "n")
    os.rename(child / "n", child / "z")
    os.unlink(child / "z")
    assert _gone(child / "z")
