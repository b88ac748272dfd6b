"""The btrfs storage driver, registered through lamina's plugin hook like any third-party one.

Importing this package does not import ``btrfsutil``: the driver loads it
only when it is used (``check_support`` or a new driver instance).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lamina.core.plugins.hookspec import hookimpl

from .driver import BtrfsDriver

if TYPE_CHECKING:
    from lamina.core.plugins.registry import DriverRegistry

__all__ = ["BtrfsDriver", "lamina_register_drivers"]


@hookimpl
def lamina_register_drivers(registry: DriverRegistry) -> None:
    """Hand the btrfs driver class to lamina."""
    registry.register(BtrfsDriver)
