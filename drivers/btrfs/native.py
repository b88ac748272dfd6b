"""A layer's changes from btrfs generation numbers, exactly as the generic walk finds them.

A child layer is a snapshot of its parent taken in transaction ``G`` (the
child's ``otransid``). Every later change to an inode (content, metadata,
xattrs, a link added or removed, an entry of a directory added, removed or
renamed) rewrites that inode's item with a newer transaction id, and the
kernel's tree search skips every part of the child's tree untouched since
``G``. So the inodes touched since the snapshot cost a search proportional
to the change, not to the image; those whose items all still equal the
parent's (but for atime: they were only read) are dropped, and the rest
(``S``) with their paths
(``INO_PATHS``) with all their ancestors (``V``) are the only places where
the child can differ from the parent.

The walk is :func:`lamina.core.layers.changes.diff_trees`'s, pruned: in a directory
pair holding the same inode on both sides (inode numbers survive a
snapshot), an entry with the same inode on both sides that is neither in
``S`` nor on a path in ``V`` is the very same untouched inode, and its whole
subtree is identical, so it is skipped. Anywhere the correspondence breaks
(an added directory, a directory replaced by another) the walk compares
everything below, as the generic one does. Every entry it does look at is
judged by the generic code itself, so what it reports is the generic
result. The premises are checked, and :class:`NativeUnavailable` says why
the generic walk must be used instead:

- a writable parent changed after the snapshot (or was snapshotted again:
  indistinguishable from the generation alone);
- the child is not a snapshot of that parent;
- a subvolume nests in either (their placeholders carry no generations);
- more than :data:`MAX_CANDIDATES` inodes were rewritten (the walk is cheaper);
- a hardlinked file is among the entries looked at (hardlink groups are
  compared across whole trees, which a pruned walk does not see).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import ModuleType

from lamina.core.driver import ChangeKind
from lamina.core.layers.changes import (
    CTIME_SLACK_NS,
    MODIFIED,
    TreeDiff,
    entry_modified,
    metadata_differs,
    scan,
)

from . import ioctl

#: inode number of a subvolume's root directory
FIRST_FREE_OBJECTID = 256
#: beyond this many rewritten inodes, checking each against the parent costs more than
#: the generic walk of a Debian-sized tree (measured: bench/bench_btrfs_layers.py)
MAX_CANDIDATES = 256


class NativeUnavailable(Exception):
    """The generation numbers cannot give an exact answer here; the message says why."""


#: bytes of an INODE_ITEM that change without the inode changing: transid, atime
_INODE_NOISE = ((8, 16), (112, 124))


def _masked(item: ioctl.Item) -> tuple[int, int, bytes]:
    data = item.data
    if item.type == ioctl.INODE_ITEM_KEY:
        buf = bytearray(data)
        for start, end in _INODE_NOISE:
            buf[start:end] = bytes(end - start)
        data = bytes(buf)
    return item.type, item.offset, data


def _items_of(fd: int, tree_id: int, ino: int) -> list[tuple[int, int, bytes]]:
    return [
        _masked(item)
        for item in ioctl.tree_search(fd, tree_id, min_key=(ino, 0, 0),
                                      max_key=(ino, 255, ioctl.U64_MAX))
    ]


def touched_inodes(fd: int, tree_id: int, parent_tree_id: int, since_transid: int) -> set[int]:
    """Inodes of subvolume ``tree_id`` that differ from ``parent_tree_id``'s since a snapshot.

    Candidates are the inodes whose item was rewritten after transaction
    ``since_transid``; a candidate whose every item (name refs, xattrs, extent
    references, directory entries, the inode item but for its atime and
    transid) is byte-for-byte the parent's was only read (an atime update),
    not changed, and is dropped.
    """
    candidates = set()
    for item in ioctl.tree_search(
        fd, tree_id,
        min_key=(FIRST_FREE_OBJECTID, ioctl.INODE_ITEM_KEY, 0),
        max_key=(ioctl.U64_MAX - 256, ioctl.INODE_ITEM_KEY, ioctl.U64_MAX),
        min_transid=since_transid + 1,
    ):
        if item.type == ioctl.INODE_ITEM_KEY and ioctl.inode_transid(item) > since_transid:
            candidates.add(item.objectid)
    if len(candidates) > MAX_CANDIDATES:
        raise NativeUnavailable(
            f"{len(candidates)} inodes were rewritten since the snapshot (reads that update "
            "atimes count): comparing them costs more than walking the trees"
        )
    return {
        ino for ino in candidates
        if _items_of(fd, tree_id, ino) != _items_of(fd, parent_tree_id, ino)
    }


def native_tree_diff(
    util: ModuleType,
    layer_subvol: Path,
    parent_subvol: Path,
    lower: Path,
    upper: Path,
    *,
    root_mode: int = 0o755,
    since_ns: int | None = None,
) -> TreeDiff:
    """What :func:`lamina.core.layers.changes.diff_trees` (``lower``, ``upper``) returns,
    found natively.

    ``layer_subvol``/``parent_subvol`` are the subvolumes; ``upper``/``lower``
    the views of them that are walked (the same trees, maybe through a
    read-only bind). Raises :class:`NativeUnavailable` when it cannot be exact.
    """
    del root_mode  # only used by diff_trees for a layer without parent
    # commit: delayed inode items and directory entries reach the tree only then
    util.sync(layer_subvol)
    child = util.subvolume_info(layer_subvol)
    parent = util.subvolume_info(parent_subvol)
    if child.parent_uuid != parent.uuid:
        raise NativeUnavailable("the layer is not a snapshot of its parent's subvolume")
    # a read-only parent cannot have changed (lamina finalizes a layer before any child
    # exists and never clears the flag); a writable one has not if its tree's newest
    # generation is the snapshot's own (each later snapshot of it also rewrites its root)
    if not util.get_subvolume_read_only(parent_subvol) and parent.generation > child.otransid:
        raise NativeUnavailable("the parent changed after the layer was snapshotted")
    for subvol in (layer_subvol, parent_subvol):
        if next(iter(util.SubvolumeIterator(subvol)), None) is not None:
            raise NativeUnavailable(f"a subvolume nests in {subvol.name}")

    fd = os.open(layer_subvol, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        touched = touched_inodes(fd, child.id, parent.id, child.otransid)
        on_path: set[str] = {""}
        for ino in touched:
            if ino == FIRST_FREE_OBJECTID:
                continue
            try:
                names = ioctl.inode_paths(fd, ino)
            except OSError as exc:
                raise NativeUnavailable(f"cannot resolve inode {ino}: {exc}") from exc
            for raw in names:
                path = os.fsdecode(raw)
                while path and path not in on_path:
                    on_path.add(path)
                    path = path.rpartition("/")[0]
    finally:
        os.close(fd)
    return _pruned_walk(os.fspath(lower), os.fspath(upper), touched, on_path, since_ns)


def _pruned_walk(
    lower_root: str, upper_root: str, touched: set[int], on_path: set[str], since_ns: int | None
) -> TreeDiff:
    recheck = None if since_ns is None else since_ns - CTIME_SLACK_NS
    result = TreeDiff()
    kinds, stats = result.kinds, result.stats
    root_st = os.lstat(upper_root)
    if metadata_differs(os.lstat(lower_root), root_st, lower_root, upper_root):
        kinds[""] = MODIFIED
    s_isdir = stat.S_ISDIR

    def linked(st: os.stat_result, path: str) -> None:
        if st.st_nlink > 1 and not s_isdir(st.st_mode):
            raise NativeUnavailable(f"{path} is hardlinked")

    # (lower dir or None, upper dir, relative path, whether both hold the same inode)
    stack: list[tuple[str | None, str, str, bool]] = [(lower_root, upper_root, "", True)]
    while stack:
        ldir, udir, rel, same = stack.pop()
        uents = scan(udir)
        lents = scan(ldir) if ldir is not None else {}
        prefix = rel + "/" if rel else ""
        for name in lents.keys() - uents.keys():
            kinds[prefix + name] = ChangeKind.DELETED
        for name, uent in uents.items():
            path = prefix + name
            lent = lents.get(name)
            ino = uent.inode()
            if ino < FIRST_FREE_OBJECTID:
                raise NativeUnavailable(f"{path} is a placeholder of a nested subvolume")
            if (
                same
                and lent is not None
                and lent.inode() == ino
                and ino not in touched
                and path not in on_path
            ):
                continue  # the parent's own untouched inode, and all below it
            ust = uent.stat(follow_symlinks=False)
            linked(ust, path)
            udir_entry = s_isdir(ust.st_mode)
            if lent is None:
                kinds[path] = ChangeKind.ADDED
                stats[path] = ust
                if udir_entry:
                    stack.append((None, uent.path, path, False))
                continue
            lst = lent.stat(follow_symlinks=False)
            linked(lst, path)
            if entry_modified(lst, ust, lent.path, uent.path, recheck_after=recheck):
                kinds[path] = MODIFIED
                stats[path] = ust
            if udir_entry:
                if s_isdir(lst.st_mode):
                    stack.append((lent.path, uent.path, path, same and lst.st_ino == ust.st_ino))
                else:
                    stack.append((None, uent.path, path, False))

    result.add_parent_dirs(upper_root, root_st)
    return result
