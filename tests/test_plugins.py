"""Third-party plugins, drivers and observers: packages with an entry point, no core change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import REPO, needs_root, pip_install_target, run_lamina

from lamina.core.plugins.discovery import collect_drivers, load_plugins

PLUGIN_SRC = REPO / "tests" / "plugins" / "lamina-dircopy"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package installed as pip installs any third-party package."""
    target = tmp_path_factory.mktemp("site")
    pip_install_target(PLUGIN_SRC, target)
    return target


def env_with(path: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": str(path), **extra}


def test_builtin_driver_found_through_the_entry_point_group() -> None:
    import importlib.metadata

    names = {ep.name for ep in importlib.metadata.entry_points(group="lamina.drivers")}
    assert "vfs" in names
    registry = collect_drivers(load_plugins())
    assert registry.get("vfs").__module__.startswith("lamina.drivers.vfs")
    assert registry.origins["vfs"].startswith("lamina ")


def test_third_party_driver_is_listed(plugin_path: Path, tmp_path: Path) -> None:
    out = run_lamina("drivers", "--format", "json", root=tmp_path / "root",
                     env=env_with(plugin_path))
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert "dircopy" in rows, rows
    assert "vfs" in rows
    assert rows["dircopy"]["origin"] == "lamina-dircopy 1.0.0"
    assert rows["dircopy"]["supported"] is (os.geteuid() == 0)


@needs_root
def test_third_party_driver_selected_by_config(plugin_path: Path, tmp_path: Path,
                                               busybox_tar: Path) -> None:
    config = tmp_path / "lamina.toml"
    config.write_text('driver = "dircopy"\n')
    env = env_with(plugin_path, LAMINA_CONFIG=str(config))
    root = tmp_path / "root"
    info = json.loads(run_lamina("info", "--format", "json", root=root, env=env).stdout)
    assert info["driver"] == "dircopy"
    assert str(config) in info["why"]
    # and it really stores layers: apply a rootfs and read a file back through a mount
    applied = run_lamina("layer", "apply", str(busybox_tar), root=root, env=env)
    layer_id = applied.stdout.decode().strip()
    mounted = run_lamina("layer", "mount", layer_id, root=root, env=env)
    path = Path(mounted.stdout.decode().strip())
    try:
        assert (path / "etc" / "passwd").read_text().startswith("root:")
        assert (path / "bin" / "busybox").stat().st_size > 100_000
    finally:
        run_lamina("layer", "unmount", layer_id, root=root, env=env)
    assert (root / "dircopy" / "layers" / layer_id).is_dir()
    run_lamina("layer", "rm", layer_id, root=root, env=env)


def test_broken_plugin_is_reported_not_fatal(tmp_path: Path) -> None:
    pkg = tmp_path / "src"
    (pkg / "lamina_broken").mkdir(parents=True)
    (pkg / "lamina_broken" / "__init__.py").write_text("raise ImportError('missing libfoo')\n")
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "lamina-broken"\nversion = "0.1"\n'
        '[project.entry-points."lamina.drivers"]\nbroken = "lamina_broken"\n'
        '[tool.setuptools]\npackages = ["lamina_broken"]\n'
    )
    site = tmp_path / "site"
    pip_install_target(pkg, site)
    out = run_lamina("drivers", "--format", "json", root=tmp_path / "root", env=env_with(site))
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert rows["broken"]["supported"] is False
    assert "missing libfoo" in rows["broken"]["reason"]
    assert "vfs" in rows



def test_observer_plugin_from_the_guide_fires_in_the_cli(tmp_path: Path) -> None:
    """The guide's ``Audit`` observer, packaged with the guide's entry point, sees a removal."""
    from test_docs import guide_block

    src = tmp_path / "src"
    (src / "lamina_audit").mkdir(parents=True)
    (src / "lamina_audit" / "__init__.py").write_text(guide_block("python", "class Audit:"))
    entry = guide_block("toml", 'audit = "lamina_audit:Audit"')
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "lamina-audit"\nversion = "0.1"\n'
        f'{entry}[tool.setuptools]\npackages = ["lamina_audit"]\n'
    )
    site = tmp_path / "site"
    pip_install_target(src, site)
    root, env = tmp_path / "root", env_with(site)
    layer_id = run_lamina("--driver", "vfs", "layer", "create", root=root,
                          env=env).stdout.decode().strip()
    removed = run_lamina("--driver", "vfs", "layer", "rm", layer_id, root=root, env=env)
    assert f"vfs removed {layer_id}" in removed.stdout.decode().splitlines(), removed
    # an observer is no driver: `lamina drivers` lists neither it nor a failure of it
    rows = json.loads(run_lamina("drivers", "--format", "json", root=root, env=env).stdout)
    assert "audit" not in {row["name"] for row in rows}
