"""Snapshots of directory trees and their comparison, for the conformance suite.

A conformance case builds the tree it expects in a plain directory, without
the driver, and compares it with the driver's mounted view. The comparison
covers everything a layer must keep: per entry the type, the full mode
(setuid, setgid, sticky included), owner, size, content hash, hardlink
groups, symlink target, device numbers, xattrs and mtimes, the root
directory's own metadata included. Nothing here ever follows a symlink.

Left out on purpose: directory sizes (they depend on the filesystem, not on
the layer), atime and ctime (no driver can keep them), inode numbers (only
which names share one matters), and the xattrs ``trusted.overlay.*`` and
``security.selinux`` (overlay bookkeeping and host labelling, not content).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Any

from lamina.core.layers.changes import read_xattrs

#: xattr prefixes that are not layer content
IGNORED_XATTRS: tuple[str, ...] = ("trusted.overlay.", "security.selinux")

_KINDS = {
    stat.S_IFDIR: "directory",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """What is compared of one path; ``None`` where a field does not apply."""

    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int | None = None
    sha256: str | None = None
    target: str | None = None
    device: tuple[int, int] | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()
    #: the other paths in this tree that share this entry's inode
    links: frozenset[str] = frozenset()


@dataclasses.dataclass
class Tree:
    """A snapshot: every entry by path relative to the root (the root is ``""``)."""

    root: str
    entries: dict[str, Entry] = dataclasses.field(default_factory=dict)
    mtimes: bool = True
    subsecond: bool = True


def _hash(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    with os.fdopen(fd, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _entry(path: str, st: os.stat_result) -> Entry:
    fmt = stat.S_IFMT(st.st_mode)
    extra: dict[str, Any] = {}
    if fmt == stat.S_IFREG:
        extra["size"] = st.st_size
        extra["sha256"] = _hash(path)
    elif fmt == stat.S_IFLNK:
        extra["size"] = st.st_size
        extra["target"] = os.readlink(path)
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        extra["device"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    xattrs = read_xattrs(path, skip=IGNORED_XATTRS)
    return Entry(
        kind=_KINDS.get(fmt, f"unknown type {fmt:o}"),
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        xattrs=tuple(sorted(xattrs.items())),
        **extra,
    )


def snapshot(root: Path | str, *, mtimes: bool = True, subsecond: bool = True) -> Tree:
    """Record the tree at ``root``.

    ``mtimes=False`` leaves mtimes out of any comparison with this snapshot;
    ``subsecond=False`` compares them in whole seconds only (for a driver
    that does not keep sub-second times).
    """
    base = os.fspath(root)
    tree = Tree(root=base, mtimes=mtimes, subsecond=subsecond)
    inodes: dict[tuple[int, int], list[str]] = {}
    tree.entries[""] = _entry(base, os.lstat(base))
    stack = [(base, "")]
    while stack:
        directory, rel = stack.pop()
        with os.scandir(directory) as it:
            found = list(it)
        for item in found:
            path = f"{rel}/{item.name}" if rel else item.name
            st = item.stat(follow_symlinks=False)
            tree.entries[path] = _entry(item.path, st)
            if stat.S_ISDIR(st.st_mode):
                stack.append((item.path, path))
            elif st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(path)
    for names in inodes.values():
        if len(names) > 1:
            for name in names:
                others = frozenset(names) - {name}
                tree.entries[name] = dataclasses.replace(tree.entries[name], links=others)
    return tree


def _show(path: str) -> str:
    return "/" + path


def _describe_xattrs(pairs: tuple[tuple[str, bytes], ...]) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in pairs) + "}"


def compare(
    expected: Tree, actual: Tree, *, mtime_kinds: Collection[str] | None = None
) -> list[str]:
    """Every difference between two snapshots, one readable line each; empty if equal.

    mtimes are compared only when both snapshots took them, and in whole
    seconds when either asked for ``subsecond=False``; with ``mtime_kinds``
    only for entries of those kinds (``"file"``, ``"directory"``...).
    """
    problems: list[str] = []
    use_mtimes = expected.mtimes and actual.mtimes
    subsecond = expected.subsecond and actual.subsecond
    for path in sorted(expected.entries.keys() | actual.entries.keys()):
        want = expected.entries.get(path)
        got = actual.entries.get(path)
        where = _show(path)
        if want is None:
            problems.append(f"{where}: unexpected {got.kind if got else 'entry'}")
            continue
        if got is None:
            problems.append(f"{where}: missing (expected a {want.kind})")
            continue
        if want.kind != got.kind:
            problems.append(f"{where}: type is {got.kind}, expected {want.kind}")
            continue
        if want.mode != got.mode:
            problems.append(f"{where}: mode is {got.mode:o}, expected {want.mode:o}")
        if want.uid != got.uid:
            problems.append(f"{where}: uid is {got.uid}, expected {want.uid}")
        if want.gid != got.gid:
            problems.append(f"{where}: gid is {got.gid}, expected {want.gid}")
        if want.size != got.size:
            problems.append(f"{where}: size is {got.size}, expected {want.size}")
        if want.sha256 != got.sha256:
            problems.append(f"{where}: content sha256 is {got.sha256}, expected {want.sha256}")
        if want.target != got.target:
            problems.append(f"{where}: symlink target is {got.target!r}, expected {want.target!r}")
        if want.device != got.device:
            problems.append(f"{where}: device is {got.device}, expected {want.device}")
        if want.xattrs != got.xattrs:
            problems.append(
                f"{where}: xattrs are {_describe_xattrs(got.xattrs)}, "
                f"expected {_describe_xattrs(want.xattrs)}"
            )
        if want.links != got.links:
            problems.append(
                f"{where}: hardlinked with {sorted(map(_show, got.links))}, "
                f"expected {sorted(map(_show, want.links))}"
            )
        if use_mtimes and (mtime_kinds is None or want.kind in mtime_kinds):
            w, g = want.mtime_ns, got.mtime_ns
            if not subsecond:
                w, g = w // 1_000_000_000, g // 1_000_000_000
            if w != g:
                unit = "ns" if subsecond else "s"
                problems.append(f"{where}: mtime is {g} {unit}, expected {w} {unit}")
    return problems


def _as_tree(value: Tree | Path | str, options: dict[str, Any]) -> Tree:
    return value if isinstance(value, Tree) else snapshot(value, **options)


def assert_same_tree(
    expected: Tree | Path | str, actual: Tree | Path | str, **options: Any
) -> None:
    """Fail with the list of differences unless both trees are the same.

    Paths are snapshotted with ``options`` (``mtimes``, ``subsecond``).
    """
    problems = compare(_as_tree(expected, options), _as_tree(actual, options))
    if problems:
        shown = problems[:100]
        more = f"\n... and {len(problems) - 100} more" if len(problems) > 100 else ""
        raise AssertionError(
            f"trees differ in {len(problems)} way(s):\n  " + "\n  ".join(shown) + more
        )
