"""``exec``: another process in a running container's namespaces, cgroup and limits.

The process joins the container's namespaces (see :mod:`.process`), gets the same
hardening as the container's first process and its own user and working directory.
It is a child of this command, not of the container's monitor: its exit status is
this command's. With ``exec -d`` this command returns once it runs, and a process of
its own session (:func:`.monitor.in_background`) waits for it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Sequence

from ..containers.store import Container
from ..errors import LaminaError
from . import cgroups, monitor, process, terminal


def exec_in(container: Container, argv: Sequence[str], *, env: Sequence[str], user: str,
            workdir: str, tty: bool, interactive: bool,
            started: Callable[[], None] | None = None, privileged: bool = False) -> int:
    """Run ``argv`` in ``container``; its exit code (128+N for signal N).

    ``started`` is called once the process runs (``exec -d`` returns then);
    ``privileged``: every capability lamina holds and no seccomp filter (``exec
    --privileged``), whatever the container has.
    """
    assert container.pid is not None
    master = devnull = -1
    tty_parent = tty_child = None
    try:
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        if tty:
            tty_parent, tty_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        if privileged:
            container = container._replace(
                spec=container.spec._replace(privileged=True, seccomp=False))
        child = _spawn(container, argv, env=env, user=user, workdir=workdir,
                       stdio=(0 if interactive else devnull, 1, 2), tty=tty_child)
        if tty_child is not None:
            tty_child.close()
        with monitor.forwarding(child.pid):
            _release(container, child)
            if started is not None:
                started()
            if tty_parent is not None:
                master = terminal.receive_master(tty_parent)
            stdio = monitor.Stdio("tty" if tty else "inherit", interactive)
            return monitor.supervise(child.pid, stdio, master)
    finally:
        for fd in (master, devnull):
            if fd >= 0:
                os.close(fd)
        for sock in (tty_parent, tty_child):
            if sock is not None:
                sock.close()


def _spawn(container: Container, argv: Sequence[str], *, env: Sequence[str], user: str,
           workdir: str, stdio: tuple[int, int, int],
           tty: socket.socket | None = None) -> process.Child:
    """A process in the container's namespaces, with its hardening, waiting to exec."""
    return process.spawn(process.Launch(
        argv=argv, env=env, join_pid=container.pid, workdir=workdir, user=user,
        network=container.spec.network, stdio=stdio, tty=tty,
        seccomp=container.spec.seccomp,
        capabilities=monitor.kept_capabilities(container.spec),
        ulimits=container.spec.ulimits, group_add=container.spec.group_add))


def _release(container: Container, child: process.Child) -> None:
    """Into the container's cgroup (if it has one), then let it exec; raise its failure."""
    if monitor.limits(container) is not None:
        cgroups.Cgroup.open(container.id).add(child.pid)
    try:
        child.release()
    except LaminaError:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child.pid, 0)
        raise


def run_captured(container: Container, argv: Sequence[str], output: int, *,
                 timeout: float) -> int:
    """Run ``argv`` in ``container`` as its image's user, stdout and stderr to ``output``;
    its exit code. Killed and :class:`TimeoutError` after ``timeout`` seconds (a health
    check's rule)."""
    import select

    spec = container.spec
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        child = _spawn(container, argv, env=spec.env, user=spec.user, workdir=spec.workdir,
                       stdio=(devnull, output, output))
    finally:
        os.close(devnull)
    _release(container, child)
    pidfd = os.pidfd_open(child.pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
        if not ready:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, 9)
            os.waitpid(child.pid, 0)
            raise TimeoutError(f"{argv[0]} ran past {timeout} s")
        return monitor.exit_code(os.waitpid(child.pid, 0)[1])
    finally:
        os.close(pidfd)
