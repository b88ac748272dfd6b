"""Mount-table access: what is mounted where, and detaching safely.

Drivers and the store's crash recovery share these, so "unmount with
MNT_DETACH and retry while busy" is written once.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

from ..errors import DriverError

MNT_DETACH = 2
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class MountEntry(NamedTuple):
    """One line of /proc/self/mountinfo (the fields lamina needs).

    A named tuple, not a dataclass: a fifth of the class-creation cost at import
    (every command's start-up), and quicker to build for each line of the table.
    """

    mount_id: int
    parent_id: int
    mountpoint: str
    fstype: str
    source: str
    options: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 1 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_table() -> list[MountEntry]:
    """The calling process's mounts, in mount order."""
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rfields = right.split()
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    mountpoint=_unescape(fields[4]),
                    fstype=rfields[0] if rfields else "",
                    source=_unescape(rfields[1]) if len(rfields) > 1 else "",
                    options=rfields[2] if len(rfields) > 2 else "",
                )
            )
    return entries


def mounts_under(path: Path, *, include_self: bool = False) -> list[str]:
    """Mount points strictly below ``path`` (and ``path`` itself if asked), deepest first."""
    base = os.path.realpath(path)
    prefix = base.rstrip("/") + "/"
    found = [
        e.mountpoint
        for e in mount_table()
        if e.mountpoint.startswith(prefix) or (include_self and e.mountpoint == base)
    ]
    # deepest first, newest first among equals: unmount children before parents
    return sorted(dict.fromkeys(reversed(found)), key=lambda p: -p.count("/"))


#: statx(2): the attribute saying a path is the root of a mount (Linux 5.8+)
_STATX_ATTR_MOUNT_ROOT = 0x2000
_AT_FDCWD = -100
_STATX_SIZE = 256  # struct statx; stx_attributes at 8, stx_attributes_mask at 56
_statx = getattr(_libc, "statx", None)


def is_mountpoint(path: Path) -> bool:
    """Whether ``path`` is a mount point (bind mounts of a directory on itself included).

    One statx(2) when the kernel reports mount roots; else a read of the mount
    table, which costs more the more layers are mounted (each mounted 500-layer
    overlay is a 34 KB line the kernel rebuilds on every read).
    """
    if _statx is not None:
        buf = ctypes.create_string_buffer(_STATX_SIZE)
        if _statx(_AT_FDCWD, os.fsencode(path), 0, 0, buf) == 0:
            attributes = int.from_bytes(buf.raw[8:16], sys.byteorder)
            supported = int.from_bytes(buf.raw[56:64], sys.byteorder)
            if supported & _STATX_ATTR_MOUNT_ROOT:
                return bool(attributes & _STATX_ATTR_MOUNT_ROOT)
        elif ctypes.get_errno() in (errno.ENOENT, errno.ENOTDIR):
            return False
    target = os.path.realpath(path)
    return any(e.mountpoint == target for e in mount_table())


def mount(source: str, target: Path, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2); raises DriverError naming the target on failure."""
    rc = _libc.mount(
        source.encode(),
        os.fsencode(target),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise DriverError(f"mount of {source} on {target} failed: {os.strerror(err)}")


#: mount_setattr(2) (Linux 5.12+): the same number on every architecture's table
_SYS_MOUNT_SETATTR = 442
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NODEV = 0x4


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def set_mount_attributes(fd: int, *, add: int = 0, remove: int = 0,
                         recursive: bool = False) -> bool:
    """Set and clear ``MOUNT_ATTR_*`` flags of the mount ``fd`` is open on (its submounts
    too with ``recursive``), leaving its other flags as they are, unlike a remount.

    False where the kernel has no mount_setattr(2) (before 5.12); other failures raise.
    """
    attr = _MountAttr(add, remove, 0, 0)
    flags = _AT_EMPTY_PATH | (_AT_RECURSIVE if recursive else 0)
    rc = _libc.syscall(_SYS_MOUNT_SETATTR, ctypes.c_int(fd), ctypes.c_char_p(b""),
                       ctypes.c_uint(flags), ctypes.byref(attr),
                       ctypes.c_size_t(ctypes.sizeof(attr)))
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ENOSYS:
        return False
    raise DriverError(f"mount_setattr of {os.readlink(f'/proc/self/fd/{fd}')} failed: "
                      f"{os.strerror(err)}")


def bind_readonly(source: Path, target: Path) -> None:
    """Bind ``source`` on ``target`` and make that mount refuse writes."""
    mount(str(source), target, None, MS_BIND)
    try:
        mount("none", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    except DriverError:
        detach(target)
        raise


def detach(target: Path, *, attempts: int = 50, delay: float = 0.02) -> None:
    """Unmount ``target`` lazily (MNT_DETACH), retrying while the kernel says EBUSY.

    Not mounted (EINVAL) or gone (ENOENT) counts as done. Raises DriverError
    when the mount stays; callers must then keep the data below it.
    """
    raw = os.fsencode(target)
    for _ in range(attempts):
        if _libc.umount2(raw, MNT_DETACH) == 0:
            continue  # stacked mounts: detach until nothing is left
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        if err != errno.EBUSY:
            raise DriverError(f"cannot unmount {target}: {os.strerror(err)}")
        time.sleep(delay)
    raise DriverError(
        f"cannot unmount {target}: still busy",
        hint="a process may be using files below it; find it with `fuser -m` and retry",
    )


def release_mount_point(point: Path) -> None:
    """Detach whatever is mounted on ``point`` and remove the empty directory.

    Missing is fine (idempotent). Removing the directory also drops copies of
    the mount leaked into other mount namespaces.
    """
    if not os.path.lexists(point):
        return
    detach(point)
    try:
        os.rmdir(point)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise DriverError(
            f"cannot remove the mount point {point}: {exc.strerror}",
            hint="something is still mounted there; unmount it and retry",
        ) from exc
