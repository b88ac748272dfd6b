"""Entry points read from the metadata files: the same answer as importlib.metadata.

lamina reads the ``lamina.drivers`` group itself (core/plugins/entrypoints.py) because
importlib.metadata costs ~20 ms of every start. These tests hold the two answers
equal on real installed packages: this environment, a package pip installed into
a directory, an egg-info source tree, a shadowed older copy, a zip file on the
path, and an import hook that finds distributions itself.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from conftest import LAMINA, REPO, needs_root, pip_install_target

from lamina.core.plugins import entrypoints
from lamina.core.plugins.entrypoints import EntryPoint, entry_points, parse_entry_points

PLUGIN_SRC = REPO / "tests" / "plugins" / "lamina-dircopy"


def importlib_answer(group: str) -> list[tuple[str, str, str, str]]:
    return [(ep.name, ep.value, ep.group, f"{ep.dist.name} {ep.dist.version}")
            for ep in importlib.metadata.entry_points(group=group)]


def our_answer(group: str) -> list[tuple[str, str, str, str | None]]:
    return [(ep.name, ep.value, ep.group, ep.distribution) for ep in entry_points(group)]


def make_dist(where: Path, name: str, version: str, entry_points_txt: str) -> Path:
    """A minimal installed distribution: METADATA and entry_points.txt in a dist-info dir."""
    meta = where / f"{name.replace('-', '_')}-{version}.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nA description.\n"
        "Name: not-a-header\n"
    )
    (meta / "entry_points.txt").write_text(textwrap.dedent(entry_points_txt).lstrip())
    return meta


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    pip_install_target(PLUGIN_SRC, target)
    return target


def test_every_group_of_this_environment_matches_importlib_metadata() -> None:
    groups = {ep.group for dist in importlib.metadata.distributions()
              for ep in dist.entry_points}
    assert "lamina.drivers" in groups
    for group in sorted(groups):
        assert our_answer(group) == importlib_answer(group), group
    names = [ep.name for ep in entry_points("lamina.drivers")]
    assert {"vfs", "overlay", "btrfs"} <= set(names)


def test_pip_installed_and_egg_info_packages_match(plugin_site: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # a package pip installed into a directory (dist-info), then the same package's
    # source tree with its egg-info (as `pip install -e` or `setup.py develop` leaves it)
    for extra in (plugin_site, PLUGIN_SRC):
        monkeypatch.setattr(sys, "path", [str(extra), *sys.path])
        ours = our_answer("lamina.drivers")
        assert ours == importlib_answer("lamina.drivers")
        assert ("dircopy", "lamina_dircopy", "lamina.drivers", "lamina-dircopy 1.0.0") in ours


def test_first_distribution_of_a_name_on_the_path_wins(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    make_dist(tmp_path / "a", "Demo.Plugin", "2.0", "[demo.group]\nnew = demo_new\n")
    make_dist(tmp_path / "b", "demo-plugin", "1.0", "[demo.group]\nold = demo_old\n")
    make_dist(tmp_path / "b", "other", "3.0", """
        # a comment, then an entry with spaces around '=' and ':'
        [demo.group]
          spaced  =  pkg.mod : obj.attr
        a line without an equals sign
        [another.group]
        not = this_one
    """)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "a"), str(tmp_path / "b"), *sys.path])
    ours = our_answer("demo.group")
    assert ours == [
        ("new", "demo_new", "demo.group", "Demo.Plugin 2.0"),
        ("spaced", "pkg.mod : obj.attr", "demo.group", "other 3.0"),
    ]
    # importlib.metadata fails on the line without '=': compare the rest with it
    (tmp_path / "b" / "other-3.0.dist-info" / "entry_points.txt").write_text(
        "[demo.group]\nspaced = pkg.mod : obj.attr\n"
    )
    assert our_answer("demo.group") == importlib_answer("demo.group")


def test_a_zip_on_the_path_is_read_by_importlib_metadata(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "zipped.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("zipped-1.0.dist-info/METADATA", "Name: zipped\nVersion: 1.0\n")
        zf.writestr("zipped-1.0.dist-info/entry_points.txt", "[demo.zip]\nz = zipped_mod\n")
    monkeypatch.setattr(sys, "path", [str(archive), *sys.path])
    assert our_answer("demo.zip") == [("z", "zipped_mod", "demo.zip", "zipped 1.0")]
    assert our_answer("demo.zip") == importlib_answer("demo.zip")


def test_an_import_hook_that_finds_distributions_is_asked(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    meta = make_dist(tmp_path / "hidden", "hooked", "0.1", "[demo.hook]\nh = hooked_mod\n")

    class Finder:
        """A meta-path hook that serves distributions from a place not on sys.path."""

        @staticmethod
        def find_spec(*args: object) -> None:
            return None

        @staticmethod
        def find_distributions(context: object = None) -> list[importlib.metadata.Distribution]:
            return [importlib.metadata.PathDistribution(meta)]

    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, Finder()])
    assert our_answer("demo.hook") == [("h", "hooked_mod", "demo.hook", "hooked 0.1")]


def test_load_returns_the_module_or_the_named_attribute() -> None:
    assert EntryPoint("x", "lamina.core.errors", "g").load() is sys.modules["lamina.core.errors"]
    from lamina.core.errors import LaminaError

    assert EntryPoint("x", "lamina.core.errors : LaminaError.__init__", "g").load() is (
        LaminaError.__init__
    )
    assert EntryPoint("x", "lamina.core.errors:LaminaError [extra]", "g").load() is LaminaError
    with pytest.raises(ValueError, match="invalid value 'not a module'"):
        EntryPoint("x", "not a module", "g").load()
    with pytest.raises(ModuleNotFoundError):
        EntryPoint("x", "lamina_no_such_module", "g").load()


def test_parse_skips_comments_blank_lines_and_other_groups() -> None:
    text = "[a]\n# c\n\nx = 1\n[b]\ny = 2\n[a]\nz=3\n; not a comment in this format = v\n"
    assert list(parse_entry_points(text, "a")) == [
        ("x", "1"), ("z", "3"), ("; not a comment in this format", "v")
    ]
    assert list(parse_entry_points(text, "c")) == []


def test_name_and_version_come_from_the_metadata_header(tmp_path: Path) -> None:
    meta = make_dist(tmp_path, "some-dist", "4.5.6", "")
    assert entrypoints._name_and_version(str(meta)) == ("some-dist", "4.5.6")
    egg = tmp_path / "old.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 1.0\nName: old\nVersion: 0.9\n")
    assert entrypoints._name_and_version(str(egg)) == ("old", "0.9")


@needs_root
def test_layer_apply_starts_without_the_heavy_imports(tmp_path: Path) -> None:
    """`lamina layer apply` imports none of what only other commands (or nothing) need."""
    (tmp_path / "a").write_text("hi\n")
    tar = tmp_path / "small.tar"
    subprocess.run(["tar", "-C", str(tmp_path), "-cf", str(tar), "a"], check=True)
    code = (
        "import sys\n"
        "from lamina.core.cli import main\n"
        f"rc = main(['--driver', 'vfs', '--root', {str(tmp_path / 'root')!r}, 'layer', 'apply',"
        f" {str(tar)!r}])\n"
        "print('MODULES ' + ' '.join(sorted(sys.modules)))\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    modules = set(out.split("MODULES ", 1)[1].split())
    assert "lamina.drivers.vfs" in modules
    unwanted = {"importlib.metadata", "email", "zipfile", "csv", "tempfile", "shutil",
                "subprocess", "secrets", "rich", "tomllib", "dataclasses", "logging"}
    assert not (unwanted & modules), sorted(unwanted & modules)


def test_cli_lists_drivers_with_their_distribution(tmp_path: Path) -> None:
    out = subprocess.run([*LAMINA, "--root", str(tmp_path / "root"), "drivers", "--format",
                          "json"], capture_output=True, text=True, check=True).stdout
    rows = {row["name"]: row for row in json.loads(out)}
    version = importlib.metadata.version("lamina")
    assert rows["vfs"]["origin"] == f"lamina {version}"
