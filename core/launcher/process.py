"""Starting the container's process: new namespaces (or a running container's, for exec),
the root, the user, the hardening, then exec.

The parent and the child talk over two pipes. The child waits on *go* until the parent
has put it in its cgroup and connected its network (both need its pid); the parent
then reads *errors* until EOF: the pipe is close-on-exec, so EOF with nothing read
means the exec succeeded, and anything read is the child's failure as JSON (message,
hint, exit status: Docker's 127 for a missing command, 126 for one that cannot run).

Everything the child runs after ``pivot_root`` is imported before it: a module
imported later would be looked up inside the container's root.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import resource
import signal
import sys
import termios
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from ..containers.spec import Volume
from ..containers.users import resolve_groups, resolve_user
from ..errors import CommandNotExecutable, CommandNotFound, LaminaError, LaunchError
from ..network.ifconfig import loopback_up
from . import capabilities, fds, rootfs, seccomp, syscalls, terminal

if TYPE_CHECKING:
    import socket

#: namespaces a container gets (cgroup's is entered after the cgroup is joined)
NEW_NAMESPACES = (syscalls.CLONE_NEWNS | syscalls.CLONE_NEWPID | syscalls.CLONE_NEWUTS
                  | syscalls.CLONE_NEWIPC)
#: the order a process joins a running container's namespaces in (mnt last: after it,
#: /proc/PID of the host is out of sight)
JOIN_ORDER = ("cgroup", "ipc", "uts", "net", "pid", "mnt")


class Launch(NamedTuple):
    """Everything the child needs, decided by the parent before the clone."""

    argv: Sequence[str]
    env: Sequence[str]
    rootfs: str = ""  # empty: join ``join_pid``'s namespaces instead (exec)
    join_pid: int | None = None
    workdir: str = "/"
    user: str = ""
    hostname: str = ""
    network: str = "bridge"
    volumes: Sequence[Volume] = ()
    files: Sequence[tuple[str, str]] = ()  # (host file, container path) bound in
    read_only: bool = False
    stdio: tuple[int, int, int] = (0, 1, 2)
    tty: socket.socket | None = None  # -t: where to send the master of the pty made inside
    capabilities: frozenset[int] = capabilities.DEFAULT_CAPABILITIES
    seccomp: bool = True
    shm_size: int | None = None  # bytes of /dev/shm (None: 64 MB)
    ulimits: Sequence[tuple[str, int, int]] = ()  # (name, soft, hard), -1 unlimited
    privileged: bool = False  # no masked paths, /sys writable, every host device
    devices: Sequence[tuple[str, str]] = ()  # (host path, container path) bound in
    group_add: Sequence[str] = ()  # more supplementary groups (names or numbers)
    ipc_host: bool = False  # the host's IPC namespace and /dev/shm (``--ipc host``)
    uts_host: bool = False  # the host's host name (``--uts host``)


class Child:
    """The cloned child, waiting on its *go* pipe; its failures come on *errors*."""

    __slots__ = ("_errors", "_go", "pid")

    def __init__(self, pid: int, go: int, errors: int) -> None:
        self.pid, self._go, self._errors = pid, go, errors

    def release(self) -> None:
        """Let the child go on to exec, then wait for the outcome; raise its failure."""
        try:
            os.write(self._go, b"1")
        except BrokenPipeError:
            pass  # it died already: the errors pipe says why
        finally:
            os.close(self._go)
        data = b""
        while chunk := _read_retry(self._errors):
            data += chunk
        os.close(self._errors)
        if data:
            raise _failure(data)

    def abandon(self) -> None:
        """Kill the child before it ran anything (a setup step of the parent failed)."""
        os.close(self._go)
        os.close(self._errors)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def _read_retry(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, 65536)
        except InterruptedError:
            continue


def _failure(data: bytes) -> LaminaError:
    try:
        info = json.loads(data)
        kind = {"not_found": CommandNotFound, "not_executable": CommandNotExecutable}.get(
            info.get("kind"), LaunchError)
        return kind(info["message"], hint=info.get("hint"))
    except (ValueError, KeyError, TypeError):
        return LaunchError(f"the container's process failed to start: {data[:200]!r}")


def spawn(launch: Launch) -> Child:
    """Clone the child (new namespaces, or none for a join); it stops before it joins the
    cgroup namespace and execs, until :meth:`Child.release`.

    The seccomp filter is built here, in the parent: libseccomp is opened from the host's
    /usr/lib, and the child only loads it.
    """
    seccomp_filter = seccomp.build_default(launch.capabilities) if launch.seccomp else None
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    flags = 0
    if launch.join_pid is None:
        flags = NEW_NAMESPACES | (syscalls.CLONE_NEWNET if launch.network != "host" else 0)
        if launch.ipc_host:
            flags &= ~syscalls.CLONE_NEWIPC
        if launch.uts_host:
            flags &= ~syscalls.CLONE_NEWUTS
    sys.stdout.flush()
    sys.stderr.flush()
    if launch.join_pid is not None:
        # a pid namespace applies to the children of the process that enters it: this
        # process enters it (nothing else it does needs pids) and forks the child there
        _enter_pid_namespace(launch.join_pid)
    try:
        pid = syscalls.clone(flags) if flags else os.fork()
    except BaseException:
        for fd in (go_r, go_w, err_r, err_w):
            os.close(fd)
        if seccomp_filter is not None:
            seccomp_filter.release()
        raise
    if pid == 0:
        os.close(go_w)
        os.close(err_r)
        _child(launch, go_r, err_w, seccomp_filter)  # never returns
    if seccomp_filter is not None:
        seccomp_filter.release()
    os.close(go_r)
    os.close(err_w)
    return Child(pid, go_w, err_r)


def _report(err_w: int, kind: str, message: str, hint: str | None, status: int) -> None:
    try:
        os.write(err_w, json.dumps({"kind": kind, "message": message, "hint": hint}).encode())
    finally:
        os._exit(status)


def _child(launch: Launch, go_r: int, err_w: int,
           seccomp_filter: seccomp.Filter | None) -> None:
    """The container's process until exec. Any failure goes to ``err_w``; never returns.

    The root is built while the parent places the process in its cgroup and network
    (moving a process into a cgroup waits for the kernel's RCU grace period, ~10 ms:
    time the mounts use); only the cgroup namespace and what follows wait for *go*.
    """
    try:
        syscalls.die_with_parent()
        if launch.join_pid is not None:
            _join(launch.join_pid)
        else:
            rootfs.enter(launch.rootfs, volumes=launch.volumes, files=launch.files,
                         read_only=launch.read_only, mount_sys=launch.network != "host",
                         shm_size=launch.shm_size, privileged=launch.privileged,
                         devices=launch.devices, host_shm=launch.ipc_host)
            if launch.hostname and not launch.uts_host:
                syscalls.sethostname(launch.hostname)
            if launch.network != "host":
                loopback_up()
        if os.read(go_r, 1) != b"1":
            os._exit(1)  # the parent gave up
        os.close(go_r)
        if launch.join_pid is None and syscalls.has_namespace("cgroup"):
            syscalls.unshare(syscalls.CLONE_NEWCGROUP)  # after the parent placed us
        _stdio(launch)
        user = resolve_user(launch.user)
        if launch.group_add:
            user = user._replace(groups=tuple(dict.fromkeys(
                (*user.groups, *resolve_groups(launch.group_add)))))
        _workdir(launch.workdir, user.home)
        env = list(launch.env)
        if not any(e.startswith("HOME=") for e in env):
            env.append(f"HOME={user.home}")
        _ulimits(launch.ulimits)  # while CAP_SYS_RESOURCE may still raise a hard limit
        capabilities.restrict(launch.capabilities, uid_changes=True)
        os.setgroups(list(user.groups))
        os.setgid(user.gid)
        os.setuid(user.uid)
        _reset_signals()
        fds.close_other_fds((0, 1, 2, err_w))
        if seccomp_filter is not None:
            seccomp_filter.load()  # last: from here on the container's rules apply
        _exec(launch.argv, env, err_w)
    except LaminaError as exc:
        _report(err_w, "setup", str(exc), exc.hint, exc.exit_status)
    except BaseException as exc:
        _report(err_w, "setup", f"container setup failed: {exc}", None, 125)


def _ulimits(limits: Sequence[tuple[str, int, int]]) -> None:
    for name, soft, hard in limits:
        which = getattr(resource, f"RLIMIT_{name.upper()}")
        value = (resource.RLIM_INFINITY if soft == -1 else soft,
                 resource.RLIM_INFINITY if hard == -1 else hard)
        try:
            resource.setrlimit(which, value)
        except (ValueError, OSError) as exc:
            raise LaunchError(f"--ulimit {name}={soft}:{hard} was refused: {exc}",
                              hint="the kernel caps some limits (nofile at "
                              "/proc/sys/fs/nr_open): give a lower value") from None


def namespace_fd(pid: int, kind: str) -> int | None:
    try:
        return os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if kind == "cgroup":
            return None  # a kernel without cgroup namespaces
        raise LaunchError(f"the container's process {pid} is gone",
                          hint="it stopped while this command started") from None


def _enter_pid_namespace(pid: int) -> None:
    fd = namespace_fd(pid, "pid")
    assert fd is not None
    try:
        syscalls.setns(fd)
    finally:
        os.close(fd)


def _join(pid: int) -> None:
    """Enter the running container's other namespaces (the pid one came with the fork)."""
    fds = [fd for kind in JOIN_ORDER if kind != "pid"
           and (fd := namespace_fd(pid, kind)) is not None]
    for fd in fds:
        syscalls.setns(fd)
        os.close(fd)


def _stdio(launch: Launch) -> None:
    if launch.tty is not None:
        master, slave = terminal.open_pty()
        terminal.send_master(launch.tty, master)
        os.close(master)
        launch.tty.close()
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        stdio = (slave, slave, slave)
    else:
        stdio = launch.stdio
        if launch.join_pid is None:
            os.setsid()
    for target, fd in enumerate(stdio):
        if fd != target:
            os.dup2(fd, target, inheritable=True)
        else:
            os.set_inheritable(fd, True)


def _workdir(workdir: str, home: str) -> None:
    path = workdir or "/"
    if not path.startswith("/"):
        path = "/" + path
    # after pivot_root ".." cannot leave the root; normalise so the record is honest
    path = os.path.normpath(path).replace("//", "/")
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
        os.chdir(path)
    except OSError as exc:
        raise LaunchError(f"cannot use working directory {workdir}: {exc.strerror}",
                          hint="give a directory path inside the container with -w") from None


def _reset_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across exec."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT,
                signal.SIGHUP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _exec(argv: Sequence[str], env: list[str], err_w: int) -> None:
    environ = dict(e.split("=", 1) for e in env if "=" in e)
    try:
        os.execvpe(argv[0], list(argv), environ)
    except FileNotFoundError:
        _report(err_w, "not_found",
                f'exec: "{argv[0]}": executable file not found in $PATH',
                "check the command's name and the image's PATH", 127)
    except (PermissionError, IsADirectoryError) as exc:
        _report(err_w, "not_executable",
                f'exec: "{argv[0]}": permission denied ({exc.strerror})',
                "the path is not an executable file in the container", 126)
    except OSError as exc:
        if exc.errno == errno.ENOEXEC:
            _report(err_w, "not_executable", f'exec: "{argv[0]}": exec format error',
                    "the file is not a program for this machine", 126)
        _report(err_w, "setup", f'exec: "{argv[0]}": {exc.strerror}', None, 126)
