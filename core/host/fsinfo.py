"""Facts about the filesystem under a path (for support checks and ``lamina info``)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

#: statfs f_type magic numbers of the filesystems lamina cares about
FS_MAGIC = {
    0xEF53: "ext4",  # ext2/3/4 share it
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x794C7630: "overlay",
    0x65735546: "fuse",
    0xE0F5E1E2: "erofs",
    0x73717368: "squashfs",
    0x2FC12FC1: "zfs",
    0x6969: "nfs",
    0x858458F6: "ramfs",
}


class _Statfs(ctypes.Structure):
    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Statfs)]


def filesystem_magic(path: Path) -> int:
    """The statfs f_type of the filesystem holding ``path``."""
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return buf.f_type & 0xFFFFFFFF


def filesystem_type(path: Path) -> str:
    """A name like ``ext4`` or ``xfs`` for the filesystem holding ``path``."""
    magic = filesystem_magic(path)
    return FS_MAGIC.get(magic, f"unknown (0x{magic:x})")
