"""Finding and loading plugins: the ``lamina.drivers`` entry-point group.

Built-in drivers and third-party ones are found the same way: an entry point
in the group names a module (or object) that implements
``lamina_register_drivers``. Observer-only plugins use the same group; an
entry point may name a class, which is instantiated once without arguments
(pluggy would otherwise call its methods without ``self``). A plugin that
fails to import does not take lamina down: it is recorded and shown by
``lamina drivers``.

The entry points are read by :mod:`lamina.core.plugins.entrypoints` (the same answer as
``importlib.metadata``, without its start-up cost).
"""

from __future__ import annotations

import pluggy

from ..errors import PluginError
from . import hookspec
from .entrypoints import entry_points
from .registry import DriverRegistry

ENTRY_POINT_GROUP = "lamina.drivers"


def plugin_manager(extra_plugins: tuple[object, ...] = ()) -> pluggy.PluginManager:
    """A plugin manager with every entry-point plugin (and ``extra_plugins``) loaded."""
    pm = pluggy.PluginManager(hookspec.PROJECT)
    pm.add_hookspecs(hookspec)
    broken: dict[str, str] = {}
    origins: dict[str, str] = {}
    for ep in entry_points(ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
            if isinstance(plugin, type):
                plugin = plugin()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken third-party package must not break lamina
            broken[ep.name] = f"{type(exc).__name__}: {exc}"
            continue
        origins[ep.name] = ep.distribution or ep.value
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.lamina_broken_plugins = broken  # type: ignore[attr-defined]
    pm.lamina_origins = origins  # type: ignore[attr-defined]
    return pm


def collect_drivers(pm: pluggy.PluginManager) -> DriverRegistry:
    """Call every plugin's ``lamina_register_drivers`` and return the registry."""
    registry = DriverRegistry(broken=dict(getattr(pm, "lamina_broken_plugins", {})))
    for impl in reversed(pm.hook.lamina_register_drivers.get_hookimpls()):
        origins = getattr(pm, "lamina_origins", {})
        registry._current_origin = origins.get(impl.plugin_name, impl.plugin_name)
        try:
            impl.function(registry=registry)
        except PluginError:
            raise
        except Exception as exc:
            registry.broken[impl.plugin_name] = f"{type(exc).__name__}: {exc}"
    return registry

