"""Comparing two directory trees by metadata: the generic ``changes`` of a layer.

A driver without a native way to list what a layer changed gets it here, by
walking the layer's mounted (merged) view next to its parent's. Both are
plain trees: a deleted path simply does not exist in the upper one, so no
whiteout devices or overlay xattrs are ever interpreted here.

Rules (the contract of :meth:`lamina.core.driver.Driver.changes`):

- Paths are relative to the layer root, without a leading slash; the root
  itself is ``""`` (it is reported, as MODIFIED, when its own metadata
  differs, so a ``chmod`` of the root survives an export).
- ADDED: the lower tree has no entry at that path. Every entry below an
  added directory is ADDED too (a layer tar needs each of them).
- DELETED: the upper tree has no entry there. Only the top-most deleted
  path is reported (one whiteout hides the whole subtree), as ``docker diff``.
- MODIFIED: both have the entry but its type, mode (with setuid, setgid and
  sticky bits), uid, gid, size (not for directories, whose size means
  nothing across filesystems), mtime in nanoseconds, device number, symlink
  target or xattrs differ. File *content* is never read: an entry whose
  metadata, size and mtime are all equal counts as unchanged, which is what
  keeps the cost proportional to the number of entries, not bytes. The one
  exception closes the gap Docker's naive diff leaves: given ``since_ns``
  (when the layer was created), a regular file whose metadata looks
  unchanged but whose ctime is later has its content compared, so a
  same-size rewrite that kept the mtime (``cp -p``, fixed build timestamps,
  two writes in one timestamp tick) is still seen. A file's ctime cannot be
  set from user space, so untouched files are never read.
- A type change (directory replaced by a file, say) is MODIFIED; the lower
  subtree below a replaced directory is not reported, since writing the new
  entry replaces it whole. A file replaced by a directory reports the new
  directory's children as ADDED.
- Every parent directory of a change is reported MODIFIED too (as Docker
  does), so a layer tar always carries the directories its entries live in;
  that includes the root, so an export restores its metadata exactly.
- Hardlinks: when the set of names sharing an inode inside the upper tree
  differs from the lower tree's, all of those names are reported MODIFIED,
  so an export can link them together again.
- With no lower tree (a layer without parent) everything is ADDED, and the
  root is MODIFIED when the tree is not empty or its mode, owner or xattrs
  differ from a fresh root's.

Inode numbers are never compared between the trees: two views of the same
unchanged file may show different inodes (a copying driver).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..errors import DriverError

if TYPE_CHECKING:
    from .views import LayerViews

class ChangeKind(enum.Enum):
    """How a path differs between a layer and its parent (as `docker diff`)."""

    ADDED = "A"
    MODIFIED = "C"
    DELETED = "D"


class Change(NamedTuple):
    """One changed path, relative to the layer root, without a leading slash.

    Changes compare and sort by path alone: a path changes one way per layer.
    """

    path: str
    kind: ChangeKind

    def __eq__(self, other: object) -> bool:
        return self.path == other.path if isinstance(other, Change) else NotImplemented

    def __ne__(self, other: object) -> bool:
        return self.path != other.path if isinstance(other, Change) else NotImplemented

    def __lt__(self, other: object) -> bool:
        return self.path < other.path if isinstance(other, Change) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.path)


#: xattrs that describe overlay internals, never layer content
OVERLAY_XATTR_PREFIXES: tuple[str, ...] = ("trusted.overlay.",)

_ADDED = ChangeKind.ADDED
_MODIFIED = MODIFIED = ChangeKind.MODIFIED
_DELETED = ChangeKind.DELETED


def read_xattrs(
    path: str | bytes | Path, *, skip: tuple[str, ...] = OVERLAY_XATTR_PREFIXES
) -> dict[str, bytes]:
    """All xattrs of ``path`` itself (never through a symlink), minus ``skip`` prefixes.

    A filesystem without xattr support has none rather than failing, and an
    xattr removed between listing and reading is left out.
    """
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            return {}
        raise
    if not names:
        return {}
    result: dict[str, bytes] = {}
    for name in names:
        if skip and name.startswith(skip):
            continue
        try:
            result[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    return result


class TreeDiff:
    """What :func:`compare_trees` found, with the upper tree's stat of each change.

    ``stats`` holds the ``lstat`` of every ADDED or MODIFIED path, so callers
    (diff size, export) need not stat again. A plain slotted class: the driver
    contract imports this module, and a dataclass costs every command its definition.
    """

    __slots__ = ("kinds", "stats")

    def __init__(self) -> None:
        self.kinds: dict[str, ChangeKind] = {}
        self.stats: dict[str, os.stat_result] = {}

    def changes(self) -> list[Change]:
        """The changes sorted by path (a parent always sorts before its children)."""
        return [Change(path, kind) for path, kind in sorted(self.kinds.items())]

    def add_parent_dirs(self, upper_root: str, root_st: os.stat_result) -> None:
        """Report every parent directory of a change MODIFIED, up to the root.

        A layer tar must carry the directories its entries live in (Docker
        does the same). Their stats are read from ``upper_root`` (the root's
        is ``root_st``). Every way of finding changes (the generic walk,
        overlay's and btrfs' native ones) ends with this step.
        """
        kinds, stats = self.kinds, self.stats
        for path in list(kinds):
            while path:
                path = path.rpartition("/")[0]
                if path in kinds:
                    break
                kinds[path] = _MODIFIED
        for path, kind in kinds.items():
            if kind is _MODIFIED and path not in stats:
                stats[path] = os.lstat(os.path.join(upper_root, path)) if path else root_st

    def content_size(self) -> int:
        """Bytes of regular files ADDED or MODIFIED, each inode once (a layer's diff size)."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for st in self.stats.values():
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
        return total


def scan(path: str) -> dict[str, os.DirEntry[str]]:
    """A directory's entries by name (scandir, stat cached on the entries)."""
    with os.scandir(path) as it:
        return {entry.name: entry for entry in it}


#: how far a file's ctime may lag the wall clock (the kernel stamps files with a
#: coarse clock that ticks every few milliseconds)
CTIME_SLACK_NS = 50_000_000


def same_content(lpath: str, upath: str) -> bool:
    """Whether two regular files hold the same bytes (read in 1 MiB blocks)."""
    with open(lpath, "rb", buffering=0) as lf, open(upath, "rb", buffering=0) as uf:
        while True:
            a = lf.read(1 << 20)
            if a != uf.read(1 << 20):
                return False
            if not a:
                return True


def metadata_differs(lst: os.stat_result, ust: os.stat_result, lpath: str, upath: str) -> bool:
    """Whether two entries at the same path differ by anything the contract names."""
    if (
        lst.st_mode != ust.st_mode
        or lst.st_mtime_ns != ust.st_mtime_ns
        or lst.st_uid != ust.st_uid
        or lst.st_gid != ust.st_gid
    ):
        return True
    fmt = stat.S_IFMT(ust.st_mode)
    if fmt != stat.S_IFDIR and lst.st_size != ust.st_size:
        return True
    if fmt in (stat.S_IFCHR, stat.S_IFBLK) and lst.st_rdev != ust.st_rdev:
        return True
    if fmt == stat.S_IFLNK and os.readlink(lpath) != os.readlink(upath):
        return True
    return read_xattrs(lpath) != read_xattrs(upath)


def entry_modified(
    lst: os.stat_result,
    ust: os.stat_result,
    lpath: str,
    upath: str,
    *,
    recheck_after: int | None,
) -> bool:
    """Whether the upper entry at a path differs from the lower one: the per-entry rule.

    Metadata first (:func:`metadata_differs`); then, for a regular file whose
    metadata is equal and whose ctime is at or after ``recheck_after``
    (nanoseconds), its content. ``None`` never reads content; ``0`` reads it
    for every such file (a driver whose upper side holds only files the
    layer wrote, such as overlay's ``diff/``).
    """
    if metadata_differs(lst, ust, lpath, upath):
        return True
    return (
        recheck_after is not None
        and ust.st_ctime_ns >= recheck_after
        and stat.S_ISREG(ust.st_mode)
        and not same_content(lpath, upath)
    )


def diff_trees(
    lower: Path | str | None,
    upper: Path | str,
    *,
    root_mode: int = 0o755,
    since_ns: int | None = None,
) -> TreeDiff:
    """Compare two trees (see the module rules); :func:`compare_trees` returns the list.

    ``root_mode`` is the mode of a fresh layer root, used only without ``lower``.
    ``since_ns`` is when the upper layer was created: files whose ctime is later
    get their content compared when their metadata looks unchanged.
    """
    recheck = None if since_ns is None else since_ns - CTIME_SLACK_NS
    try:
        return _diff_trees(lower, upper, root_mode, recheck)
    except OSError as exc:
        raise DriverError(
            f"cannot compare layer trees {lower} and {upper}: {exc}",
            hint="compare only read-only mounted views that nothing writes to meanwhile",
        ) from exc


def _diff_trees(
    lower: Path | str | None, upper: Path | str, root_mode: int, recheck: int | None
) -> TreeDiff:
    result = TreeDiff()
    kinds = result.kinds
    stats = result.stats
    upper_root = os.fspath(upper)
    lower_root = os.fspath(lower) if lower is not None else None
    root_st = os.lstat(upper_root)
    if not stat.S_ISDIR(root_st.st_mode):
        raise DriverError(
            f"cannot compare {upper_root}: not a directory",
            hint="pass the mounted root directory of the layer",
        )
    if lower_root is not None and metadata_differs(
        os.lstat(lower_root), root_st, lower_root, upper_root
    ):
        kinds[""] = _MODIFIED

    # names sharing an inode: (dev, ino) -> paths in each tree, and path -> key in lower
    upper_links: dict[tuple[int, int], list[str]] = {}
    lower_links: dict[tuple[int, int], list[str]] = {}
    lower_key: dict[str, tuple[int, int]] = {}
    upper_linked_stat: dict[str, os.stat_result] = {}

    s_isdir = stat.S_ISDIR
    stack: list[tuple[str | None, str, str]] = [(lower_root, upper_root, "")]
    while stack:
        ldir, udir, rel = stack.pop()
        uents = scan(udir)
        lents = scan(ldir) if ldir is not None else {}
        prefix = rel + "/" if rel else ""
        for name in lents.keys() - uents.keys():
            kinds[prefix + name] = _DELETED
        for name, uent in uents.items():
            path = prefix + name
            ust = uent.stat(follow_symlinks=False)
            udir_entry = s_isdir(ust.st_mode)
            if ust.st_nlink > 1 and not udir_entry:
                upper_links.setdefault((ust.st_dev, ust.st_ino), []).append(path)
                upper_linked_stat[path] = ust
            lent = lents.get(name)
            if lent is None:
                kinds[path] = _ADDED
                stats[path] = ust
                if udir_entry:
                    stack.append((None, uent.path, path))
                continue
            lst = lent.stat(follow_symlinks=False)
            ldir_entry = s_isdir(lst.st_mode)
            if lst.st_nlink > 1 and not ldir_entry:
                key = (lst.st_dev, lst.st_ino)
                lower_links.setdefault(key, []).append(path)
                lower_key[path] = key
            if entry_modified(lst, ust, lent.path, uent.path, recheck_after=recheck):
                kinds[path] = _MODIFIED
                stats[path] = ust
            if udir_entry:
                stack.append((lent.path if ldir_entry else None, uent.path, path))

    # hardlink groups that are not the same on both sides: relink all names
    for names in upper_links.values():
        if len(names) < 2:
            continue
        group = set(names)
        same = all(
            (key := lower_key.get(name)) is not None and set(lower_links[key]) == group
            for name in names
        )
        if not same:
            for name in names:
                if name not in kinds:
                    kinds[name] = _MODIFIED
                    stats[name] = upper_linked_stat[name]

    result.add_parent_dirs(upper_root, root_st)

    if lower_root is None and "" not in kinds:
        fresh = (
            stat.S_IMODE(root_st.st_mode) == root_mode
            and root_st.st_uid == 0
            and root_st.st_gid == 0
            and not read_xattrs(upper_root)
        )
        if kinds or not fresh:
            kinds[""] = _MODIFIED
            stats[""] = root_st
    return result


def compare_trees(
    lower: Path | None, upper: Path, *, root_mode: int = 0o755, since_ns: int | None = None
) -> list[Change]:
    """What changed from ``lower`` (or from nothing) to ``upper``, sorted by path.

    Walks both trees with ``scandir``/``lstat`` and never follows a symlink;
    see the module docstring for the exact rules.
    """
    return diff_trees(lower, upper, root_mode=root_mode, since_ns=since_ns).changes()


@contextlib.contextmanager
def viewed_layers(
    views: LayerViews, layer_id: str, parents: Sequence[str]
) -> Iterator[tuple[Path | None, Path]]:
    """Hold read-only views of the parent ``parents[0]`` (``None`` without one) and the layer."""
    with views.view(layer_id) as upper:
        if not parents:
            yield None, upper
        else:
            with views.view(parents[0]) as lower:
                yield lower, upper


@contextlib.contextmanager
def layer_diff(
    layer_id: str, parents: Sequence[str], views: LayerViews, *, root_mode: int
) -> Iterator[tuple[TreeDiff, Path]]:
    """Compare a layer's view with its parent's; yield the result and the layer's view.

    The views stay mounted for the block, so an export can read the files.
    """
    with viewed_layers(views, layer_id, parents) as (lower, upper):
        found = diff_trees(
            lower,
            upper,
            root_mode=root_mode,
            since_ns=views.created_ns(layer_id),
        )
        yield found, upper


def generic_changes(
    layer_id: str, parents: Sequence[str], views: LayerViews, *, root_mode: int
) -> list[Change]:
    """The core's :meth:`Driver.changes`: compare the layer's view with its parent's."""
    with layer_diff(layer_id, parents, views, root_mode=root_mode) as (found, _):
        return found.changes()


def generic_diff_size(
    layer_id: str, parents: Sequence[str], views: LayerViews, *, root_mode: int
) -> int:
    """The core's :meth:`Driver.diff_size`: bytes of regular files ADDED or MODIFIED.

    Each inode counts once, however many names it has; the parents' files
    and directories, symlinks and devices count nothing.
    """
    with layer_diff(layer_id, parents, views, root_mode=root_mode) as (found, _):
        return found.content_size()
