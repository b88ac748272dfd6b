"""The overlay storage driver, registered through lamina's plugin hook like any third-party one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lamina.core.plugins.hookspec import hookimpl

from .driver import OverlayDriver

if TYPE_CHECKING:
    from lamina.core.plugins.registry import DriverRegistry

__all__ = ["OverlayDriver", "lamina_register_drivers"]


@hookimpl
def lamina_register_drivers(registry: DriverRegistry) -> None:
    """Hand the overlay driver class to lamina."""
    registry.register(OverlayDriver)
