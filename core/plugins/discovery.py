"""Finding and loading plugins: the ``lamina.drivers`` entry-point group.

Built-in drivers and third-party ones are found the same way: an entry point
in the group names a module (or object) that implements
``lamina_register_drivers``. Observer-only plugins use the same group; an
entry point may name a class, which is instantiated once without arguments
(pluggy would otherwise call its methods without ``self``). A plugin that
fails to load does not take lamina down: it is recorded and shown by
``lamina drivers``.

pluggy is imported only when a hook has an implementation to call beyond the
registration hook (an observer plugin, ``--trace``): :class:`Plugins` calls each
plugin's ``lamina_register_drivers`` itself, in entry-point order, and builds the
``pluggy.PluginManager`` on first use of :attr:`Plugins.hook`. Importing pluggy
costs ~10 ms (it imports ``inspect``), a tenth of a ``lamina run``.

The entry points are read by :mod:`lamina.core.plugins.entrypoints` (the same answer as
``importlib.metadata``, without its start-up cost).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import PluginError
from . import hookspec
from .entrypoints import entry_points
from .registry import DriverRegistry

if TYPE_CHECKING:
    import pluggy

ENTRY_POINT_GROUP = "lamina.drivers"
REGISTRATION_HOOK = "lamina_register_drivers"


class Plugins:
    """The loaded plugins, by name in load order, and their pluggy manager when needed."""

    def __init__(self) -> None:
        self.loaded: dict[str, object] = {}
        #: plugins that failed to load or to register: name -> error text
        self.broken: dict[str, str] = {}
        #: where each plugin came from: its distribution, or the entry point's value
        self.origins: dict[str, str] = {}

    def add(self, plugin: object, name: str | None = None) -> None:
        self.loaded[name or f"{type(plugin).__name__}-{id(plugin)}"] = plugin

    def implementations(self, hook: str) -> list[tuple[str, Callable[..., Any]]]:
        """(plugin name, function) of every plugin implementing ``hook``, in load order."""
        return [(name, function) for name, plugin in self.loaded.items()
                for hook_name, function in _marked(plugin) if hook_name == hook]

    @property
    def observed(self) -> bool:
        """Whether any plugin implements a hook other than the registration hook."""
        return any(hook_name != REGISTRATION_HOOK
                   for plugin in self.loaded.values() for hook_name, _ in _marked(plugin))

    @functools.cached_property
    def manager(self) -> pluggy.PluginManager:
        """A pluggy plugin manager with lamina's hook specs and every loaded plugin."""
        import pluggy

        pm = pluggy.PluginManager(hookspec.PROJECT)
        pm.add_hookspecs(hookspec)
        for name, plugin in list(self.loaded.items()):
            try:
                pm.register(plugin, name=name)
            except Exception as exc:  # pluggy's validation: a hook's arguments do not match
                self.broken[name] = f"{type(exc).__name__}: {exc}"
                del self.loaded[name]
        return pm

    @property
    def hook(self) -> Any:
        """pluggy's hook relay (``hook.lamina_layer_created(...)``), or None with no observer.

        The store skips calling hooks when given None, which spares pluggy's import.
        """
        return self.manager.hook if self.observed else None


def _marked(plugin: object) -> list[tuple[str, Callable[..., Any]]]:
    """(hook name, bound function) of each ``@hookimpl`` of a plugin, as pluggy finds them.

    Like pluggy, no property or other descriptor is evaluated: only the module's or
    the class's functions are looked at.
    """
    if isinstance(plugin, ModuleType):
        namespace = vars(plugin)
    else:
        namespace = {}
        for klass in reversed(type(plugin).__mro__):
            namespace.update(vars(klass))
        namespace.update(getattr(plugin, "__dict__", {}))
    found = []
    for attr, value in namespace.items():
        raw = getattr(value, "__func__", value)  # staticmethod/classmethod
        hook = hookspec.implemented_hook(raw)
        if hook is not None and callable(value):
            found.append((hook, getattr(plugin, attr)))
    return found


def load_plugins(extra_plugins: tuple[object, ...] = ()) -> Plugins:
    """Every entry-point plugin (and ``extra_plugins``) loaded, none of them called yet."""
    plugins = Plugins()
    for ep in entry_points(ENTRY_POINT_GROUP):
        if ep.name in plugins.loaded or ep.name in plugins.broken:
            continue
        try:
            plugin = ep.load()
            if isinstance(plugin, type):
                plugin = plugin()
        except Exception as exc:  # a broken third-party package must not break lamina
            plugins.broken[ep.name] = f"{type(exc).__name__}: {exc}"
            continue
        plugins.add(plugin, ep.name)
        plugins.origins[ep.name] = ep.distribution or ep.value
    for plugin in extra_plugins:
        plugins.add(plugin)
    return plugins


def collect_drivers(plugins: Plugins) -> DriverRegistry:
    """Call every plugin's ``lamina_register_drivers`` (load order) and return the registry."""
    registry = DriverRegistry(broken=dict(plugins.broken))
    for name, function in plugins.implementations(REGISTRATION_HOOK):
        registry._current_origin = plugins.origins.get(name, name)
        try:
            function(registry=registry)
        except PluginError:
            raise
        except Exception as exc:
            registry.broken[name] = f"{type(exc).__name__}: {exc}"
    return registry
