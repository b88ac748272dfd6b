"""Choosing the storage driver, as Docker does, and saying why.

1. A driver named explicitly (``--driver``, ``$LAMINA_DRIVER``, the config
   file) is used, or its failure to work here is an error: an explicit choice
   is never silently replaced.
2. Else a driver that already has state under the root ("prior driver", its
   home is not empty), so that layers never vanish because a better driver
   became available. Two prior drivers: an error asking the user to choose.
   The home may hold no layer now (all removed): the reason says what was seen.
3. Else the first driver of the priority list that works here, then any
   other installed driver by name. Only "not supported here" moves the choice
   on; any other failure of a support check is an error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from .config import Config
from .driver import Driver
from .errors import AmbiguousDriver, DriverError, DriverNotSupported
from .plugins import DriverRegistry


class Choice(NamedTuple):
    """The chosen driver class and a sentence saying why."""

    driver: type[Driver]
    reason: str
    #: drivers passed over on the way, with why
    skipped: Sequence[tuple[str, str]] = ()

    @property
    def name(self) -> str:
        return self.driver.name


def support_reason(driver: type[Driver], root: Path) -> str | None:
    """Run a driver's support check; a crash in it is an error, not "unsupported"."""
    try:
        return driver.check_support(root)
    except Exception as exc:
        raise DriverError(
            f"the support check of driver {driver.name!r} failed: {type(exc).__name__}: {exc}",
            hint="this is a bug in the driver; choose another driver with --driver meanwhile",
        ) from exc


def prior_drivers(root: Path, registry: DriverRegistry) -> list[str]:
    """Installed drivers whose home under ``root`` holds anything."""
    found = []
    for name in sorted(registry.drivers):
        home = root / name
        try:
            if home.is_dir() and any(os.scandir(home)):
                found.append(name)
        except OSError:
            continue
    return found


def choose_driver(config: Config, registry: DriverRegistry) -> Choice:
    """Pick the driver for ``config.root`` (which must exist)."""
    root = config.root
    if config.driver:
        driver = registry.get(config.driver)
        reason = support_reason(driver, root)
        if reason:
            raise DriverNotSupported(
                driver.name,
                reason,
                hint="choose another driver, or remove the setting to choose automatically",
            )
        return Choice(driver, f"set by {config.driver_source or 'configuration'}")

    prior = prior_drivers(root, registry)
    if len(prior) > 1:
        raise AmbiguousDriver(
            f"layers of several drivers exist under {root}: {', '.join(prior)}",
            hint="choose one with --driver, LAMINA_DRIVER or `driver = ...` in the config file",
        )
    if prior:
        driver = registry.get(prior[0])
        reason = support_reason(driver, root)
        if reason:
            raise DriverNotSupported(
                driver.name,
                f"{reason} (its state is under {root / driver.name})",
                hint="fix the cause, or choose a driver explicitly to use another one",
            )
        return Choice(driver, f"it was used before here: {root / driver.name} is not empty")

    skipped: list[tuple[str, str]] = []
    order = list(config.driver_priority) + sorted(
        set(registry.drivers) - set(config.driver_priority)
    )
    for name in order:
        if name not in registry.drivers:
            skipped.append((name, "not installed"))
            continue
        driver = registry.drivers[name]
        reason = support_reason(driver, root)
        if reason:
            skipped.append((name, reason))
            continue
        listed = name in config.driver_priority
        why = (
            "first supported driver in the priority list "
            f"({', '.join(config.driver_priority)})"
            if listed
            else "no driver of the priority list works here; first other installed driver"
        )
        return Choice(driver, why, skipped)
    details = "; ".join(f"{n}: {r}" for n, r in skipped) or "no drivers are installed"
    raise DriverNotSupported(
        "auto",
        f"no storage driver works on {root} ({details})",
        hint="install a driver plugin or choose another --root",
    )
