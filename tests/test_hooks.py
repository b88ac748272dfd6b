"""Every hook of lamina.core.plugins.hookspec, implemented by a plugin object and seen to fire.

The observer hooks fire after each store operation succeeded, with the
driver's name and a duration; ``lamina_register_drivers`` hands driver
classes to the registry. docs/writing-a-driver.md documents each and
tests/test_docs.py checks that a test implements each.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_root

from lamina.core.errors import PluginError
from lamina.core.layers.store import Store
from lamina.core.plugins import hookspec
from lamina.core.plugins.discovery import collect_drivers, load_plugins
from lamina.core.plugins.hookspec import hookimpl
from lamina.drivers.vfs.driver import VfsDriver


class Recorder:
    """Observes every layer operation."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @hookimpl
    def lamina_layer_created(self, driver, layer_id, parent, writable, seconds) -> None:
        self.calls.append(("created", dict(driver=driver, layer_id=layer_id, parent=parent,
                                            writable=writable, seconds=seconds)))

    @hookimpl
    def lamina_layer_applied(self, driver, layer_id, diff_id, size, seconds) -> None:
        self.calls.append(("applied", dict(driver=driver, layer_id=layer_id, diff_id=diff_id,
                                            size=size, seconds=seconds)))

    @hookimpl
    def lamina_layer_removed(self, driver, layer_id, seconds) -> None:
        self.calls.append(("removed", dict(driver=driver, layer_id=layer_id, seconds=seconds)))

    @hookimpl
    def lamina_layer_mounted(self, driver, layer_id, path, seconds) -> None:
        self.calls.append(("mounted", dict(driver=driver, layer_id=layer_id, path=path,
                                            seconds=seconds)))

    @hookimpl
    def lamina_layer_unmounted(self, driver, layer_id, seconds) -> None:
        self.calls.append(("unmounted", dict(driver=driver, layer_id=layer_id,
                                              seconds=seconds)))


def one_file_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    return buf.getvalue()


@needs_root
def test_observer_hooks_fire_once_per_operation(tmp_path: Path) -> None:
    recorder = Recorder()
    pm = load_plugins(extra_plugins=(recorder,))
    home = tmp_path / "vfs"
    home.mkdir(mode=0o700)
    data = one_file_tar()
    with Store(tmp_path, VfsDriver(home), hooks=pm.hook) as store:
        base = store.apply_layer(io.BytesIO(data), layer_id="base")
        store.create_layer("base", writable=False, layer_id="child")
        path = store.mount("child")
        store.mount("child")  # counted: no second mounted event
        store.unmount("child")
        store.unmount("child")
        store.remove_layer("child")
    kinds = [kind for kind, _ in recorder.calls]
    # the generic apply fills the new layer through a counted writable mount: it is seen too
    assert kinds == ["created", "mounted", "unmounted", "applied",
                     "created", "mounted", "unmounted", "removed"], kinds
    for _, args in recorder.calls:
        assert args["driver"] == "vfs"
        assert 0 <= args["seconds"] < 60
    created, _, _, applied, child, mounted, unmounted, removed = (a for _, a in recorder.calls)
    assert created["layer_id"] == "base" and created["parent"] is None
    assert applied == dict(applied, layer_id="base", diff_id=base.diff_id, size=len(data))
    assert child["parent"] == "base" and child["writable"] is False
    assert mounted["path"] == str(path) and mounted["layer_id"] == "child"
    assert unmounted["layer_id"] == removed["layer_id"] == "child"


def test_register_drivers_hook_hands_classes_to_the_registry() -> None:
    class Named(VfsDriver):
        name = "hook-test-driver"

    class Plugin:
        @hookimpl
        def lamina_register_drivers(self, registry) -> None:
            registry.register(Named)

    registry = collect_drivers(load_plugins(extra_plugins=(Plugin(),)))
    assert registry.get("hook-test-driver") is Named
    assert registry.get("vfs") is VfsDriver


def test_register_drivers_hook_refuses_a_name_twice() -> None:
    class Clash(VfsDriver):
        name = "vfs"

    class Plugin:
        @hookimpl
        def lamina_register_drivers(self, registry) -> None:
            registry.register(Clash)

    with pytest.raises(PluginError, match="registered twice"):
        collect_drivers(load_plugins(extra_plugins=(Plugin(),)))


@pytest.mark.parametrize("options", [
    {}, {"tryfirst": True}, {"trylast": True, "specname": "lamina_layer_removed"},
    {"hookwrapper": True, "optionalhook": True}, {"wrapper": True},
])
def test_markers_write_what_pluggys_own_write(options: dict) -> None:
    """lamina's markers spare pluggy's import; pluggy must still read them as its own."""
    import pluggy

    def ours() -> None: ...

    def theirs() -> None: ...

    (hookimpl(**options) if options else hookimpl)(ours)
    marker = pluggy.HookimplMarker(hookspec.PROJECT)
    (marker(**options) if options else marker)(theirs)
    assert ours.lamina_impl == theirs.lamina_impl

    def spec() -> None: ...

    pluggy.HookspecMarker(hookspec.PROJECT)(spec)
    assert spec.lamina_spec == hookspec.lamina_layer_removed.lamina_spec


def test_pluggy_is_imported_only_when_an_observer_needs_it() -> None:
    """Loading the drivers calls no pluggy; an observer plugin brings in the real manager."""
    code = (
        "import sys\n"
        "from lamina.core.plugins.discovery import collect_drivers, load_plugins\n"
        "plugins = load_plugins()\n"
        "assert collect_drivers(plugins).get('vfs')\n"
        "assert plugins.hook is None and 'pluggy' not in sys.modules, sorted(plugins.loaded)\n"
        "from lamina.core.plugins.trace import Tracer\n"
        "traced = load_plugins(extra_plugins=(Tracer(),))\n"
        "assert traced.hook.lamina_layer_removed.get_hookimpls()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
