"""Backing filesystems on loop devices: made, mounted, and always cleaned up."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import needs_root

from lamina.conformance.backing import (
    BackingUnavailable,
    backing_filesystem,
    cleanup_leftovers,
)
from lamina.core.host import mounts
from lamina.core.host.fsinfo import filesystem_type

pytestmark = needs_root


def loops_for(workdir: Path) -> list[str]:
    out = subprocess.run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE"],
                         capture_output=True, text=True).stdout
    return [line for line in out.split() if line.startswith(str(workdir.resolve()))]


def test_each_kind_is_the_filesystem_it_claims(backing: Path, request) -> None:
    expected = request.node.callspec.params["backing"]
    assert filesystem_type(backing) == expected
    (backing / "probe").write_bytes(b"x")


def test_teardown_leaves_nothing(tmp_path: Path) -> None:
    with backing_filesystem("ext4", tmp_path) as fs:
        assert mounts.is_mountpoint(fs.path)
        assert loops_for(tmp_path)
    assert not mounts.mounts_under(tmp_path)
    assert loops_for(tmp_path) == []
    assert not list(tmp_path.glob("*.img"))


def test_leftovers_of_a_killed_run_are_cleaned(tmp_path: Path) -> None:
    cm = backing_filesystem("ext4", tmp_path)
    cm.__enter__()  # as if the process died here: no __exit__
    assert loops_for(tmp_path)
    done = cleanup_leftovers(tmp_path)
    assert any(d.startswith("unmounted") for d in done)
    assert any(d.startswith("detached") for d in done)
    assert loops_for(tmp_path) == [] and not mounts.mounts_under(tmp_path)


def test_ext4_without_filetype_reports_no_d_type(tmp_path: Path) -> None:
    """The stand-in for xfs ftype=0 on kernels that cannot mount XFS V4."""
    from lamina.drivers.overlay.support import dirent_types

    with backing_filesystem("ext4-nodtype", tmp_path) as fs:
        assert filesystem_type(fs.path) == "ext4"
        (fs.path / "d").mkdir()
        (fs.path / "f").write_bytes(b"")
        assert set(dirent_types(fs.path).values()) == {0}  # DT_UNKNOWN for every entry


def test_a_filesystem_the_kernel_refuses_says_why(tmp_path: Path) -> None:
    """xfs with ftype=0 needs the V4 format; kernels built without it refuse the mount."""
    try:
        with backing_filesystem("xfs-noftype", tmp_path) as fs:
            assert filesystem_type(fs.path) == "xfs"
    except BackingUnavailable as exc:
        assert "V4" in str(exc) or "cannot mount" in str(exc)
    assert loops_for(tmp_path) == [] and not mounts.mounts_under(tmp_path)


def test_unknown_kind() -> None:
    with (
        pytest.raises(BackingUnavailable, match="unknown filesystem"),
        backing_filesystem("zfs", Path("/nonexistent")),
    ):
        pass
