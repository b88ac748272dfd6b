"""What a container runs and how: the image's defaults merged with ``run``'s options.

A :class:`ContainerSpec` is fixed when the container is created and stored as JSON in
its record, so ``start`` runs the same thing again whatever happened to the image's
names since. The merge follows Docker's rules: ``--entrypoint`` replaces the image's
entrypoint *and* drops its command; arguments after the image replace the command;
``-e`` adds to and overrides the image's environment; ``-w`` and ``-u`` override.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from ..errors import ContainerError
from ..network.ports import PortMapping

#: PATH a container gets when neither the image nor ``-e`` sets one (Docker's)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: the label of a build step's container: the process identity of the build that made it
#: (core/build/builder.py); the next command removes it once that build is gone
BUILD_OWNER_LABEL = "org.lamina.build.owner"
_ENV_NAME = re.compile(r"[^=\x00]+")


#: an empty mapping for defaults (a named tuple's default is shared by every instance)
_NOTHING: Mapping[str, str] = MappingProxyType({})


class Volume(NamedTuple):
    """A host path (``bind``), a volume of the store (``volume``: ``source`` its name,
    ``options`` "anonymous" for one made for this container) or a fresh tmpfs
    (``tmpfs``) at ``target`` in the container."""

    kind: str
    target: str
    source: str = ""
    readonly: bool = False
    options: str = ""


class ContainerSpec(NamedTuple):
    """What a container runs and how, decided at ``create`` (a named tuple, not a
    dataclass: defining one costs ~1 ms of every ``run``'s start; docs/architecture.md)."""

    image: str | None  # the image id (config digest); None for a build step's container
    image_name: str  # what the user called it, for `ps`
    argv: tuple[str, ...]  # entrypoint + command, as run
    env: tuple[str, ...]
    workdir: str = "/"
    user: str = ""
    hostname: str = ""
    tty: bool = False
    interactive: bool = False
    read_only: bool = False
    network: str = "bridge"
    volumes: tuple[Volume, ...] = ()
    ports: tuple[PortMapping, ...] = ()
    memory: int | None = None
    pids_limit: int | None = None
    cpus: float | None = None
    storage_opts: Mapping[str, str] = _NOTHING
    auto_remove: bool = False
    stop_signal: str = "SIGTERM"
    seccomp: bool = True
    labels: Mapping[str, str] = _NOTHING
    #: the capabilities kept, by name without ``CAP_``; None: Docker's default set
    capabilities: tuple[str, ...] | None = None
    #: ``--add-host``: (name, address) lines added to /etc/hosts
    extra_hosts: tuple[tuple[str, str], ...] = ()
    #: seconds ``stop`` waits before SIGKILL when not told (None: Docker's 10)
    stop_timeout: int | None = None
    #: ``--restart``: no, always, unless-stopped, on-failure or on-failure:N
    restart: str = "no"
    #: ``--log-driver``: json-file (the log core/containers/logs.py keeps) or none
    log_driver: str = "json-file"
    #: ``--log-opt``: max-size, max-file (checked by :func:`parse_log_config`)
    log_options: Mapping[str, str] = _NOTHING
    #: ``--memory-swap`` (memory plus swap, bytes; -1 unlimited) and ``--cpu-shares``
    memory_swap: int | None = None
    cpu_shares: int | None = None
    #: ``--dns``, ``--dns-search``, ``--dns-option``: replace those lines of resolv.conf
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    #: ``--shm-size``: bytes of the container's /dev/shm (None: Docker's 64 MB)
    shm_size: int | None = None
    #: ``--ulimit``: (name, soft, hard) resource limits, -1 unlimited
    ulimits: tuple[tuple[str, int, int], ...] = ()
    #: the health check in Docker's shape (``Test``, durations in ns, ``Retries``): the
    #: image's ``HEALTHCHECK`` with the ``--health-*`` flags over it (core/launcher/health.py)
    healthcheck: Mapping[str, Any] | None = None
    #: ``--init``: the host's init binary (:data:`INIT_BINARIES`) is the container's first
    #: process, bound read-only at :data:`INIT_TARGET`, and runs the command as its child
    init: str | None = None
    #: ``--privileged``: every capability, no seccomp filter, no masked paths, /sys
    #: writable and every host device in /dev (Docker's)
    privileged: bool = False
    #: ``--device``: (host path, container path) of a device node, or of a directory of
    #: them, bound into the container
    devices: tuple[tuple[str, str], ...] = ()
    #: ``--group-add``: supplementary groups (names of the image's /etc/group, or numbers)
    #: of every process, exec'd ones too
    group_add: tuple[str, ...] = ()
    #: ``--network-alias``: more names the others on its user network find it by
    network_aliases: tuple[str, ...] = ()
    #: ``--sysctl``: (name, value) of the container's own namespaces (core/launcher/sysctls.py)
    sysctls: tuple[tuple[str, str], ...] = ()
    #: ``--ipc host`` and ``--uts host``: the host's IPC namespace (its /dev/shm too) and
    #: host name instead of the container's own ("" is its own)
    ipc: str = ""
    uts: str = ""
    #: ``--ip``: its address on its user network ("" for the lowest free one)
    ip: str = ""

    def to_json(self) -> str:
        data = self._asdict()
        data["volumes"] = [v._asdict() for v in self.volumes]
        data["ports"] = [p._asdict() for p in self.ports]
        data["storage_opts"], data["labels"] = dict(self.storage_opts), dict(self.labels)
        data["log_options"] = dict(self.log_options)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ContainerSpec:
        data: dict[str, Any] = json.loads(text)
        data["argv"] = tuple(data["argv"])
        data["env"] = tuple(data["env"])
        data["volumes"] = tuple(Volume(**v) for v in data.get("volumes", ()))
        data["ports"] = tuple(PortMapping(**p) for p in data.get("ports", ()))
        if data.get("capabilities") is not None:
            data["capabilities"] = tuple(data["capabilities"])
        data["extra_hosts"] = tuple(tuple(h) for h in data.get("extra_hosts", ()))
        for key in ("dns", "dns_search", "dns_options"):
            data[key] = tuple(data.get(key, ()))
        data["ulimits"] = tuple(tuple(u) for u in data.get("ulimits", ()))
        data["devices"] = tuple(tuple(d) for d in data.get("devices", ()))
        data["group_add"] = tuple(data.get("group_add", ()))
        data["network_aliases"] = tuple(data.get("network_aliases", ()))
        data["sysctls"] = tuple(tuple(s) for s in data.get("sysctls", ()))
        return cls(**{k: v for k, v in data.items() if k in cls._fields})


def merge_env(image_env: Sequence[str], overrides: Sequence[str]) -> tuple[str, ...]:
    """The image's ``NAME=value`` list with ``overrides`` applied in order; PATH ensured."""
    merged: dict[str, str] = {}
    for entry in [*image_env, *overrides]:
        name, sep, value = entry.partition("=")
        if not _ENV_NAME.fullmatch(name) or not sep:
            raise ContainerError(
                f"invalid environment variable {entry!r}",
                hint="give NAME=VALUE (or NAME alone to pass the host's value)",
            )
        merged[name] = value
    merged.setdefault("PATH", DEFAULT_PATH)
    return tuple(f"{k}={v}" for k, v in merged.items())


def resolve_argv(
    config: Mapping[str, Any], command: Sequence[str], entrypoint: str | None
) -> tuple[str, ...]:
    """Docker's rule: entrypoint + (command or the image's Cmd, unless --entrypoint was given)."""
    if entrypoint is not None:
        base = [entrypoint] if entrypoint else []
        argv = [*base, *command]
    else:
        base = list(config.get("Entrypoint") or [])
        argv = [*base, *(command or (config.get("Cmd") or []))]
    if not argv:
        raise ContainerError(
            "no command given and the image has neither Entrypoint nor Cmd",
            hint="give the command after the image: lamina run IMAGE COMMAND [ARG...]",
        )
    return tuple(argv)


#: Docker's rule for a volume's name
VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")


def check_volume_name(name: str) -> None:
    if not VOLUME_NAME.fullmatch(name):
        raise ContainerError(f"invalid volume name {name!r}",
                             hint="names are [a-zA-Z0-9][a-zA-Z0-9_.-]+ (two characters or "
                             "more); a path starting with / is a host directory")


def anonymous_name() -> str:
    """The name of a new anonymous volume (64 hex digits, as Docker's)."""
    return os.urandom(32).hex()


def parse_volume(text: str) -> Volume:
    """``-v SRC:DST[:ro|rw]``: SRC a host directory (absolute) or a volume's name (made at
    first use); ``-v DST`` alone: a new anonymous volume (named at :func:`name_volumes`)."""
    parts = text.split(":")
    if len(parts) == 1 and parts[0].startswith("/"):
        return Volume("volume", parts[0], options="anonymous")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ContainerError(f"invalid volume {text!r}",
                             hint="use -v /host/path:/container/path[:ro], -v NAME:/path or "
                             "-v /path")
    source, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise ContainerError(f"invalid volume mode {mode!r} in {text!r}", hint="use ro or rw")
    if not target.startswith("/"):
        raise ContainerError(f"volume target {target!r} is not an absolute path",
                             hint="give the path inside the container as /path")
    if source.startswith("/"):
        return Volume("bind", target, source, readonly=mode == "ro")
    check_volume_name(source)
    return Volume("volume", target, source, readonly=mode == "ro")


def name_volumes(volumes: Sequence[Volume], image_volumes: Iterable[str]) -> tuple[Volume, ...]:
    """``volumes`` with an anonymous volume for each of the image's ``VOLUME`` paths that
    no other volume covers, and a new name for each anonymous one."""
    taken = {posixpath.normpath(v.target) for v in volumes}
    wanted = [*volumes, *(Volume("volume", path, options="anonymous")
                          for path in sorted(image_volumes)
                          if posixpath.normpath(path) not in taken)]
    return tuple(v._replace(source=anonymous_name()) if v.kind == "volume" and not v.source
                 else v for v in wanted)


def parse_mount(text: str) -> Volume:
    """Docker's ``--mount type=bind|volume|tmpfs,source=...,target=...[,readonly]``."""
    fields: dict[str, str] = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if key in ("readonly", "ro") and (not eq or value.lower() in ("1", "true")):
            fields["readonly"] = "true"
        elif key in ("readonly", "ro") and value.lower() in ("0", "false"):
            continue
        elif eq and key in ("type", "source", "src", "target", "destination", "dst",
                            "tmpfs-size", "tmpfs-mode"):
            fields[{"src": "source", "destination": "target", "dst": "target"}.get(key, key)] \
                = value
        else:
            raise ContainerError(f"invalid --mount {text!r}: {item!r} is not a field lamina "
                                 "knows", hint="use type=bind|volume|tmpfs,source=...,"
                                 "target=...[,readonly][,tmpfs-size=...][,tmpfs-mode=...]")
    kind, target = fields.get("type", "volume"), fields.get("target", "")
    source, readonly = fields.get("source", ""), "readonly" in fields
    if not target.startswith("/"):
        raise ContainerError(f"invalid --mount {text!r}: target must be an absolute path",
                             hint="give target=/path (in the container)")
    if kind == "bind":
        if not source.startswith("/"):
            raise ContainerError(f"invalid --mount {text!r}: a bind needs an absolute source",
                                 hint="give source=/host/path")
        return Volume("bind", target, source, readonly=readonly)
    if kind == "volume":
        if not source:
            return Volume("volume", target, readonly=readonly, options="anonymous")
        check_volume_name(source)
        return Volume("volume", target, source, readonly=readonly)
    if kind == "tmpfs":
        options = ",".join(f"{k[6:]}={v}" for k, v in fields.items() if k.startswith("tmpfs-"))
        return Volume("tmpfs", target, options=options)
    raise ContainerError(f"invalid --mount {text!r}: type {kind!r} is not bind, volume or "
                         "tmpfs", hint="lamina mounts those three kinds")


def parse_restart(text: str) -> str:
    """``--restart`` as Docker reads it: ``no``, ``always``, ``unless-stopped``,
    ``on-failure`` or ``on-failure:N`` (at most N restarts)."""
    name, _, count = text.partition(":")
    if name in ("no", "always", "unless-stopped") and not count:
        return name
    if name == "on-failure" and (not count or (count.isdigit() and int(count) >= 0)):
        return text
    raise ContainerError(f"invalid --restart {text!r}",
                         hint="use no, always, unless-stopped, on-failure or on-failure:N")


#: the log drivers lamina has, and the options each takes
LOG_DRIVERS: dict[str, frozenset[str]] = {
    "json-file": frozenset({"max-size", "max-file"}),
    "none": frozenset(),
}


def parse_log_config(driver: str, options: Sequence[str]) -> tuple[str, dict[str, str]]:
    """``--log-driver`` and its ``--log-opt KEY=VALUE`` options, checked as Docker's
    json-file driver checks them: a size (``10m``, or -1 for none) and a count >= 1 of
    files, which only a ``max-size`` makes rotate."""
    if driver not in LOG_DRIVERS:
        raise ContainerError(f"logging driver {driver!r} is not supported",
                             hint="lamina has: " + ", ".join(LOG_DRIVERS))
    found: dict[str, str] = {}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq:
            raise ContainerError(f"invalid --log-opt {option!r}", hint="give KEY=VALUE")
        if key not in LOG_DRIVERS[driver]:
            known = ", ".join(sorted(LOG_DRIVERS[driver])) or "none"
            raise ContainerError(f"unknown log option {key!r} for the {driver} log driver",
                                 hint=f"its options: {known}")
        found[key] = value
    if "max-size" in found and found["max-size"] != "-1" \
            and parse_size(found["max-size"], "log max-size") <= 0:
        raise ContainerError("log max-size must be more than 0 bytes",
                             hint="give a size such as 10m (or -1 for no limit)")
    if "max-file" in found:
        if not found["max-file"].isdigit() or int(found["max-file"]) < 1:
            raise ContainerError(f"invalid log max-file {found['max-file']!r}",
                                 hint="give a number of files, at least 1")
        if int(found["max-file"]) > 1 and found.get("max-size", "-1") == "-1":
            raise ContainerError("log max-file needs max-size",
                                 hint="without a size the log is never rotated: add "
                                 "--log-opt max-size=10m")
    return driver, found


#: ``--ulimit`` names (Docker's), each a resource of setrlimit(2)
ULIMITS = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
           "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")


def parse_ulimit(text: str) -> tuple[str, int, int]:
    """``--ulimit NAME=SOFT[:HARD]`` (-1: unlimited), as Docker reads it."""
    name, eq, values = text.partition("=")
    soft_text, colon, hard_text = values.partition(":")
    try:
        if not eq or name not in ULIMITS:
            raise ValueError
        soft = int(soft_text)
        hard = int(hard_text) if colon else soft
    except ValueError:
        raise ContainerError(f"invalid --ulimit {text!r}",
                             hint="give NAME=SOFT[:HARD] with NAME one of "
                             + ", ".join(ULIMITS) + " (-1: unlimited)") from None
    if min(soft, hard) < -1 or (hard != -1 and (soft == -1 or soft > hard)):
        raise ContainerError(f"invalid --ulimit {text!r}: the soft limit is above the hard one",
                             hint="give SOFT <= HARD, e.g. nofile=1024:4096")
    return name, soft, hard


def check_dns(addresses: Sequence[str]) -> tuple[str, ...]:
    """``--dns`` addresses: each an IPv4 or IPv6 address."""
    import ipaddress

    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ContainerError(f"invalid --dns {address!r}: not an IP address",
                                 hint="give a nameserver's address, e.g. 1.1.1.1") from None
    return tuple(addresses)


def merge_healthcheck(image: Mapping[str, Any] | None, *, cmd: str | None = None,
                      durations: Mapping[str, str | None] | None = None,
                      retries: int | None = None, disabled: bool = False
                      ) -> dict[str, Any] | None:
    """The image's ``Healthcheck`` with Docker's ``--health-*`` flags over it:
    ``--health-cmd`` a shell command, ``durations`` by key (``Interval``, ``Timeout``,
    ``StartPeriod``, ``StartInterval``) as Go durations, ``--no-healthcheck``."""
    from ..gotime import parse_check_duration

    if disabled:
        if cmd is not None:
            raise ContainerError("--no-healthcheck and --health-cmd cannot go together",
                                 hint="give one of them")
        return {"Test": ["NONE"]}
    check = dict(image or {})
    if cmd is not None:
        check["Test"] = ["CMD-SHELL", cmd]
    for key, text in (durations or {}).items():
        if text is None:
            continue
        try:
            check[key] = parse_check_duration(text)
        except ValueError:
            raise ContainerError(f"invalid health check {key.lower()} {text!r}",
                                 hint="give a duration of at least 1ms, e.g. 30s or 1m30s"
                                 ) from None
    if retries is not None:
        if retries < 0:
            raise ContainerError(f"invalid --health-retries {retries}",
                                 hint="give 0 (Docker's default, 3) or more")
        check["Retries"] = retries
    return check if check.get("Test") else None


#: where ``--init`` finds an init, in order: Docker's own, then tini's static build
#: (Debian's ``tini`` package; a dynamic one would need the image to have its libc)
INIT_BINARIES = ("/usr/bin/docker-init", "/usr/libexec/docker/docker-init",
                 "/usr/bin/tini-static")
#: where the init is bound in the container: on /dev, the launcher's tmpfs, so that no
#: mount point lands in the container's layer (Docker's /sbin/docker-init would be one)
INIT_TARGET = "/dev/init"


def find_init() -> str:
    """The host's init binary for ``--init``; an error saying what to install if none."""
    for candidate in INIT_BINARIES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise ContainerError("--init needs an init binary, and this host has none",
                         hint="install tini (Debian: apt-get install tini): lamina uses its "
                         "static build, /usr/bin/tini-static")


def restart_policy(spec: ContainerSpec) -> tuple[str, int]:
    """The policy's name and its most restarts (0: no limit)."""
    name, _, count = spec.restart.partition(":")
    return name, int(count or 0)


def parse_host(text: str) -> tuple[str, str]:
    """``--add-host NAME:ADDRESS`` (or ``NAME=ADDRESS``; an IPv6 address may hold colons)."""
    import ipaddress

    name, sep, address = text.partition("=")
    if not sep:
        name, sep, address = text.partition(":")
    address = address.strip("[]")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ContainerError(f"invalid --add-host {text!r}: {address!r} is not an IP address",
                             hint="give NAME:ADDRESS, as db:10.0.0.5") from None
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", name):
        raise ContainerError(f"invalid --add-host {text!r}: {name!r} is not a host name",
                             hint="give NAME:ADDRESS, as db:10.0.0.5")
    return name, address


def parse_device(text: str) -> tuple[str, str]:
    """``--device HOST[:CONTAINER[:PERMISSIONS]]``: a device node or a directory of them
    on the host, the container path (the host's by default). Docker's permissions (r, w,
    m) are enforced by its devices cgroup, which lamina does not use: a device is bound
    in whole, so only permissions that allow reading and writing are taken."""
    import stat

    parts = text.split(":")
    if len(parts) > 3:
        raise ContainerError(f"invalid --device {text!r}",
                             hint="give HOST[:CONTAINER[:PERMISSIONS]], as /dev/fuse")
    if len(parts) == 2 and parts[1] and set(parts[1]) <= set("rwm"):
        parts = [parts[0], parts[0], parts[1]]  # HOST:PERMISSIONS
    host, target, permissions = (*parts, *[""] * (3 - len(parts)))
    target = target or host
    if not host.startswith("/") or not target.startswith("/"):
        raise ContainerError(f"invalid --device {text!r}: paths must be absolute",
                             hint="give HOST[:CONTAINER[:PERMISSIONS]], as /dev/fuse")
    if permissions and not ({"r", "w"} <= set(permissions) <= set("rwm")):
        raise ContainerError(
            f"invalid --device {text!r}: lamina cannot give a device with permissions "
            f"{permissions!r}", hint="a device is bound in whole (there is no devices "
            "cgroup to restrict it): give rw or rwm, or leave the permissions out")
    try:
        mode = os.stat(host).st_mode
    except OSError as exc:
        raise ContainerError(f"--device {text!r}: {host}: {exc.strerror}",
                             hint="give the path of a device node on this host") from None
    if not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISDIR(mode)):
        raise ContainerError(f"--device {text!r}: {host} is not a device",
                             hint="give a character or block device, or a directory of them")
    return host, os.path.normpath(target)


def parse_tmpfs(text: str) -> Volume:
    """``--tmpfs /path[:options]``."""
    target, _, options = text.partition(":")
    if not target.startswith("/"):
        raise ContainerError(f"tmpfs target {target!r} is not an absolute path",
                             hint="use --tmpfs /path[:size=64m,mode=1777]")
    return Volume("tmpfs", target, options=options)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bkmgt]?)b?", re.IGNORECASE)


def parse_size(text: str, what: str) -> int:
    """``512m``, ``1g``, ``1048576`` -> bytes (Docker's binary units)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ContainerError(f"invalid {what} {text!r}", hint="give a size such as 64m or 1g")
    unit = {"": 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4}[match.group(2).lower()]
    return int(float(match.group(1)) * 1024**unit)
