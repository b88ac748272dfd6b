"""Container commands: ``create``, ``run``, ``start``, ``ps``, ``rm``, ``logs``, ``stop``,
``kill``, ``wait``, ``exec``, ``diff``, ``commit``, ``container prune``, with Docker's flags
and output.

``run`` in the foreground is the container's monitor (core/launcher/monitor.py): its
exit status is the container's, and the signals it gets reach the container. Every
command here first records containers whose monitor vanished as exited
(:func:`~lamina.core.launcher.monitor.reconcile`), so no row says "running" for a
process that is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ContainerError, ImageNotFound, LaminaError, host_error
from .output import print_json, print_table, report

if TYPE_CHECKING:
    from ..containers import logs
    from ..containers.spec import ContainerSpec, Volume
    from ..containers.store import Container, ContainerStore
    from ..engine import Engine
    from ..layers.store import Store
    from .filters import PruneFilter


# -- create and run ------------------------------------------------------------------------


def create_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="the container's name (default: a random one)")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("-e", "--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="set an environment variable (NAME alone: the host's value)")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE",
                   help="read NAME=VALUE lines from a file")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY[=VALUE]",
                   help="set a label on the container (over the image's)")
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("-u", "--user", help="NAME|UID[:GROUP|GID] from the container's /etc/passwd")
    p.add_argument("-h", "--hostname", help="the container's host name")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]",
                   help="a host path (/path) or a volume (NAME, made at first use) at DST; "
                   "DST alone: a new anonymous volume")
    p.add_argument("--mount", action="append", default=[],
                   metavar="type=bind|volume|tmpfs,source=...,target=...[,readonly]",
                   help="the same in Docker's long form")
    p.add_argument("--volumes-from", action="append", default=[],
                   metavar="CONTAINER[:ro|:rw]", help="the volumes and binds of a container")
    p.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:OPTIONS]",
                   help="mount a tmpfs at PATH")
    p.add_argument("--read-only", action="store_true", help="mount the root read-only")
    p.add_argument("--entrypoint", help="override the image's entrypoint ('' clears it)")
    p.add_argument("--network", "--net", default="bridge", metavar="NETWORK",
                   help="bridge (default), host, none, or a network made by lamina network "
                   "create (its containers find each other by name)")
    p.add_argument("--ip", metavar="ADDRESS",
                   help="its IPv4 address on its user network (default: the lowest free)")
    p.add_argument("--network-alias", action="append", default=[], metavar="ALIAS",
                   help="another name the containers of its user network find it by")
    p.add_argument("-p", "--publish", action="append", default=[],
                   metavar="[[IP:]HOST:]CONTAINER[/PROTO]",
                   help="publish a container's port (without HOST: any free one)")
    p.add_argument("-P", "--publish-all", action="store_true",
                   help="publish every exposed port (the image's and --expose) on a free "
                   "host port")
    p.add_argument("--expose", action="append", default=[], metavar="PORT[/PROTO]",
                   help="expose a port (published by -P)")
    p.add_argument("-m", "--memory", help="memory limit (e.g. 64m)")
    p.add_argument("--pids-limit", type=int, help="most processes at once")
    p.add_argument("--cpus", type=float, help="CPUs' worth of time (e.g. 0.5)")
    p.add_argument("--storage-opt", action="append", default=[], metavar="size=N",
                   help="writable layer options (size=N on drivers with quotas)")
    p.add_argument("--security-opt", action="append", default=[],
                   metavar="seccomp=unconfined", help="security options")
    p.add_argument("--ipc", choices=["private", "shareable", "host"], default="private",
                   help="host: the host's IPC namespace and /dev/shm (default: its own)")
    p.add_argument("--uts", choices=["host"],
                   help="host: the host's host name (default: its own)")
    p.add_argument("--sysctl", action="append", default=[], metavar="NAME=VALUE",
                   help="a kernel setting of its own namespaces (net.*, kernel.shm*, ...)")
    p.add_argument("--group-add", action="append", default=[], metavar="GROUP",
                   help="a supplementary group of its processes (a name or a number)")
    p.add_argument("--privileged", action="store_true",
                   help="every capability, no seccomp filter, no masked paths, every host "
                   "device")
    p.add_argument("--device", action="append", default=[],
                   metavar="HOST[:CONTAINER[:rwm]]",
                   help="a host device (or a directory of them) in the container")
    p.add_argument("--cap-add", action="append", default=[], metavar="CAP",
                   help="keep a capability Docker's default set drops (NET_ADMIN, ALL)")
    p.add_argument("--cap-drop", action="append", default=[], metavar="CAP",
                   help="drop a capability of the default set (CHOWN, ALL)")
    p.add_argument("--add-host", action="append", default=[], metavar="NAME:ADDRESS",
                   help="add a line to the container's /etc/hosts")
    p.add_argument("--stop-signal", help="the signal stop sends first (default: the "
                   "image's, else SIGTERM)")
    p.add_argument("--restart", default="no", metavar="POLICY",
                   help="no (default), always, unless-stopped, on-failure[:N]: start it "
                   "again when it exits (after a reboot: lamina system boot)")
    p.add_argument("--stop-timeout", type=int, metavar="SECONDS",
                   help="how long stop waits before SIGKILL when not told (default 10)")
    p.add_argument("--memory-swap", metavar="SIZE",
                   help="memory plus swap (e.g. 1g; -1: unlimited swap); needs --memory")
    p.add_argument("--cpu-shares", type=int, metavar="N",
                   help="relative CPU weight against other containers (default 1024)")
    p.add_argument("--dns", action="append", default=[], metavar="ADDRESS",
                   help="a nameserver for the container's /etc/resolv.conf")
    p.add_argument("--dns-search", action="append", default=[], metavar="DOMAIN",
                   help="a search domain of its /etc/resolv.conf ('.' for none)")
    p.add_argument("--dns-option", action="append", default=[], metavar="OPTION",
                   help="an options entry of its /etc/resolv.conf (ndots:2)")
    p.add_argument("--shm-size", metavar="SIZE", help="size of /dev/shm (default 64m)")
    p.add_argument("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]",
                   help="a resource limit of its processes (nofile=1024:4096; -1 unlimited)")
    p.add_argument("--cidfile", metavar="FILE", help="write the container's id to FILE")
    p.add_argument("--init", action="store_true",
                   help="run an init (tini) as the first process: it passes signals on "
                   "and reaps zombies")
    p.add_argument("--health-cmd", metavar="COMMAND",
                   help="a shell command whose exit 0 means healthy (over the image's)")
    for flag, what in (("interval", "between checks (default 30s)"),
                       ("timeout", "a check may run (default 30s)"),
                       ("start-period", "failures do not count at first (default 0s)"),
                       ("start-interval", "between checks in the start period (default 5s)")):
        p.add_argument(f"--health-{flag}", metavar="DURATION", help=f"how long {what}")
    p.add_argument("--health-retries", type=int, metavar="N",
                   help="failures in a row that make it unhealthy (default 3)")
    p.add_argument("--no-healthcheck", action="store_true",
                   help="no health check, whatever the image says")
    p.add_argument("--log-driver", metavar="DRIVER",
                   help="json-file (logs keeps the output) or none (default: the config's "
                   "[containers] log_driver, else json-file)")
    p.add_argument("--log-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="json-file: max-size=10m rotates the log at that size, "
                   "max-file=3 keeps that many files (default: the config's log_opts, "
                   "else one file without limit)")
    p.add_argument("--pull", choices=["missing", "always", "never"], default="missing",
                   help="when to pull the image (default: missing)")
    p.add_argument("--help", action="help", help="show this help message and exit")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")


def run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--detach", action="store_true",
                   help="run in the background and print the container's id")
    create_arguments(p)


def _env(args: argparse.Namespace) -> list[str]:
    entries: list[str] = []
    for path in args.env_file:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise ContainerError(f"cannot read env file {path}: {exc.strerror}",
                                 hint="give a readable file of NAME=VALUE lines") from None
        entries += [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    entries += args.env
    out = []
    for entry in entries:
        if "=" not in entry:
            if entry in os.environ:
                out.append(f"{entry}={os.environ[entry]}")
            continue  # Docker drops a bare name the host does not have
        out.append(entry)
    return out


def _resolve_image(engine: Engine, text: str, pull: str, store: Store | None = None) -> str:
    """The id of the image ``text`` names, pulled first when missing (Docker's habit).

    Looked up in ``store`` when the caller has one open, else in a read-only one.
    """
    from ..images.store import ImageStore
    from .image import _reference, find_image, pull_reference

    if pull != "always":
        with contextlib.ExitStack() as stack:
            if store is None:
                store = stack.enter_context(engine.open_store(readonly=True))
            try:
                return find_image(ImageStore(store), text, engine)
            except ImageNotFound:
                if pull == "never":
                    raise
    from ..images.platform import host_platform

    ref = _reference(text, engine)
    if pull != "always":
        print(f"Unable to find image '{ref.familiar}' locally", file=sys.stderr, flush=True)
    return pull_reference(engine, ref, platform=host_platform(), out=sys.stderr).image_id


def _spec(args: argparse.Namespace, engine: Engine, image_id: str, store: Store) -> ContainerSpec:
    from ..containers.spec import (
        ContainerSpec,
        check_dns,
        find_init,
        merge_env,
        merge_healthcheck,
        parse_device,
        parse_host,
        parse_mount,
        parse_size,
        parse_tmpfs,
        parse_ulimit,
        parse_volume,
        resolve_argv,
    )
    from ..images.store import ImageStore

    config = ImageStore(store).config(image_id).raw.get("config") or {}
    seccomp = not args.privileged
    for opt in args.security_opt:
        if opt in ("seccomp=unconfined", "seccomp:unconfined"):
            seccomp = False
        else:
            raise ContainerError(f"unsupported --security-opt {opt!r}",
                                 hint="lamina knows seccomp=unconfined")
    storage: dict[str, str] = {}
    for opt in args.storage_opt:
        key, sep, value = opt.partition("=")
        if not sep:
            raise ContainerError(f"invalid --storage-opt {opt!r}", hint="use size=10G")
        storage[key] = value
    memory = parse_size(args.memory, "memory limit") if args.memory else None
    pids = args.pids_limit if args.pids_limit and args.pids_limit > 0 else None
    swap = shares = None
    if (memory is not None or pids is not None or args.cpus or args.memory_swap
            or args.cpu_shares):
        from ..launcher.cgroups import Limits

        # refused now, not at start
        checked = Limits.parse(memory=memory, memory_swap=args.memory_swap, pids_limit=pids,
                               cpus=args.cpus, cpu_shares=args.cpu_shares)
        swap, shares = checked.memory_swap, checked.cpu_shares
    shm = parse_size(args.shm_size, "--shm-size") if args.shm_size else None
    if shm is not None and shm <= 0:
        raise ContainerError("--shm-size must be more than 0 bytes", hint="give e.g. 256m")
    from ..network import MODES

    if args.network not in MODES:
        from ..network.attachment import check_mode
        from ..network.networks import NetworkStore

        check_mode(args.network)
        chosen = NetworkStore(store.root).get(args.network)
        args.network = chosen.name  # an id: its name
        if args.ip:
            from ..network.addresses import check_address

            check_address(chosen.bridge_network(()), args.ip)  # free or not: at its start
        if chosen.internal and args.publish:  # refused here, not at its start
            raise ContainerError(f"-p cannot be used on the internal network {chosen.name}",
                                 hint="publish ports on a network that is not --internal")
    if args.ip and args.network in MODES:
        raise ContainerError("user specified IP address is supported on user defined "
                             "networks only", hint="lamina network create NAME, then "
                             "--network NAME --ip ADDRESS")
    if args.uts == "host" and args.hostname:
        raise ContainerError("conflicting options: --hostname and --uts host",
                             hint="the host's name is the container's with --uts host")
    if args.network_alias and args.network in MODES:
        raise ContainerError("network-scoped aliases are only supported for user-defined "
                             "networks", hint="lamina network create NAME, then --network "
                             "NAME --network-alias ALIAS")
    for alias in args.network_alias:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?", alias):
            raise ContainerError(f"invalid --network-alias {alias!r}",
                                 hint="a host name: letters, digits, '.', '-' and '_'")
    if args.network == "host" and args.publish:
        raise ContainerError("-p cannot be used with --network host",
                             hint="the container's ports are the host's already")
    if args.network == "none" and args.publish:  # refused here, not at its start
        raise ContainerError("-p cannot be used with --network none",
                             hint="publish ports on the bridge network, the default")
    log_driver, log_options = _log_config(args, engine)
    return ContainerSpec(
        image=image_id, image_name=args.image,
        argv=resolve_argv(config, args.command, args.entrypoint),
        env=merge_env(config.get("Env") or [], _env(args)),
        workdir=args.workdir or config.get("WorkingDir") or "/",
        user=args.user if args.user is not None else (config.get("User") or ""),
        hostname=args.hostname or "", tty=args.tty, interactive=args.interactive,
        read_only=args.read_only, network=args.network,
        volumes=_volumes(_volumes_from([*map(parse_volume, args.volume),
                                        *map(parse_mount, args.mount),
                                        *map(parse_tmpfs, args.tmpfs)],
                                       args.volumes_from, store),
                         config.get("Volumes") or {}),
        ports=_ports_published(args, config),
        memory=memory, pids_limit=pids, cpus=args.cpus or None, storage_opts=storage,
        auto_remove=args.rm,
        stop_signal=(_stop_signal(args.stop_signal) if args.stop_signal
                     else config.get("StopSignal") or "SIGTERM"),
        seccomp=seccomp, labels=_labels(config.get("Labels") or {}, args.label),
        capabilities=_capabilities(args.cap_add, args.cap_drop),
        extra_hosts=tuple(map(parse_host, args.add_host)), stop_timeout=args.stop_timeout,
        restart=_restart(args), log_driver=log_driver, log_options=log_options,
        memory_swap=swap, cpu_shares=shares, dns=check_dns(args.dns),
        dns_search=tuple(args.dns_search), dns_options=tuple(args.dns_option),
        shm_size=shm, ulimits=tuple(map(parse_ulimit, args.ulimit)),
        init=find_init() if args.init else None,
        privileged=args.privileged, devices=tuple(map(parse_device, args.device)),
        group_add=tuple(args.group_add), network_aliases=tuple(args.network_alias),
        sysctls=_sysctls(args.sysctl, args.network, args.ipc),
        ipc="host" if args.ipc == "host" else "", uts=args.uts or "", ip=args.ip or "",
        healthcheck=merge_healthcheck(
            config.get("Healthcheck"), cmd=args.health_cmd, retries=args.health_retries,
            disabled=args.no_healthcheck,
            durations={"Interval": args.health_interval, "Timeout": args.health_timeout,
                       "StartPeriod": args.health_start_period,
                       "StartInterval": args.health_start_interval}),
    )


def _ports_published(args: argparse.Namespace, config: dict[str, Any]) -> tuple[Any, ...]:
    """``-p`` mappings, and with ``-P`` every exposed port not mapped so (the image's
    ``ExposedPorts`` and ``--expose``) on a free host port; ``-P`` means nothing off the
    bridge network, as under Docker."""
    from ..errors import NetworkError
    from ..network.ports import PortMapping, parse_exposed, parse_port

    ports = [parse_port(text) for text in args.publish]
    exposed = [parse_exposed(text) for text in args.expose]  # checked, -P or not
    if args.publish_all and args.network not in ("host", "none"):
        for key in config.get("ExposedPorts") or {}:
            with contextlib.suppress(NetworkError):  # 132/sctp: nothing lamina publishes
                exposed.append(parse_exposed(key))
        mapped = {(p.container_port, p.protocol) for p in ports}
        for number, protocol in dict.fromkeys(exposed):
            if (number, protocol) not in mapped:
                ports.append(PortMapping(0, number, protocol))
    return tuple(ports)


def _log_config(args: argparse.Namespace, engine: Engine) -> tuple[str, dict[str, str]]:
    """The container's log driver and options: the flags over the config's defaults
    (its options count for its own driver only, key by key: Docker's merge)."""
    from ..containers.spec import parse_log_config
    from ..errors import ConfigError

    defaults = engine.config.containers
    try:
        default_driver, default_options = parse_log_config(
            defaults["log_driver"], [f"{k}={v}" for k, v in defaults["log_opts"].items()])
    except ContainerError as exc:
        where = engine.config.source or "the configuration"
        raise ConfigError(f"{where}: [containers] {exc}", hint=exc.hint) from None
    driver = args.log_driver or default_driver
    options = list(args.log_opt)
    if driver == default_driver:  # the later of a key wins
        options[:0] = [f"{k}={v}" for k, v in default_options.items()]
    return parse_log_config(driver, options)


def _restart(args: argparse.Namespace) -> str:
    from ..containers.spec import parse_restart

    policy = parse_restart(args.restart)
    if policy != "no" and args.rm:
        raise ContainerError("--restart and --rm cannot go together",
                             hint="a container removed when it exits cannot be restarted")
    return policy


def _capabilities(add: list[str], drop: list[str]) -> tuple[str, ...] | None:
    """The capabilities kept, by name: Docker's default set, ``--cap-drop`` taken away
    (ALL: everything), then ``--cap-add`` added; None when neither was given."""
    if not add and not drop:
        return None
    from ..launcher.capabilities import DEFAULT_CAPABILITIES, NAMES, parse_capability

    keep = set(DEFAULT_CAPABILITIES)
    for name in drop:
        keep -= parse_capability(name)
    for name in add:
        keep |= parse_capability(name)
    return tuple(sorted(NAMES[n].removeprefix("CAP_") for n in keep))


def _stop_signal(text: str) -> str:
    """A signal's name as the spec keeps it (``SIGTERM``); numbers and short names taken."""
    return signal.Signals(parse_signal(text)).name


def _volumes(given: list[Volume], image: dict[str, object]) -> tuple[Volume, ...]:
    """The volumes asked for, and an anonymous volume for each of the image's ``VOLUME``
    paths."""
    if not image and all(v.kind != "volume" for v in given):
        return tuple(given)  # the common case: nothing to name (no import on run's path)
    from ..containers.spec import name_volumes

    return name_volumes(given, image)


def _sysctls(given: list[str], network: str, ipc: str) -> tuple[tuple[str, str], ...]:
    if not given:
        return ()
    from ..launcher.sysctls import parse

    return tuple(dict(parse(text, network, ipc) for text in given).items())


def _volumes_from(given: list[Volume], sources: list[str], store: Store) -> list[Volume]:
    """``given`` and the volumes and binds of each ``--volumes-from CONTAINER[:ro|:rw]``
    (its own modes, unless one is given) at the paths ``given`` leaves free, as Docker's."""
    if not sources:
        return given
    from ..containers.store import ContainerStore

    taken = {os.path.normpath(v.target) for v in given}
    found = list(given)
    for text in sources:
        name, _, mode = text.partition(":")
        if mode not in ("", "ro", "rw"):
            raise ContainerError(f"invalid --volumes-from {text!r}",
                                 hint="give CONTAINER, CONTAINER:ro or CONTAINER:rw")
        for volume in ContainerStore(store).get(name).spec.volumes:
            if volume.kind == "tmpfs" or os.path.normpath(volume.target) in taken:
                continue
            taken.add(os.path.normpath(volume.target))
            found.append(volume if not mode else volume._replace(readonly=mode == "ro"))
    return found


def _labels(image: dict[str, str], given: list[str]) -> dict[str, str]:
    """The image's labels with ``--label KEY[=VALUE]`` over them (no value: empty, as
    Docker's)."""
    labels = dict(image)
    for text in given:
        key, _, value = text.partition("=")
        if not key:
            raise ContainerError(f"invalid label {text!r}", hint="--label KEY[=VALUE]")
        labels[key] = value
    return labels


def _create(args: argparse.Namespace, engine: Engine, store: Store) -> Container:
    from ..containers.store import ContainerStore
    from ..images.store import ImageStore

    if args.cidfile and os.path.lexists(args.cidfile):
        raise ContainerError(f"the container id file {args.cidfile} exists already",
                             hint="another container may be using it: remove the file first")
    image_id = _resolve_image(engine, args.image, args.pull, store)
    spec = _spec(args, engine, image_id, store)
    top = ImageStore(store).image(image_id).top_layer
    containers = ContainerStore(store)
    container = containers.create(spec, top, args.name, layer_options=spec.storage_opts or None)
    if args.cidfile:
        try:
            with open(args.cidfile, "x") as f:
                f.write(container.id)
        except OSError as exc:
            containers.remove(container.id)
            raise ContainerError(f"cannot write the container id file {args.cidfile}: "
                                 f"{exc.strerror}",
                                 hint="give a path in a writable directory") from None
    if any(v.kind == "volume" for v in spec.volumes):
        from ..containers.volumes import VolumeStore
        from . import volume

        try:
            volume.prepare(store, container)
        except BaseException:
            containers.remove(container.id)
            VolumeStore(store).remove_anonymous(container)
            raise
    return container


#: Docker's exit status when the engine, not the container's command, failed
ENGINE_FAILED = 125


def engine_status(command: Callable[..., int]) -> Callable[..., int]:
    """Report a failure of ``run``/``create`` itself with 125, as Docker does.

    Scripts tell "lamina could not run it" (125) from "the command failed" (its own
    status) and "not found"/"not executable" (127/126), which keep their numbers.
    """

    @functools.wraps(command)
    def wrapped(*args: Any) -> int:
        try:
            return command(*args)
        except OSError as exc:
            error = host_error(exc)
            error.hint = error.hint or "rerun with --debug to see where it happened"
            error.exit_status = ENGINE_FAILED
            raise error from exc
        except LaminaError as exc:
            if exc.exit_status not in (126, 127):
                exc.exit_status = ENGINE_FAILED
            raise

    return wrapped


@engine_status
def cmd_create(args: argparse.Namespace, engine: Engine) -> int:
    with engine.open_store() as store:
        _reconcile(store)
        container = _create(args, engine, store)
    print(container.id)
    return 0


@engine_status
def cmd_run(args: argparse.Namespace, engine: Engine) -> int:
    if args.network not in ("host", "none") and not args.detach:
        from ..network import links

        links.start_worker()  # before the store opens: pyroute2 loads meanwhile
        try:
            return _run(args, engine)
        finally:
            links.stop_worker()
    return _run(args, engine)


def _run(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.store import ContainerStore
    from ..launcher import monitor

    with engine.open_store() as store:
        _reconcile(store)
        container = _create(args, engine, store)
        if args.detach:
            store.close()
            monitor.start_detached(engine, container.id)
            print(container.id)
            return 0
        mode = "tty" if args.tty else "inherit"
        try:
            code = monitor.run(store, container, monitor.Stdio(mode, args.interactive),
                               network=engine.config.network)
        except LaminaError:
            if args.rm:
                monitor.remove(store, container.id, force=True, volumes=True)
            raise
        if args.rm:
            monitor.remove(store, container.id, force=True, volumes=True)
        elif monitor.should_restart(ContainerStore(store), container, code, 0):
            store.close()
            monitor.start_detached(engine, container.id)  # its policy goes on without us
    return code


def start_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--attach", action="store_true",
                   help="stay attached: print its output and exit with its status")
    p.add_argument("-i", "--interactive", action="store_true", help="attach stdin")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def cmd_start(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.store import ContainerStore
    from ..launcher import monitor

    if args.attach and len(args.containers) > 1:
        raise ContainerError("you cannot start and attach several containers at once",
                             hint="start them without -a, then lamina logs -f each")
    status = 0
    for ref in args.containers:
        try:
            with engine.open_store() as store:
                _reconcile(store)
                container = ContainerStore(store).get(ref)
                if container.running:
                    print(ref)
                    continue
                if args.attach:
                    monitor.set_stopped_by_user(ContainerStore(store), container.id, False)
                    mode = "tty" if container.spec.tty else "inherit"
                    return monitor.run(store, container,
                                       monitor.Stdio(mode, args.interactive),
                                       network=engine.config.network)
            monitor.start_detached(engine, container.id)
            print(ref)
        except LaminaError as exc:
            report(exc)
            status = exc.exit_status
    return status


# -- listing, inspecting ---------------------------------------------------------------------


def ps_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="also containers not running")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--no-trunc", action="store_true", help="full ids and commands")
    p.add_argument("-s", "--size", action="store_true",
                   help="the size of each container's own changes (and with its image's)")
    p.add_argument("-n", "--last", type=int, default=-1, metavar="N",
                   help="the N containers made last, in any state")
    p.add_argument("-l", "--latest", action="store_true",
                   help="the container made last, in any state")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="; ".join(f"{k}: {v}" for k, v in PS_FILTERS.items()))


#: ``ps --filter`` keys, as Docker's
PS_FILTERS = {
    "id": "an id or the start of one",
    "name": "a regular expression the name contains",
    "status": "created, running, paused, restarting or exited",
    "exited": "the exit code",
    "label": "KEY or KEY=VALUE of the container's labels",
    "network": "the name or id of the network it is on",
    "ancestor": "the image (name or id) it was made from",
    "health": "starting, healthy, unhealthy or none (no health check)",
}


def _ps_filtered(found: list[Container], given: list[str], store: Store,
                 engine: Engine) -> list[Container]:
    """The containers ``--filter`` keeps (:mod:`.filters` for how filters combine)."""
    import re

    from ..images.store import ImageStore
    from .filters import InvalidFilter, parse_filters
    from .image import find_image

    filters = parse_filters(given, PS_FILTERS)
    checks: list[Callable[[Container], bool]] = []
    if "id" in filters:
        checks.append(lambda c: any(c.id.startswith(v) for v in filters["id"]))
    if "name" in filters:
        try:
            names = [re.compile(v) for v in filters["name"]]
        except re.error as exc:
            raise InvalidFilter(f"invalid name filter: {exc}",
                                hint="name=TEXT or a regular expression") from None
        checks.append(lambda c: any(p.search(c.name) for p in names))
    if "status" in filters:
        states = {"created", "running", "paused", "restarting", "exited"}
        wrong = [v for v in filters["status"] if v not in states]
        if wrong:
            raise InvalidFilter(f"invalid status filter: {', '.join(wrong)}",
                                hint="status is one of: " + ", ".join(sorted(states)))
        checks.append(lambda c: c.state in filters["status"])
    if "exited" in filters:
        try:
            codes = {int(v) for v in filters["exited"]}
        except ValueError:
            raise InvalidFilter("the exited filter takes an exit code",
                                hint="exited=0, exited=137") from None
        checks.append(lambda c: c.state == "exited" and c.exit_code in codes)
    for wanted in filters.get("label", []):
        key, eq, value = wanted.partition("=")
        checks.append(lambda c, key=key, eq=eq, value=value: key in c.spec.labels
                      and (not eq or c.spec.labels[key] == value))
    if "health" in filters:
        from ..containers.store import ContainerStore

        known = {"starting", "healthy", "unhealthy", "none"}
        wrong = [v for v in filters["health"] if v not in known]
        if wrong:
            raise InvalidFilter(f"invalid health filter: {', '.join(wrong)}",
                                hint="health is one of: " + ", ".join(sorted(known)))
        healths = _healths(ContainerStore(store), found)
        checks.append(lambda c: healths.get(c.id, "none") in filters["health"])
    if "network" in filters:
        from ..network.networks import BUILT_IN, NetworkNotFound, NetworkStore

        wanted = set()
        for text in filters["network"]:
            if text in BUILT_IN:
                wanted.add(text)
                continue
            with contextlib.suppress(NetworkNotFound):  # none: no container is on it
                wanted.add(NetworkStore(store.root).get(text).name)
        checks.append(lambda c: c.spec.network in wanted)
    if "ancestor" in filters:
        images = ImageStore(store)
        ancestors = {find_image(images, text, engine) for text in filters["ancestor"]}
        checks.append(lambda c: c.image in ancestors)
    return [c for c in found if all(check(c) for check in checks)]


#: the column names of ``ps --format 'table ...'``, by field
PS_HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND",
              "CreatedAt": "CREATED AT", "RunningFor": "CREATED", "Ports": "PORTS",
              "State": "STATE", "Status": "STATUS", "Names": "NAMES", "Labels": "LABELS",
              "Networks": "NETWORKS", "Size": "SIZE"}


def _command_text(c: Container, whole: bool) -> str:
    """The command as ``ps`` shows it: cut at 20 characters unless ``whole``."""
    command = " ".join(c.spec.argv)
    return command if whole or len(command) <= 20 else command[:19] + "…"


def _status(c: Container, now: float, health: str | None = None) -> str:
    """Docker's STATUS: ``Up 2 minutes (healthy)``, ``Exited (0) 3 seconds ago``..."""
    from .image import since

    if c.state in ("running", "paused"):
        up = "Up " + since(c.started or now).removesuffix(" ago")
        if c.state == "paused":
            return up + " (Paused)"
        if health is not None:
            return up + (" (health: starting)" if health == "starting" else f" ({health})")
        return up
    if c.state == "exited":
        return f"Exited ({c.exit_code}) {since(c.finished or now)}"
    if c.state == "restarting":
        return f"Restarting ({c.exit_code}) {since(c.finished or now)}"
    return "Created"


def _ports(c: Container) -> str:
    ports = _ports_now(c) if c.state in ("running", "paused") else c.spec.ports
    return ", ".join(f"{p.host_ip or '0.0.0.0'}:{p.host_port}->{p.container_port}/{p.protocol}"
                     if p.host_port else f"{p.container_port}/{p.protocol}" for p in ports)


def _port_map(c: Container) -> dict[str, list[dict[str, str]]]:
    """Docker's ``NetworkSettings.Ports`` of a running container: each published port
    with the host address and port it got."""
    found: dict[str, list[dict[str, str]]] = {}
    if c.state in ("running", "paused"):
        for p in _ports_now(c):
            found.setdefault(f"{p.container_port}/{p.protocol}", []).append(
                {"HostIp": p.host_ip or "0.0.0.0", "HostPort": str(p.host_port)})
    return found


def _ports_now(c: Container) -> tuple[Any, ...]:
    """The running container's published ports: as asked for, or, when some were asked
    for without a host port, as its rules have them."""
    if all(p.host_port for p in c.spec.ports):
        return c.spec.ports
    from ..network.attachment import published_ports

    return published_ports(c.id) or c.spec.ports


def _image_names(found: list[Container], store: Store, engine: Engine) -> dict[str, str]:
    """What ``ps`` shows as each container's image: the name it was made from while that
    name still means its image, else the image's short id (Docker's rule)."""
    from ..images.store import ImageStore
    from .image import find_image

    images = ImageStore(store)
    means: dict[str, str | None] = {}
    for name in {c.spec.image_name for c in found}:
        try:
            means[name] = find_image(images, name, engine)
        except LaminaError:
            means[name] = None
    return {c.id: c.spec.image_name if means[c.spec.image_name] == c.image
            else c.image.removeprefix("sha256:")[:12] for c in found}


def _healths(containers: ContainerStore, found: list[Container]) -> dict[str, str]:
    """The health status of each running container that has a check, by id."""
    from ..launcher import health

    shown = {}
    for c in found:
        if c.state == "running" and c.spec.healthcheck:
            state = health.state(containers.directory(c.id))
            if state is not None:
                shown[c.id] = state["Status"]
    return shown


def container_row(c: Container, now: float, health: str | None = None) -> dict[str, Any]:
    return {"ID": c.id, "Names": c.name, "Image": c.spec.image_name, "ImageID": c.image,
            "Command": " ".join(c.spec.argv), "Created": c.created, "State": c.state,
            "Status": _status(c, now, health), "ExitCode": c.exit_code, "Pid": c.pid,
            "Ports": _ports(c)}


def cmd_ps(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.spec import BUILD_OWNER_LABEL
    from ..containers.store import ContainerStore
    from ..launcher import monitor
    from .image import since

    with engine.open_store() as store:
        _reconcile(store)
        # a running build's step containers are the build's, not the user's (as Docker's)
        containers = ContainerStore(store)
        # a restarting container counts as running (Docker's ps and inspect say so too)
        last = 1 if args.latest else args.last
        every = args.all or last >= 0  # -n and -l look at every state, as Docker's
        found = [c for c in (monitor.shown(containers, c) for c in containers.containers())
                 if (every or c.state in ("running", "restarting", "paused"))
                 and BUILD_OWNER_LABEL not in c.spec.labels]
        if args.filter:
            found = _ps_filtered(found, args.filter, store, engine)
        if last >= 0:
            found = sorted(found, key=lambda c: c.created, reverse=True)[:last]
        shown = _image_names(found, store, engine)
        sizes = containers.sizes(found) if args.size else {}
        healths = _healths(containers, found)
    now = time.time()
    if args.format == "json":
        print_json([container_row(c, now, healths.get(c.id))
                     | ({"SizeRw": sizes[c.id][0],
                                              "SizeRootFs": sum(sizes[c.id])}
                                             if args.size else {}) for c in found],
                   listing=True)
        return 0
    if args.quiet:
        for c in found:
            print(c.id if args.no_trunc else c.id[:12])
        return 0
    if args.format != "table":
        from .gotemplate import render_rows
        from .image import go_time

        sys.stdout.write(render_rows(args.format, [
            {"ID": c.id if args.no_trunc else c.id[:12], "Image": shown[c.id],
             "Command": f'"{_command_text(c, args.no_trunc)}"',
             "CreatedAt": go_time(c.created), "RunningFor": since(c.created),
             "Ports": _ports(c), "State": c.state,
             "Status": _status(c, now, healths.get(c.id)), "Names": c.name,
             "Labels": ",".join(f"{k}={v}" for k, v in sorted(c.spec.labels.items())),
             "Networks": c.spec.network, "Size": _size_text(sizes.get(c.id))}
            for c in found], PS_HEADERS))
        return 0
    table = []
    for c in found:
        table.append([c.id if args.no_trunc else c.id[:12], shown[c.id],
                      f'"{_command_text(c, args.no_trunc)}"', since(c.created),
                      _status(c, now, healths.get(c.id)), _ports(c), c.name]
                     + ([_size_text(sizes[c.id])] if args.size else []))
    print_table(None, ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS",
                       "NAMES"] + (["SIZE"] if args.size else []), table)
    return 0


def _size_text(size: tuple[int, int] | None) -> str:
    """``2.1 kB (virtual 4.3 MB)``, as Docker's ``ps -s``."""
    if size is None:
        return ""
    from .sizes import human_size

    return f"{human_size(size[0])} (virtual {human_size(sum(size))})"


def inspect_container(c: Container, directory: Path, volume_path: Callable[[str], Path],
                      restarts: int = 0,
                      networks: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Docker's ``container inspect`` shape, for the fields lamina has; ``directory`` is
    the container's own (its /etc files and log), ``volume_path`` where a volume's files
    are, ``networks`` its ``NetworkSettings.Networks`` (core/cli/network.py)."""
    from ..containers import logs
    from ..launcher import health
    from ..launcher.health import Check

    spec = c.spec
    iso = _iso
    return {
        "Id": c.id, "Name": "/" + c.name, "Created": iso(c.created), "Image": c.image,
        "Path": spec.argv[0], "Args": list(spec.argv[1:]),
        "ResolvConfPath": str(directory / "resolv.conf"),
        "HostnamePath": str(directory / "hostname"), "HostsPath": str(directory / "hosts"),
        "LogPath": str(logs.path(directory)) if spec.log_driver == "json-file" else "",
        "State": {"Status": c.state, "Running": c.state in ("running", "restarting", "paused"),
                  "Paused": c.state == "paused", "Restarting": c.state == "restarting",
                  "Pid": c.pid or 0,
                  "ExitCode": c.exit_code or 0, "OOMKilled": c.oom_killed,
                  "StartedAt": iso(c.started), "FinishedAt": iso(c.finished),
                  **({"Health": health.state(directory) or {"Status": "starting",
                                                            "FailingStreak": 0, "Log": []}}
                     if spec.healthcheck and Check.of(spec.healthcheck) else {})},
        "Config": {"Image": spec.image_name, "Cmd": list(spec.argv), "Env": list(spec.env),
                   "WorkingDir": spec.workdir, "User": spec.user,
                   "Hostname": spec.hostname or c.id[:12], "Tty": spec.tty,
                   "OpenStdin": spec.interactive, "Labels": dict(spec.labels),
                   "StopSignal": spec.stop_signal,
                   **({"Healthcheck": dict(spec.healthcheck)} if spec.healthcheck else {})},
        "RestartCount": restarts,
        "HostConfig": {"NetworkMode": spec.network, "ReadonlyRootfs": spec.read_only,
                       "RestartPolicy": {"Name": spec.restart.partition(":")[0],
                                         "MaximumRetryCount":
                                             int(spec.restart.partition(":")[2] or 0)},
                       "ExtraHosts": [f"{name}:{address}" for name, address in spec.extra_hosts],
                       "LogConfig": {"Type": spec.log_driver, "Config": dict(spec.log_options)},
                       "AutoRemove": spec.auto_remove, "Init": spec.init is not None,
                       "Privileged": spec.privileged, "GroupAdd": list(spec.group_add),
                       "Sysctls": dict(spec.sysctls),
                       "IpcMode": spec.ipc or "private", "UTSMode": spec.uts,
                       "Devices": [{"PathOnHost": host, "PathInContainer": target,
                                    "CgroupPermissions": "rwm"}
                                   for host, target in spec.devices],
                       "Memory": spec.memory or 0,
                       "MemorySwap": spec.memory_swap or 0, "CpuShares": spec.cpu_shares or 0,
                       "Dns": list(spec.dns), "DnsSearch": list(spec.dns_search),
                       "DnsOptions": list(spec.dns_options),
                       "ShmSize": spec.shm_size or 64 * 1024 * 1024,
                       "Ulimits": [{"Name": n, "Soft": soft, "Hard": hard}
                                   for n, soft, hard in spec.ulimits],
                       "PidsLimit": spec.pids_limit, "NanoCpus": int((spec.cpus or 0) * 1e9),
                       "StorageOpt": dict(spec.storage_opts),
                       "Binds": [f"{v.source}:{v.target}{':ro' if v.readonly else ''}"
                                 for v in spec.volumes if v.kind == "bind"],
                       "Tmpfs": {v.target: v.options for v in spec.volumes if v.kind == "tmpfs"},
                       "PortBindings": [p._asdict() for p in spec.ports]},
        "Mounts": [{"Type": v.kind, **({"Name": v.source} if v.kind == "volume" else {}),
                    "Source": str(volume_path(v.source)) if v.kind == "volume" else v.source,
                    "Destination": v.target, "RW": not v.readonly}
                   for v in spec.volumes],
        "NetworkSettings": {
            "Ports": _port_map(c), "Networks": networks or {},
            # the default bridge's address at the top too, as Docker's
            **{key: (networks or {}).get("bridge", {}).get(key, default)
               for key, default in (("IPAddress", ""), ("IPPrefixLen", 0), ("Gateway", ""))},
        },
        "GraphDriver": {"Layer": c.layer},
    }


def _iso(stamp: float | None) -> str:
    from datetime import UTC, datetime

    if stamp is None:
        return "0001-01-01T00:00:00Z"
    return datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z")


# -- stopping and removing ----------------------------------------------------------------


def rm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    p.add_argument("-v", "--volumes", action="store_true",
                   help="remove its anonymous volumes too")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def _each(args: argparse.Namespace, engine: Engine, action: Any) -> int:
    """Run ``action(store, ref)`` for each container named; report failures, go on."""
    status = 0
    with engine.open_store() as store:
        _reconcile(store)
        for ref in args.containers:
            try:
                action(store, ref)
            except LaminaError as exc:
                report(exc)
                status = 1
    return status


def cmd_rm(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.store import ContainerStore
    from ..launcher import monitor

    def remove(store: Store, ref: str) -> None:
        monitor.remove(store, ContainerStore(store).get(ref).id, force=args.force,
                       volumes=args.volumes)
        print(ref)

    return _each(args, engine, remove)


def stop_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", type=float,
                   help="seconds to wait before killing it (default: the container's "
                   "--stop-timeout, else 10)")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def _timeout(given: float | None, container: Container) -> float:
    if given is not None:
        return given
    return 10 if container.spec.stop_timeout is None else container.spec.stop_timeout


def cmd_stop(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.store import ContainerStore
    from ..launcher import monitor

    def stop(store: Store, ref: str) -> None:
        container = ContainerStore(store).get(ref)
        monitor.stop(store, container.id, _timeout(args.time, container))
        print(ref)

    return _each(args, engine, stop)


def restart_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", type=float,
                   help="seconds to wait before killing it (default: the container's "
                   "--stop-timeout, else 10)")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def cmd_restart(args: argparse.Namespace, engine: Engine) -> int:
    """Stop (if running) and start each container, detached, as ``docker restart``."""
    from ..containers.store import ContainerStore
    from ..launcher import monitor

    status = 0
    for ref in args.containers:
        try:
            with engine.open_store() as store:
                _reconcile(store)
                container = ContainerStore(store).get(ref)
                monitor.stop(store, container.id, _timeout(args.time, container))
            monitor.start_detached(engine, container.id)
            print(ref)
        except LaminaError as exc:
            report(exc)
            status = exc.exit_status
    return status


def rename_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("name", metavar="NEW_NAME")


def cmd_rename(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.store import ContainerStore

    with engine.open_store() as store:
        containers = ContainerStore(store)
        container = containers.get(args.container)
        if container.name == args.name:
            raise ContainerError(f"container {container.name} has that name already",
                                 hint="give a different name")
        containers.rename(container.id, args.name)
    return 0


def port_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("port", nargs="?", metavar="PRIVATE_PORT[/PROTO]",
                   help="only this port of the container (tcp unless /udp)")


def cmd_port(args: argparse.Namespace, engine: Engine) -> int:
    """A running container's published ports, as ``docker port`` prints them."""
    from ..containers.store import ContainerStore

    with engine.open_store() as store:
        _reconcile(store)
        container = ContainerStore(store).get(args.container)
    mappings = _ports_now(container) if container.running else ()
    if args.port is None:
        for m in mappings:
            print(f"{m.container_port}/{m.protocol} -> {m.host_ip or '0.0.0.0'}:{m.host_port}")
        return 0
    number, _, protocol = args.port.partition("/")
    protocol = protocol or "tcp"
    if not number.isdigit() or protocol not in ("tcp", "udp"):
        raise ContainerError(f"invalid port {args.port!r}",
                             hint="give the container's port as PORT or PORT/tcp or PORT/udp")
    found = [m for m in mappings if (m.container_port, m.protocol) == (int(number), protocol)]
    if not found:
        raise ContainerError(f"no public port {number}/{protocol} is published for "
                             f"{container.name}", hint="see lamina port " + container.name)
    for m in found:
        print(f"{m.host_ip or '0.0.0.0'}:{m.host_port}")
    return 0


def top_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("ps_options", nargs=argparse.REMAINDER, metavar="PS_OPTIONS",
                   help="options of the host's ps (default -ef)")


def cmd_top(args: argparse.Namespace, engine: Engine) -> int:
    """The container's processes: the host's ``ps``, only the rows of processes in the
    container's pid namespace (its first process's, which ``exec`` joins too)."""
    import subprocess

    from ..containers.store import ContainerStore

    with engine.open_store() as store:
        _reconcile(store)
        container = ContainerStore(store).get(args.container)
    if not container.running or container.pid is None:
        raise ContainerError(f"container {container.name} is not running",
                             hint=f"start it first: lamina start {container.name}")
    from ..launcher.stats import members

    pids = {str(pid) for pid in members(container.pid)}
    if not pids:
        raise ContainerError(f"container {container.name} is not running",
                             hint="it exited a moment ago")
    try:
        ps = subprocess.run(["ps", *(args.ps_options or ["-ef"])], capture_output=True,
                            text=True, check=False)
    except FileNotFoundError:
        raise ContainerError("there is no ps on this host",
                             hint="install it (Debian: apt-get install procps)") from None
    if ps.returncode != 0:
        raise ContainerError(f"ps {' '.join(args.ps_options)} failed: {ps.stderr.strip()}",
                             hint="give options of the host's ps, such as -ef or aux")
    header, *rows = ps.stdout.splitlines()
    columns = header.split()
    if "PID" not in columns:
        raise ContainerError(f"ps {' '.join(args.ps_options)} shows no PID column",
                             hint="give options whose output has one, such as -ef or aux")
    at = columns.index("PID")
    print(header)
    for row in rows:
        fields = row.split(None, at + 1)
        if len(fields) > at and fields[at] in pids:
            print(row)
    return 0


def cp_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--archive", action="store_true",
                   help="keep the owners (default: the receiving side's root)")
    p.add_argument("-L", "--follow-link", action="store_true",
                   help="copy what a symlink at the end of SRC points to, not the link")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument("source", metavar="SRC", help="CONTAINER:PATH, a host path, or - (a tar "
                   "on stdin)")
    p.add_argument("destination", metavar="DEST", help="CONTAINER:PATH, a host path, or - "
                   "(a tar on stdout)")


def _cp_side(arg: str) -> tuple[str | None, str]:
    """(container, path) of a ``cp`` argument; a host path has no container. A path that
    starts with / or . is the host's even with a colon in it (Docker's rule)."""
    if arg == "-" or arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    container, _, path = arg.partition(":")
    return container, path or "/"


def cmd_cp(args: argparse.Namespace, engine: Engine) -> int:
    """Docker's ``cp``: a path into or out of a container (core/launcher/copy.py)."""
    from ..containers.store import ContainerStore
    from ..launcher import copy

    source_container, source = _cp_side(args.source)
    dest_container, dest = _cp_side(args.destination)
    if (source_container is None) == (dest_container is None):
        raise ContainerError("cp copies between a container and this host: exactly one of "
                             "SRC and DEST is CONTAINER:PATH",
                             hint="lamina cp web:/etc/hosts ./hosts, or lamina cp ./app web:/app")
    owner = None if args.archive else (os.getuid(), os.getgid())
    with engine.open_store() as store:
        _reconcile(store)
        name = source_container or dest_container
        assert name is not None
        container = ContainerStore(store).get(name)
        with copy.Inside(store, container) as inside:
            if source_container is not None:
                copied = _cp_out(copy, inside, source, dest, args.follow_link, owner)
            else:
                copied = _cp_in(copy, inside, source, dest, args.follow_link,
                                None if args.archive else (0, 0))
    if copied is not None and not args.quiet:
        from .sizes import human_size

        print(f"Successfully copied {human_size(copied)} to {args.destination}",
              file=sys.stderr)
    return 0


def _cp_out(copy: Any, inside: Any, path: str, dest: str, follow: bool,
            owner: tuple[int, int] | None) -> int | None:
    where = f"in container {inside.container.name}"
    source = copy.Source(*inside.run(lambda: copy.look_up(path, follow=follow, where=where)))
    with_top = not (source.directory and copy.contents_only(path))
    if dest == "-":
        sys.stdout.flush()
        inside.run(lambda: copy.write_tar(source, os.fdopen(1, "wb", closefd=False),
                                          with_top=with_top))
        return None
    exists, is_dir = copy.describe(dest)
    target = copy.target_for(dest, exists, is_dir, source, path)
    if not copy.describe(target.directory)[1]:
        raise ContainerError(f"{target.directory}: no such directory on this host",
                             hint="make it first")
    return copy.copy_out(inside, source, target, with_top=with_top, owner=owner)


def _cp_in(copy: Any, inside: Any, path: str, dest: str, follow: bool,
           owner: tuple[int, int] | None) -> int | None:
    exists, is_dir = inside.run(lambda: copy.describe(dest))
    if path == "-":
        if not is_dir:
            raise ContainerError(f"{dest}: no such directory in container "
                                 f"{inside.container.name}",
                                 hint="a tar from stdin is unpacked into an existing directory")
        inside.run(lambda: copy.unpack(os.fdopen(0, "rb", closefd=False),
                                       copy.Target(dest, ""), "", owner=owner))
        return None
    source = copy.look_up(path, follow=follow, where="on this host")
    target = copy.target_for(dest, exists, is_dir, source, path)
    if not inside.run(lambda: copy.describe(target.directory))[1]:
        raise ContainerError(f"{target.directory}: no such directory in container "
                             f"{inside.container.name}", hint="make it first (lamina exec)")
    return copy.copy_in(inside, source, target, owner=owner,
                        with_top=not (source.directory and copy.contents_only(path)))


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="file to write (default: standard output)")
    p.add_argument("container", metavar="CONTAINER")


def cmd_export(args: argparse.Namespace, engine: Engine) -> int:
    """The container's whole file tree as one tar, as ``docker export``: its image's
    layers and its own changes flattened, volumes not included (``import`` reads it)."""
    from pathlib import Path

    from ..containers.store import ContainerStore
    from ..launcher import copy
    from .archive import to_file

    if not args.output and sys.stdout.isatty():
        raise ContainerError("refusing to write a tar to a terminal",
                             hint="give a file with -o, or redirect standard output")
    root = copy.Source("/", "", True)
    with engine.open_store() as store:
        _reconcile(store)
        container = ContainerStore(store).get(args.container)
        with copy.Inside(store, container, layer_only=True) as inside:
            def export(fd: int) -> None:
                inside.run(lambda: copy.write_tar(root, os.fdopen(fd, "wb", closefd=False),
                                                  with_top=False))

            if args.output:
                to_file(Path(args.output), export)
            else:
                sys.stdout.flush()
                export(sys.stdout.fileno())
    return 0


def kill_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--signal", default="KILL", help="signal to send (default KILL)")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def parse_signal(text: str) -> int:
    name = text.upper()
    if name.isdigit() and 0 < int(name) < signal.NSIG:
        return int(name)
    name = name if name.startswith("SIG") else "SIG" + name
    sig = getattr(signal, name, None)
    if not isinstance(sig, signal.Signals):
        raise ContainerError(f"invalid signal {text!r}", hint="use a name such as TERM or HUP")
    return int(sig)


def cmd_kill(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.store import ContainerStore
    from ..launcher import monitor

    sig = parse_signal(args.signal)

    def kill(store: Store, ref: str) -> None:
        containers = ContainerStore(store)
        container = containers.get(ref)
        if monitor.restarting(containers, container):
            # no process to signal: ending the back-off is the kill (as Docker's)
            monitor.set_stopped_by_user(containers, container.id, True)
            container = monitor.wait_restart_over(containers, container)
            if not container.running:
                print(ref)
                return
        if container.running:
            monitor.set_stopped_by_user(containers, container.id, True)
        monitor.signal_container(container, sig)
        if sig == signal.SIGKILL:
            from ..launcher.pause import thaw

            thaw(container)  # v1's freezer holds even SIGKILL until then (Docker's too)
        print(ref)

    return _each(args, engine, kill)


def update_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--memory", metavar="SIZE", help="memory limit (e.g. 64m)")
    p.add_argument("--memory-swap", metavar="SIZE",
                   help="memory plus swap (e.g. 1g; -1: unlimited swap)")
    p.add_argument("--cpus", type=float, help="CPUs it may use (e.g. 1.5; 0: no limit)")
    p.add_argument("--cpu-shares", type=int, metavar="N", help="relative CPU weight")
    p.add_argument("--pids-limit", type=int, metavar="N",
                   help="most processes at once (0 or -1: no limit)")
    p.add_argument("--restart", metavar="POLICY",
                   help="no, always, unless-stopped, on-failure[:N]")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def cmd_update(args: argparse.Namespace, engine: Engine) -> int:
    """Docker's ``update``: new limits (at once for a running container) or a new
    restart policy; the flags not given keep their values."""
    from ..containers.spec import parse_restart, parse_size
    from ..containers.store import ContainerStore
    from ..launcher import monitor
    from ..launcher.cgroups import Limits

    given = {k: getattr(args, k) for k in ("memory", "memory_swap", "cpus", "cpu_shares",
                                           "pids_limit", "restart")}
    if all(v is None for v in given.values()):
        raise ContainerError("update needs at least one flag",
                             hint="e.g. lamina update --memory 256m --cpus 1 CONTAINER")

    def one(store: Store, ref: str) -> None:
        containers = ContainerStore(store)
        container = containers.get(ref)
        spec = container.spec
        changes: dict[str, Any] = {}
        if args.memory is not None:
            changes["memory"] = parse_size(args.memory, "memory limit") or None
        if args.memory_swap is not None:
            changes["memory_swap"] = (-1 if args.memory_swap.strip() == "-1"
                                      else parse_size(args.memory_swap, "--memory-swap"))
        if args.cpus is not None:
            changes["cpus"] = args.cpus or None
        if args.cpu_shares is not None:
            changes["cpu_shares"] = args.cpu_shares or None
        if args.pids_limit is not None:
            changes["pids_limit"] = args.pids_limit if args.pids_limit > 0 else None
        if args.restart is not None:
            changes["restart"] = parse_restart(args.restart)
            if changes["restart"] != "no" and spec.auto_remove:
                raise ContainerError(f"container {container.name} is removed when it exits "
                                     "(--rm): it cannot have a restart policy",
                                     hint="a container made with --rm keeps --restart no")
        new = spec._replace(**changes)
        # checked as a whole, as create checks them (--memory-swap needs --memory...)
        Limits(memory=new.memory, memory_swap=new.memory_swap, pids=new.pids_limit,
               cpus=new.cpus, cpu_shares=new.cpu_shares)
        if container.running:
            monitor.apply_limits(containers, container, new)
        containers.set_spec(container.id, new)
        print(ref)

    return _each(args, engine, one)


def pause_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def cmd_pause(args: argparse.Namespace, engine: Engine) -> int:
    """Freeze every process of each container (core/launcher/pause.py)."""
    from ..containers.store import ContainerStore
    from ..launcher import pause

    def one(store: Store, ref: str) -> None:
        containers = ContainerStore(store)
        pause.pause(containers, containers.get(ref))
        print(ref)

    return _each(args, engine, one)


def cmd_unpause(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.store import ContainerStore
    from ..launcher import pause

    def one(store: Store, ref: str) -> None:
        pause.unpause(ContainerStore(store).get(ref))
        print(ref)

    return _each(args, engine, one)


def wait_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def cmd_wait(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.store import ContainerStore
    from ..launcher import monitor

    def wait(store: Store, ref: str) -> None:
        containers = ContainerStore(store)
        container_id = containers.get(ref).id
        while True:  # through its restarts, as Docker's: a restarting one still runs
            done = monitor.wait_exited(store, container_id, None)
            assert done is not None
            if not monitor.restarting(containers, done):
                break
            while monitor.restarting(containers, done):
                time.sleep(0.05)
                done = containers.get(container_id)
        print(done.exit_code)

    return _each(args, engine, wait)


def logs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    p.add_argument("-n", "--tail", default="all", type=_tail, metavar="N",
                   help="only the last N lines (default: all)")
    p.add_argument("-t", "--timestamps", action="store_true",
                   help="begin each line with its time (RFC 3339, nanoseconds, UTC)")
    p.add_argument("--since", type=_moment, metavar="TIME",
                   help="only lines from this time on: 2026-12-07T10:15:00Z, a Unix time, "
                   "or a duration back from now (10m, 1h30m)")
    p.add_argument("--until", type=_moment, metavar="TIME",
                   help="only lines up to this time (the same forms as --since)")
    p.add_argument("container", metavar="CONTAINER")


def _tail(text: str) -> int | None:
    if text == "all":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of lines (or all)")
    return int(text)


def _moment(text: str) -> int:
    from ..gotime import parse_timestamp

    try:
        return parse_timestamp(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc}: give an RFC 3339 time (2026-12-07T10:15:00Z), a Unix time, or a "
            "duration (10m, 1h30m)") from None


def cmd_logs(args: argparse.Namespace, engine: Engine) -> int:
    """Each line to the stream it came from, as ``docker logs``."""
    from ..containers import logs
    from ..containers.store import ContainerStore

    with engine.open_store() as store:
        _reconcile(store)
        containers = ContainerStore(store)
        container = containers.get(args.container)
        if container.spec.log_driver != "json-file":
            raise ContainerError(f"container {container.name} has the log driver "
                                 f"{container.spec.log_driver}: its output was not kept",
                                 hint="run it with --log-driver json-file (the default) "
                                 "to read its logs")
        directory = containers.directory(container.id)
        running = (lambda: containers.get(container.id).running) if args.follow else None
        window = logs.Window(args.tail, args.since, args.until)
        _print_records(logs.read(directory, window, running=running),
                       timestamps=args.timestamps, follow=args.follow)
    return 0


def _print_records(records: Iterable[logs.Record], *, timestamps: bool = False,
                   follow: bool = False) -> None:
    """Each log record to the stream it came from (``logs``, ``attach``)."""
    from ..gotime import rfc3339_nano

    outputs = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    last = None
    try:
        for record in records:
            out = outputs[record.stream]
            if last is not None and last is not out:
                last.flush()  # the two streams keep their order on one terminal
            if timestamps and record.nanos:
                out.write(rfc3339_nano(record.nanos).encode() + b" ")
            out.write(record.data)
            if follow:
                out.flush()
            last = out
    finally:
        for out in outputs.values():
            out.flush()


def attach_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-stdin", action="store_true", help="do not attach stdin")
    p.add_argument("--sig-proxy", choices=["true", "false"], default="true",
                   help="pass Ctrl-C and the other signals on to the container (default "
                   "true; never with a tty)")
    p.add_argument("--detach-keys", metavar="KEYS",
                   help="the keys that detach, leaving the container running (default "
                   "ctrl-p,ctrl-q; \"\" for none)")
    p.add_argument("container", metavar="CONTAINER")


def cmd_attach(args: argparse.Namespace, engine: Engine) -> int:
    """Docker's ``attach``: what a running container writes from now on, until it exits,
    with its exit status; and, for one run detached with ``-i`` or ``-t``, its stdin
    (core/launcher/console.py) until the detach keys."""
    from ..containers import logs
    from ..containers.store import ContainerStore
    from ..launcher import console, monitor

    keys = console.parse_detach_keys(console.DEFAULT_DETACH_KEYS if args.detach_keys is None
                                     else args.detach_keys)
    with engine.open_store() as store:
        _reconcile(store)
        containers = ContainerStore(store)
        container = containers.get(args.container)
        if not container.running or container.pid is None:
            raise ContainerError(f"cannot attach to container {container.name}: it is not "
                                 "running", hint=f"start it attached: lamina start -a "
                                 f"{container.name}")
        spec = container.spec
        use_stdin = spec.interactive and not args.no_stdin
        if use_stdin and spec.tty and not os.isatty(0):
            raise ContainerError("the input device is not a TTY",
                                 hint="attach from a terminal, or give --no-stdin")
        proxy = args.sig_proxy == "true" and not spec.tty
        sock = console.connect(containers.directory(container.id), container.name)
        if sock is None and spec.log_driver != "json-file":
            raise ContainerError(f"container {container.name} has the log driver "
                                 f"{spec.log_driver}: there is no output to attach to",
                                 hint="run it with --log-driver json-file (the default)")
        with monitor.forwarding(container.pid) if proxy else contextlib.nullcontext():
            if sock is not None:
                with sock:
                    if console.relay(sock, stdin=0 if use_stdin else None, tty=spec.tty,
                                     detach_keys=keys):
                        return 0  # detached: it runs on
            else:  # started without -i and -t: its log, from now on
                _print_records(logs.read(containers.directory(container.id),
                                         logs.Window(tail=0),
                                         running=lambda: containers.get(container.id).running),
                               follow=True)
        done = monitor.wait_exited(store, container.id, None)
    assert done is not None
    return done.exit_code or 0


def prune_arguments(p: argparse.ArgumentParser) -> None:
    from .filters import PRUNE_FILTERS

    p.add_argument("-f", "--force", action="store_true", help="do not ask (lamina never asks)")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="; ".join(f"{k}: {v}" for k, v in PRUNE_FILTERS.items()))


def cmd_container_prune(args: argparse.Namespace, engine: Engine) -> int:
    from .filters import PruneFilter
    from .sizes import human_size

    wanted = PruneFilter(args.filter)
    with engine.open_store() as store:
        removed, reclaimed = prune_containers(store, wanted)
    if removed:
        print("Deleted Containers:")
        print("\n".join(removed))
        print()
    print(f"Total reclaimed space: {human_size(reclaimed)}")
    return 0


def prune_containers(store: Store, wanted: PruneFilter) -> tuple[list[str], int]:
    """Remove every container that is not running (nor restarting) and that ``wanted``
    admits: their ids, and the bytes their writable layers held. Shared by ``container
    prune`` and ``system prune``."""
    from ..containers.store import ContainerStore
    from ..launcher import monitor

    _reconcile(store)
    containers = ContainerStore(store)
    found = [c for c in containers.containers()
             if not c.running and not monitor.restarting(containers, c)
             and wanted.admits(c.created, dict(c.spec.labels))]
    sizes = containers.sizes(found)
    removed, reclaimed = [], 0
    for c in found:
        try:
            monitor.remove(store, c.id)
        except LaminaError:
            continue  # started or removed meanwhile
        removed.append(c.id)
        reclaimed += sizes[c.id][0]
    return removed, reclaimed


# -- exec, diff ----------------------------------------------------------------------------


def exec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--detach", action="store_true",
                   help="return once the command runs; its output is discarded")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("-e", "--env", action="append", default=[], metavar="NAME[=VALUE]")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE")
    p.add_argument("-u", "--user", help="NAME|UID[:GROUP|GID] (default: the container's)")
    p.add_argument("-w", "--workdir", help="working directory (default: the container's)")
    p.add_argument("--privileged", action="store_true",
                   help="every capability lamina holds and no seccomp filter for the command")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")


def cmd_exec(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.spec import merge_env
    from ..containers.store import ContainerStore
    from ..launcher import execute

    if not args.command:
        raise ContainerError("no command given", hint="lamina exec CONTAINER COMMAND [ARG...]")
    with engine.open_store() as store:
        _reconcile(store)
        container = ContainerStore(store).get(args.container)
    if not container.running or container.pid is None:
        raise ContainerError(f"container {container.name} is not running",
                             hint=f"start it first: lamina start {container.name}")
    from ..launcher.pause import paused

    if paused(container):
        raise ContainerError(f"container {container.name} is paused",
                             hint=f"let it go on first: lamina unpause {container.name}")
    spec = container.spec
    run = functools.partial(
        execute.exec_in, container, args.command, env=merge_env(spec.env, _env(args)),
        user=args.user if args.user is not None else spec.user,
        workdir=args.workdir or spec.workdir, privileged=args.privileged)
    if args.detach:
        from ..launcher import monitor

        monitor.in_background(lambda started: run(tty=False, interactive=False,
                                                  started=started))
        return 0
    return run(tty=args.tty, interactive=args.interactive)


def diff_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="CONTAINER")


def cmd_diff(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.store import ContainerStore

    with engine.open_store() as store:
        container = ContainerStore(store).get(args.container)
        # the root's own times change with any change below it: Docker does not list it
        changes = [c for c in store.changes(container.layer) if c.path not in ("", ".")]
    rows = [{"Path": "/" + c.path, "Kind": c.kind.value} for c in changes]
    if args.format == "json":
        print_json(rows, listing=True)
        return 0
    for c in changes:
        print(f"{c.kind.value} /{c.path}")
    return 0


def commit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--author", help="the author (e.g. \"Jane <jane@example.com>\")")
    p.add_argument("-m", "--message", help="a commit message (the history entry's comment)")
    p.add_argument("-c", "--change", action="append", default=[],
                   metavar="INSTRUCTION", help="a Dockerfile instruction for the config "
                   "(CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, WORKDIR, STOPSIGNAL)")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("name", nargs="?", metavar="REPOSITORY[:TAG]")


def cmd_commit(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.commit import commit
    from ..containers.store import ContainerStore
    from ..images.store import ImageStore
    from .image import _reference

    names = [str(_reference(args.name, engine))] if args.name else []
    with engine.open_store() as store:
        _reconcile(store)
        container = ContainerStore(store).get(args.container)
        image_id = commit(
            store, ImageStore(store), layer_id=container.layer, base_image_id=container.image,
            created_by=" ".join(container.spec.argv), comment=args.message,
            author=args.author, changes=args.change, names=names,
            keep_blobs=engine.config.images["keep_blobs"])
    print(image_id)
    return 0


def _reconcile(store: Store) -> None:
    from ..launcher.monitor import reconcile

    reconcile(store)
