"""Closing every file descriptor a container must not inherit.

The launcher's process holds descriptors of the host: the store's database and lock,
directory fds of layers, sockets. Any of them left open across exec is a door out of
the container (an ``openat`` relative to a host directory fd escapes any root; runc's
CVE-2024-21626 was one leaked directory fd). Descriptors without ``O_CLOEXEC`` are not
rare in a Python process (``os.open`` of a directory by hand, a library's), so the
child closes everything it was not told to keep, just before exec.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Collection

_libc = ctypes.CDLL(None, use_errno=True)
#: glibc 2.34+ wraps close_range(2) (Linux 5.9+); older ones lack the symbol
_close_range = getattr(_libc, "close_range", None)
if _close_range is not None:
    _close_range.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
    _close_range.restype = ctypes.c_int

_MAX_FD = 0xFFFFFFFF  # close_range's "to the end"


def close_other_fds(keep: Collection[int]) -> None:
    """Close every descriptor of this process except those in ``keep``.

    ``close_range`` over the gaps between the kept descriptors where the kernel and
    libc have it, else one ``close`` per entry of ``/proc/self/fd``.
    """
    kept = sorted(set(fd for fd in keep if fd >= 0))
    if _close_range is not None and _close_ranges(kept):
        return
    for fd in _open_fds():
        if fd not in kept:
            with contextlib.suppress(OSError):  # the listing's own fd, closed already
                os.close(fd)


def _close_ranges(kept: list[int]) -> bool:
    """False when the kernel has no close_range (ENOSYS): nothing was closed then."""
    first = 0
    for fd in [*kept, _MAX_FD + 1]:
        if fd > first and _close_range(first, fd - 1, 0) != 0:  # type: ignore[misc]
            if ctypes.get_errno() == 38:  # ENOSYS: a kernel older than 5.9
                return False
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        first = fd + 1
    return True


def _open_fds() -> list[int]:
    return [int(name) for name in os.listdir("/proc/self/fd")]
