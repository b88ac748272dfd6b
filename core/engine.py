"""Putting the parts together: configuration -> plugins -> driver choice -> store.

The CLI and the conformance suite build an :class:`Engine` and ask it for
what they need; each piece is made only when first needed, so ``lamina
drivers`` never opens a store. Nothing here creates anything under the root
until a store is opened for writing: ``info``, ``drivers`` and ``layer ls``
leave a root (or its absence) as they found it.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from .config import Config
from .driver import Driver
from .errors import StoreError
from .layers.store import Store, ensure_root, open_metadata, recorded_drivers
from .plugins.discovery import Plugins, collect_drivers, load_plugins
from .plugins.registry import DriverRegistry
from .plugins.selection import Choice, choose_driver


class Engine:
    """One configuration's plugins, driver choice and store."""

    def __init__(self, config: Config, *, plugins: tuple[object, ...] = ()) -> None:
        self.config = config
        self._extra_plugins = plugins
        self._db: sqlite3.Connection | None = None
        #: drivers the metadata records layers of (read with the driver choice)
        self._recorded: list[str] = []

    @functools.cached_property
    def plugins(self) -> Plugins:
        return load_plugins(self._extra_plugins)

    @functools.cached_property
    def registry(self) -> DriverRegistry:
        return collect_drivers(self.plugins)

    @functools.cached_property
    def root(self) -> Path:
        """The store root, absolute and resolved; it need not exist (see :meth:`open_store`)."""
        return Path(self.config.root).resolve()

    @functools.cached_property
    def choice(self) -> Choice:
        """The driver to use; every installed driver's config table is checked first.

        The metadata is read first: lost or damaged metadata is the error a user
        sees, whatever the command, and the drivers it records layers of are the
        prior drivers of the choice.
        """
        db = open_metadata(self.root)
        try:
            for name, driver_class in self.registry.drivers.items():
                driver_class.validate_options(self.config.options_for(name))
            self._recorded = recorded_drivers(db)
            choice = choose_driver(self._config_at_root(), self.registry, self._recorded)
        except BaseException:
            if db is not None:
                db.close()
            raise
        self._db = db  # handed to the first store opened: the database is opened once
        return choice

    def _config_at_root(self) -> Config:
        return self.config._replace(root=self.root)

    def make_driver(
        self, driver_class: type[Driver] | None = None, *, readonly: bool = False
    ) -> Driver:
        """Instantiate the chosen (or given) driver on its home under the root.

        With ``readonly`` a home that does not exist is not made (nor the root):
        the driver holds no layers there, and an :class:`UnopenedDriver` stands in.
        """
        driver_class = driver_class or self.choice.driver
        home = self.root / driver_class.name
        if not home.is_dir():
            if readonly:
                return UnopenedDriver(driver_class, home)
            self.choice  # noqa: B018 - reads which drivers the metadata records layers of
            if driver_class.name in self._recorded:
                # a new, empty home would hide the loss until a layer is used
                raise StoreError(
                    f"the {driver_class.name} driver's home {home} is gone, but the metadata "
                    f"records layers of it",
                    hint="restore the directory, or run `lamina system repair` to forget "
                    "the layers whose data is gone",
                )
        ensure_root(self.root)
        home.mkdir(mode=0o700, exist_ok=True)
        return driver_class(home, self.config.options_for(driver_class.name))

    def open_store(self, *, readonly: bool = False) -> Store:
        """Open the store with the chosen driver.

        Crash recovery runs here, unless ``readonly``: then nothing is created or
        changed (:class:`Store`), for commands that only read.
        """
        driver = self.make_driver(readonly=readonly)
        db, self._db = self._db, None
        try:
            return Store(self.root, driver, hooks=self.plugins.hook, readonly=readonly, db=db)
        except BaseException:
            if db is not None:
                db.close()
            raise


class UnopenedDriver(Driver):
    """Stands in, on a read, for a driver whose home under the root does not exist.

    Such a driver holds no layers, and opening it would create its home (the
    wedge of a root holding two drivers' homes). It answers ``exists`` and
    ``status`` and is never asked to store anything.
    """

    def __init__(self, driver_class: type[Driver], home: Path) -> None:
        super().__init__(home)
        self.name = driver_class.name  # type: ignore[misc]  # the class's name, per instance
        self.driver_class = driver_class

    def exists(self, layer_id: str) -> bool:
        return False

    def status(self) -> list[tuple[str, str]]:
        return [("Home", f"{self.home} (not made yet: the driver holds no layers)")]
