"""The btrfs ioctls libbtrfsutil does not wrap: tree search, inode paths, quotas.

libbtrfsutil covers subvolumes and snapshots; quota groups and the raw tree
search that native ``changes`` rely on are only reachable through ioctls.
Struct layouts are those of ``linux/btrfs.h`` and ``linux/btrfs_tree.h``
(stable kernel ABI); every function takes an open file descriptor of a
directory on the filesystem and raises ``OSError`` as the kernel reports.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import struct
from collections.abc import Iterator
from typing import NamedTuple

_MAGIC = 0x94
_WRITE, _READ = 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_MAGIC << 8) | nr


_SEARCH_KEY = struct.Struct("=7Q4I4Q")  # struct btrfs_ioctl_search_key (104 bytes)
_SEARCH_HEADER = struct.Struct("=3Q2I")  # struct btrfs_ioctl_search_header (32 bytes)
_SEARCH_V2_FIXED = _SEARCH_KEY.size + 8  # key + buf_size; the buffer follows

IOC_TREE_SEARCH_V2 = _ioc(_READ | _WRITE, 17, _SEARCH_V2_FIXED)
IOC_INO_PATHS = _ioc(_READ | _WRITE, 35, 56)
IOC_QUOTA_CTL = _ioc(_READ | _WRITE, 40, 16)
IOC_QGROUP_CREATE = _ioc(_WRITE, 42, 16)
IOC_QGROUP_LIMIT = _ioc(_READ, 43, 48)

QUOTA_CTL_ENABLE = 1

QGROUP_LIMIT_MAX_RFER = 1
QGROUP_LIMIT_MAX_EXCL = 2

#: item types (linux/btrfs_tree.h)
INODE_ITEM_KEY = 1
QGROUP_STATUS_KEY = 240
QGROUP_INFO_KEY = 242

QUOTA_TREE_OBJECTID = 8
U64_MAX = (1 << 64) - 1

_SEARCH_BUF = 1 << 20


class Item(NamedTuple):
    """One item found by the tree search: its key, the leaf's generation, its bytes."""

    objectid: int
    type: int
    offset: int
    transid: int
    data: bytes


def tree_search(
    fd: int,
    tree_id: int,
    *,
    min_key: tuple[int, int, int] = (0, 0, 0),
    max_key: tuple[int, int, int] = (U64_MAX, 255, U64_MAX),
    min_transid: int = 0,
) -> Iterator[Item]:
    """Items of tree ``tree_id`` between two keys, from leaves newer than ``min_transid``.

    The kernel skips whole subtrees whose generation is older than
    ``min_transid``, which is what makes "what changed since generation G"
    cost proportional to the change. Keys compare as (objectid, type, offset)
    tuples; needs CAP_SYS_ADMIN.
    """
    buf = bytearray(_SEARCH_V2_FIXED + _SEARCH_BUF)
    start = list(min_key)
    while True:
        _SEARCH_KEY.pack_into(
            buf, 0, tree_id, start[0], max_key[0], start[2], max_key[2], min_transid,
            U64_MAX, start[1], max_key[1], 4096, 0, 0, 0, 0, 0,
        )
        struct.pack_into("=Q", buf, _SEARCH_KEY.size, _SEARCH_BUF)
        fcntl.ioctl(fd, IOC_TREE_SEARCH_V2, buf)
        found = struct.unpack_from("=I", buf, 7 * 8 + 8)[0]  # nr_items, written back
        if found == 0:
            return
        pos = _SEARCH_V2_FIXED
        last = None
        for _ in range(found):
            transid, objectid, offset, type_, length = _SEARCH_HEADER.unpack_from(buf, pos)
            pos += _SEARCH_HEADER.size
            yield Item(objectid, type_, offset, transid, bytes(buf[pos : pos + length]))
            pos += length
            last = (objectid, type_, offset)
        assert last is not None
        # the next key after the last one returned
        objectid, type_, offset = last
        if offset < U64_MAX:
            start = [objectid, type_, offset + 1]
        elif type_ < 255:
            start = [objectid, type_ + 1, 0]
        elif objectid < U64_MAX:
            start = [objectid + 1, 0, 0]
        else:
            return
        if tuple(start) > max_key:
            return


def inode_transid(item: Item) -> int:
    """The transaction that last changed an inode, from its INODE_ITEM."""
    return struct.unpack_from("=Q", item.data, 8)[0]


class _DataContainer(ctypes.Structure):
    _fields_ = [
        ("bytes_left", ctypes.c_uint32),
        ("bytes_missing", ctypes.c_uint32),
        ("elem_cnt", ctypes.c_uint32),
        ("elem_missed", ctypes.c_uint32),
    ]


def inode_paths(fd: int, inum: int, *, size: int = 1 << 16) -> list[bytes]:
    """Every path (relative to the subvolume root of ``fd``) naming inode ``inum``.

    An inode that exists without a name (open but unlinked) has none; one
    that is gone raises ``OSError(ENOENT)``.
    """
    while True:
        out = ctypes.create_string_buffer(size)
        args = bytearray(struct.pack("=6QQ", inum, size, 0, 0, 0, 0, ctypes.addressof(out)))
        fcntl.ioctl(fd, IOC_INO_PATHS, args)
        head = _DataContainer.from_buffer_copy(out.raw[: ctypes.sizeof(_DataContainer)])
        if head.elem_missed and size < (1 << 24):
            size *= 4
            continue
        base = ctypes.sizeof(_DataContainer)
        raw = out.raw
        paths = []
        for i in range(head.elem_cnt):
            offset = struct.unpack_from("=Q", raw, base + 8 * i)[0]
            start = base + offset
            paths.append(raw[start : raw.index(b"\0", start)])
        return paths


def quota_enable(fd: int) -> None:
    """Switch quota accounting on for the whole filesystem (full qgroups)."""
    fcntl.ioctl(fd, IOC_QUOTA_CTL, bytearray(struct.pack("=QQ", QUOTA_CTL_ENABLE, 0)))


QGROUP_STATUS_FLAG_ON = 1
QGROUP_STATUS_FLAG_INCONSISTENT = 4


def quota_status(fd: int) -> int | None:
    """Flags of the quota status item (``QGROUP_STATUS_FLAG_*``); ``None`` with quotas off."""
    try:
        for item in tree_search(
            fd, QUOTA_TREE_OBJECTID,
            min_key=(0, QGROUP_STATUS_KEY, 0), max_key=(0, QGROUP_STATUS_KEY, U64_MAX),
        ):
            if item.type == QGROUP_STATUS_KEY:
                return struct.unpack_from("=Q", item.data, 16)[0]
    except OSError as exc:
        if exc.errno == errno.ENOENT:  # no quota tree: never enabled, or disabled
            return None
        raise
    return None


def quota_enabled(fd: int) -> bool:
    """Whether the filesystem has quota accounting on."""
    return quota_status(fd) is not None


def qgroup_usage(fd: int, qgroupid: int) -> tuple[int, int] | None:
    """(referenced, exclusive) bytes of qgroup ``qgroupid`` (``level << 48 | id``), or None."""
    try:
        for item in tree_search(
            fd, QUOTA_TREE_OBJECTID,
            min_key=(0, QGROUP_INFO_KEY, qgroupid), max_key=(0, QGROUP_INFO_KEY, qgroupid),
        ):
            if item.type == QGROUP_INFO_KEY and item.offset == qgroupid:
                _, rfer, _, excl, _ = struct.unpack_from("=5Q", item.data, 0)
                return rfer, excl
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return None


def qgroup_limit(fd: int, *, max_excl: int | None = None, max_rfer: int | None = None) -> None:
    """Limit the level-0 qgroup of the subvolume ``fd`` is in (``None``: no limit)."""
    flags = QGROUP_LIMIT_MAX_EXCL | QGROUP_LIMIT_MAX_RFER
    # the kernel reads all-ones as "clear this limit"
    rfer = U64_MAX if max_rfer is None else max_rfer
    excl = U64_MAX if max_excl is None else max_excl
    args = struct.pack("=6Q", 0, flags, rfer, excl, 0, 0)
    fcntl.ioctl(fd, IOC_QGROUP_LIMIT, bytearray(args))


def qgroup_destroy(fd: int, qgroupid: int) -> None:
    """Delete qgroup ``qgroupid``; EBUSY while its subvolume is still being dropped."""
    fcntl.ioctl(fd, IOC_QGROUP_CREATE, bytearray(struct.pack("=QQ", 0, qgroupid)))
