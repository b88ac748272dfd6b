"""The Linux calls Python 3.11 does not wrap: clone with namespace flags, unshare, setns,
pivot_root, prctl, mknod-free helpers. ctypes, one place.

:func:`clone` is ``fork`` with namespace flags: the child is pid 1 of a new pid
namespace at once, with no intermediate process (``unshare(CLONE_NEWPID)`` would put
only the *next* child there). It brackets the raw system call with CPython's own
before/after-fork calls, so the child's interpreter is as sound as after ``os.fork``.
"""

from __future__ import annotations

import ctypes
import os
import signal

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_SYS_CLONE = {"x86_64": 56, "aarch64": 220, "ppc64le": 120, "s390x": 120}
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def _number(table: dict[str, int]) -> int:
    machine = os.uname().machine
    if machine not in table:
        raise OSError(0, f"no system call number known for {machine}")
    return table[machine]


def clone(flags: int) -> int:
    """fork(2) into new namespaces (``CLONE_NEW*`` flags); returns 0 in the child."""
    number = _number(_SYS_CLONE)
    ctypes.pythonapi.PyOS_BeforeFork()
    # clone(flags, stack=0 (the caller's, copied as by fork), ptid, ctid, tls)
    pid = _libc.syscall(ctypes.c_long(number), ctypes.c_ulong(flags | signal.SIGCHLD),
                        ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0),
                        ctypes.c_ulong(0))
    err = ctypes.get_errno()
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return int(pid)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def sethostname(name: str) -> None:
    """socket.sethostname without importing socket (~4 ms of every container start)."""
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(ctypes.c_long(_number(_SYS_PIVOT_ROOT)), os.fsencode(new_root),
                         os.fsencode(put_old)), "pivot_root")


def prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), "prctl")


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` when the parent ends: no container outlives its monitor."""
    prctl(PR_SET_PDEATHSIG, sig)


def has_namespace(kind: str) -> bool:
    """Whether the kernel has this namespace type (``cgroup``, ``ipc``, ...)."""
    return os.path.exists(f"/proc/self/ns/{kind}")
