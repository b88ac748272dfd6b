"""One reference for all drivers: random layer sequences run on the driver and on vfs side by side.

A *plan* is a list of layers, each a list of file operations over a small
name space (``a``, ``b``, ``c`` and ``x/y`` for x, y among them) so that
operations collide: a file is overwritten, renamed over, hardlinked and
deleted again; a directory is emptied and refilled. Each layer is filled one
of two ways, on both stores:

``commit``
    a writable layer on the parent; the operations run in its mount (and
    on a plain reference directory); ``store.diff`` of it is applied as a
    read-only child of the parent (how a container becomes an image layer);
``tar``
    the operations run on the reference directory only; a layer tar is
    built from the difference between the reference before and after (with
    the stdlib :mod:`tarfile`, independently of lamina's exporter:
    ``.wh.`` whiteouts, opaque markers for emptied directories, hardlinks,
    PAX xattrs and nanosecond mtimes) and applied with ``store.apply_layer``.

After every layer the driver's tree must equal vfs's, and vfs's the plain
reference (full metadata: :mod:`lamina.conformance.trees`). The exported
diffs must be byte-identical to vfs's when the driver uses the core's
generic diff and keeps sub-second mtimes; a driver with a native diff may
order or spell its tar differently (an opaque marker instead of whiteouts),
so then both diffs are applied onto fresh vfs layers over the same parent
and the resulting trees must be equal.

Every operation sets explicit, distinct mtimes (with fractions on both sides
of half a second) on what it touches, so the three trees agree to the
nanosecond and rounding shows. Operations that do not change mtimes (chmod,
chown, setxattr) leave them alone: a driver must notice metadata-only
changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from lamina.core.driver import Capabilities, Driver
from lamina.core.host import mounts
from lamina.core.host.treecopy import copy_tree
from lamina.core.layers.store import Store

from . import trees
from .scenarios import (
    TarMember,
    build_tar,
    diff_bytes,
    init_reference,
    member_from_tree,
)

NS = 1_000_000_000
#: mtimes of plans start here (2021-01-01); op ``k`` of a plan is ``k`` seconds later
BASE_TIME = 1_609_459_200 * NS
#: sub-second parts, alternately below and above half a second (rounding shows)
FRACTIONS = (123_456_789, 987_654_321)
NAMES = ("a", "b", "c")
#: where new entries may be made: depth 1 and 2
SLOTS = tuple(NAMES) + tuple(f"{d}/{n}" for d in NAMES for n in NAMES)
FILE_MODES = (0o644, 0o600, 0o755, 0o444, 0o4755, 0o2755)
DIR_MODES = (0o755, 0o700, 0o1777, 0o2755)
SYMLINK_TARGETS = ("a", "../b", "c/a", "/etc/passwd", "nowhere")
OWNERS = ((0, 0), (1, 1), (1000, 1000), (0, 5))
XATTR_NAMES = ("user.a", "user.b")
#: set on the root of every plan's first layer (see :class:`SideBySide`)
ROOT_XATTR = "user.lamina-property"


def op_time(index: int) -> int:
    """The mtime operation ``index`` of a plan gives what it touches."""
    return BASE_TIME + index * NS + FRACTIONS[index % 2]


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _full(root: Path, path: str) -> str:
    return os.path.join(root, path) if path else os.fspath(root)


def _touch(root: Path, path: str, t: int) -> None:
    os.utime(_full(root, path), ns=(t, t), follow_symlinks=False)


def _rm_rf(full: str) -> None:
    if stat.S_ISDIR(os.lstat(full).st_mode):
        shutil.rmtree(full)
    else:
        os.unlink(full)


# --- operations --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Op:
    """One file operation; ``run`` performs it on a tree with plain system calls."""

    path: str

    def run(self, root: Path, t: int) -> None:
        raise NotImplementedError

    def _args(self) -> list[str]:
        return [repr(self.path)]

    def __repr__(self) -> str:
        return f"{type(self).__name__.lower()}({', '.join(self._args())})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # Hypothesis prints falsifying examples with this


@dataclasses.dataclass(frozen=True, repr=False)
class Create(Op):
    """Replace ``path`` (absent, a file, symlink or fifo) with a new file."""

    data: bytes = b""
    mode: int = 0o644

    def run(self, root: Path, t: int) -> None:
        full = _full(root, self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(full)
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, self.data)
            os.fchmod(fd, self.mode)
        finally:
            os.close(fd)
        _touch(root, self.path, t)
        _touch(root, _parent(self.path), t)

    def _args(self) -> list[str]:
        return [repr(self.path), repr(self.data), oct(self.mode)]


@dataclasses.dataclass(frozen=True, repr=False)
class Overwrite(Op):
    """Rewrite a file in place (O_TRUNC): every hardlinked name sees it."""

    data: bytes = b""

    def run(self, root: Path, t: int) -> None:
        with open(_full(root, self.path), "r+b") as f:
            f.truncate(0)
            f.write(self.data)
        _touch(root, self.path, t)

    def _args(self) -> list[str]:
        return [repr(self.path), repr(self.data)]


@dataclasses.dataclass(frozen=True, repr=False)
class Append(Op):
    data: bytes = b""

    def run(self, root: Path, t: int) -> None:
        with open(_full(root, self.path), "ab") as f:
            f.write(self.data)
        _touch(root, self.path, t)

    def _args(self) -> list[str]:
        return [repr(self.path), repr(self.data)]


@dataclasses.dataclass(frozen=True, repr=False)
class Truncate(Op):
    size: int = 0

    def run(self, root: Path, t: int) -> None:
        os.truncate(_full(root, self.path), self.size)
        _touch(root, self.path, t)

    def _args(self) -> list[str]:
        return [repr(self.path), str(self.size)]


@dataclasses.dataclass(frozen=True, repr=False)
class Delete(Op):
    """``rm -rf``."""

    def run(self, root: Path, t: int) -> None:
        _rm_rf(_full(root, self.path))
        _touch(root, _parent(self.path), t)


@dataclasses.dataclass(frozen=True, repr=False)
class Rename(Op):
    """``mv path dst``; ``dst`` is absent, or both are non-directories."""

    dst: str = ""

    def run(self, root: Path, t: int) -> None:
        os.rename(_full(root, self.path), _full(root, self.dst))
        self._times(root, t)

    def copy_instead(self, root: Path, t: int) -> None:
        """What ``mv`` does when rename(2) says EXDEV: copy the tree, then delete it."""
        copy_tree(Path(_full(root, self.path)), Path(_full(root, self.dst)))
        _rm_rf(_full(root, self.path))
        self._times(root, t)

    def _times(self, root: Path, t: int) -> None:
        if stat.S_ISDIR(os.lstat(_full(root, self.dst)).st_mode):
            _touch(root, self.dst, t)  # its ".." changed: some filesystems touch it
        _touch(root, _parent(self.path), t)
        _touch(root, _parent(self.dst), t)

    def _args(self) -> list[str]:
        return [repr(self.path), repr(self.dst)]


@dataclasses.dataclass(frozen=True, repr=False)
class Chmod(Op):
    mode: int = 0o644

    def run(self, root: Path, t: int) -> None:
        os.chmod(_full(root, self.path), self.mode)

    def _args(self) -> list[str]:
        return [repr(self.path), oct(self.mode)]


@dataclasses.dataclass(frozen=True, repr=False)
class Chown(Op):
    """``chown -h`` (it clears setuid, setgid and capabilities, as the kernel does)."""

    uid: int = 0
    gid: int = 0

    def run(self, root: Path, t: int) -> None:
        os.lchown(_full(root, self.path), self.uid, self.gid)

    def _args(self) -> list[str]:
        return [repr(self.path), str(self.uid), str(self.gid)]


@dataclasses.dataclass(frozen=True, repr=False)
class Hardlink(Op):
    """``ln target path``."""

    target: str = ""

    def run(self, root: Path, t: int) -> None:
        os.link(_full(root, self.target), _full(root, self.path), follow_symlinks=False)
        _touch(root, _parent(self.path), t)

    def _args(self) -> list[str]:
        return [repr(self.path), repr(self.target)]


@dataclasses.dataclass(frozen=True, repr=False)
class Symlink(Op):
    target: str = ""

    def run(self, root: Path, t: int) -> None:
        os.symlink(self.target, _full(root, self.path))
        _touch(root, self.path, t)
        _touch(root, _parent(self.path), t)

    def _args(self) -> list[str]:
        return [repr(self.path), repr(self.target)]


@dataclasses.dataclass(frozen=True, repr=False)
class Mkfifo(Op):
    def run(self, root: Path, t: int) -> None:
        os.mkfifo(_full(root, self.path), 0o600)
        os.chmod(_full(root, self.path), 0o640)
        _touch(root, self.path, t)
        _touch(root, _parent(self.path), t)


@dataclasses.dataclass(frozen=True, repr=False)
class Mkdir(Op):
    mode: int = 0o755

    def run(self, root: Path, t: int) -> None:
        os.mkdir(_full(root, self.path))
        os.chmod(_full(root, self.path), self.mode)
        _touch(root, self.path, t)
        _touch(root, _parent(self.path), t)

    def _args(self) -> list[str]:
        return [repr(self.path), oct(self.mode)]


@dataclasses.dataclass(frozen=True, repr=False)
class Rmdir(Op):
    def run(self, root: Path, t: int) -> None:
        os.rmdir(_full(root, self.path))
        _touch(root, _parent(self.path), t)


@dataclasses.dataclass(frozen=True, repr=False)
class SetXattr(Op):
    name: str = "user.a"
    value: bytes = b""

    def run(self, root: Path, t: int) -> None:
        os.setxattr(_full(root, self.path), self.name, self.value, follow_symlinks=False)

    def _args(self) -> list[str]:
        return [repr(self.path), repr(self.name), repr(self.value)]


@dataclasses.dataclass(frozen=True)
class Layer:
    """The operations of one layer and how the layer is filled (``commit`` or ``tar``)."""

    fill: str
    ops: tuple[Op, ...]

    def __repr__(self) -> str:
        return f"{self.fill}[{', '.join(map(repr, self.ops))}]"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


# --- generating plans ---------------------------------------------------------------------


class _Model:
    """Path -> kind of the tree the operations so far made; picks only valid operations."""

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}
        #: regular file -> an inode number of the model (hardlinks share one)
        self.inodes: dict[str, int] = {}
        self._next_inode = 0
        #: directories (the root is "") whose mode has the setgid bit
        self.setgid: set[str] = set()

    def set_mode(self, path: str, mode: int) -> None:
        """Record a directory's mode (mkdir, chmod): only its setgid bit matters here."""
        if mode & stat.S_ISGID:
            self.setgid.add(path)
        else:
            self.setgid.discard(path)

    def add_file(self, path: str, like: str | None = None) -> None:
        self.kinds[path] = "file"
        self._next_inode += 1
        self.inodes[path] = self.inodes[like] if like else self._next_inode

    def children(self, path: str) -> list[str]:
        prefix = path + "/"
        return [p for p in self.kinds if p.startswith(prefix)]

    def of_kind(self, *kinds: str) -> list[str]:
        return sorted(p for p, k in self.kinds.items() if k in kinds)

    def free(self) -> list[str]:
        """Absent slots whose parent is a directory."""
        return [
            p for p in SLOTS
            if p not in self.kinds and (not _parent(p) or self.kinds.get(_parent(p)) == "dir")
        ]

    def replaceable(self) -> list[str]:
        return self.free() + [p for p in self.of_kind("file", "symlink", "fifo") if p in SLOTS]

    def rename_targets(self, src: str) -> list[str]:
        is_dir = self.kinds[src] == "dir"
        out = [p for p in self.free() if p != src and not p.startswith(src + "/")]
        if not is_dir:
            # two names of one inode: rename(2) does nothing, which is not worth a draw
            same = self.inodes.get(src)
            out += [p for p in self.of_kind("file", "symlink", "fifo")
                    if p != src and (same is None or self.inodes.get(p) != same)]
        return sorted(out)

    def remove(self, path: str) -> None:
        for p in [path, *self.children(path)]:
            del self.kinds[p]
            self.inodes.pop(p, None)
            self.setgid.discard(p)

    def move(self, src: str, dst: str) -> None:
        names = [src, *self.children(src)]
        moved = {dst + p[len(src):]: self.kinds[p] for p in names}
        inodes = {dst + p[len(src):]: self.inodes[p] for p in names if p in self.inodes}
        setgid = {dst + p[len(src):] for p in names if p in self.setgid}
        if dst in self.kinds:
            self.remove(dst)
        self.remove(src)
        self.kinds.update(moved)
        self.inodes.update(inodes)
        self.setgid |= setgid


_DATA = st.one_of(
    st.binary(max_size=48),
    st.builds(lambda n, b: bytes([b]) * n, st.integers(4096, 70_000), st.integers(0, 255)),
)


#: operation kinds in the order shrinking prefers (the first ones are the simplest)
KINDS = ("create", "delete", "mkdir", "chmod", "overwrite", "append", "truncate", "rename",
         "chown", "hardlink", "symlink", "mkfifo", "rmdir", "setxattr")
#: every path an entry can have (renamed directories carry children to depth 3)
UNIVERSE = ("", *SLOTS, *(f"{s}/{n}" for s in SLOTS if "/" in s for n in NAMES))
_RANK = {path: index for index, path in enumerate(UNIVERSE)}


def _pick(draw: Callable[..., Any], candidates: Sequence[str]) -> str:
    """A candidate path, drawn as a position in :data:`UNIVERSE`.

    The draw means "this path, or the next valid one", so removing an
    earlier operation while shrinking changes later choices as little as
    possible (a plain index into the valid list would shift them all).
    """
    ranked = sorted(candidates, key=lambda p: _RANK.get(p, len(UNIVERSE)))
    wanted = draw(st.integers(0, len(UNIVERSE) - 1))
    return next((p for p in ranked if _RANK.get(p, len(UNIVERSE)) >= wanted), ranked[0])


def _choose_op(draw: Callable[..., Any], model: _Model, fragile: frozenset[int],
               new_in_setgid: bool = True) -> Op:
    """Draw one valid operation for the tree the model describes, and update the model.

    A kind that is impossible right now (no file to append to) becomes a
    create, or where no slot is left for one a chmod (the root is always there).
    Names of the ``fragile`` inodes are neither written, nor changed in
    metadata, nor renamed, nor linked to; with ``new_in_setgid=False`` no
    new inode is made in a setgid directory (see :func:`plans`).
    """
    free, replaceable = model.free(), model.replaceable()
    if not new_in_setgid:
        free = [p for p in free if _parent(p) not in model.setgid]
        replaceable = [p for p in replaceable if _parent(p) not in model.setgid]
    touchy = {p for p, inode in model.inodes.items() if inode in fragile}
    files = [p for p in model.of_kind("file") if p not in touchy]
    anything = sorted(model.kinds)
    movable = [p for p in anything if p not in touchy]
    dirs = model.of_kind("dir")
    empty_dirs = [d for d in dirs if not model.children(d)]
    possible = {
        "create": bool(replaceable),
        "overwrite": bool(files), "append": bool(files), "truncate": bool(files),
        "delete": bool(anything), "rename": any(model.rename_targets(p) for p in movable),
        "chmod": True, "chown": True, "hardlink": bool(files and model.free()),
        "symlink": bool(free), "mkfifo": bool(free), "mkdir": bool(free),
        "rmdir": bool(empty_dirs), "setxattr": True,
    }
    kind = draw(st.sampled_from(KINDS))
    if not possible[kind]:
        kind = "create" if possible["create"] else "chmod"
    if kind == "create":
        path = _pick(draw, replaceable)
        model.inodes.pop(path, None)
        model.add_file(path)
        return Create(path, draw(_DATA), draw(st.sampled_from(FILE_MODES)))
    if kind in ("overwrite", "append"):
        path = _pick(draw, files)
        return (Overwrite if kind == "overwrite" else Append)(path, draw(_DATA))
    if kind == "truncate":
        return Truncate(_pick(draw, files), draw(st.integers(0, 100)))
    if kind == "delete":
        path = _pick(draw, anything)
        model.remove(path)
        return Delete(path)
    if kind == "rename":
        src = _pick(draw, [p for p in movable if model.rename_targets(p)])
        dst = _pick(draw, model.rename_targets(src))
        model.move(src, dst)
        return Rename(src, dst)
    if kind == "chmod":
        path = _pick(draw, ["", *files, *dirs])
        if model.kinds.get(path) == "file":
            return Chmod(path, draw(st.sampled_from(FILE_MODES)))
        mode = draw(st.sampled_from(DIR_MODES))
        model.set_mode(path, mode)
        return Chmod(path, mode)
    if kind == "chown":
        uid, gid = draw(st.sampled_from(OWNERS))
        return Chown(_pick(draw, ["", *movable]), uid, gid)
    if kind == "hardlink":
        target = _pick(draw, files)
        path = _pick(draw, model.free())
        model.add_file(path, like=target)
        return Hardlink(path, target)
    if kind in ("symlink", "mkfifo", "mkdir"):
        path = _pick(draw, free)
        if kind == "symlink":
            model.kinds[path] = "symlink"
            return Symlink(path, draw(st.sampled_from(SYMLINK_TARGETS)))
        if kind == "mkfifo":
            model.kinds[path] = "fifo"
            return Mkfifo(path)
        model.kinds[path] = "dir"
        mode = draw(st.sampled_from(DIR_MODES))
        model.set_mode(path, mode)
        return Mkdir(path, mode)
    if kind == "rmdir":
        path = _pick(draw, empty_dirs)
        model.remove(path)
        return Rmdir(path)
    path = _pick(draw, ["", *files, *dirs])
    return SetXattr(path, draw(st.sampled_from(XATTR_NAMES)), draw(st.binary(max_size=16)))


@st.composite
def plans(draw: Callable[..., Any], max_layers: int = 4, max_ops: int = 6, *,
          links_survive_copy_up: bool = True, setgid_inherits: bool = True) -> list[Layer]:
    """1..``max_layers`` layers of 1..``max_ops`` valid operations each.

    ``links_survive_copy_up=False`` (a driver that declares
    ``hardlinks_survive_copy_up=False``, as overlay): in a ``commit`` layer,
    files hardlinked in the layers below are not written, chmod-ed,
    chown-ed, given xattrs, renamed or linked to, since the copy-up that
    does it splits the link there by design (case 27 checks that promise).

    ``setgid_inherits=False`` (a driver that declares
    ``setgid_dirs_inherit_group=False``, as fuse-overlayfs): in a ``commit``
    layer, no file, directory, fifo or symlink is made in a setgid directory
    (the new entry would take the creator's group, not the directory's).
    Links and renames into one keep their inode's group and stay.
    """
    model = _Model()
    layers = []
    for _ in range(draw(st.integers(1, max_layers))):
        fill = draw(st.sampled_from(["commit", "tar"]))
        fragile: frozenset[int] = frozenset()
        if fill == "commit" and not links_survive_copy_up:
            counts: dict[int, int] = {}
            for inode in model.inodes.values():
                counts[inode] = counts.get(inode, 0) + 1
            fragile = frozenset(inode for inode, n in counts.items() if n > 1)
        inherit = fill != "commit" or setgid_inherits
        ops = tuple(_choose_op(draw, model, fragile, inherit)
                    for _ in range(draw(st.integers(1, max_ops))))
        layers.append(Layer(fill, ops))
    return layers


def makes_new_in_setgid(plan: Sequence[Layer]) -> bool:
    """Whether a ``commit`` layer of ``plan`` makes a new inode in a setgid directory."""
    dirs: set[str] = {""}
    setgid: set[str] = set()

    def gone(path: str) -> None:
        for group in (dirs, setgid):
            group -= {p for p in group if p == path or p.startswith(path + "/")}

    for layer in plan:
        for op in layer.ops:
            if (layer.fill == "commit" and isinstance(op, (Create, Mkdir, Mkfifo, Symlink))
                    and _parent(op.path) in setgid):
                return True
            if isinstance(op, (Mkdir, Chmod)) and (isinstance(op, Mkdir) or op.path in dirs):
                dirs.add(op.path)
                (setgid.add if op.mode & stat.S_ISGID else setgid.discard)(op.path)
            elif isinstance(op, (Delete, Rmdir)):
                gone(op.path)
            elif isinstance(op, Rename):
                moved = [(g, {op.dst + p[len(op.path):] for p in g
                              if p == op.path or p.startswith(op.path + "/")})
                         for g in (dirs, setgid)]
                gone(op.dst)
                gone(op.path)
                for group, new in moved:
                    group |= new
    return False


# --- the independent layer tar ------------------------------------------------------------------


def _depth_first(path: str) -> list[str]:
    return path.split("/") if path else []


def build_layer_tar(before: trees.Tree, ref: Path, *, with_root: bool = False) -> bytes:
    """The OCI layer tar that turns the tree ``before`` into the tree at ``ref``.

    ``with_root`` writes the root entry even when it did not change (a first
    layer: the driver's own root mode must not show through).

    Every entry that is new or differs in any compared field (hardlink
    groups included) is written; a name gone from a directory that stays a
    directory gets ``.wh.<name>``, or, when none of the directory's old
    entries is left, a single opaque marker.
    """
    after = trees.snapshot(ref)
    changed = {p for p, e in after.entries.items() if before.entries.get(p) != e}
    if with_root:
        changed.add("")
    gone: dict[str, list[str]] = {}
    for path in before.entries:
        if path and path not in after.entries:
            parent = _parent(path)
            was, now = before.entries.get(parent), after.entries.get(parent)
            if was and now and was.kind == now.kind == "directory":
                gone.setdefault(parent, []).append(path)
    # as every exporter does, a changed entry's directories come with it
    for path in [*changed, *gone]:
        while path:
            path = _parent(path)
            changed.add(path)
    members: list[TarMember] = []
    first_name: dict[tuple[int, int], str] = {}
    for path in sorted(changed, key=_depth_first):
        entry = after.entries[path]
        st_ = os.lstat(_full(ref, path))
        key = (st_.st_dev, st_.st_ino)
        if entry.kind == "file" and entry.links and key in first_name:
            members.append(TarMember.hardlink(path, first_name[key]))
        else:
            first_name.setdefault(key, path)
            members.append(member_from_tree(ref, path))
        if path in gone:
            old_children = [p for p in before.entries if _parent(p) == path]
            if all(p not in after.entries for p in old_children):
                members.append(TarMember.opaque(path))
            else:
                members.extend(TarMember.whiteout(p) for p in sorted(gone[path]))
    return build_tar(members)


# --- running a plan on two stores -------------------------------------------------------------


#: what a driver that declares copy_up_keeps_mtimes=False is still held to, mtime-wise
KINDS_WITHOUT_COPY_UP_MTIMES = ("file", "fifo", "char device", "block device", "socket")


@dataclasses.dataclass
class Comparison:
    """How strictly the driver is held to vfs (decided by its capabilities)."""

    subsecond: bool
    identical_diffs: bool
    #: entry kinds whose mtimes are compared (None: all)
    mtime_kinds: frozenset[str] | None = None

    @classmethod
    def for_capabilities(cls, caps: Capabilities) -> Comparison:
        keeps = caps.copy_up_keeps_mtimes
        return cls(subsecond=caps.subsecond_mtime,
                   identical_diffs=caps.subsecond_mtime and not caps.native_diff and keeps,
                   mtime_kinds=None if keeps else frozenset(KINDS_WITHOUT_COPY_UP_MTIMES))


class SideBySide:
    """A store of the driver under test and a vfs store, fed the same plan."""

    def __init__(self, driver_class: type[Driver], options: dict[str, Any], where: Path,
                 reference: Path) -> None:
        from lamina.drivers.vfs import VfsDriver

        self.where = Path(tempfile.mkdtemp(prefix="property-", dir=where))
        self.reference = reference
        self.caps = driver_class.capabilities
        self.rule = Comparison.for_capabilities(self.caps)
        self.stores: dict[str, Store] = {}
        self.layers: dict[str, list[str]] = {"vfs": [], "driver": []}
        for key, cls, opts in (("vfs", VfsDriver, {}), ("driver", driver_class, options)):
            root = self.where / key
            home = root / cls.name
            home.mkdir(mode=0o700, parents=True)
            self.stores[key] = Store(root, cls(home, opts))
        init_reference(reference, VfsDriver.capabilities.root_mode)
        # a root that differs from a fresh one (by an xattr no operation removes)
        # is always exported, with its mtime: an empty tar cannot carry that
        os.setxattr(reference, ROOT_XATTR, b"1")
        os.utime(reference, ns=(BASE_TIME, BASE_TIME))

    # -- clean up ---------------------------------------------------------------------------

    def close(self) -> list[str]:
        """Remove every layer, close both stores, delete their roots; return problems."""
        problems = []
        for key, store in self.stores.items():
            for layer_id in reversed(self.layers[key]):
                with contextlib.suppress(Exception):
                    while store.mount_count(layer_id):
                        store.unmount(layer_id)
                try:
                    store.remove_layer(layer_id)
                except Exception as exc:
                    problems.append(f"{key}: removing layer {layer_id}: {exc}")
            store.close()
        leaked = mounts.mounts_under(self.where)
        for point in sorted(leaked, key=len, reverse=True):
            mounts.detach(Path(point))
        if leaked:
            problems.append(f"mounts left after every layer was removed: {leaked}")
        for dirpath, dirnames, _ in os.walk(self.where):
            for name in dirnames:  # read-only directories of finished layers
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(dirpath, name), 0o700)
        shutil.rmtree(self.where, ignore_errors=True)
        shutil.rmtree(self.reference, ignore_errors=True)
        return problems

    # -- comparisons ----------------------------------------------------------------------------

    def _same(self, expected: Path, actual: Path, what: str, *, subsecond: bool = True,
              driver: bool = False) -> None:
        kinds = self.rule.mtime_kinds if driver else None
        problems = trees.compare(trees.snapshot(expected, subsecond=subsecond),
                                 trees.snapshot(actual, subsecond=subsecond), mtime_kinds=kinds)
        if problems:
            raise AssertionError(f"{what}:\n  " + "\n  ".join(problems[:40]))

    @contextlib.contextmanager
    def _mounted(self, key: str, layer_id: str) -> Iterator[Path]:
        store = self.stores[key]
        path = store.mount(layer_id)
        try:
            yield Path(path)
        finally:
            store.unmount(layer_id)

    def check_layer(self, ids: dict[str, str], what: str) -> None:
        """The driver's layer equals vfs's, and vfs's the reference."""
        with self._mounted("vfs", ids["vfs"]) as vfs, self._mounted("driver", ids["driver"]) as drv:
            self._same(self.reference, vfs, f"{what}: vfs differs from the plain reference")
            self._same(vfs, drv, f"{what}: the driver differs from vfs",
                       subsecond=self.rule.subsecond, driver=True)

    def check_diffs(self, ids: dict[str, str], parents: dict[str, str | None], what: str) -> dict:
        """The two exported diffs are the same (bytes, or trees once applied); return them."""
        diffs = {key: diff_bytes(self.stores[key], ids[key]) for key in ids}
        if self.rule.identical_diffs:
            if diffs["vfs"] != diffs["driver"]:
                raise AssertionError(f"{what}: the driver's diff differs from vfs's\n"
                                     + _describe_tars(diffs["vfs"], diffs["driver"]))
            return diffs
        vfs = self.stores["vfs"]
        applied = {key: vfs.apply_layer(io.BytesIO(data), parents["vfs"]).id
                   for key, data in diffs.items()}
        self.layers["vfs"].extend(applied.values())
        with self._mounted("vfs", applied["vfs"]) as want, \
                self._mounted("vfs", applied["driver"]) as got:
            self._same(want, got, f"{what}: the driver's diff, applied on vfs, differs from vfs's",
                       subsecond=self.rule.subsecond, driver=True)
        return diffs

    # -- running -------------------------------------------------------------------------------

    def _run_op(self, op: Op, t: int, roots: Sequence[Path]) -> None:
        """Run ``op`` on every root, the driver's first.

        A driver that declares ``rename_lower_dir=False`` may refuse to
        rename a lower directory with EXDEV; then the move is done as ``mv``
        does it (copy and delete) on every tree alike.
        """
        run = op.run
        try:
            run(roots[0], t)
        except OSError as exc:
            if not (isinstance(op, Rename) and exc.errno == errno.EXDEV
                    and not self.caps.rename_lower_dir):
                raise
            run = op.copy_instead
            run(roots[0], t)
        for root in roots[1:]:
            run(root, t)

    def run(self, plan: Sequence[Layer]) -> None:
        if not self.caps.setgid_dirs_inherit_group and makes_new_in_setgid(plan):
            from hypothesis import assume

            assume(False)  # not this driver's promise (plans(setgid_inherits=False))
        parents: dict[str, str | None] = {"vfs": None, "driver": None}
        counter = 0
        for number, layer in enumerate(plan, 1):
            what = f"layer {number} ({layer.fill})"
            if layer.fill == "commit":
                rw = {key: store.create_layer(parents[key], writable=True).id
                      for key, store in self.stores.items()}
                for key in rw:
                    self.layers[key].append(rw[key])
                with self._mounted("vfs", rw["vfs"]) as vfs, \
                        self._mounted("driver", rw["driver"]) as drv:
                    if parents["vfs"] is None:  # new roots: as the reference's
                        ref = os.lstat(self.reference)
                        for path in (vfs, drv):
                            os.chmod(path, stat.S_IMODE(ref.st_mode))
                            os.setxattr(path, ROOT_XATTR, b"1")
                            os.utime(path, ns=(ref.st_mtime_ns, ref.st_mtime_ns))
                    for op in layer.ops:
                        counter += 1
                        self._run_op(op, op_time(counter), (drv, vfs, self.reference))
                self.check_layer(rw, f"{what}, writable layer")
                diffs = self.check_diffs(rw, parents, f"{what}, writable layer")
                ids = {key: self.stores[key].apply_layer(io.BytesIO(diffs[key]),
                                                         parents[key]).id for key in rw}
            else:
                before = trees.snapshot(self.reference)
                for op in layer.ops:
                    counter += 1
                    op.run(self.reference, op_time(counter))
                data = build_layer_tar(before, self.reference,
                                       with_root=parents["vfs"] is None)
                ids = {key: store.apply_layer(io.BytesIO(data), parents[key]).id
                       for key, store in self.stores.items()}
            for key in ids:
                self.layers[key].append(ids[key])
            self.check_layer(ids, what)
            self.check_diffs(ids, parents, what)
            parents = dict(ids)


def _describe_tars(want: bytes, got: bytes) -> str:
    """The first differing members of two tars, for the failure message."""
    import tarfile

    def members(data: bytes) -> list[str]:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return [f"{m.name} type={m.type!r} mode={m.mode:o} {m.uid}:{m.gid} size={m.size} "
                    f"link={m.linkname!r} pax={sorted(m.pax_headers.items())}"
                    for m in tar.getmembers()]

    a, b = members(want), members(got)
    lines = [f"vfs: {len(want)} bytes, {len(a)} members; driver: {len(got)} bytes, {len(b)}"]
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            lines += [f"  first difference at member {index}:", f"    vfs:    {x}",
                      f"    driver: {y}"]
            break
    else:
        if len(a) != len(b):
            extra = a[len(b):] or b[len(a):]
            lines.append(f"  extra members: {extra[:5]}")
    return "\n".join(lines)
