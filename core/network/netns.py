"""Entering another process's network namespace for a moment, on this thread only.

``setns(2)`` moves only the calling thread, and a socket belongs for its whole life to
the namespace it was made in: a socket opened inside :func:`entered` keeps working
on that namespace after the thread has returned to its own. Python 3.11 has no
``os.setns``; ctypes calls libc's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

from ..errors import NetworkError

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace ``fd`` refers to."""
    setns_call = getattr(os, "setns", None)
    if setns_call is not None:
        setns_call(fd, nstype)
        return
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_path(pid: int) -> str:
    return f"/proc/{pid}/ns/net"


@contextlib.contextmanager
def entered(pid: int) -> Iterator[None]:
    """Run the body in process ``pid``'s network namespace, then return to this one.

    Returning is not optional: a thread left in a container's namespace would set up
    the next container from inside the last one, so a failure to return is fatal.
    """
    try:
        target = os.open(netns_path(pid), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetworkError(
            f"cannot open the network namespace of process {pid}: {exc.strerror}",
            hint="the container's process ended before its network was set up",
        ) from None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            setns(target)
        except OSError as exc:
            raise NetworkError(
                f"cannot enter the network namespace of process {pid}: {exc.strerror}",
                hint="setting up a container's network needs root (CAP_SYS_ADMIN)",
            ) from None
        try:
            yield
        finally:
            setns(own)  # an OSError here propagates: see the docstring
    finally:
        os.close(target)
        os.close(own)
