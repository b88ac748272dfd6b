"""Scenarios: layer steps applied to a plain reference directory and through a store.

A conformance case describes what each layer does as a :class:`Step`, a list
of operations (:func:`file`, :func:`remove`, :func:`chmod`, ...). The same
step is used twice, independently of the driver under test:

* :meth:`Step.apply` performs it with plain file operations on a directory:
  on the *reference* directory (which then holds the tree every layer must
  show) or inside a writable layer's mount (how containers fill layers);
* :meth:`Step.layer_tar` renders it as the OCI layer tar an image would carry
  for it (``.wh.`` whiteouts, opaque markers, PAX xattrs and nanosecond
  mtimes), read back from the reference directory after the step.

:func:`run_scenario` drives a list of steps through a store in one of two
ways and compares every layer with the reference after each step:

``tar``
    ``store.apply_layer(tar, parent)`` (how images arrive);
``commit``
    a writable layer on the parent, the step done in its mount, then
    ``store.diff`` of it applied onto a fresh child of the same parent (case
    37: how a container becomes an image layer).

Every timestamp in a step is explicit, directories included: the parents of
whatever a step touches get the step's ``parent_mtime`` (or keep their old
mtime), so the reference, the writable mount and the applied layer agree to
the nanosecond. The tars are built with the stdlib :mod:`tarfile` writer in
PAX format; nothing here goes through lamina's own tar code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import stat
import struct
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lamina.core.layers.changes import read_xattrs

if TYPE_CHECKING:
    from lamina.core.layers.store import Store

NS = 1_000_000_000
#: a fixed time (2020-09-13) whose fraction is exact in a float and rounds up
T0 = 1_600_000_000 * NS + 750_000_000
#: mtime given to directories a step creates implicitly
DEFAULT_DIR_MTIME = 1_500_000_000 * NS + 500_000_000
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

#: a valid ``security.capability`` value: revision 2, effective, CAP_NET_BIND_SERVICE
#: (every byte below 0x80, so it is plain UTF-8 in a PAX record)
CAP_NET_BIND_SERVICE = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


def step_time(index: int) -> int:
    """A distinct, exactly representable mtime per step (``T0`` + index hours + 0.25 s)."""
    return T0 + index * 3600 * NS + 250_000_000


# --- paths ----------------------------------------------------------------------------


def _norm(path: str) -> str:
    """``a/b`` form: no leading ``/`` or ``./``; the root is ``""``."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"scenario paths stay inside the layer: {path!r}")
    return "/".join(parts)


def _ancestors(path: str) -> list[str]:
    """Parent directories of ``path``, the root ``""`` first."""
    parts = path.split("/")[:-1] if path else []
    return [""] + ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _full(root: Path, path: str) -> str:
    return os.path.join(os.fspath(root), path) if path else os.fspath(root)


def _lexists(path: str) -> bool:
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _delete(path: str) -> None:
    """Remove whatever is at ``path`` (a tree too); absent is fine."""
    if _is_dir(path):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(path)


# --- operations -----------------------------------------------------------------------


@dataclasses.dataclass
class _Context:
    """State of one step being applied: what it created and the deferred dir mtimes."""

    root: Path
    created: set[str] = dataclasses.field(default_factory=set)
    dir_mtimes: dict[str, int] = dataclasses.field(default_factory=dict)
    implicit_mtime: int = DEFAULT_DIR_MTIME

    def full(self, path: str) -> str:
        return _full(self.root, path)

    def ensure_parents(self, path: str) -> None:
        """Create missing parent directories (0755, 0:0) as a tar applier would."""
        for parent in _ancestors(path)[1:]:
            full = self.full(parent)
            if not _lexists(full):
                os.mkdir(full)
                os.chmod(full, 0o755)
                self.created.add(parent)
                self.dir_mtimes.setdefault(parent, self.implicit_mtime)


def _set_metadata(
    ctx: _Context, path: str, *, uid: int, gid: int, mode: int | None,
    xattrs: dict[str, bytes] | None, mtime: int | None,
) -> None:
    """chown, chmod, xattrs, mtime: in that order (chown clears setuid and capabilities)."""
    full = ctx.full(path)
    os.lchown(full, uid, gid)
    if mode is not None:
        os.chmod(full, mode)
    for name, value in (xattrs or {}).items():
        os.setxattr(full, name, value, follow_symlinks=False)
    if mtime is not None:
        if _is_dir(full):
            ctx.dir_mtimes[path] = mtime
        else:
            os.utime(full, ns=(mtime, mtime), follow_symlinks=False)


class Op:
    """One operation of a step. ``tar_ok``: whether a layer tar can express it."""

    tar_ok: bool = True
    path: str

    def paths(self) -> list[str]:
        """Every path the operation changes (their parents get the step's mtime)."""
        return [self.path]

    def apply(self, ctx: _Context) -> None:
        raise NotImplementedError

    def members(self, ref: Path) -> list[TarMember]:
        """The tar members for this operation, read from the reference after the step."""
        return [member_from_tree(ref, self.path)]


@dataclasses.dataclass
class _Create(Op):
    """Replace whatever is at ``path`` with a new entry (tar semantics)."""

    path: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = T0
    xattrs: dict[str, bytes] | None = None

    def _make(self, full: str) -> None:
        raise NotImplementedError

    def apply(self, ctx: _Context) -> None:
        ctx.ensure_parents(self.path)
        full = ctx.full(self.path)
        _delete(full)
        self._make(full)
        ctx.created.add(self.path)
        _set_metadata(ctx, self.path, uid=self.uid, gid=self.gid, mode=self._mode(),
                      xattrs=self.xattrs, mtime=self.mtime)

    def _mode(self) -> int | None:
        return self.mode


@dataclasses.dataclass
class _File(_Create):
    data: bytes = b""
    #: write the data after a hole of this many bytes (a sparse file)
    hole: int = 0

    def _make(self, full: str) -> None:
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            if self.hole:
                os.ftruncate(fd, self.hole + len(self.data))
                os.pwrite(fd, self.data, self.hole)
            else:
                os.write(fd, self.data)
        finally:
            os.close(fd)


@dataclasses.dataclass
class _Dir(_Create):
    mode: int = 0o755

    def apply(self, ctx: _Context) -> None:
        ctx.ensure_parents(self.path)
        full = ctx.full(self.path)
        if not _is_dir(full):
            _delete(full)
            os.mkdir(full)
        ctx.created.add(self.path)
        _set_metadata(ctx, self.path, uid=self.uid, gid=self.gid, mode=self.mode,
                      xattrs=self.xattrs, mtime=self.mtime)


@dataclasses.dataclass
class _RecreateDir(_Dir):
    """``rm -rf dir; mkdir dir``: in a tar, the directory and its opaque marker."""

    def apply(self, ctx: _Context) -> None:
        _delete(ctx.full(self.path))
        super().apply(ctx)

    def members(self, ref: Path) -> list[TarMember]:
        return [member_from_tree(ref, self.path), TarMember.opaque(self.path)]


@dataclasses.dataclass
class _Symlink(_Create):
    target: str = ""

    def _make(self, full: str) -> None:
        os.symlink(self.target, full)

    def _mode(self) -> int | None:
        return None  # Linux symlinks have no mode of their own


@dataclasses.dataclass
class _Fifo(_Create):
    def _make(self, full: str) -> None:
        os.mkfifo(full, 0o600)


@dataclasses.dataclass
class _Device(_Create):
    kind: str = "c"
    major: int = 1
    minor: int = 3

    def _make(self, full: str) -> None:
        fmt = stat.S_IFCHR if self.kind == "c" else stat.S_IFBLK
        os.mknod(full, fmt | 0o600, os.makedev(self.major, self.minor))


@dataclasses.dataclass
class _Socket(_Create):
    """A unix socket inode: a writable layer holds it, a tar cannot."""

    tar_ok = False

    def _make(self, full: str) -> None:
        os.mknod(full, stat.S_IFSOCK | 0o600)

    def members(self, ref: Path) -> list[TarMember]:
        return []


@dataclasses.dataclass
class _Hardlink(Op):
    path: str
    target: str
    #: the target is not written by the same step (a link to a lower file):
    #: a tar cannot express that, only a writable layer can
    to_lower: bool = False

    def __post_init__(self) -> None:
        self.tar_ok = not self.to_lower

    def paths(self) -> list[str]:
        return [self.path]

    def apply(self, ctx: _Context) -> None:
        ctx.ensure_parents(self.path)
        full = ctx.full(self.path)
        _delete(full)
        os.link(ctx.full(self.target), full, follow_symlinks=False)
        ctx.created.add(self.path)

    def members(self, ref: Path) -> list[TarMember]:
        return [TarMember.hardlink(self.path, self.target)]


@dataclasses.dataclass
class _Remove(Op):
    """``rm -rf path``; in a tar, ``.wh.<name>``."""

    path: str

    def apply(self, ctx: _Context) -> None:
        _delete(ctx.full(self.path))

    def members(self, ref: Path) -> list[TarMember]:
        return [TarMember.whiteout(self.path)]


@dataclasses.dataclass
class _Opaque(Op):
    """Hide what the layers below hold in a directory; keep what this step made."""

    path: str

    def apply(self, ctx: _Context) -> None:
        self._clear(ctx, self.path)

    def _clear(self, ctx: _Context, directory: str) -> None:
        """Delete, recursively, every entry below ``directory`` this step did not write."""
        full = ctx.full(directory)
        for name in os.listdir(full):
            rel = _join(directory, name)
            below = rel + "/"
            if any(c == rel or c.startswith(below) for c in ctx.created):
                if _is_dir(ctx.full(rel)):
                    self._clear(ctx, rel)
            else:
                _delete(os.path.join(full, name))

    def members(self, ref: Path) -> list[TarMember]:
        return [TarMember.opaque(self.path)]


@dataclasses.dataclass
class _Chmod(Op):
    path: str
    mode: int

    def apply(self, ctx: _Context) -> None:
        os.chmod(ctx.full(self.path), self.mode)


@dataclasses.dataclass
class _Chown(Op):
    path: str
    uid: int
    gid: int

    def apply(self, ctx: _Context) -> None:
        os.lchown(ctx.full(self.path), self.uid, self.gid)


@dataclasses.dataclass
class _SetXattr(Op):
    path: str
    name: str
    value: bytes

    def apply(self, ctx: _Context) -> None:
        os.setxattr(ctx.full(self.path), self.name, self.value, follow_symlinks=False)


@dataclasses.dataclass
class _Touch(Op):
    """Set an entry's mtime (``touch -h -d``)."""

    path: str
    mtime: int

    def apply(self, ctx: _Context) -> None:
        full = ctx.full(self.path)
        if _is_dir(full):
            ctx.dir_mtimes[self.path] = self.mtime
        else:
            os.utime(full, ns=(self.mtime, self.mtime), follow_symlinks=False)


@dataclasses.dataclass
class _Write(Op):
    """Write into an existing file in place (same inode), then set its mtime."""

    path: str
    data: bytes
    offset: int = 0
    truncate: bool = False
    mtime: int = T0

    def apply(self, ctx: _Context) -> None:
        fd = os.open(ctx.full(self.path), os.O_RDWR | os.O_NOFOLLOW)
        try:
            if self.truncate:
                os.ftruncate(fd, 0)
            os.pwrite(fd, self.data, self.offset)
        finally:
            os.close(fd)
        os.utime(ctx.full(self.path), ns=(self.mtime, self.mtime))


@dataclasses.dataclass
class _Rename(Op):
    """``mv src dst`` (over an existing ``dst`` too); in a tar, a whiteout and the new tree."""

    path: str
    dst: str

    def paths(self) -> list[str]:
        return [self.path, self.dst]

    def apply(self, ctx: _Context) -> None:
        os.rename(ctx.full(self.path), ctx.full(self.dst))
        ctx.created.add(self.dst)

    def members(self, ref: Path) -> list[TarMember]:
        out = [TarMember.whiteout(self.path)]
        for rel in walk(ref, self.dst):
            out.append(member_from_tree(ref, rel))
        return out


# --- the public constructors -----------------------------------------------------------


def file(path: str, data: bytes = b"", *, mode: int = 0o644, uid: int = 0, gid: int = 0,
         mtime: int = T0, xattrs: dict[str, bytes] | None = None, hole: int = 0) -> Op:
    """A regular file (replacing whatever was there); ``hole`` bytes of hole first."""
    return _File(_norm(path), mode, uid, gid, mtime, xattrs, data, hole)


def directory(path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = T0,
              xattrs: dict[str, bytes] | None = None) -> Op:
    """A directory; over an existing one only its metadata changes (tar semantics)."""
    return _Dir(_norm(path), mode, uid, gid, mtime, xattrs)


def recreate_dir(path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = T0,
                 xattrs: dict[str, bytes] | None = None) -> Op:
    """``rm -rf path && mkdir path``: the tar carries the directory and an opaque marker."""
    return _RecreateDir(_norm(path), mode, uid, gid, mtime, xattrs)


def symlink(path: str, target: str, *, uid: int = 0, gid: int = 0, mtime: int = T0) -> Op:
    """A symlink with its own owner and mtime (lchown, lutimes)."""
    return _Symlink(_norm(path), 0o777, uid, gid, mtime, None, target)


def hardlink(path: str, target: str, *, to_lower: bool = False) -> Op:
    """Another name for ``target``; ``to_lower``: the target comes from a lower layer."""
    return _Hardlink(_norm(path), _norm(target), to_lower)


def fifo(path: str, *, mode: int = 0o640, uid: int = 0, gid: int = 0, mtime: int = T0) -> Op:
    return _Fifo(_norm(path), mode, uid, gid, mtime)


def device(path: str, kind: str, major: int, minor: int, *, mode: int = 0o660, uid: int = 0,
           gid: int = 0, mtime: int = T0) -> Op:
    """A character (``kind="c"``) or block (``"b"``) device node."""
    if kind not in ("c", "b"):
        raise ValueError("device kind is 'c' or 'b'")
    return _Device(_norm(path), mode, uid, gid, mtime, None, kind, major, minor)


def socket(path: str, *, mode: int = 0o755, mtime: int = T0) -> Op:
    """A unix socket inode (only a writable layer can hold one)."""
    return _Socket(_norm(path), mode, 0, 0, mtime)


def remove(path: str) -> Op:
    """Delete ``path`` and its tree (absent is fine)."""
    return _Remove(_norm(path))


def opaque(path: str) -> Op:
    """Hide everything of the lower layers in directory ``path`` (the OCI opaque marker)."""
    return _Opaque(_norm(path))


def chmod(path: str, mode: int) -> Op:
    return _Chmod(_norm(path), mode)


def chown(path: str, uid: int, gid: int) -> Op:
    return _Chown(_norm(path), uid, gid)


def setxattr(path: str, name: str, value: bytes) -> Op:
    return _SetXattr(_norm(path), name, value)


def touch(path: str, mtime: int) -> Op:
    return _Touch(_norm(path), mtime)


def write(path: str, data: bytes, *, offset: int = 0, truncate: bool = False,
          mtime: int = T0) -> Op:
    """Write into an existing file in place (its inode stays)."""
    return _Write(_norm(path), data, offset, truncate, mtime)


def rename(src: str, dst: str) -> Op:
    return _Rename(_norm(src), _norm(dst))


# --- steps ----------------------------------------------------------------------------


@dataclasses.dataclass
class Step:
    """What one layer does.

    ``parent_mtime``: the mtime every parent directory of a touched path
    gets (as if the step ran at that time); ``None`` keeps their previous
    mtimes, so only what the step names really changes (case 36).
    """

    ops: Sequence[Op] = ()
    parent_mtime: int | None = T0
    name: str = ""

    @property
    def tar_ok(self) -> bool:
        return all(op.tar_ok for op in self.ops)

    def touched(self) -> list[str]:
        """Parent directories of every path the step changes, the root first."""
        seen: dict[str, None] = {}
        for op in self.ops:
            for path in op.paths():
                for parent in _ancestors(path):
                    seen.setdefault(parent, None)
        return list(seen)

    def apply(self, root: Path) -> None:
        """Perform the step with plain file operations on the tree at ``root``."""
        root = Path(root)
        ctx = _Context(root)
        if self.parent_mtime is not None:
            ctx.implicit_mtime = self.parent_mtime
        before: dict[str, int] = {}
        for parent in self.touched():
            full = ctx.full(parent)
            if _is_dir(full):
                before[parent] = os.lstat(full).st_mtime_ns
        for op in self.ops:
            op.apply(ctx)
        for parent in self.touched():
            if parent in ctx.dir_mtimes or not _is_dir(ctx.full(parent)):
                continue
            mtime = self.parent_mtime if self.parent_mtime is not None else before.get(parent)
            ctx.dir_mtimes[parent] = mtime if mtime is not None else ctx.implicit_mtime
        # directories last, after everything inside them was written
        for path, mtime in sorted(ctx.dir_mtimes.items(), key=lambda kv: -kv[0].count("/")):
            full = ctx.full(path)
            if _is_dir(full):
                os.utime(full, ns=(mtime, mtime), follow_symlinks=False)

    def members(self, reference: Path) -> list[TarMember]:
        """The tar members, given the reference tree *after* :meth:`apply`."""
        if not self.tar_ok:
            raise ValueError(f"step {self.name or '?'} cannot be expressed as a layer tar")
        out: list[TarMember] = []
        emitted: set[str] = set()
        for op in self.ops:
            for path in op.paths():
                for parent in _ancestors(path):
                    if parent not in emitted and _is_dir(_full(reference, parent)):
                        out.append(member_from_tree(reference, parent))
                        emitted.add(parent)
            out.extend(op.members(reference))
        return out

    def layer_tar(self, reference: Path) -> bytes:
        """The step as an uncompressed OCI layer tar (reference already stepped)."""
        return build_tar(self.members(reference))


def step(*ops: Op, parent_mtime: int | None = T0, name: str = "") -> Step:
    return Step(list(ops), parent_mtime, name)


# --- tar members -------------------------------------------------------------------------


@dataclasses.dataclass
class TarMember:
    """One member of a test layer tar, with nanosecond mtime and raw xattrs."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = T0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = dataclasses.field(default_factory=dict)
    #: extra raw PAX records (tests of odd archives)
    pax: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def whiteout(cls, path: str) -> TarMember:
        parent, _, name = _norm(path).rpartition("/")
        return cls(_join(parent, WHITEOUT_PREFIX + name), mode=0o644, mtime=0)

    @classmethod
    def opaque(cls, directory: str) -> TarMember:
        return cls(_join(_norm(directory), OPAQUE_MARKER), mode=0o644, mtime=0)

    @classmethod
    def hardlink(cls, path: str, target: str) -> TarMember:
        return cls(_norm(path), type=tarfile.LNKTYPE, linkname=_norm(target))

    @classmethod
    def directory(cls, path: str, **kw: object) -> TarMember:
        kw.setdefault("mode", 0o755)
        return cls(_norm(path), type=tarfile.DIRTYPE, **kw)  # type: ignore[arg-type]

    def tarinfo(self) -> tuple[tarfile.TarInfo, bytes | None]:
        name = self.name or "."
        info = tarfile.TarInfo(name)
        info.type = self.type
        info.mode = self.mode
        info.uid, info.gid = self.uid, self.gid
        info.uname = info.gname = ""
        seconds, fraction = divmod(self.mtime, NS)
        info.mtime = seconds
        pax: dict[str, str] = {}
        if fraction:
            pax["mtime"] = f"{seconds}.{fraction:09d}"
        for key, value in sorted(self.xattrs.items()):
            pax["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
        pax.update(self.pax)
        info.pax_headers = pax
        info.linkname = self.linkname
        info.devmajor, info.devminor = self.devmajor, self.devminor
        if self.type == tarfile.REGTYPE:
            info.size = len(self.data)
            return info, self.data
        return info, None


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def build_tar(members: Iterable[TarMember]) -> bytes:
    """An uncompressed PAX tar of ``members``, in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info, data = member.tarinfo()
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member_from_tree(root: Path, path: str) -> TarMember:
    """The tar member describing ``root/path`` as it is on disk."""
    full = _full(root, path)
    st = os.lstat(full)
    fmt = stat.S_IFMT(st.st_mode)
    common = {
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime": st.st_mtime_ns,
        "xattrs": read_xattrs(full),
    }
    name = path
    if fmt == stat.S_IFREG:
        with open(full, "rb") as f:
            return TarMember(name, data=f.read(), **common)  # type: ignore[arg-type]
    if fmt == stat.S_IFDIR:
        return TarMember(name, type=tarfile.DIRTYPE, **common)  # type: ignore[arg-type]
    if fmt == stat.S_IFLNK:
        return TarMember(name, type=tarfile.SYMTYPE, linkname=os.readlink(full),
                         **common)  # type: ignore[arg-type]
    if fmt == stat.S_IFIFO:
        return TarMember(name, type=tarfile.FIFOTYPE, **common)  # type: ignore[arg-type]
    if fmt in (stat.S_IFCHR, stat.S_IFBLK):
        kind = tarfile.CHRTYPE if fmt == stat.S_IFCHR else tarfile.BLKTYPE
        return TarMember(name, type=kind, devmajor=os.major(st.st_rdev),
                         devminor=os.minor(st.st_rdev), **common)  # type: ignore[arg-type]
    raise ValueError(f"{full}: a layer tar cannot hold this file type ({fmt:o})")


def walk(root: Path, path: str = "") -> Iterator[str]:
    """``path`` and everything below it, parents before children, sorted."""
    yield path
    full = _full(root, path)
    if _is_dir(full):
        for name in sorted(os.listdir(full)):
            yield from walk(root, _join(path, name))


def count_entries(root: Path) -> int:
    """Entries below ``root`` (the root itself not counted)."""
    return sum(1 for _ in walk(Path(root))) - 1


def init_reference(path: Path, root_mode: int) -> Path:
    """An empty reference tree with a fresh layer root's metadata."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 0, 0)
    os.chmod(path, root_mode)
    return path


# --- reusable trees ---------------------------------------------------------------------


def can_make_devices() -> bool:
    """Whether device nodes can be made here (root in the initial user namespace)."""
    from lamina.core.layertar.apply import can_make_devices as probe

    return probe()


def rich_base(*, devices: bool | None = None) -> Step:
    """A base layer with one of everything a layer must keep (case 13).

    A sticky directory owned 1:2 with mode 0705, a setuid file of mode 0222,
    setgid, nested and private directories, empty and 128 KiB files,
    relative, absolute and dangling symlinks, a hardlink pair, a fifo,
    device nodes (where they can be made), ``user.*`` and
    ``security.capability`` xattrs, and distinct sub-second mtimes.
    :data:`RICH_BASE_ENTRIES` says how many entries it holds.
    """
    if devices is None:
        devices = can_make_devices()
    ops: list[Op] = [
        directory("etc", mtime=T0 - 10 * NS),
        file("etc/hostname", b"lamina\n", mtime=T0 - 20 * NS),
        file("etc/empty", b"", mode=0o600, mtime=T0 - 30 * NS),
        directory("sticky", mode=0o1705, uid=1, gid=2, mtime=T0 - 40 * NS),
        file("sticky/inside", b"s" * 100, mode=0o600, uid=1, gid=2),
        file("setuid", b"#!/bin/sh\necho hi\n", mode=0o4222),
        file("setgid", b"sgid", mode=0o2755, gid=5),
        directory("a"),
        directory("empty-dir", mode=0o711, mtime=T0 - 60 * NS),
        directory("a/b", mode=0o750, uid=7, gid=8),
        directory("a/b/c", mode=0o700, uid=1000, gid=1000),
        file("a/b/c/deep", b"deep\n" * 10, uid=1000, gid=1000, mtime=T0 + 125_000_000),
        symlink("link-rel", "etc/hostname", mtime=T0 - 50 * NS),
        symlink("link-abs", "/etc/hostname", uid=3, gid=4),
        symlink("link-dangling", "../nowhere/at/all"),
        file("hard1", b"shared inode\n", mode=0o640),
        hardlink("hard2", "hard1"),
        fifo("fifo"),
        file("xattrs", b"\x7fELF", mode=0o755,
             xattrs={"user.note": b"hello", "security.capability": CAP_NET_BIND_SERVICE}),
        file("big", bytes(range(256)) * 512, mtime=T0 + 500_000_000),
    ]
    if devices:
        ops += [device("null", "c", 1, 3, mode=0o666), device("loop0", "b", 7, 0)]
    return step(*ops, name="rich base")


#: entries of :func:`rich_base` below the root, without and with device nodes
RICH_BASE_ENTRIES = (20, 22)


# --- running through a store ----------------------------------------------------------------

#: ``compare(expected_dir, actual_dir, what)`` raises AssertionError on a difference
Compare = Callable[[Path, Path, str], None]


def apply_tar_layer(store: Store, data: bytes, parent: str | None, **kw: object) -> str:
    """Apply a layer tar given as bytes; return the new layer's id."""
    return store.apply_layer(io.BytesIO(data), parent, **kw).id  # type: ignore[arg-type]


def diff_bytes(store: Store, layer_id: str) -> bytes:
    """``store.diff`` into memory; checks the returned count against what was written."""
    buf = io.BytesIO()
    written = store.diff(layer_id, buf)
    data = buf.getvalue()
    assert written == len(data), f"diff returned {written} but wrote {len(data)} bytes"
    return data


@contextlib.contextmanager
def mounted(store: Store, layer_id: str) -> Iterator[Path]:
    """The layer's mount for the duration of the block (one counted reference)."""
    path = store.mount(layer_id)
    try:
        yield Path(path)
    finally:
        store.unmount(layer_id)


def commit_step(
    store: Store, step_: Step, parent: str | None, reference: Path, compare: Compare, label: str
) -> tuple[str, bytes]:
    """Do ``step_`` in a writable layer on ``parent``, diff it and apply the diff as a new child.

    Checks the writable layer against ``reference`` (already stepped) and
    the applied child against it too; the applied size must equal the
    diff's size. Removes the writable layer; returns the child's id and the diff.
    """
    rw = store.create_layer(parent, writable=True).id
    with mounted(store, rw) as path:
        step_.apply(path)
        compare(reference, path, f"{label}: writable layer after the step")
    data = diff_bytes(store, rw)
    child = apply_tar_layer(store, data, parent)
    layer = store.layer(child)
    assert layer.size == len(data), (
        f"{label}: applying the {len(data)}-byte diff reported size {layer.size}"
    )
    store.remove_layer(rw)
    return child, data


def run_scenario(
    store: Store,
    steps: Sequence[Step],
    reference: Path,
    compare: Compare,
    *,
    fill: str,
    parent: str | None = None,
) -> list[str]:
    """Run ``steps`` through ``store``, comparing each new layer with the reference.

    ``reference`` is stepped along (start it with :func:`init_reference`, or a
    copy of the parent's expected tree). A step without operations makes a
    plain empty child (``create_layer``). Returns the layer ids, one per step.
    """
    ids: list[str] = []
    for index, step_ in enumerate(steps):
        label = f"step {index + 1}" + (f" ({step_.name})" if step_.name else "")
        step_.apply(reference)
        if not step_.ops:
            # an empty step is an empty child (applying empty tars is case 41's)
            parent = store.create_layer(parent).id
        elif fill == "tar":
            parent = apply_tar_layer(store, step_.layer_tar(reference), parent)
        elif fill == "commit":
            parent, _ = commit_step(store, step_, parent, reference, compare, label)
        else:
            raise ValueError(f"fill is 'tar' or 'commit', not {fill!r}")
        ids.append(parent)
        with mounted(store, parent) as path:
            compare(reference, path, f"{label}: layer {parent} ({fill})")
    return ids


def errno_of(call: Callable[[], object]) -> int | None:
    """Run ``call``; return the errno of the OSError it raised, or None if it succeeded."""
    try:
        call()
    except OSError as exc:
        return exc.errno
    return None

