"""The driver registry: driver classes by name, filled by ``lamina_register_drivers``.

What a plugin is handed to register its drivers (as tox hands ``tox_register_tox_env``
its registry); finding and loading plugins is :mod:`.discovery`.
"""


from __future__ import annotations

from ..driver import Driver
from ..errors import DriverNotFound, PluginError


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
