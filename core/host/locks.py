"""Coordination between lamina processes: file locks and process identities.

Several lamina commands may use one store at once and any of them may be
killed. A lock serialises structural changes; a process identity recorded
with an incomplete layer or a mount reference lets the next process tell
"someone is still working on this" from "its owner died".
"""

from __future__ import annotations

import fcntl
import functools
import os
from pathlib import Path


class FileLock:
    """An exclusive (or with ``shared``, a shared) ``flock`` on a lock file, for a with block.

    Re-entrant within one process: nested ``with`` blocks on the same object
    take the lock once.
    """

    def __init__(self, path: Path, *, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self._fd = -1
        self._depth = 0

    def __enter__(self) -> FileLock:
        if self._depth == 0:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            os.close(self._fd)
            self._fd = -1


#: what :func:`boot_id` answers when the kernel does not say: never proof of "same boot"
UNKNOWN_BOOT = "unknown-boot"


@functools.cache
def boot_id() -> str:
    """This boot's id: mounts and processes of another boot are gone."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return UNKNOWN_BOOT


def _start_time(pid: int, *, zombie: bool = True) -> str | None:
    """The process's start time; None when it is gone (or, unless ``zombie``, a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # field 3 (state), field 22 (starttime); the command name in field 2 may hold spaces
    # and ')'
    fields = stat.rpartition(b")")[2].split()
    if not zombie and fields[0] == b"Z":
        return None
    return fields[19].decode()


def process_identity(pid: int | None = None) -> str:
    """``<boot id>:<pid>:<start time>``: unique for a process across pid reuse."""
    pid = os.getpid() if pid is None else pid
    return f"{boot_id()}:{pid}:{_start_time(pid)}"


def is_alive(identity: str) -> bool:
    """Whether the process named by :func:`process_identity` still runs.

    A zombie does not: it has ended and holds nothing any more (no fd, no lock, no
    work under way), and whose parent died under a pid 1 that does not reap (a
    container's init, this machine kind's) stays one for good. Taken for alive, a
    killed detached monitor kept its container's mount forever.
    """
    try:
        boot, pid, start = identity.split(":")
    except ValueError:
        return False
    if boot != boot_id():
        return False
    return _start_time(int(pid), zombie=False) == start
