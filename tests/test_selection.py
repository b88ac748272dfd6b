"""Automatic driver choice, as Docker makes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.core.config import Config
from lamina.core.driver import Driver
from lamina.core.errors import AmbiguousDriver, DriverError, DriverNotFound, DriverNotSupported
from lamina.core.plugins.registry import DriverRegistry
from lamina.core.plugins.selection import choose_driver


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
    choice = choose_driver(Config(root=tmp_path), reg, recorded=["vfs"])
    assert choice.name == "vfs"
    assert choice.reason == f"the store's metadata records layers of it under {tmp_path}"


def test_a_home_without_recorded_layers_is_not_prior_state(tmp_path: Path) -> None:
    """The metadata says which driver has layers: a home some command left is no layer."""
    reg = registry(make_driver("overlay"), make_driver("vfs"))
    (tmp_path / "vfs" / "dir").mkdir(parents=True)
    (tmp_path / "vfs" / "meta" / "x.json").parent.mkdir()
    (tmp_path / "vfs" / "meta" / "x.json").write_text("{}")
    assert choose_driver(Config(root=tmp_path), reg).name == "overlay"


def test_two_prior_drivers_ask_the_user(tmp_path: Path) -> None:
    reg = registry(make_driver("overlay"), make_driver("vfs"))
    with pytest.raises(AmbiguousDriver) as info:
        choose_driver(Config(root=tmp_path), reg, recorded=["vfs", "overlay"])
    assert "--driver" in info.value.hint


def test_prior_driver_unsupported_is_an_error(tmp_path: Path) -> None:
    reg = registry(make_driver("overlay", "kernel lost overlay"), make_driver("vfs"))
    with pytest.raises(DriverNotSupported, match="kernel lost overlay"):
        choose_driver(Config(root=tmp_path), reg, recorded=["overlay"])


def test_prior_driver_not_installed_is_an_error(tmp_path: Path) -> None:
    reg = registry(make_driver("overlay"), make_driver("vfs"))
    with pytest.raises(DriverNotSupported, match="no installed plugin provides it") as info:
        choose_driver(Config(root=tmp_path), reg, recorded=["zfs"])
    assert "install the plugin" in info.value.hint


def test_a_root_not_made_yet_is_checked_where_it_would_be_made(tmp_path: Path) -> None:
    seen: list[Path] = []

    class Probe(make_driver("vfs")):  # type: ignore[misc, valid-type]
        @classmethod
        def check_support(cls, root: Path) -> str | None:
            seen.append(root)
            return None

    choose_driver(Config(root=tmp_path / "a" / "b"), registry(Probe))
    assert seen == [tmp_path]
    assert not (tmp_path / "a").exists()


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
