"""Putting the parts together: configuration -> plugins -> driver choice -> store.

The CLI and the conformance suite build an :class:`Engine` and ask it for
what they need; each piece is made only when first needed, so ``lamina
drivers`` never opens a store.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pluggy

from .config import Config
from .driver import Driver
from .layers.store import Store, ensure_root
from .plugins.registry import DriverRegistry, collect_drivers, plugin_manager
from .plugins.selection import Choice, choose_driver


class Engine:
    """One configuration's plugins, driver choice and store."""

    def __init__(self, config: Config, *, plugins: tuple[object, ...] = ()) -> None:
        self.config = config
        self._extra_plugins = plugins

    @functools.cached_property
    def plugins(self) -> pluggy.PluginManager:
        return plugin_manager(self._extra_plugins)

    @functools.cached_property
    def registry(self) -> DriverRegistry:
        return collect_drivers(self.plugins)

    @functools.cached_property
    def root(self) -> Path:
        return ensure_root(self.config.root)

    @functools.cached_property
    def choice(self) -> Choice:
        """The driver to use; every installed driver's config table is checked first."""
        for name, driver_class in self.registry.drivers.items():
            driver_class.validate_options(self.config.options_for(name))
        return choose_driver(self._config_at_root(), self.registry)

    def _config_at_root(self) -> Config:
        return self.config._replace(root=self.root)

    def make_driver(self, driver_class: type[Driver] | None = None) -> Driver:
        """Instantiate the chosen (or given) driver on its home under the root."""
        driver_class = driver_class or self.choice.driver
        home = self.root / driver_class.name
        home.mkdir(mode=0o700, exist_ok=True)
        return driver_class(home, self.config.options_for(driver_class.name))

    def open_store(self) -> Store:
        """Open the store with the chosen driver (crash recovery runs here)."""
        return Store(self.root, self.make_driver(), hooks=self.plugins.hook)
