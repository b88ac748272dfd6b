"""lamina-fuse-overlayfs: a third-party lamina storage driver built on fuse-overlayfs.

The ``lamina.drivers`` entry point names this module; lamina calls its
``lamina_register_drivers`` hook, which hands over the driver class.
"""

from __future__ import annotations

from lamina.core.plugins.hookspec import hookimpl
from lamina.core.plugins.registry import DriverRegistry

from .driver import FuseOverlayDriver

__all__ = ["FuseOverlayDriver"]


@hookimpl
def lamina_register_drivers(registry: DriverRegistry) -> None:
    registry.register(FuseOverlayDriver)
