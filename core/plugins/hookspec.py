"""The plugin hooks of lamina (pluggy).

A plugin is any module or object with functions marked ``@hookimpl`` (or a
class of such methods, instantiated when loaded). It is found through the
``lamina.drivers`` entry-point group, drivers and observers alike; the
built-in drivers use exactly that path. Two kinds of hook:

* the registration hook, :func:`lamina_register_drivers`, through which a
  plugin hands driver classes to the core;
* observer hooks, called after each layer operation succeeded. They may not
  change anything and their return values are ignored; an exception in one
  is a bug in that plugin and propagates. ``lamina --trace`` is built on them
  (:mod:`lamina.core.plugins.trace`).

Every hook is documented in ``docs/writing-a-driver.md``; a test fails when
one is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .registry import DriverRegistry

PROJECT = "lamina"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def lamina_register_drivers(registry: DriverRegistry) -> None:
    """Register driver classes: call ``registry.register(MyDriver)`` per class.

    Called once when the plugin manager is built, before any driver is
    chosen. Registering a name twice is a :class:`PluginError`.
    """


@hookspec
def lamina_layer_created(
    driver: str, layer_id: str, parent: str | None, writable: bool, seconds: float
) -> None:
    """A layer was created (still empty and incomplete)."""


@hookspec
def lamina_layer_applied(
    driver: str, layer_id: str, diff_id: str, size: int, seconds: float
) -> None:
    """A layer tar was applied to a layer, which is now complete."""


@hookspec
def lamina_layer_removed(driver: str, layer_id: str, seconds: float) -> None:
    """A layer and its content were removed."""


@hookspec
def lamina_layer_mounted(driver: str, layer_id: str, path: str, seconds: float) -> None:
    """A layer was mounted for its first user (counted mounts fire once)."""


@hookspec
def lamina_layer_unmounted(driver: str, layer_id: str, seconds: float) -> None:
    """The last user of a layer's mount released it and it was unmounted."""
