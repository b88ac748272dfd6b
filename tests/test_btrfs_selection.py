"""Automatic selection on a btrfs root, and `lamina drivers` where btrfs cannot work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run_lamina

from lamina.conformance.backing import BackingUnavailable, backing_filesystem
from lamina.core.config import DEFAULT_PRIORITY, Config
from lamina.core.plugins.discovery import collect_drivers, load_plugins
from lamina.core.plugins.selection import choose_driver

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices)"),
]


def test_default_priority_on_btrfs_picks_the_first_supported(btrfs_root: Path) -> None:
    """overlay first when it is installed and works here, else btrfs (holds before and after
    the overlay driver is registered)."""
    registry = collect_drivers(load_plugins())
    assert DEFAULT_PRIORITY[:2] == ("overlay", "btrfs")
    expected = next(
        name for name in DEFAULT_PRIORITY
        if name in registry.drivers and registry.drivers[name].check_support(btrfs_root) is None
    )
    choice = choose_driver(Config(root=btrfs_root), registry)
    assert choice.name == expected
    if "overlay" in registry.drivers and registry.drivers["overlay"].check_support(btrfs_root) \
            is None:
        assert choice.name == "overlay"
    assert expected in ("overlay", "btrfs")  # never vfs on a btrfs root


def test_btrfs_when_configured(btrfs_root: Path) -> None:
    registry = collect_drivers(load_plugins())
    by_priority = choose_driver(
        Config(root=btrfs_root, driver_priority=("btrfs", "overlay", "vfs")), registry
    )
    assert by_priority.name == "btrfs"
    assert "priority" in by_priority.reason
    explicit = choose_driver(Config(root=btrfs_root, driver="btrfs", driver_source="test"),
                             registry)
    assert explicit.name == "btrfs"


def test_cli_on_btrfs(btrfs_root: Path) -> None:
    root = btrfs_root / "store"
    run_lamina("--driver", "btrfs", "layer", "create", root=root)  # info creates nothing
    out = run_lamina("--driver", "btrfs", "info", root=root).stdout.decode()
    assert "btrfs" in out and "Quotas" in out and "Native Changes" in out
    drivers = run_lamina("drivers", root=root).stdout.decode()
    line = next(x for x in drivers.splitlines() if x.split()[:1] == ["btrfs"])
    assert line.split()[1] == "yes", drivers


def test_drivers_on_ext4_shows_btrfs_unsupported_with_the_reason(tmp_path: Path) -> None:
    try:
        with backing_filesystem("ext4", tmp_path / "fs", size_mb=64) as fs:
            root = fs.path / "store"
            out = run_lamina("drivers", root=root, env={"COLUMNS": "200"}).stdout.decode()
    except BackingUnavailable as exc:
        pytest.skip(str(exc))
    line = next(x for x in out.splitlines() if x.split()[:1] == ["btrfs"])
    assert line.split()[1] == "no", out
    # the root is not made yet (`drivers` creates nothing): its nearest existing directory
    assert f"{root.parent} is on ext4, not btrfs" in line, out
