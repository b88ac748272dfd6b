"""The mutants: :class:`VfsDriver` subclasses, each broken in one way a real driver could be.

Every class keeps vfs's capabilities (unless the bug is a false promise of
one), so the suite expects vfs behaviour and must notice the one difference.
Class docstrings say what is broken; :data:`MUTANTS` lists them by class name.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

from lamina.core.driver import ApplyResult, Capabilities, LayerViews, Option
from lamina.core.errors import StoreClosed
from lamina.core.layertar.apply import apply_tar
from lamina.drivers.vfs import VfsDriver

NS = 1_000_000_000
#: xattrs that are layer content (the ones a careless copy drops)
_CONTENT_XATTRS = ("user.", "security.capability")


def _walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below ``root`` and ``root`` itself, children first, following nothing."""
    base = os.fspath(root)
    pending = [base]
    seen: list[tuple[str, os.stat_result]] = []
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as it:
            for item in it:
                st = item.stat(follow_symlinks=False)
                seen.append((item.path, st))
                if stat.S_ISDIR(st.st_mode):
                    pending.append(item.path)
    seen.reverse()
    yield from seen
    yield base, os.lstat(base)


class _ApplyThenMangle(VfsDriver):
    """A vfs whose apply (and optionally create) post-processes the layer's tree."""

    #: also mangle the copy a child gets of its parent at create
    mangle_on_create: ClassVar[bool] = False

    def mangle(self, root: Path) -> None:
        raise NotImplementedError

    def create(self, layer_id: str, parents: Sequence[str], *, writable: bool) -> None:
        super().create(layer_id, parents, writable=writable)
        if self.mangle_on_create and parents:
            self.mangle(self._dir(layer_id))

    def apply(
        self, layer_id: str, parents: Sequence[str], stream: IO[bytes], views: LayerViews
    ) -> ApplyResult:
        result = super().apply(layer_id, parents, stream, views)
        self.mangle(self._dir(layer_id))
        return result


# --- whiteouts -----------------------------------------------------------------------


class _NoDeletions:
    """A whiteout strategy that records nothing: lower entries stay visible."""

    create_parents: ClassVar[bool] = False

    def whiteout(self, dir_fd: int, name: str) -> None:
        pass

    def opaque(self, dir_fd: int, dir_path: str) -> None:
        pass


class _NoOpaque(_NoDeletions):
    """Honours ``.wh.<name>`` but not the opaque marker."""

    def whiteout(self, dir_fd: int, name: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode):
                shutil.rmtree(name, dir_fd=dir_fd)
            else:
                os.unlink(name, dir_fd=dir_fd)


class IgnoresWhiteouts(VfsDriver):
    """Applies ``.wh.`` whiteouts and opaque markers as nothing: deleted files come back."""

    name: ClassVar[str] = "mutant-whiteouts"

    def apply(
        self, layer_id: str, parents: Sequence[str], stream: IO[bytes], views: LayerViews
    ) -> ApplyResult:
        with views.populate(layer_id) as path:
            return apply_tar(stream, path, whiteouts=_NoDeletions())


class IgnoresOpaque(VfsDriver):
    """Deletes for ``.wh.<name>`` but ignores opaque markers: `rm -rf d; mkdir d` leaks old d."""

    name: ClassVar[str] = "mutant-opaque"

    def apply(
        self, layer_id: str, parents: Sequence[str], stream: IO[bytes], views: LayerViews
    ) -> ApplyResult:
        with views.populate(layer_id) as path:
            return apply_tar(stream, path, whiteouts=_NoOpaque())


# --- metadata lost on copy or apply --------------------------------------------------------


class DropsXattrs(_ApplyThenMangle):
    """Loses ``user.*`` and ``security.capability`` xattrs when it copies or applies a layer."""

    name: ClassVar[str] = "mutant-xattrs"
    mangle_on_create = True

    def mangle(self, root: Path) -> None:
        for path, _ in _walk(root):
            for key in os.listxattr(path, follow_symlinks=False):
                if key.startswith(_CONTENT_XATTRS):
                    os.removexattr(path, key, follow_symlinks=False)


class DropsSetuid(_ApplyThenMangle):
    """Clears setuid and setgid bits of files it applies (as a careless chown would)."""

    name: ClassVar[str] = "mutant-setuid"

    def mangle(self, root: Path) -> None:
        for path, st in _walk(root):
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o6000:
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o6000)


class LosesHardlinks(_ApplyThenMangle):
    """Copies instead of linking: every name of a hardlinked file becomes its own inode."""

    name: ClassVar[str] = "mutant-hardlinks"
    mangle_on_create = True

    def mangle(self, root: Path) -> None:
        for path, st in _walk(root):
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                _unshare(path, st)


def _unshare(path: str, st: os.stat_result) -> None:
    """Replace ``path`` by a copy with the same content and metadata (a new inode)."""
    xattrs = {k: os.getxattr(path, k) for k in os.listxattr(path)}
    tmp = path + ".mutant-copy"
    with open(path, "rb") as src:
        data = src.read()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        for key, value in xattrs.items():
            os.setxattr(fd, key, value)
    finally:
        os.close(fd)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(tmp, path)


class RoundsMtimes(_ApplyThenMangle):
    """Declares whole-second mtimes, but rounds to the nearest second instead of truncating."""

    name: ClassVar[str] = "mutant-round-mtimes"
    capabilities: ClassVar[Capabilities] = VfsDriver.capabilities._replace(subsecond_mtime=False)

    def mangle(self, root: Path) -> None:
        for path, st in _walk(root):
            rounded = (st.st_mtime_ns + NS // 2) // NS * NS
            os.utime(path, ns=(st.st_atime_ns, rounded), follow_symlinks=False)


class TruncatesMtimes(_ApplyThenMangle):
    """Declares sub-second mtimes but keeps whole seconds of what it applies."""

    name: ClassVar[str] = "mutant-truncate-mtimes"

    def mangle(self, root: Path) -> None:
        for path, st in _walk(root):
            whole = st.st_mtime_ns // NS * NS
            os.utime(path, ns=(st.st_atime_ns, whole), follow_symlinks=False)


# --- views and mounts -------------------------------------------------------------------


class ReadOnlyAcceptsWrites(VfsDriver):
    """Hands out the layer's own writable directory for read-only mounts."""

    name: ClassVar[str] = "mutant-readonly"

    def mount(self, layer_id: str, parents: Sequence[str], *, readonly: bool) -> Path:
        return super().mount(layer_id, parents, readonly=False)


class LeaksMounts(VfsDriver):
    """``unmount`` does nothing: every read-only bind mount stays."""

    name: ClassVar[str] = "mutant-leaks-mounts"

    def unmount(self, layer_id: str) -> None:
        pass


class WritesReachParent(VfsDriver):
    """A writable child's mount is its parent's directory: writes land in the parent."""

    name: ClassVar[str] = "mutant-shared-parent"

    def mount(self, layer_id: str, parents: Sequence[str], *, readonly: bool) -> Path:
        if readonly or not parents or not self.exists(layer_id):
            return super().mount(layer_id, parents, readonly=readonly)
        return self._dir(parents[0])


class WrongRootMode(VfsDriver):
    """Makes new roots 0700 while declaring ``root_mode=0o755``."""

    name: ClassVar[str] = "mutant-root-mode"

    def create(self, layer_id: str, parents: Sequence[str], *, writable: bool) -> None:
        super().create(layer_id, parents, writable=writable)
        if not parents:
            os.chmod(self._dir(layer_id), 0o700)


class ForgetsLayersOnRestart(VfsDriver):
    """Knows its layers from memory only: a new instance on the same home sees none."""

    name: ClassVar[str] = "mutant-amnesia"

    def __init__(self, home: Path, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(home, options)
        self._known: set[str] = set()

    def create(self, layer_id: str, parents: Sequence[str], *, writable: bool) -> None:
        super().create(layer_id, parents, writable=writable)
        self._known.add(layer_id)

    def remove(self, layer_id: str) -> None:
        super().remove(layer_id)
        self._known.discard(layer_id)

    def exists(self, layer_id: str) -> bool:
        return layer_id in self._known and super().exists(layer_id)


class RemoveKeepsLayer(VfsDriver):
    """``remove`` forgets nothing: the layer's directory, and so ``exists``, stay."""

    name: ClassVar[str] = "mutant-remove-keeps"

    def remove(self, layer_id: str) -> None:
        self._check_open()
        if not self.exists(layer_id):
            raise self._not_found(layer_id)


class IgnoresQuota(VfsDriver):
    """Promises quotas (``quota=True`` and a ``size`` option) and enforces none."""

    name: ClassVar[str] = "mutant-no-quota"
    capabilities: ClassVar[Capabilities] = VfsDriver.capabilities._replace(quota=True)
    options: ClassVar[Mapping[str, Option]] = {
        **VfsDriver.options,
        "size": Option(str, 'most bytes a writable layer may hold, like "10G" (ignored)'),
    }


class IgnoresLayerQuota(VfsDriver):
    """Promises per-layer quotas (``layer_quota=True``, a ``size`` layer option), enforces none."""

    name: ClassVar[str] = "mutant-no-layer-quota"
    capabilities: ClassVar[Capabilities] = VfsDriver.capabilities._replace(layer_quota=True)
    layer_options: ClassVar[Mapping[str, Option]] = {
        "size": Option(str, 'most bytes this writable layer may add, like "10G" (ignored)'),
    }

    def create(self, layer_id: str, parents: Sequence[str], *, writable: bool,
               options: Mapping[str, str] | None = None) -> None:
        super().create(layer_id, parents, writable=writable)


class CreatesOrphans(VfsDriver):
    """Creates a layer on a missing parent as if it had none, instead of LayerNotFound."""

    name: ClassVar[str] = "mutant-orphans"

    def create(self, layer_id: str, parents: Sequence[str], *, writable: bool) -> None:
        if parents and not self.exists(parents[0]):
            parents = []
        super().create(layer_id, parents, writable=writable)


class CloseTwiceFails(VfsDriver):
    """``close`` is not idempotent: the second call raises."""

    name: ClassVar[str] = "mutant-close-twice"

    def close(self) -> None:
        if self.closed:
            raise StoreClosed("the driver is closed already")
        super().close()


class StatusWithoutBackingFs(VfsDriver):
    """``status`` leaves out the backing filesystem that `lamina info` must show."""

    name: ClassVar[str] = "mutant-status"

    def status(self) -> list[tuple[str, str]]:
        return [(key, value) for key, value in super().status() if "backing" not in key.lower()]


# --- export -------------------------------------------------------------------------------


class NondeterministicDiff(VfsDriver):
    """Each diff ends with one more zero block than the last: valid tars, different bytes."""

    name: ClassVar[str] = "mutant-nondeterministic"

    def __init__(self, home: Path, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(home, options)
        self._calls = 0

    def diff(
        self, layer_id: str, parents: Sequence[str], out: IO[bytes], views: LayerViews
    ) -> int:
        written = super().diff(layer_id, parents, out, views)
        padding = bytes(512 * self._calls)
        self._calls += 1
        out.write(padding)
        return written + len(padding)


class ExportsCharDeviceWhiteouts(VfsDriver):
    """Exports deletions as overlay's 0/0 character devices instead of ``.wh.`` files."""

    name: ClassVar[str] = "mutant-chardev-whiteouts"

    def diff(
        self, layer_id: str, parents: Sequence[str], out: IO[bytes], views: LayerViews
    ) -> int:
        buf = io.BytesIO()
        super().diff(layer_id, parents, buf, views)
        data = _whiteouts_as_devices(bytearray(buf.getvalue()))
        out.write(data)
        return len(data)


def _whiteouts_as_devices(data: bytearray) -> bytes:
    """Rewrite each ``.wh.<name>`` member (plain ustar name) as a 0/0 char device ``<name>``."""
    pos = 0
    while pos + 512 <= len(data) and any(data[pos:pos + 512]):
        header = data[pos:pos + 512]
        size = int(bytes(header[124:136]).rstrip(b"\0 ") or b"0", 8)
        name = bytes(header[0:100]).rstrip(b"\0")
        head, _, leaf = name.rpartition(b"/")
        if header[156:157] == b"0" and leaf.startswith(b".wh.") and leaf != b".wh..wh..opq":
            new = (head + b"/" if head else b"") + leaf[4:]
            header[0:100] = new.ljust(100, b"\0")
            header[156:157] = b"3"
            header[329:337] = b"0000000\0"
            header[337:345] = b"0000000\0"
            header[148:156] = b" " * 8
            header[148:156] = b"%06o\0 " % sum(header)
            data[pos:pos + 512] = header
        pos += 512 + (size + 511) // 512 * 512
    return bytes(data)


MUTANTS: dict[str, type[VfsDriver]] = {
    cls.__name__: cls
    for cls in (
        IgnoresWhiteouts, IgnoresOpaque, DropsXattrs, DropsSetuid, LosesHardlinks,
        RoundsMtimes, TruncatesMtimes, ReadOnlyAcceptsWrites, LeaksMounts, WritesReachParent,
        WrongRootMode, ForgetsLayersOnRestart, RemoveKeepsLayer, IgnoresQuota, IgnoresLayerQuota,
        CreatesOrphans,
        CloseTwiceFails,
        StatusWithoutBackingFs, NondeterministicDiff, ExportsCharDeviceWhiteouts,
    )
}

__all__ = ["MUTANTS", *MUTANTS]
