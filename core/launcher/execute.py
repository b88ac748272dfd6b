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
            started: Callable[[], None] | None = None) -> int:
    """Run ``argv`` in ``container``; its exit code (128+N for signal N).

    ``started`` is called once the process runs (``exec -d`` returns then).
    """
    assert container.pid is not None
    master = devnull = -1
    tty_parent = tty_child = None
    try:
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        if tty:
            tty_parent, tty_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        launch = process.Launch(
            argv=argv, env=env, join_pid=container.pid, workdir=workdir, user=user,
            network=container.spec.network, stdio=(0 if interactive else devnull, 1, 2),
            tty=tty_child, seccomp=container.spec.seccomp,
            capabilities=monitor.kept_capabilities(container.spec),
            ulimits=container.spec.ulimits)
        child = process.spawn(launch)
        if tty_child is not None:
            tty_child.close()
        with monitor.forwarding(child.pid):
            if monitor.limits(container) is not None:
                cgroups.Cgroup.open(container.id).add(child.pid)
            try:
                child.release()
            except LaminaError:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child.pid, 0)
                raise
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
