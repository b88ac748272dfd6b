"""The pytest plugin of the conformance suite (entry point ``pytest11: lamina-conformance``).

It is loaded in every pytest run of an environment where lamina is
installed, so it stays inert unless the suite is collected: it only adds
options and fixtures, and skips the suite's own tests (with the reason)
when no driver was named. Run it with::

    pytest --pyargs lamina.conformance --lamina-driver NAME [--lamina-root DIR]
    lamina conformance --driver NAME

Fixtures for the cases (and for a driver author's own extra tests):
``driver_class``, ``capabilities``, ``driver_options``, ``store_factory``,
``store``, ``reference_dir`` and ``assert_tree``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lamina.core.driver import Capabilities, Driver
from lamina.core.errors import LaminaError, NotMounted, StoreClosed
from lamina.core.host import mounts
from lamina.core.layers.store import Store

from . import trees

PACKAGE_DIR = Path(__file__).resolve().parent
NO_DRIVER_REASON = "pass --lamina-driver NAME to run the lamina conformance suite"


@dataclass
class Suite:
    """What the command line chose: the driver, where stores live, its options."""

    driver_class: type[Driver]
    root: Path | None
    options: dict[str, Any] = field(default_factory=dict)


_SUITE = pytest.StashKey[Suite]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lamina", "lamina conformance suite")
    group.addoption(
        "--lamina-driver", metavar="NAME", default=None,
        help="storage driver to test: a registered name (see `lamina drivers`) or "
        "module:Class; without it the conformance tests are skipped",
    )
    group.addoption(
        "--lamina-root", metavar="DIR", default=None,
        help="directory on the backing filesystem under test where the stores are made "
        "(default: a temporary directory)",
    )
    group.addoption(
        "--lamina-config", metavar="FILE", default=None,
        help="lamina TOML config whose [drivers.NAME] table gives the driver's options",
    )


def load_driver_class(name: str) -> type[Driver]:
    """A registered driver by name, or ``package.module:Class`` for one not installed yet."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise pytest.UsageError(f"--lamina-driver {name}: cannot load it: {exc}") from exc
        if not (isinstance(obj, type) and issubclass(obj, Driver)):
            raise pytest.UsageError(f"--lamina-driver {name} is not a Driver subclass")
        return obj
    from lamina.core.plugins.discovery import collect_drivers, load_plugins

    try:
        return collect_drivers(load_plugins()).get(name)
    except LaminaError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        raise pytest.UsageError(f"--lamina-driver: {exc}{hint}") from exc


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lamina_property: case 44, the Hypothesis property test (slow; run it with "
        "-m lamina_property, leave it out with -m 'not lamina_property')"
    )
    name = config.getoption("lamina_driver", None)
    if not name:
        return
    driver_class = load_driver_class(name)
    options: dict[str, Any] = {}
    config_file = config.getoption("lamina_config")
    try:
        if config_file:
            from lamina.core.config import parse_config

            options = parse_config(Path(config_file)).options_for(driver_class.name)
        driver_class.validate_options(options)
    except LaminaError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        raise pytest.UsageError(f"--lamina-config: {exc}{hint}") from exc
    root = config.getoption("lamina_root")
    config.stash[_SUITE] = Suite(driver_class, Path(root).resolve() if root else None, options)


def _is_suite_item(item: pytest.Item) -> bool:
    path = getattr(item, "path", None)
    return path is not None and Path(path).resolve().is_relative_to(PACKAGE_DIR)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _SUITE in config.stash:
        return
    skip = pytest.mark.skip(reason=NO_DRIVER_REASON)
    for item in items:
        if _is_suite_item(item):
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    suite = config.stash.get(_SUITE, None)
    if suite is None:
        return None
    cls = suite.driver_class
    where = str(suite.root) if suite.root else "a temporary directory"
    lines = [f"lamina conformance: driver {cls.name!r} ({cls.__module__}), stores under {where}"]
    if suite.root is not None and suite.root.exists():
        from lamina.core.host.fsinfo import filesystem_type

        lines.append(f"lamina conformance: backing filesystem {filesystem_type(suite.root)}")
    lines.append(f"lamina conformance: {cls.capabilities}")
    if suite.options:
        lines.append(f"lamina conformance: options {suite.options}")
    return lines


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def lamina_suite(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Suite:
    """The chosen driver and root; skips when the suite cannot run here, saying why."""
    suite = request.config.stash.get(_SUITE, None)
    if suite is None:
        pytest.skip(NO_DRIVER_REASON)
    cls = suite.driver_class
    if cls.capabilities.needs_root and os.geteuid() != 0:
        pytest.skip(f"driver {cls.name!r} declares needs_root=True and we are not root")
    if suite.root is None:
        suite.root = tmp_path_factory.mktemp("lamina-root")
    suite.root.mkdir(parents=True, exist_ok=True)
    reason = cls.check_support(suite.root)
    if reason:
        pytest.skip(f"driver {cls.name!r} cannot work on {suite.root}: {reason}")
    return suite


@pytest.fixture(scope="session")
def driver_class(lamina_suite: Suite) -> type[Driver]:
    """The driver class under test."""
    return lamina_suite.driver_class


@pytest.fixture(scope="session")
def capabilities(driver_class: type[Driver]) -> Capabilities:
    """The driver's declared capabilities; cases adapt to them."""
    return driver_class.capabilities


@pytest.fixture(scope="session")
def driver_options(lamina_suite: Suite) -> dict[str, Any]:
    """The driver's options from ``--lamina-config`` (empty without it)."""
    return dict(lamina_suite.options)


class StoreFactory:
    """Makes stores on fresh directories of the root under test, and cleans them all up.

    ``factory()`` makes a store on a new directory; ``factory(store.root)``
    opens another store (a new driver instance) on an existing one, as after
    a restart. :meth:`cleanup` removes every layer top-down, closes every
    store and reports any mount the driver left under a store root.
    """

    def __init__(self, suite: Suite, label: str) -> None:
        self.suite = suite
        self.label = re.sub(r"[^A-Za-z0-9_.-]+", "-", label)[:40]
        self.stores: list[Store] = []
        self.roots: list[Path] = []

    @property
    def driver_class(self) -> type[Driver]:
        return self.suite.driver_class

    def new_root(self) -> Path:
        assert self.suite.root is not None
        root = Path(tempfile.mkdtemp(prefix=self.label + "-", dir=self.suite.root))
        os.chmod(root, 0o700)
        self.roots.append(root.resolve())
        return root.resolve()

    def driver(self, root: Path, options: Mapping[str, Any] | None = None) -> Driver:
        """A new driver instance on ``root`` (home ``root/<name>``, mode 0700)."""
        cls = self.driver_class
        home = Path(root) / cls.name
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(home, dict(self.suite.options if options is None else options))

    def __call__(
        self, root: Path | None = None, *, options: Mapping[str, Any] | None = None
    ) -> Store:
        if root is None:
            root = self.new_root()
        else:
            root = Path(root).resolve()
            if root not in self.roots:
                self.roots.append(root)
        store = Store(root, self.driver(root, options))
        self.stores.append(store)
        return store

    # -- teardown -------------------------------------------------------------------------

    @staticmethod
    def _is_open(store: Store) -> bool:
        try:
            store.layers()
        except StoreClosed:
            return False
        return True

    def cleanup(self) -> list[str]:
        """Remove everything; return the problems found (leaked mounts, failed removes)."""
        problems: list[str] = []
        for root in self.roots:
            problems.extend(self._cleanup_root(root))
        self.stores.clear()
        return problems

    def _cleanup_root(self, root: Path) -> list[str]:
        problems: list[str] = []
        mine = [s for s in self.stores if s.root == root]
        open_stores = [s for s in mine if self._is_open(s)]
        try:
            cleaner = open_stores[0] if open_stores else Store(root, self.driver(root))
        except LaminaError as exc:
            problems.append(f"cannot reopen the store at {root} to clean it up: {exc}")
            cleaner = None
        if cleaner is not None:
            try:
                problems.extend(_remove_all_layers(cleaner))
            except LaminaError as exc:
                problems.append(f"cleaning up {root}: {exc}")
            if cleaner not in mine:
                mine.append(cleaner)
        for store in mine:
            with contextlib.suppress(LaminaError):
                store.close()
        leaked = mounts.mounts_under(root)
        if leaked:
            problems.append(
                f"mounts left under the store root {root} after every layer was unmounted "
                f"and removed and the store closed: {leaked}"
            )
            for point in sorted(leaked, key=len, reverse=True):
                with contextlib.suppress(LaminaError, OSError):
                    mounts.detach(Path(point))
        try:
            _force_rmtree(root)
        except OSError as exc:
            problems.append(f"cannot delete the store root {root}: {exc}")
        return problems


def _remove_all_layers(store: Store) -> list[str]:
    """Drop every user mount reference and remove all layers, children first."""
    problems: list[str] = []
    layers = store.layers()
    for layer in layers:
        while store.mount_count(layer.id):
            try:
                store.unmount(layer.id)
            except NotMounted:
                break
    children: dict[str | None, list[str]] = {}
    for layer in layers:
        children.setdefault(layer.parent, []).append(layer.id)
    known = {layer.id for layer in layers}
    depths: dict[str, int] = {}
    stack = [(lid, 0) for parent, kids in children.items() if parent not in known for lid in kids]
    while stack:
        lid, d = stack.pop()
        depths[lid] = d
        stack.extend((kid, d + 1) for kid in children.get(lid, []))
    for layer_id in sorted(depths, key=lambda lid: -depths[lid]):
        try:
            store.remove_layer(layer_id)
        except LaminaError as exc:
            problems.append(f"removing layer {layer_id} at teardown failed: {exc}")
    return problems


def _force_rmtree(root: Path) -> None:
    def retry(func: Callable[..., Any], path: str, _exc: object) -> None:
        # a read-only directory (a finished layer's tree) may need a chmod first
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
        func(path)

    if not root.exists():
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(root, onexc=retry)
    else:
        shutil.rmtree(root, onerror=retry)


@pytest.fixture
def store_factory(request: pytest.FixtureRequest, lamina_suite: Suite) -> Iterator[StoreFactory]:
    """Make stores on fresh directories; all are cleaned up (and checked for leaks) after."""
    factory = StoreFactory(lamina_suite, request.node.name)
    yield factory
    problems = factory.cleanup()
    if problems:
        pytest.fail("store teardown found problems:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    """A fresh store of the driver under test on a new directory of the root."""
    return store_factory()


@pytest.fixture
def reference_dir(tmp_path: Path) -> Path:
    """A directory on the machine's disk for expected trees, built without the driver."""
    path = tmp_path / "reference"
    path.mkdir()
    return path


@pytest.fixture
def assert_tree(capabilities: Capabilities) -> Callable[..., None]:
    """``assert_tree(expected, actual, what="", mtimes=True)``: full-metadata comparison.

    mtimes are compared to the nanosecond where the driver declares
    ``subsecond_mtime``, else in whole seconds.
    """

    def check(
        expected: Path | trees.Tree, actual: Path | trees.Tree, what: str = "", *,
        mtimes: bool = True,
    ) -> None:
        opts = {"mtimes": mtimes, "subsecond": capabilities.subsecond_mtime}

        def tree(value: Path | trees.Tree) -> trees.Tree:
            return value if isinstance(value, trees.Tree) else trees.snapshot(value, **opts)

        problems = trees.compare(tree(expected), tree(actual))
        if problems:
            shown = "\n  ".join(problems[:60])
            more = f"\n  ... and {len(problems) - 60} more" if len(problems) > 60 else ""
            where = getattr(actual, "root", actual)
            raise AssertionError(
                f"{what or 'tree'}: {where} differs from the expected tree "
                f"in {len(problems)} way(s):\n  {shown}{more}"
            )

    return check
