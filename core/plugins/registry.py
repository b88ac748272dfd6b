"""Finding driver plugins: the ``lamina.drivers`` entry-point group.

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

from ..driver import Driver
from ..errors import DriverNotFound, PluginError
from . import hookspec
from .entrypoints import entry_points

ENTRY_POINT_GROUP = "lamina.drivers"


class DriverRegistry:
    """Driver classes by name, filled by ``lamina_register_drivers``."""

    def __init__(self, drivers: dict[str, type[Driver]] | None = None,
                 origins: dict[str, str] | None = None,
                 broken: dict[str, str] | None = None) -> None:
        self.drivers: dict[str, type[Driver]] = {} if drivers is None else drivers
        #: where each driver came from (the distribution or plugin name)
        self.origins: dict[str, str] = {} if origins is None else origins
        #: plugins that failed to load: entry point name -> error text
        self.broken: dict[str, str] = {} if broken is None else broken
        self._current_origin = "?"

    def __repr__(self) -> str:
        return f"DriverRegistry(drivers={sorted(self.drivers)}, broken={sorted(self.broken)})"

    def register(self, driver_class: type[Driver]) -> None:
        """Add a driver class; its ``name`` must be unique and non-empty."""
        if not (isinstance(driver_class, type) and issubclass(driver_class, Driver)):
            raise PluginError(
                f"plugin {self._current_origin!r} registered {driver_class!r}, "
                "which is not a subclass of lamina.core.driver.Driver"
            )
        name = driver_class.name
        if not name:
            raise PluginError(f"driver class {driver_class.__qualname__} has no name")
        if name in self.drivers and self.drivers[name] is not driver_class:
            raise PluginError(
                f"driver {name!r} is registered twice: by {self.origins[name]} "
                f"and by {self._current_origin}",
                hint="uninstall one of the two packages",
            )
        self.drivers[name] = driver_class
        self.origins[name] = self._current_origin

    def get(self, name: str) -> type[Driver]:
        try:
            return self.drivers[name]
        except KeyError:
            known = ", ".join(sorted(self.drivers)) or "none"
            raise DriverNotFound(
                f"no storage driver named {name!r} is installed",
                hint=f"installed drivers: {known}; `lamina drivers` lists them",
            ) from None


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

