"""Choosing the storage driver, as Docker does, and saying why.

1. A driver named explicitly (``--driver``, ``$LAMINA_DRIVER``, the config
   file) is used, or its failure to work here is an error: an explicit choice
   is never silently replaced.
2. Else a driver that already has layers under the root ("prior driver", as
   the store's metadata records them), so that layers never vanish because a
   better driver became available. Two prior drivers: an error asking the user
   to choose.
3. Else the first driver of the priority list that works here, then any
   other installed driver by name. Only "not supported here" moves the choice
   on; any other failure of a support check is an error.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import NamedTuple

from ..config import Config
from ..driver import Driver
from ..errors import AmbiguousDriver, DriverError, DriverNotSupported
from .registry import DriverRegistry


class Choice(NamedTuple):
    """The chosen driver class and a sentence saying why."""

    driver: type[Driver]
    reason: str
    #: drivers passed over on the way, with why
    skipped: Sequence[tuple[str, str]] = ()

    @property
    def name(self) -> str:
        return self.driver.name


def existing_dir(path: Path) -> Path:
    """``path``, or its nearest existing parent: where a root not made yet would be made."""
    where = Path(path)
    while not where.is_dir() and where != where.parent:
        where = where.parent
    return where


def support_reason(driver: type[Driver], root: Path) -> str | None:
    """Run a driver's support check; a crash in it is an error, not "unsupported".

    A root that does not exist yet is checked at its nearest existing parent
    directory, where it would be made: choosing a driver creates nothing.
    """
    try:
        return driver.check_support(existing_dir(root))
    except Exception as exc:
        raise DriverError(
            f"the support check of driver {driver.name!r} failed: {type(exc).__name__}: {exc}",
            hint="this is a bug in the driver; choose another driver with --driver meanwhile",
        ) from exc


def choose_driver(
    config: Config, registry: DriverRegistry, recorded: Collection[str] = ()
) -> Choice:
    """Pick the driver for ``config.root``.

    ``recorded`` names the drivers the store's metadata has layers of (the prior
    drivers): the database, not the drivers' homes, says which driver holds
    layers, so an empty home some command left behind never counts.
    """
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

    prior = sorted(recorded)
    if len(prior) > 1:
        raise AmbiguousDriver(
            f"layers of several drivers exist under {root}: {', '.join(prior)}",
            hint="choose one with --driver, LAMINA_DRIVER or `driver = ...` in the config file",
        )
    if prior:
        if prior[0] not in registry.drivers:
            raise DriverNotSupported(
                prior[0],
                f"its layers are recorded under {root}, but no installed plugin provides it",
                hint=f"install the plugin of driver {prior[0]!r}, or choose a driver explicitly",
            )
        driver = registry.get(prior[0])
        reason = support_reason(driver, root)
        if reason:
            raise DriverNotSupported(
                driver.name,
                f"{reason} (its state is under {root / driver.name})",
                hint="fix the cause, or choose a driver explicitly to use another one",
            )
        return Choice(driver, f"the store's metadata records layers of it under {root}")

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
