"""Configuration: where it is found, what it may say, and what overrides it.

The first file found wins (no merging), in this order: ``--config``,
``$LAMINA_CONFIG``, ``$XDG_CONFIG_HOME/lamina/lamina.toml`` (default
``~/.config/lamina/lamina.toml``), ``/etc/lamina/lamina.toml``. No file at
all is fine: every key has a default. ``$LAMINA_DRIVER`` overrides the
file's ``driver``; command-line flags override both.

See docs/configuration.md for every key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from .errors import ConfigError
from .layers.store import default_root

DEFAULT_PRIORITY = ("overlay", "btrfs", "vfs")
TOP_LEVEL_KEYS = {
    "driver": "storage driver name; empty or absent: choose automatically",
    "root": "directory of layers, images and metadata",
    "runroot": "directory of run-time state (locks, mounts of running containers)",
    "driver_priority": "order in which automatic selection tries drivers",
    "drivers": "one table per driver with its options, e.g. [drivers.overlay]",
    "images": "image settings: default_registry, keep_blobs, max_concurrent_downloads",
    "registries": 'one table per registry host: [registries."HOST"] insecure, mirrors',
    "network": "the default bridge network of containers: bridge, subnet, dns",
    "containers": "defaults of new containers: log_driver, log_opts",
}

#: the [images] table's keys, their types and defaults
IMAGE_KEYS: dict[str, tuple[type, Any, str]] = {
    "default_registry": (str, "docker.io", "registry of names without one (busybox)"),
    "keep_blobs": (bool, True, "keep compressed layer blobs after a pull (push without "
                   "recompressing); `lamina prune` reclaims them"),
    "max_concurrent_downloads": (int, 8, "layer blobs downloaded at once by one pull"),
}
#: the keys of one [registries."HOST"] table
REGISTRY_KEYS: dict[str, tuple[type, Any, str]] = {
    "insecure": (bool, False, "plain http (or https without verification) for this registry"),
    "mirrors": (list, [], "hosts tried in order before the registry itself, on pulls"),
}
#: the [network] table's keys: the bridge network containers join by default
#: (core/network/). 10.87.0.0/16 is neither Docker's 172.17.0.0/16 nor podman's
#: 10.88.0.0/16, so the three can run on one host.
NETWORK_KEYS: dict[str, tuple[type, Any, str]] = {
    "bridge": (str, "lamina0", "name of the bridge interface: 1 to 15 of A-Z a-z 0-9 _ . -"),
    "subnet": (str, "10.87.0.0/16", "the bridge's private IPv4 subnet, e.g. 10.87.0.0/16 "
               "(prefix 8 to 29); its first address is the gateway"),
    "dns": (list, ["8.8.8.8", "8.8.4.4"], "nameservers a container gets when the host's "
            "resolv.conf names only 127.x ones (unreachable from the container)"),
}

#: the [containers] table's keys: what ``run``/``create`` use when not told (Docker's
#: daemon.json ``log-driver`` and ``log-opts``; a container's ``--log-opt`` overrides
#: the same keys of a driver it shares). Checked when a container is made with them.
CONTAINER_KEYS: dict[str, tuple[type, Any, str]] = {
    "log_driver": (str, "json-file", "json-file (logs keeps the output) or none"),
    "log_opts": (dict, {}, 'json-file options, e.g. { max-size = "10m", max-file = "3" }'),
}


class _ConfigFields(NamedTuple):
    driver: str | None
    root: Path
    runroot: Path
    driver_priority: tuple[str, ...]
    driver_options: dict[str, dict[str, Any]]
    #: the file read, or None when no file was found
    source: Path | None
    #: where ``driver`` came from: "--driver", "LAMINA_DRIVER", the file, or None
    driver_source: str | None
    #: the [images] table, every key of IMAGE_KEYS present (defaults filled in)
    images: dict[str, Any]
    #: one table per registry host, every key of REGISTRY_KEYS present
    registries: dict[str, dict[str, Any]]
    #: the [network] table, every key of NETWORK_KEYS present (defaults filled in)
    network: dict[str, Any]
    #: the [containers] table, every key of CONTAINER_KEYS present (defaults filled in)
    containers: dict[str, Any]


class Config(_ConfigFields):
    """The effective configuration, and where each part came from.

    Immutable; ``config._replace(key=value)`` makes a changed copy. The default
    root and runroot depend on the user and the environment when it is made.
    """

    __slots__ = ()

    def __new__(
        cls,
        driver: str | None = None,
        root: Path | None = None,
        runroot: Path | None = None,
        driver_priority: tuple[str, ...] = DEFAULT_PRIORITY,
        driver_options: dict[str, dict[str, Any]] | None = None,
        source: Path | None = None,
        driver_source: str | None = None,
        images: dict[str, Any] | None = None,
        registries: dict[str, dict[str, Any]] | None = None,
        network: dict[str, Any] | None = None,
        containers: dict[str, Any] | None = None,
    ) -> Config:
        images = {**{k: v[1] for k, v in IMAGE_KEYS.items()}, **(images or {})}
        registries = {
            host: {**{k: v[1] for k, v in REGISTRY_KEYS.items()}, **table}
            for host, table in (registries or {}).items()
        }
        network = {**{k: v[1] for k, v in NETWORK_KEYS.items()}, **(network or {})}
        containers = {**{k: v[1] for k, v in CONTAINER_KEYS.items()}, **(containers or {})}
        return super().__new__(
            cls, driver, default_root() if root is None else root,
            default_runroot() if runroot is None else runroot, driver_priority,
            {} if driver_options is None else driver_options, source, driver_source,
            images, registries, network, containers,
        )  # fmt: skip

    def registry(self, host: str) -> dict[str, Any]:
        """The settings of registry ``host`` (defaults when the file has no table for it)."""
        return self.registries.get(host) or {k: v[1] for k, v in REGISTRY_KEYS.items()}

    def options_for(self, driver: str) -> dict[str, Any]:
        return dict(self.driver_options.get(driver, {}))


def default_runroot() -> Path:
    if os.geteuid() == 0:
        return Path("/run/lamina")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/lamina-run-{os.geteuid()}"
    return Path(runtime) / "lamina"


def config_candidates(explicit: str | os.PathLike[str] | None = None) -> list[tuple[Path, bool]]:
    """Config paths in lookup order, each with whether it must exist."""
    if explicit:
        return [(Path(explicit), True)]
    env = os.environ.get("LAMINA_CONFIG")
    if env:
        return [(Path(env), True)]
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return [(Path(xdg) / "lamina" / "lamina.toml", False), (Path("/etc/lamina/lamina.toml"), False)]


def load_config(
    explicit: str | os.PathLike[str] | None = None,
    *,
    driver: str | None = None,
    root: str | os.PathLike[str] | None = None,
) -> Config:
    """Read the configuration and apply the environment and flag overrides."""
    config = Config()
    for path, required in config_candidates(explicit):
        if _is_file(path):
            config = parse_config(path)
            break
        if required:
            raise ConfigError(
                f"config file {path} does not exist",
                hint="check the path given with --config or LAMINA_CONFIG",
            )
    env_driver = os.environ.get("LAMINA_DRIVER")
    if env_driver:
        config = config._replace(driver=env_driver, driver_source="LAMINA_DRIVER")
    if driver:
        config = config._replace(driver=driver, driver_source="--driver")
    if root:
        config = config._replace(root=Path(root))
    return config


def _is_file(path: Path) -> bool:
    """Whether a config file is there; one this user cannot even look for is an error.

    Skipping it would run with other settings than the file may hold (HOME=/root
    for a user who cannot enter /root, say).
    """
    try:
        return path.is_file()
    except OSError as exc:
        raise ConfigError(
            f"cannot tell whether the config file {path} exists: {exc.strerror}",
            hint=_UNREADABLE_HINT,
        ) from None


_UNREADABLE_HINT = (
    "make it readable for this user, or point --config, LAMINA_CONFIG or XDG_CONFIG_HOME "
    "to a readable file"
)


def parse_config(path: Path) -> Config:
    """Parse one TOML file strictly: unknown keys and wrong types are errors."""
    import tomllib  # only when a file exists: it is a fifth of a command's start-up

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", hint=_UNREADABLE_HINT) from None
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}",
            hint=f"valid keys: {', '.join(sorted(TOP_LEVEL_KEYS))}",
        )
    kwargs: dict[str, Any] = {"source": path}
    if data.get("driver"):
        kwargs["driver"] = _typed(path, data, "driver", str)
        kwargs["driver_source"] = str(path)
    for key in ("root", "runroot"):
        if key in data:
            value = Path(_typed(path, data, key, str))
            if not value.is_absolute():
                raise ConfigError(f"{path}: {key} must be an absolute path, not {value}")
            kwargs[key] = value
    if "driver_priority" in data:
        priority = _typed(path, data, "driver_priority", list)
        if not all(isinstance(p, str) and p for p in priority):
            raise ConfigError(f"{path}: driver_priority must be a list of driver names")
        kwargs["driver_priority"] = tuple(priority)
    tables = _typed(path, data, "drivers", dict) if "drivers" in data else {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"{path}: drivers.{name} must be a table",
                hint=f"write it as [drivers.{name}] with one option per line",
            )
    kwargs["driver_options"] = tables
    if "images" in data:
        kwargs["images"] = _table(path, "images", _typed(path, data, "images", dict), IMAGE_KEYS)
    if "registries" in data:
        kwargs["registries"] = {
            host: _table(path, f'registries."{host}"', table, REGISTRY_KEYS)
            for host, table in _typed(path, data, "registries", dict).items()
        }
    if "network" in data:
        kwargs["network"] = _network_table(path, _typed(path, data, "network", dict))
    if "containers" in data:
        table = _table(path, "containers", _typed(path, data, "containers", dict),
                       CONTAINER_KEYS)
        if not all(isinstance(v, str) for v in table.get("log_opts", {}).values()):
            raise ConfigError(f"{path}: containers.log_opts values must be strings",
                              hint=CONTAINER_KEYS["log_opts"][2])
        kwargs["containers"] = table
    return Config(**kwargs)


def _table(
    path: Path, name: str, table: Any, keys: dict[str, tuple[type, Any, str]]
) -> dict[str, Any]:
    """Check one table against its keys: unknown keys and wrong types are errors."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {name} must be a table")
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) in [{name}]: {', '.join(unknown)}",
            hint=f"valid keys: {', '.join(sorted(keys))}",
        )
    for key, value in table.items():
        kind = keys[key][0]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                f"{path}: {name}.{key} must be a {kind.__name__}, not {type(value).__name__}",
                hint=keys[key][2],
            )
        if kind is list and not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{path}: {name}.{key} must be a list of host names")
        if kind is int and value < 1:
            raise ConfigError(f"{path}: {name}.{key} must be at least 1")
    return table


def _network_table(path: Path, table: Any) -> dict[str, Any]:
    """Check [network]: a usable interface name, a private-size IPv4 subnet, addresses."""
    import ipaddress  # only for a file with a [network] table
    import re

    table = _table(path, "network", table, NETWORK_KEYS)
    bridge = table.get("bridge", NETWORK_KEYS["bridge"][1])
    # the name also goes into nftables chain names (core/network/nat.py)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", bridge) or bridge in (".", ".."):
        raise ConfigError(f"{path}: network.bridge {bridge!r} is not a valid interface name",
                          hint=NETWORK_KEYS["bridge"][2])
    if "subnet" in table:
        try:
            subnet = ipaddress.IPv4Network(table["subnet"])
        except ValueError as exc:
            raise ConfigError(f"{path}: network.subnet {table['subnet']!r} is not an IPv4 "
                              f"subnet: {exc}", hint=NETWORK_KEYS["subnet"][2]) from None
        if not 8 <= subnet.prefixlen <= 29:
            raise ConfigError(f"{path}: network.subnet {subnet} must have a prefix of 8 to 29 "
                              "bits", hint=NETWORK_KEYS["subnet"][2])
        table["subnet"] = str(subnet)
    for server in table.get("dns", []):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise ConfigError(f"{path}: network.dns: {server!r} is not an IP address",
                              hint=NETWORK_KEYS["dns"][2]) from None
    return table


def _typed(path: Path, data: dict[str, Any], key: str, kind: type) -> Any:
    value = data[key]
    if not isinstance(value, kind):
        raise ConfigError(
            f"{path}: {key} must be a {kind.__name__}, not {type(value).__name__}",
            hint=TOP_LEVEL_KEYS[key],
        )
    return value
