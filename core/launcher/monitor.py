"""One run of a container, from its mount to its exit code: the monitor.

The process that starts a container stays with it as its monitor (``lamina run`` in
the foreground is that process; ``-d`` and ``start`` fork one that outlives the
command). The monitor mounts the writable layer, clones the container's process,
places it in its cgroup and network while it waits, records it running, releases it,
forwards signals, waits, and on exit records the code and tears everything down.

The container's process dies with its monitor (``PR_SET_PDEATHSIG``), so a row that
says ``running`` while its process is gone means the monitor was killed: any later
command finds it with :func:`reconcile`, records it exited (255) and frees what the
run held. What the monitor held in the store (the layer's mount reference) the
store's own recovery releases when it sees the holder dead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..containers import logs
from ..containers.store import Container, ContainerStore
from ..engine import Engine
from ..errors import ContainerError, LaminaError, host_error
from ..host.locks import process_identity
from ..layers.store import Store
from ..network import MODES
from ..network.attachment import Attachment, attach, detach, sweep
from . import capabilities, process, terminal

if TYPE_CHECKING:  # imported when a container has limits (~3 ms of every start else)
    from ..containers.spec import ContainerSpec, Volume
    from . import cgroups
    from .console import Console

#: in the container's directory: a command made its cgroup after it started (``pause``,
#: ``update``), so its teardown removes it (pause.MARKER is the same name: named here, as
#: importing the pause module would cost every run ~0.7 ms)
PAUSED_GROUP = "cgroup-made-later"
#: exit code recorded for a container whose monitor vanished
LOST_EXIT_CODE = 255
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)


class Stdio(NamedTuple):
    """How the container's standard streams are connected.

    ``inherit``: its output relayed to this process's stdout and stderr (``run`` in the
    foreground, no pty), stdin this process's own when ``interactive``; ``tty``: a pty
    relayed to this process's terminal; ``log``: nowhere but the log (detached). The
    output goes to the container's log in every mode (core/containers/logs.py).
    """

    mode: str = "inherit"
    interactive: bool = False


def _binds(store: Store, volumes: tuple[Volume, ...]) -> tuple[Volume, ...]:
    """The store's volumes as bind mounts of their files (core/containers/volumes.py)."""
    if all(v.kind != "volume" for v in volumes):
        return volumes
    from ..containers.volumes import VolumeStore

    return VolumeStore(store).binds(volumes)


def _open_log(containers: ContainerStore, container: Container) -> logs.LogWriter | None:
    """The writer of the container's log; None when its log driver keeps nothing."""
    if container.spec.log_driver == "none":
        return None
    directory = containers.directory(container.id)
    directory.mkdir(parents=True, mode=0o700, exist_ok=True)
    try:
        return logs.LogWriter(logs.path(directory),
                              logs.Rotation.of(container.spec.log_options))
    except OSError as exc:
        raise host_error(exc, "open the container's log", logs.path(directory)) from exc


def _etc_files(containers: ContainerStore, container: Container) -> dict[str, Path]:
    """The container's /etc/hostname, hosts and resolv.conf on the host, made now (the
    child binds them while it builds its root) and filled once its network is known."""
    directory = containers.directory(container.id)
    directory.mkdir(parents=True, mode=0o700, exist_ok=True)
    files = {name: directory / name for name in ("hostname", "hosts", "resolv.conf")}
    files["hostname"].write_text(f"{_hostname(container)}\n")
    for name in ("hosts", "resolv.conf"):
        files[name].touch()
    return files


def _hostname(container: Container) -> str:
    if container.spec.uts == "host":
        return os.uname().nodename
    return container.spec.hostname or container.id[:12]


def _fill(files: dict[str, Path], attachment: Attachment, spec: ContainerSpec) -> None:
    # written in place: the child has bound these very inodes into its root
    hosts = attachment.hosts + "".join(f"{address}\t{name}\n"
                                       for name, address in spec.extra_hosts)
    resolv = _resolv(attachment.resolv_conf, spec)
    for name, text in (("hosts", hosts), ("resolv.conf", resolv)):
        with open(files[name], "r+") as f:
            f.truncate(0)
            f.write(text)


def _resolv(text: str, spec: ContainerSpec) -> str:
    """resolv.conf with the lines ``--dns``, ``--dns-search`` and ``--dns-option`` replace
    (Docker's: each flag replaces its kind of line and leaves the others)."""
    given = {"nameserver": [f"nameserver {a}" for a in spec.dns],
             "search": ([f"search {' '.join(d for d in spec.dns_search if d != '.')}"]
                        if any(d != "." for d in spec.dns_search) else []),
             "options": [f"options {' '.join(spec.dns_options)}"] if spec.dns_options else []}
    replaced = {"nameserver": bool(spec.dns), "search": bool(spec.dns_search),
                "options": bool(spec.dns_options)}
    if not any(replaced.values()):
        return text
    lines = [line for line in text.splitlines()
             if not replaced.get(line.split(maxsplit=1)[0] if line.split() else "", False)]
    for kind, wanted in replaced.items():
        if wanted:
            lines += given[kind]
    return "\n".join(lines) + "\n"


def kept_capabilities(spec: ContainerSpec) -> frozenset[int]:
    """The capabilities the container's processes keep (``--cap-add``/``--cap-drop``;
    ``--privileged``: all lamina holds)."""
    if spec.privileged:
        return capabilities.bounding_set()
    if spec.capabilities is None:
        return capabilities.DEFAULT_CAPABILITIES
    numbers = capabilities.NUMBERS
    return frozenset(numbers[name] for name in spec.capabilities if name in numbers)


def run(store: Store, container: Container, stdio: Stdio,
        started: Callable[[], None] | None = None, *,
        network: dict[str, Any] | None = None, stop_on_signal: bool = False,
        exiting: Callable[[int], None] | None = None) -> int:
    """Run ``container`` to its end; return its exit code (128+N for signal N).

    With ``stop_on_signal`` (a build's RUN) SIGINT, SIGTERM and the others end the
    container instead of reaching it, and the run raises KeyboardInterrupt once all is
    freed: the build is cancelled, as Ctrl-C cancels Docker's.

    ``network``: the ``[network]`` settings of the config (core/network/).
    """
    containers = ContainerStore(store)
    spec = container.spec
    if spec.network not in MODES:  # a user network: removed since its create?
        from ..network.networks import NetworkStore

        NetworkStore(store.root).get(spec.network)  # before anything is made
    holder = store.process_holder
    rootfs = store.mount(container.layer, holder=holder)
    master = devnull = -1
    log: logs.LogWriter | None = None
    pipes: dict[int, str] = {}  # read end -> stream, for a container without a pty
    child_ends: list[int] = []
    child = None
    tty_parent = tty_child = None
    ended: tuple[int, bool] | None = None  # (exit code, OOM-killed) once waited for
    watcher = None  # the health check's process (core/launcher/health.py)
    console = None  # a detached -i or -t container's, for attach (core/launcher/console.py)
    stdin_w = -1  # a detached -i container's stdin, held for attach's input
    stopped: list[int] | None = [] if stop_on_signal else None
    try:
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        stdin = 0 if stdio.interactive and stdio.mode != "log" else devnull
        if stdio.mode == "log" and spec.interactive and not spec.tty:
            # Docker keeps a detached -i container's stdin open for attach: a pipe
            stdin, stdin_w = os.pipe2(os.O_CLOEXEC)
            child_ends.append(stdin)
        # every run is logged, in the foreground too (``logs`` of it works, as Docker's);
        # without a pty the container writes to pipes, as under Docker: not to the
        # terminal of the command that started it
        log = _open_log(containers, container)
        io = (stdin, 1, 2)
        if not spec.tty:
            for stream in logs.STREAMS:
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                pipes[read_end] = stream
                child_ends.append(write_end)
            io = (stdin, child_ends[-2], child_ends[-1])
        if spec.tty:
            import socket  # ~3 ms with selectors: for a pty only

            tty_parent, tty_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        files = _etc_files(containers, container)
        argv, volumes = spec.argv, _binds(store, spec.volumes)
        if spec.init is not None:  # --init: the host's init first, the command its child
            from ..containers.spec import INIT_TARGET, Volume

            argv = (INIT_TARGET, "--", *argv)
            volumes = (Volume("bind", INIT_TARGET, spec.init, readonly=True), *volumes)
        launch = process.Launch(
            argv=argv, env=spec.env, rootfs=str(rootfs), workdir=spec.workdir,
            user=spec.user, hostname=_hostname(container), network=spec.network,
            volumes=volumes, files=[(str(path), f"/etc/{name}")
                                         for name, path in files.items()],
            read_only=spec.read_only, stdio=io, tty=tty_child, seccomp=spec.seccomp,
            capabilities=kept_capabilities(spec), shm_size=spec.shm_size,
            ulimits=spec.ulimits, privileged=spec.privileged, devices=spec.devices,
            group_add=spec.group_add, ipc_host=spec.ipc == "host", uts_host=spec.uts == "host")
        child = process.spawn(launch)
        if tty_child is not None:
            tty_child.close()
        for fd in child_ends:  # the container holds them now: their end is its end
            os.close(fd)
        child_ends.clear()
        with forwarding(child.pid, stopped):
            # recorded before the network: a sweep must see it alive (core/network/);
            # and before the cgroup: a monitor killed after this is reconciled by the
            # next command, which removes the group (made earlier, it leaked)
            containers.mark_running(container.id, child.pid, process_identity())
            group = _cgroup(container)
            if group is not None:
                group.add(child.pid)
            _fill(files, attach(store, container.id, spec.network, child.pid, spec.ports,
                                _hostname(container), settings=network,
                                address=spec.ip or None), spec)
            if spec.network not in MODES:  # a user network's names
                from . import peers

                peers.refresh(store, spec.network)
            if spec.sysctls:  # once its network is there (net.ipv4.conf.eth0.*)
                from . import sysctls

                sysctls.apply(child.pid, spec.sysctls)
            try:
                child.release()
            except LaminaError:
                ended = (_wait(child.pid), False)
                child = None
                raise
            if tty_parent is not None:
                master = terminal.receive_master(tty_parent)
            if stdio.mode == "log" and (spec.interactive or spec.tty):
                from .console import Console

                console = Console(containers.directory(container.id),
                                  master if spec.tty else stdin_w, tty=spec.tty)
            if started is not None:
                started()
            if spec.healthcheck:
                from . import health

                watcher = health.start(container._replace(pid=child.pid, state="running"),
                                       containers.directory(container.id))
            code = supervise(child.pid, stdio, master, log, pipes, console)
        child = None
        ended = (code, group is not None and group.oom_killed())
        return code
    except BaseException:
        if child is not None:
            child.abandon()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child.pid, 0)
        raise
    finally:
        if console is not None:  # first: its thread may be writing to the master
            console.close()
        for fd in (master, devnull, stdin_w, *pipes, *child_ends):
            if fd >= 0:
                os.close(fd)
        if log is not None:
            log.close()
        for sock in (tty_parent, tty_child):
            if sock is not None:
                sock.close()
        if watcher is not None:
            from . import health

            health.stop(watcher)
        # freed before the record says "exited": whoever waits for that (rm, wait,
        # stop) then finds the layer unmounted and the address and veth gone
        _teardown(store, container, holder)
        if exiting is not None and ended is not None:
            exiting(ended[0])
        _record_exit(containers, container.id, ended)
        if stopped:  # everything is freed: now the caller may stop too
            raise KeyboardInterrupt(f"stopped by signal {stopped[0]}")


def _record_exit(containers: ContainerStore, container_id: str,
                 ended: tuple[int, bool] | None) -> None:
    """Record how the run ended; ``None``: it failed before its process could be waited
    for (the record, if it says running, gets the lost-monitor code)."""
    if ended is not None:
        containers.mark_exited(container_id, ended[0], oom_killed=ended[1])
        return
    with contextlib.suppress(LaminaError):
        if containers.get(container_id).running:
            containers.mark_exited(container_id, LOST_EXIT_CODE)


def limits(container: Container) -> cgroups.Limits | None:
    """The container's cgroup limits; None when it asked for none."""
    spec = container.spec
    if (spec.memory is None and spec.pids_limit is None and spec.cpus is None
            and spec.cpu_shares is None):
        return None
    from . import cgroups

    return cgroups.Limits(memory=spec.memory, memory_swap=spec.memory_swap,
                          pids=spec.pids_limit, cpus=spec.cpus, cpu_shares=spec.cpu_shares)


def _cgroup(container: Container) -> cgroups.Cgroup | None:
    """A cgroup for a container with limits (without, its pid namespace alone is enough
    to end every process with it, and joining a cgroup costs ~10 ms of a start)."""
    wanted = limits(container)
    if wanted is None:
        return None
    from . import cgroups

    return cgroups.Cgroup.create(container.id, wanted)


def apply_limits(containers: ContainerStore, container: Container,
                 spec: ContainerSpec) -> None:
    """Give the running ``container`` the limits of ``spec`` now (``update``): its group
    written again, or made and its processes moved in when it had none. A limit the
    kernel refuses (memory below what it uses) is an error and changes nothing more."""
    from . import cgroups
    from .stats import members

    wanted = limits(container._replace(spec=spec))
    if wanted is None:
        if limits(container) is None:
            return  # no group, and none needed
        wanted = cgroups.Limits()  # the limits lifted: the group stays, unlimited
    marker = containers.directory(container.id) / PAUSED_GROUP
    if limits(container) is None:
        with contextlib.suppress(OSError):
            marker.touch()  # made after its start: the teardown removes it
    group = cgroups.Cgroup.create(container.id, wanted)
    pid = container.pid
    assert pid is not None
    group.move_in(lambda: members(pid))


def _remove_cgroup(container_id: str) -> None:
    from . import cgroups

    with contextlib.suppress(LaminaError, OSError):
        group = cgroups.Cgroup.open(container_id)
        group.kill_all()
        group.remove()


def _teardown(store: Store, container: Container, holder: str) -> None:
    """Free what a run held; idempotent, and safe when the run never started."""
    marker = ContainerStore(store).directory(container.id) / PAUSED_GROUP
    if limits(container) is not None or marker.exists():
        _remove_cgroup(container.id)
        with contextlib.suppress(OSError):
            marker.unlink()
    if container.spec.network not in ("host", "none"):
        with contextlib.suppress(LaminaError):
            detach(store, container.id)
        if container.spec.network != "bridge":  # the others forget its name
            from . import peers

            with contextlib.suppress(LaminaError, OSError):
                peers.refresh(store, container.spec.network)
    with contextlib.suppress(LaminaError):
        store.unmount(container.layer, holder=holder)


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return exit_code(status)


def exit_code(status: int) -> int:
    """A wait status as an exit code: 128+N for signal N, as shells and Docker say."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


@contextlib.contextmanager
def forwarding(pid: int, stopped: list[int] | None = None) -> Iterator[None]:
    """Pass the signals this process gets on to ``pid`` (the container's first process).

    Installed before the child is released: a SIGTERM arriving while it starts must
    reach it, not end the monitor. With ``stopped`` (a build's step) a signal is not
    passed on but ends the container (SIGKILL: a shell as its pid 1 ignores SIGINT),
    and is appended there.
    """
    def forward(sig: int, _frame: object) -> None:
        if stopped is not None:
            stopped.append(sig)
            sig = signal.SIGKILL
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def supervise(pid: int, stdio: Stdio, master: int, log: logs.LogWriter | None = None,
              pipes: dict[int, str] | None = None, console: Console | None = None) -> int:
    """Relay ``pid``'s output until it exits; its exit code.

    Its pty (``master``, one stream: stdout), if it has one, or its ``pipes`` (read
    end -> stream) go to ``log`` and, unless detached (``stdio.mode == "log"``), to
    this process's stdout and stderr. Without either, ``pid`` writes where it was
    given to (``exec``) and is only waited for. A detached container's ``console``
    gets the output too, for whoever is attached.
    """
    sink = _sink(log, echo=stdio.mode != "log", console=console)
    if master >= 0:
        status: list[int] = []

        def done() -> bool:
            if not status:
                waited, st = os.waitpid(pid, os.WNOHANG)
                if waited:
                    status.append(st)
            return bool(status)

        stdin = 0 if stdio.interactive and stdio.mode == "tty" else None
        with terminal.raw_terminal(0) if stdin is not None else contextlib.nullcontext():
            terminal.relay(master, stdin=stdin, output=partial(sink, "stdout"), done=done)
        if log is not None:
            log.end("stdout")
        if status:
            return exit_code(status[0])
    elif pipes:
        return exit_code(_relay_pipes(pid, pipes, sink, log))
    return _wait(pid)


def _sink(log: logs.LogWriter | None, *, echo: bool,
          console: Console | None = None) -> Callable[[str, bytes], None]:
    """Where a container's output goes: its log and (``echo``) our stdout and stderr.

    Once our end of a stream is gone (``run ... | head -1``), that stream is only
    logged: the container runs on, as under Docker.
    """
    gone: set[str] = set()

    def sink(stream: str, data: bytes) -> None:
        if echo and stream not in gone:
            try:
                terminal.write_all(1 if stream == "stdout" else 2, data)
            except OSError:  # EPIPE, or a closed descriptor
                gone.add(stream)
        if log is not None:
            log.feed(stream, data)
        if console is not None:
            console.send(stream, data)

    return sink


#: how long the pipes may stay open once the container's first process has exited
#: (its pid namespace ends every other process at once: only a descriptor passed
#: out of the container can hold them longer)
DRAIN_SECONDS = 2.0


def _relay_pipes(pid: int, pipes: dict[int, str], sink: Callable[[str, bytes], None],
                 log: logs.LogWriter | None) -> int:
    """Pass what the container writes to ``pipes`` to ``sink`` until they close; its wait
    status."""
    import select

    pidfd = os.pidfd_open(pid)
    status: int | None = None
    deadline = 0.0
    open_pipes = dict(pipes)
    try:
        while open_pipes or status is None:
            watched = [*open_pipes, *([pidfd] if status is None else [])]
            timeout = None if status is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                break
            ready, _, _ = select.select(watched, [], [], timeout)
            for fd in ready:
                if fd == pidfd:
                    _, status = os.waitpid(pid, 0)
                    deadline = time.monotonic() + DRAIN_SECONDS
                    continue
                data = os.read(fd, 1 << 16)
                if data:
                    sink(open_pipes[fd], data)
                else:
                    stream = open_pipes.pop(fd)
                    if log is not None:
                        log.end(stream)
        if log is not None:
            for stream in open_pipes.values():
                log.end(stream)
        if status is None:
            _, status = os.waitpid(pid, 0)
        return status
    finally:
        os.close(pidfd)


# -- detached runs ----------------------------------------------------------------------


def start_detached(engine: Engine, container_id: str) -> None:
    """Fork a monitor for the container and return once its process has started.

    The monitor opens its own store (a database connection must not cross a fork) and
    runs the container with its output in the log, again and again as its restart
    policy says (:func:`should_restart`). A failure to start is raised here, as it
    would be in the foreground.
    """
    def monitor(started: Callable[[], None]) -> int:
        with engine.open_store() as store:
            containers = ContainerStore(store)
            container = containers.get(container_id)
            set_stopped_by_user(containers, container_id, False)
            write_restart_count(containers, container_id, 0)
            marker = containers.directory(container_id) / _RESTARTING
            over = partial(_unlink, marker)  # "restarting" lasts until it runs again

            def exiting(code: int) -> None:
                # before the exit is recorded: nobody sees it "exited" and then restarted
                if should_restart(containers, container, code, count):
                    with contextlib.suppress(OSError):
                        marker.write_text(process_identity())

            count, delay = 0, RESTART_DELAY
            try:
                while True:
                    began = time.monotonic()
                    code = run(store, container, Stdio("log", interactive=False),
                               started if count == 0 else over, network=engine.config.network,
                               exiting=exiting)
                    if not should_restart(containers, container, code, count):
                        break
                    if time.monotonic() - began >= 10:
                        delay = RESTART_DELAY  # it ran a while: the back-off starts over
                    again = _back_off(containers, container_id, delay)
                    delay = min(delay * 2, 60.0)
                    if again is None:
                        return code  # removed meanwhile
                    container = again
                    if container.running or stopped_by_user(containers, container_id):
                        break  # started by start/restart meanwhile, or stopped for good
                    count += 1
                    write_restart_count(containers, container_id, count)
            finally:
                over()
            if container.spec.auto_remove:
                remove(store, container.id, volumes=True)
        return code

    in_background(monitor)


#: the first wait before a restart, doubled each time up to a minute (Docker's)
RESTART_DELAY = 0.1
_STOPPED = "stopped-by-user"
_RESTARTS = "restart-count"
#: while the policy's back-off lasts: the waiting monitor's process_identity
_RESTARTING = "restarting"


def _back_off(containers: ContainerStore, container_id: str,
              delay: float) -> Container | None:
    """Wait ``delay`` seconds before the policy starts the container again, shown as
    "restarting" (its marker, written as it exited, holds this monitor's identity
    until the container runs again); cut short by ``stop``/``kill``/``rm -f`` or by a
    ``start`` (the back-off reaches a minute). The container as it is then; None once
    removed."""
    deadline = time.monotonic() + delay
    while True:
        time.sleep(max(0.0, min(0.1, deadline - time.monotonic())))
        try:
            container = containers.get(container_id)
        except LaminaError:
            return None
        if (time.monotonic() >= deadline or container.running
                or stopped_by_user(containers, container_id)):
            return container


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def restarting(containers: ContainerStore, container: Container) -> bool:
    """Whether the container's restart policy is waiting to start it again (Docker's
    "restarting" state): its monitor lives, in its back-off, and no ``stop`` came."""
    if container.running or container.spec.restart == "no":
        return False
    return _restart_pending(containers, container.id) \
        and not stopped_by_user(containers, container.id)


def _restart_pending(containers: ContainerStore, container_id: str) -> bool:
    """Whether a live monitor holds the container's restarting marker."""
    from ..host.locks import is_alive

    try:
        owner = (containers.directory(container_id) / _RESTARTING).read_text()
    except OSError:
        return False
    return is_alive(owner)


def shown(containers: ContainerStore, container: Container) -> Container:
    """The container as the commands show it: state "restarting" during its back-off,
    "paused" while frozen (the stored state stays "exited" or "running": nothing else
    changes)."""
    if restarting(containers, container):
        return container._replace(state="restarting")
    if container.running:
        from .pause import paused

        if paused(container):
            return container._replace(state="paused")
    return container


def wait_restart_over(containers: ContainerStore, container: Container) -> Container:
    """After ``stop`` marked it: wait (briefly) for a back-off under way to end, so that
    the monitor cannot start the container again behind the caller's back."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _restart_pending(containers, container.id):
        time.sleep(0.02)
    return containers.get(container.id)


def should_restart(containers: ContainerStore, container: Container, code: int,
                   count: int) -> bool:
    """Whether the restart policy starts the container again after it exited with
    ``code``, restarted ``count`` times so far: never once ``stop`` or ``kill`` stopped
    it (Docker's "manually stopped")."""
    from ..containers.spec import restart_policy

    with contextlib.suppress(LaminaError):
        container = containers.get(container.id)  # `update --restart` may have changed it
    name, most = restart_policy(container.spec)
    if name == "no" or stopped_by_user(containers, container.id):
        return False
    if name == "on-failure":
        return code != 0 and (not most or count < most)
    return True  # always, unless-stopped


def restarts_at_boot(containers: ContainerStore, container: Container) -> bool:
    """Whether the restart policy starts the container when the machine comes up, as
    Docker's daemon does when it starts: ``always`` even after ``stop`` (Docker's docs:
    "restarted only when the daemon restarts"), ``unless-stopped`` unless stopped by
    the user, ``on-failure`` after a failure within its count. A container never
    started, or running, is left alone."""
    from ..containers.spec import restart_policy

    name, most = restart_policy(container.spec)
    if container.state != "exited" or name == "no":
        return False
    if name == "always":
        return True
    if stopped_by_user(containers, container.id):
        return False
    if name == "on-failure":
        return container.exit_code != 0 and (
            not most or restart_count(containers, container.id) < most)
    return True  # unless-stopped


def set_stopped_by_user(containers: ContainerStore, container_id: str, stopped: bool) -> None:
    """Record that ``stop`` or ``kill`` ended the container (its policy must not restart
    it), or that it was started again."""
    marker = containers.directory(container_id) / _STOPPED
    if stopped:
        with contextlib.suppress(OSError):
            marker.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
            marker.touch()
    else:
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()


def stopped_by_user(containers: ContainerStore, container_id: str) -> bool:
    return (containers.directory(container_id) / _STOPPED).exists()


def write_restart_count(containers: ContainerStore, container_id: str, count: int) -> None:
    with contextlib.suppress(OSError):
        (containers.directory(container_id) / _RESTARTS).write_text(str(count))


def restart_count(containers: ContainerStore, container_id: str) -> int:
    """How many times the restart policy started the container since it was started."""
    try:
        return int((containers.directory(container_id) / _RESTARTS).read_text())
    except (OSError, ValueError):
        return 0


def in_background(body: Callable[[Callable[[], None]], int]) -> None:
    """Run ``body(started)`` in a forked process of its own session, stdio on /dev/null,
    and return once it calls ``started()``; what it raised before that is raised here.

    The detached monitor of ``run -d``/``start`` and the waiter of ``exec -d``: a
    process that outlives this command and reaps what it started.
    """
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        _background_main(body, ready_w)
    os.close(ready_w)
    data = b""
    while chunk := os.read(ready_r, 65536):
        data += chunk
    os.close(ready_r)
    if data == b"ok":
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    if not data:
        raise ContainerError("the container's monitor died before the container started",
                             hint="rerun with --debug")
    info = json.loads(data)
    error = process._failure(json.dumps(info).encode())
    raise error


def _background_main(body: Callable[[Callable[[], None]], int], ready_w: int) -> None:
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)

        def started() -> None:
            # the command waiting for this may have been killed (EPIPE): the container
            # runs on; raising here made its own monitor kill it
            with contextlib.suppress(OSError):
                os.write(ready_w, b"ok")
            os.close(ready_w)

        code = body(started)
    except LaminaError as exc:
        with contextlib.suppress(OSError):
            kind = {127: "not_found", 126: "not_executable"}.get(exc.exit_status, "setup")
            os.write(ready_w, json.dumps({"kind": kind, "message": str(exc),
                                          "hint": exc.hint}).encode())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(ready_w, json.dumps({"kind": "setup", "message": f"monitor failed: {exc}",
                                          "hint": "rerun with --debug"}).encode())
    finally:
        os._exit(code & 0xFF)


# -- other commands' part -------------------------------------------------------------


def reconcile(store: Store) -> list[str]:
    """Record containers whose monitor vanished as exited and free what they held; remove
    the step containers of builds that were killed (they are nobody's to keep)."""
    from ..containers.spec import BUILD_OWNER_LABEL
    from ..host.locks import is_alive

    containers = ContainerStore(store)
    done = []
    bridged = False
    for container in containers.stale():
        _remove_cgroup(container.id)
        containers.mark_exited(container.id, LOST_EXIT_CODE)
        done.append(container.id)
        bridged = bridged or container.spec.network not in ("host", "none")
    for container in containers.containers():
        owner = container.spec.labels.get(BUILD_OWNER_LABEL)
        killed_build = bool(owner) and not is_alive(owner)
        # --rm asked for its removal; its monitor was killed before it could (as Docker
        # removes such containers when its daemon comes back)
        lost_rm = container.spec.auto_remove and container.id in done
        if (killed_build or lost_rm) and not container.running:
            with contextlib.suppress(LaminaError):
                remove(store, container.id, volumes=True)
    if bridged:
        # leases, port rules and host veths of every container that is not running
        alive = [c.id for c in containers.containers() if c.running]
        with contextlib.suppress(LaminaError):
            sweep(store, alive)
        from . import peers

        peers.refresh_all(store)
    return done


def signal_container(container: Container, sig: int) -> None:
    if not container.running or container.pid is None:
        raise ContainerError(f"container {container.name} is not running",
                             hint=f"start it first: lamina start {container.name}")
    try:
        os.kill(container.pid, sig)
    except ProcessLookupError:
        raise ContainerError(f"container {container.name} is not running",
                             hint="it exited a moment ago") from None


def wait_exited(store: Store, container_id: str, timeout: float | None) -> Container | None:
    """Poll the record until the container is not running; None on timeout."""
    containers = ContainerStore(store)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.005
    while True:
        container = containers.get(container_id)
        if not container.running:
            return container
        if container.process and not _alive(container):
            reconcile(store)
            return containers.get(container_id)
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _alive(container: Container) -> bool:
    from ..containers.store import monitor_alive

    return monitor_alive(container.process)


def stop(store: Store, container_id: str, timeout: float) -> Container:
    """SIGTERM (the image's stop signal), then SIGKILL after ``timeout`` seconds."""
    containers = ContainerStore(store)
    container = containers.get(container_id)
    waiting = restarting(containers, container)
    set_stopped_by_user(containers, container_id, True)  # also between two restarts
    if waiting:  # the policy may be starting it this very moment
        container = wait_restart_over(containers, container)
    if not container.running:
        return container
    sig = getattr(signal, container.spec.stop_signal, signal.SIGTERM)
    with contextlib.suppress(ContainerError):
        signal_container(container, sig)
    from .pause import thaw

    thaw(container)  # a paused container gets its signal now, not at unpause
    done = wait_exited(store, container_id, timeout)
    if done is None:
        with contextlib.suppress(ContainerError):
            signal_container(containers.get(container_id), signal.SIGKILL)
        done = wait_exited(store, container_id, 10)
    if done is None:
        raise ContainerError(f"container {container.name} did not stop",
                             hint="its monitor may be stuck; try lamina kill")
    return done


def remove(store: Store, container_id: str, *, force: bool = False,
           volumes: bool = False) -> None:
    """Remove a container; with ``force`` a running one is killed first, with ``volumes``
    its anonymous volumes go too."""
    containers = ContainerStore(store)
    container = containers.get(container_id)
    if restarting(containers, container):
        if not force:
            raise ContainerError(f"container {container.name} is restarting",
                                 hint="stop it first, or remove it with rm -f")
        set_stopped_by_user(containers, container.id, True)
        container = wait_restart_over(containers, container)
    if container.running and force:
        set_stopped_by_user(containers, container.id, True)  # its policy must not restart it
        with contextlib.suppress(ContainerError):
            signal_container(container, signal.SIGKILL)
        from .pause import thaw

        thaw(container)  # v1's freezer holds even SIGKILL until then
        wait_exited(store, container.id, 10)
    containers.remove(container.id)
    if volumes and any(v.kind == "volume" for v in container.spec.volumes):
        from ..containers.volumes import VolumeStore

        VolumeStore(store).remove_anonymous(container)
