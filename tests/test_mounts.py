"""core.mounts on real mounts: the one-syscall mount-point check agrees with the mount table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lamina.core.host import mounts

pytestmark = pytest.mark.root


def _by_table(path: Path) -> bool:
    target = os.path.realpath(path)
    return any(e.mountpoint == target for e in mounts.mount_table())


def test_is_mountpoint_agrees_with_the_mount_table(tmp_path: Path) -> None:
    point, inside, link = tmp_path / "point", tmp_path / "point" / "sub", tmp_path / "link"
    point.mkdir()
    inside.mkdir()
    link.symlink_to(point)
    paths = [point, inside, link, tmp_path, tmp_path / "missing", Path("/"), Path("/proc")]
    assert [mounts.is_mountpoint(p) for p in paths] == [_by_table(p) for p in paths]
    assert not mounts.is_mountpoint(point)
    mounts.bind_readonly(point, point)  # a directory bound on itself
    try:
        assert mounts.is_mountpoint(point) and mounts.is_mountpoint(link)
        assert [mounts.is_mountpoint(p) for p in paths] == [_by_table(p) for p in paths]
    finally:
        mounts.detach(point)
    assert not mounts.is_mountpoint(point)
