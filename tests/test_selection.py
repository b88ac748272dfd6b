"""Automatic driver choice, as Docker makes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.core.config import Config
from lamina.core.driver import Driver
from lamina.core.errors import AmbiguousDriver, DriverError, DriverNotFound, DriverNotSupported
from lamina.core.plugins import DriverRegistry
from lamina.core.selection import choose_driver


def make_driver(driver_name: str, reason: str | None = None, crash: bool = False) -> type[Driver]:
    class Fake(Driver):
        name = driver_name

        @classmethod
        def check_support(cls, root: Path) -> str | None:
            if crash:
                raise RuntimeError("probe exploded")
            return reason

    return Fake


def registry(*drivers: type[Driver]) -> DriverRegistry:
    reg = DriverRegistry()
    for d in drivers:
        reg.register(d)
    return reg


def test_explicit_choice_wins(tmp_path: Path) -> None:
    reg = registry(make_driver("overlay"), make_driver("vfs"))
    choice = choose_driver(Config(driver="vfs", driver_source="--driver", root=tmp_path), reg)
    assert choice.name == "vfs"
    assert "--driver" in choice.reason


def test_explicit_unsupported_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    reg = registry(make_driver("overlay", "no overlay in the kernel"), make_driver("vfs"))
    with pytest.raises(DriverNotSupported, match="no overlay in the kernel"):
        choose_driver(Config(driver="overlay", root=tmp_path), reg)


def test_explicit_unknown_driver_names_the_installed_ones(tmp_path: Path) -> None:
    with pytest.raises(DriverNotFound) as info:
        choose_driver(Config(driver="zfs", root=tmp_path), registry(make_driver("vfs")))
    assert "vfs" in info.value.hint


def test_priority_skips_only_unsupported(tmp_path: Path) -> None:
    reg = registry(make_driver("overlay", "no d_type"), make_driver("btrfs", "not btrfs"),
                   make_driver("vfs"))
    choice = choose_driver(Config(root=tmp_path), reg)
    assert choice.name == "vfs"
    assert ("overlay", "no d_type") in choice.skipped
    assert ("btrfs", "not btrfs") in choice.skipped
    assert "priority" in choice.reason


def test_priority_order_is_respected(tmp_path: Path) -> None:
    reg = registry(make_driver("overlay"), make_driver("vfs"))
    assert choose_driver(Config(root=tmp_path), reg).name == "overlay"
    config = Config(root=tmp_path, driver_priority=("vfs", "overlay"))
    assert choose_driver(config, reg).name == "vfs"


def test_failing_support_check_is_an_error(tmp_path: Path) -> None:
    reg = registry(make_driver("overlay", crash=True), make_driver("vfs"))
    with pytest.raises(DriverError, match="probe exploded"):
        choose_driver(Config(root=tmp_path), reg)


def test_prior_driver_wins_over_priority(tmp_path: Path) -> None:
    reg = registry(make_driver("overlay"), make_driver("vfs"))
    (tmp_path / "vfs" / "dir").mkdir(parents=True)
    choice = choose_driver(Config(root=tmp_path), reg)
    assert choice.name == "vfs"
    assert choice.reason == f"it was used before here: {tmp_path / 'vfs'} is not empty"


def test_empty_home_is_not_prior_state(tmp_path: Path) -> None:
    reg = registry(make_driver("overlay"), make_driver("vfs"))
    (tmp_path / "vfs").mkdir()
    assert choose_driver(Config(root=tmp_path), reg).name == "overlay"


def test_two_prior_drivers_ask_the_user(tmp_path: Path) -> None:
    reg = registry(make_driver("overlay"), make_driver("vfs"))
    (tmp_path / "vfs" / "x").mkdir(parents=True)
    (tmp_path / "overlay" / "x").mkdir(parents=True)
    with pytest.raises(AmbiguousDriver) as info:
        choose_driver(Config(root=tmp_path), reg)
    assert "--driver" in info.value.hint


def test_prior_driver_unsupported_is_an_error(tmp_path: Path) -> None:
    reg = registry(make_driver("overlay", "kernel lost overlay"), make_driver("vfs"))
    (tmp_path / "overlay" / "x").mkdir(parents=True)
    with pytest.raises(DriverNotSupported, match="kernel lost overlay"):
        choose_driver(Config(root=tmp_path), reg)


def test_nothing_works(tmp_path: Path) -> None:
    reg = registry(make_driver("vfs", "read-only root"))
    with pytest.raises(DriverNotSupported, match="read-only root"):
        choose_driver(Config(root=tmp_path), reg)


def test_registering_a_name_twice_is_refused() -> None:
    from lamina.core.errors import PluginError

    reg = registry(make_driver("vfs"))
    with pytest.raises(PluginError, match="twice"):
        reg.register(make_driver("vfs"))
    with pytest.raises(PluginError, match="not a subclass"):
        reg.register(object)  # type: ignore[arg-type]
