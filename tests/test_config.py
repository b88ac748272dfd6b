"""Configuration: lookup order, strict keys, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.core.config import load_config, parse_config
from lamina.core.driver import Driver, Option
from lamina.core.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_no_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config()
    assert config.driver is None
    assert config.driver_priority == ("overlay", "btrfs", "vfs")
    assert config.source is None


def test_lookup_order_explicit_then_env_then_xdg(tmp_path: Path, monkeypatch) -> None:
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    write(xdg / "lamina" / "lamina.toml", 'driver = "from-xdg"\n')
    assert load_config().driver == "from-xdg"

    env_file = write(tmp_path / "env.toml", 'driver = "from-env"\n')
    monkeypatch.setenv("LAMINA_CONFIG", str(env_file))
    assert load_config().driver == "from-env"

    explicit = write(tmp_path / "explicit.toml", 'driver = "from-flag"\n')
    config = load_config(explicit)
    assert config.driver == "from-flag"
    assert config.source == explicit


def test_lamina_driver_overrides_file_and_flag_overrides_both(tmp_path: Path, monkeypatch) -> None:
    f = write(tmp_path / "c.toml", 'driver = "file"\n')
    monkeypatch.setenv("LAMINA_DRIVER", "env")
    config = load_config(f)
    assert (config.driver, config.driver_source) == ("env", "LAMINA_DRIVER")
    config = load_config(f, driver="flag")
    assert (config.driver, config.driver_source) == ("flag", "--driver")


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_unknown_top_level_key_lists_valid_keys(tmp_path: Path) -> None:
    f = write(tmp_path / "c.toml", 'drvier = "vfs"\n')
    with pytest.raises(ConfigError) as info:
        parse_config(f)
    assert "drvier" in str(info.value)
    assert "driver_priority" in info.value.hint


def test_bad_toml_and_bad_types(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config(write(tmp_path / "a.toml", "driver = \n"))
    with pytest.raises(ConfigError, match="driver_priority must be a list"):
        parse_config(write(tmp_path / "b.toml", 'driver_priority = "vfs"\n'))
    with pytest.raises(ConfigError, match="absolute path"):
        parse_config(write(tmp_path / "c.toml", 'root = "relative/dir"\n'))
    with pytest.raises(ConfigError, match=r"drivers.vfs must be a table"):
        parse_config(write(tmp_path / "d.toml", "[drivers]\nvfs = 1\n"))


def test_full_file(tmp_path: Path) -> None:
    f = write(
        tmp_path / "c.toml",
        'driver = "vfs"\nroot = "/srv/lamina"\nrunroot = "/run/x"\n'
        'driver_priority = ["btrfs", "vfs"]\n[drivers.overlay]\nmountopt = "nodev"\n',
    )
    config = parse_config(f)
    assert config.root == Path("/srv/lamina")
    assert config.runroot == Path("/run/x")
    assert config.driver_priority == ("btrfs", "vfs")
    assert config.options_for("overlay") == {"mountopt": "nodev"}
    assert config.options_for("vfs") == {}


class OptionDriver(Driver):
    name = "optioned"
    options = {"size": Option(str, "layer size limit, e.g. 10G"), "sync": Option(bool, "fsync")}


def test_driver_validates_its_table() -> None:
    assert OptionDriver.validate_options({"size": "1G"}) == {"size": "1G", "sync": None}
    with pytest.raises(ConfigError) as info:
        OptionDriver.validate_options({"szie": "1G"})
    assert "szie" in str(info.value)
    assert "size, sync" in info.value.hint
    with pytest.raises(ConfigError, match="must be bool"):
        OptionDriver.validate_options({"sync": "yes"})


def test_image_and_registry_tables(tmp_path: Path) -> None:
    config = parse_config(write(
        tmp_path / "c.toml",
        '[images]\nkeep_blobs = false\n'
        '[registries."127.0.0.1:5000"]\ninsecure = true\nmirrors = ["m.example:5000"]\n',
    ))
    assert config.images == {
        "default_registry": "docker.io", "keep_blobs": False, "max_concurrent_downloads": 8
    }
    assert config.registry("127.0.0.1:5000") == {"insecure": True, "mirrors": ["m.example:5000"]}
    assert config.registry("elsewhere.example") == {"insecure": False, "mirrors": []}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[images]\nkeep_blob = true\n", r"unknown key\(s\) in \[images\]: keep_blob"),
        ('[images]\nkeep_blobs = "yes"\n', "images.keep_blobs must be a bool"),
        ("[images]\nmax_concurrent_downloads = 0\n", "must be at least 1"),
        ("[images]\nmax_concurrent_downloads = true\n", "must be a int"),
        ('[registries]\nhost = 1\n', r'registries."host" must be a table'),
        ('[registries."h"]\nmirrors = [1]\n', "must be a list of host names"),
    ],
)
def test_bad_image_and_registry_tables(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(write(tmp_path / "c.toml", text))
