"""Native changes and diff: read the layer's own directory, not two mounted trees.

An overlay layer's ``diff/`` holds exactly what the layer wrote, so walking
it costs the size of the change, not of the image. Lower layers are looked
up only for the paths found there (:class:`~.stack.LayerStack`), to tell
ADDED from MODIFIED and to compare metadata the way the core's generic
comparison does (:mod:`lamina.core.layers.changes`).

Translation of overlay's on-disk records:

- a 0/0 character device is a deletion, reported only when a lower layer
  really shows that path (else it hides nothing);
- an opaque directory (``trusted.overlay.opaque=y``) over a lower directory
  becomes an opaque marker in the tar, with everything the layer holds below
  it (the marker hides all lower entries, so unchanged copies must travel
  too); its lower entries that are gone are DELETED in :func:`changes`. An
  opaque directory with no lower directory is a plain new directory (the
  kernel marks every directory it creates over a whiteout opaque).
- an upper entry whose metadata equals the lower one is unchanged unless its
  content differs (compared only for files the layer copied up) or it has
  other names inside the layer (hardlinks are exported together).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lamina.core.driver import ChangeKind
from lamina.core.errors import DriverError
from lamina.core.layers.changes import (
    TreeDiff,
    diff_trees,
    entry_modified,
)
from lamina.core.layertar.export import write_layer_tar

from .stack import LayerStack, is_opaque, is_whiteout

_ADDED = ChangeKind.ADDED
_MODIFIED = ChangeKind.MODIFIED
_DELETED = ChangeKind.DELETED

#: walk modes: compare with the lower entry / below an opaque dir (all exported) / nothing below
_MERGE, _FORCED, _NEW = 0, 1, 2


@dataclass
class NativeDiff:
    """The changes of one layer, plus what the export needs beyond them."""

    found: TreeDiff
    #: directories exported with an opaque marker
    opaque_dirs: list[str] = field(default_factory=list)
    #: DELETED paths the opaque markers already cover (no whiteout entry in the tar)
    covered: set[str] = field(default_factory=set)


def _differs(lst: os.stat_result, lpath: str, ust: os.stat_result, upath: str) -> bool:
    """The core's per-entry rule, with the content of every regular file compared.

    The layer holds a copy of a file it changed, so a rewrite may have kept
    size and mtime: a regular file with equal metadata has its bytes compared.
    """
    return entry_modified(lst, ust, lpath, upath, recheck_after=0)


def layer_changes(upper: Path, lowers: list[Path], *, root_mode: int) -> NativeDiff:
    """Walk ``upper`` (the layer's diff dir) against the merged ``lowers`` (top-most first)."""
    try:
        if not lowers:
            return NativeDiff(diff_trees(None, upper, root_mode=root_mode))
        return _walk(os.fspath(upper), LayerStack(lowers))
    except OSError as exc:
        raise DriverError(
            f"cannot read the changes of the layer in {upper}: {exc}",
            hint="read changes only of layers nothing writes to meanwhile",
        ) from exc


def _walk(upper: str, lower: LayerStack) -> NativeDiff:
    result = NativeDiff(TreeDiff())
    kinds, stats = result.found.kinds, result.found.stats
    root_st = os.lstat(upper)
    lower_root = lower.layers[0]
    if _differs(os.lstat(lower_root), lower_root, root_st, upper):
        kinds[""] = _MODIFIED
        stats[""] = root_st
    todo: list[tuple[str, int]] = [("", _MERGE)]
    if is_opaque(upper):
        todo = [("", _FORCED)]
        result.opaque_dirs.append("")
    while todo:
        rel, mode = todo.pop()
        udir = f"{upper}/{rel}" if rel else upper
        prefix = f"{rel}/" if rel else ""
        with os.scandir(udir) as it:
            uents = list(it)
        listing = lower.listdir(rel) if mode == _FORCED else None
        if listing is not None:
            present = {e.name for e in uents}
            for name in listing.keys() - present:
                kinds[prefix + name] = _DELETED
                result.covered.add(prefix + name)
        for entry in uents:
            path = prefix + entry.name
            ust = entry.stat(follow_symlinks=False)
            if is_whiteout(ust):
                if mode == _MERGE and lower.lookup(path) is not None:
                    kinds[path] = _DELETED
                elif listing is not None and entry.name in listing:
                    kinds[path] = _DELETED
                    result.covered.add(path)
                continue
            udir_entry = stat.S_ISDIR(ust.st_mode)
            if mode == _NEW:
                found = None
            elif listing is not None:
                found = listing.get(entry.name)
            else:
                found = lower.lookup(path)
            if found is None:
                kinds[path] = _ADDED
                stats[path] = ust
                if udir_entry:
                    todo.append((path, _NEW))
                continue
            index, lst = found
            lpath = f"{lower.layers[index]}/{path}"
            if mode == _FORCED or (not udir_entry and ust.st_nlink > 1) or _differs(
                lst, lpath, ust, entry.path
            ):
                kinds[path] = _MODIFIED
                stats[path] = ust
            if udir_entry:
                if not stat.S_ISDIR(lst.st_mode):
                    todo.append((path, _NEW))
                elif mode == _FORCED or is_opaque(entry.path):
                    if mode != _FORCED:
                        result.opaque_dirs.append(path)
                        kinds[path] = _MODIFIED
                        stats[path] = ust
                    todo.append((path, _FORCED))
                else:
                    todo.append((path, _MERGE))
    result.found.add_parent_dirs(upper, root_st)
    return result


def write_native_diff(out: IO[bytes], upper: Path, native: NativeDiff) -> int:
    """The layer tar of a native diff: opaque markers instead of covered whiteouts."""
    changes = [c for c in native.found.changes() if c.path not in native.covered]
    return write_layer_tar(out, upper, changes, opaque_dirs=native.opaque_dirs,
                           stats=native.found.stats)

