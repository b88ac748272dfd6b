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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .registry import DriverRegistry

PROJECT = "lamina"

_F = TypeVar("_F", bound=Callable[..., Any])


def hookspec(function: _F) -> _F:
    """Mark a hook specification, as ``pluggy.HookspecMarker("lamina")`` does.

    The markers write the same options, under the same attribute, as pluggy's own
    (tests/test_hooks.py compares them with the installed pluggy's), so pluggy reads
    them unchanged; what they save is pluggy's import (~10 ms: it imports ``inspect``)
    in every command that loads a driver but has no observer to call
    (:mod:`lamina.core.plugins.discovery`).
    """
    setattr(function, f"{PROJECT}_spec", {
        "firstresult": False, "historic": False, "warn_on_impl": None,
        "warn_on_impl_args": None,
    })
    return function


def hookimpl(
    function: _F | None = None, *, hookwrapper: bool = False, optionalhook: bool = False,
    tryfirst: bool = False, trylast: bool = False, specname: str | None = None,
    wrapper: bool = False,
) -> Any:
    """Mark a plugin's function as implementing a hook: ``pluggy.HookimplMarker("lamina")``.

    Used bare (``@hookimpl``) or with pluggy's options (``@hookimpl(tryfirst=True)``);
    see :func:`hookspec` for why it is not pluggy's own marker.
    """
    options = {"wrapper": wrapper, "hookwrapper": hookwrapper, "optionalhook": optionalhook,
               "tryfirst": tryfirst, "trylast": trylast, "specname": specname}

    def mark(func: _F) -> _F:
        setattr(func, f"{PROJECT}_impl", options)
        return func

    return mark if function is None else mark(function)


def implemented_hook(function: object) -> str | None:
    """The hook ``function`` is marked to implement (its name, or its ``specname``), or None."""
    options = getattr(function, f"{PROJECT}_impl", None)
    if not isinstance(options, dict):
        return None
    return options.get("specname") or getattr(function, "__name__", None)


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
