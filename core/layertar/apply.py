"""Applying an OCI layer tar to a directory without ever writing outside it.

Every path of the tar is resolved one component at a time from open
directory fds (``O_PATH|O_NOFOLLOW|O_DIRECTORY``), so no string check can be
raced or fooled. A symlink met on the way (``var/run -> /run``) is followed
by resolving its target ourselves against the root, ``..`` stopping at the
root as in a chroot, with a hop limit (a loop is an error, never a hang).
The last component is never followed: entries are created with
``O_EXCL``/``O_NOFOLLOW`` and their metadata set on fds or with
``follow_symlinks=False``.

Choices:

* Leading ``/`` is stripped; a ``..`` that would climb above the root is
  :class:`~lamina.core.errors.UnsafeArchive`, as is any attempt to make the
  root something else than a directory. ``.`` as a directory sets the root's
  metadata.
* Owners are numeric only (never looked up in the image).
* xattrs: ``user.*`` and ``security.capability`` are kept; ``trusted.overlay.*``
  is refused (UnsafeArchive: an overlay redirect from a layer could point
  anywhere); every other namespace (``security.selinux``, ``trusted.*``,
  ``system.*``) is dropped with a warning: labels belong to the host.
* Device nodes are made only by root in the initial user namespace (else
  skipped with a warning); a major/minor Linux cannot encode is refused.
* Order per entry: create, content, chown, chmod, xattrs, mtime (chown clears
  setuid bits and ``security.capability``). Directory mtimes are set at the
  end, after all their children. A new node is created with its final
  permission bits when the umask lets them through (no setuid, setgid or
  sticky bit; a directory only in a parent without setgid, whose bit mkdir
  copies), and its chown is skipped when it is born with the entry's
  owner (our euid/egid, in a directory of this layer without setgid): two
  syscalls fewer for most files, the same result.
* Duplicates: an existing non-directory is replaced; a directory over a
  directory merges metadata; a directory replaced by anything else is
  removed with its tree.
* Whiteouts (``.wh.<name>``, ``.wh..wh..opq``) go through a :class:`Whiteouts`
  strategy; they never apply to what the same layer created, whatever the
  order in the tar (OCI image spec).
* Hardlink entries link the target's inode (a symlink target is linked
  itself); their header metadata is not applied, as GNU tar does: the inode
  got its metadata from its own entry.
* Parents the tar does not list are made with mode 0755 (as docker does).
  An opaque marker's directory is made if missing; a plain whiteout's parent
  only if the strategy asks (:attr:`Whiteouts.create_parents`).
* AUFS bookkeeping entries (``.wh..wh.plnk/...`` at the top) are skipped.
* Errors: the archive's faults are :class:`UnsafeArchive`,
  :class:`CorruptArchive` or :class:`ArchiveLimit` (EFBIG too); a full disk
  or quota is :class:`NoSpace`, any other OSError (EIO ...) a :class:`DriverError`,
  each naming the entry.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
from collections.abc import Callable, Container
from pathlib import Path
from typing import IO, ClassVar, Protocol

from ..errors import (
    ArchiveLimit,
    CorruptArchive,
    DriverError,
    LaminaError,
    UnsafeArchive,
    host_error,
)
from ..host.treecopy import remove_at
from . import ApplyResult
from .reader import CHAR, DIR, FIFO, FILE, HARDLINK, SYMLINK, TarEntry, TarReader

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: prefix of AUFS bookkeeping entries (``.wh..wh.plnk`` ...): skipped, never applied
AUFS_META_PREFIX = ".wh..wh."

#: symlinks followed while resolving one path (Linux uses 40 too)
MAX_SYMLINK_HOPS = 40
#: directory fds kept open between entries
MAX_CACHED_DIRS = 256
#: largest device numbers Linux encodes (12-bit major, 20-bit minor)
MAX_MAJOR = (1 << 12) - 1
MAX_MINOR = (1 << 20) - 1

_DIR_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_READ_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_KEPT_XATTR_PREFIXES = ("user.",)
_KEPT_XATTRS = frozenset({"security.capability"})
_REFUSED_XATTR_PREFIXES = ("trusted.overlay.",)


# --- whiteouts ------------------------------------------------------------------------


class Whiteouts(Protocol):
    """How a layer's deletions are recorded; one strategy per kind of driver.

    The applier validates whiteout names and resolves their directory safely,
    then calls the strategy with an open directory fd (an ``O_PATH`` fd:
    use it as ``dir_fd``). Whiteouts never concern entries of the same layer:
    the applier does not call :meth:`whiteout` for a name the layer created.
    """

    #: create missing parent directories of a whiteout (an overlay upper dir
    #: needs them to hold its markers; a merged view has nothing to delete there)
    create_parents: ClassVar[bool]

    def whiteout(self, dir_fd: int, name: str) -> None:
        """Hide ``name`` of the layers below (it may not exist)."""
        ...

    def opaque(self, dir_fd: int, dir_path: str) -> None:
        """Hide everything the layers below have in this directory.

        ``dir_path`` is the directory's path relative to the root ("" for the
        root), with symlinks resolved.
        """
        ...


class MergedWhiteouts:
    """Whiteouts for a root that is the merged view of the layer (vfs, a populate view).

    ``.wh.<name>`` deletes ``<name>`` and its tree; an opaque marker deletes
    every entry of the directory that ``mine`` (the paths this layer made, and
    their ancestors) does not hold, recursively. Nothing is followed.
    """

    create_parents: ClassVar[bool] = False

    def __init__(self, mine: Container[str]) -> None:
        self.mine = mine

    def whiteout(self, dir_fd: int, name: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            remove_at(dir_fd, name)

    def opaque(self, dir_fd: int, dir_path: str) -> None:
        pending = [(os.open(".", _READ_DIR_FLAGS, dir_fd=dir_fd), dir_path)]
        try:
            while pending:
                fd, path = pending.pop()
                try:
                    for name in os.listdir(fd):
                        child = f"{path}/{name}" if path else name
                        if child not in self.mine:
                            remove_at(fd, name)
                            continue
                        try:
                            sub = os.open(name, _READ_DIR_FLAGS, dir_fd=fd)
                        except OSError as exc:
                            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                                continue  # a file (or symlink) of this layer: kept
                            raise
                        pending.append((sub, child))
                finally:
                    os.close(fd)
        finally:
            for fd, _ in pending:
                os.close(fd)


# --- the applier ----------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def can_make_devices() -> bool:
    """Whether mknod of real devices can work: root in the initial user namespace."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            fields = f.read().split()
    except OSError:
        return False
    return fields == ["0", "0", "4294967295"]


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` would, for a
    moment, for every thread)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777  # unknown: never trust a create mode, always chmod


def _join(parts: tuple[str, ...]) -> str:
    return "/".join(parts)


def clean_path(path: str) -> list[str]:
    """Components of an entry path, lexically cleaned; UnsafeArchive above the root."""
    if path.startswith("./"):
        path = path[2:]
    parts = path.strip("/").split("/")
    if "" not in parts and "." not in parts and ".." not in parts:
        return parts  # the common case: nothing to clean
    parts = []
    for part in path.split("/"):
        if part == "" or part == ".":
            continue
        if part == "..":
            if not parts:
                raise UnsafeArchive(path, "the path leads outside the root ('..')")
            parts.pop()
        else:
            parts.append(part)
    return parts


class _Applier:
    """State of one apply: the root fd, cached directory fds, what the layer made."""

    def __init__(self, root: Path, whiteouts: Whiteouts | None) -> None:
        self.root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        #: logical directory path -> (fd, real path components); fds owned here
        self.dirs: dict[str, tuple[int, tuple[str, ...]]] = {}
        #: real paths made by this layer, and all their ancestors
        self.mine: set[str] = {""}
        #: real path of each directory entry -> mtime (set at the end)
        self.dir_times: dict[str, int] = {}
        self.whiteouts: Whiteouts = whiteouts or MergedWhiteouts(self.mine)
        self.devices = can_make_devices()
        self.dropped_xattrs: set[str] = set()
        self.skipped_devices = 0
        #: fds no longer cached but maybe still in use by the current entry
        self.retired: list[int] = []
        #: real paths of directories this apply made or set, without setgid: a node
        #: made in one is born ours (euid/egid), so a chown to that is not needed
        self.plain_dirs: set[str] = set()
        self._note_setgid("", os.fstat(self.root_fd).st_mode)
        self.euid, self.egid = os.geteuid(), os.getegid()
        #: permission bits the umask removes from a create mode
        self.umask = current_umask()

    def close(self) -> None:
        self.forget_dirs()
        self.close_retired()
        os.close(self.root_fd)

    def forget_dirs(self) -> None:
        """Empty the directory cache: a directory or symlink went away.

        The fds stay open until the current entry is done (:meth:`close_retired`),
        so an fd the entry holds stays valid.
        """
        self.retired.extend({fd for fd, _ in self.dirs.values()})
        self.dirs.clear()

    def close_retired(self) -> None:
        for fd in self.retired:
            os.close(fd)
        self.retired.clear()

    def _mark_mine(self, real: str) -> None:
        while real not in self.mine:
            self.mine.add(real)
            real = real.rpartition("/")[0]

    # -- resolving ---------------------------------------------------------------------

    def _keep(self, key: str, fd: int, real: tuple[str, ...]) -> bool:
        """Cache ``fd`` for ``key`` if there is room; True when the cache owns it now."""
        if len(self.dirs) < MAX_CACHED_DIRS and key not in self.dirs:
            self.dirs[key] = (fd, real)
            return True
        return False

    def _open_real(self, real: tuple[str, ...], entry: str) -> int:
        """A new fd for a real (symlink-free) path inside the root."""
        fd = os.open(".", _DIR_FLAGS, dir_fd=self.root_fd)
        for part in real:
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise UnsafeArchive(entry, f"the tree changed while resolving: {exc}") from None
            finally:
                os.close(fd)
            fd = nfd
        return fd

    def resolve_dir(
        self, parts: list[str], entry: str, *, create: bool = True
    ) -> tuple[int, tuple[str, ...]] | None:
        """The fd and real path of directory ``parts``, never leaving the root.

        Missing directories are made (mode 0755) when ``create``, else the
        result is None, as it is for a component that is not a directory
        then. The returned fd belongs to the cache or is the root fd: do not
        close it.
        """
        i = len(parts)
        hit = None
        while i:
            hit = self.dirs.get("/".join(parts[:i]))
            if hit is not None:
                break
            i -= 1
        fd, real = hit if hit is not None else (self.root_fd, ())
        owned = False  # whether fd must be closed when we move on
        # a stack of (component, cache key once it is resolved); symlink targets are
        # pushed with no key, followed by a marker (None, key) for the link itself
        todo: list[tuple[str | None, str | None]] = [
            (parts[j], "/".join(parts[: j + 1])) for j in range(len(parts) - 1, i - 1, -1)
        ]
        hops = 0
        try:
            while todo:
                name, key = todo.pop()
                if name is None:
                    if key is not None and owned and self._keep(key, fd, real):
                        owned = False
                    continue
                if name == "" or name == ".":
                    continue
                if name == "..":
                    if real:
                        real = real[:-1]
                        nfd = self._open_real(real, entry) if real else self.root_fd
                        if owned:
                            os.close(fd)
                        fd, owned = nfd, bool(real)
                    continue
                try:
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        return None
                    nfd = self._mkdir_implicit(fd, name, real)
                except (NotADirectoryError, OSError) as exc:
                    if not isinstance(exc, NotADirectoryError) and exc.errno != errno.ELOOP:
                        raise
                    try:
                        target = os.readlink(name, dir_fd=fd)
                    except OSError:
                        if not create:
                            return None
                        where = _join((*real, name))
                        raise UnsafeArchive(entry, f"{where!r} is not a directory") from None
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise UnsafeArchive(
                            entry, "too many levels of symbolic links (ELOOP)"
                        ) from None
                    todo.append((None, key))
                    todo.extend((part, None) for part in reversed(target.split("/")))
                    if target.startswith("/"):
                        if owned:
                            os.close(fd)
                        fd, real, owned = self.root_fd, (), False
                    continue
                if owned:
                    os.close(fd)
                fd, real, owned = nfd, (*real, name), True
                if key is not None and self._keep(key, fd, real):
                    owned = False
            if owned:  # not cacheable: valid until the entry is done
                self.retired.append(fd)
                owned = False
            return fd, real
        finally:
            if owned:
                os.close(fd)

    def _mkdir_implicit(self, dir_fd: int, name: str, real: tuple[str, ...]) -> int:
        """A parent the tar does not list: 0755, owned by us, like docker makes it."""
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        fd = os.open(name, _READ_DIR_FLAGS, dir_fd=dir_fd)
        os.fchmod(fd, 0o755)
        path = _join((*real, name))
        self._mark_mine(path)
        self._note_setgid(path, 0o755)
        return fd

    # -- entries ---------------------------------------------------------------------------

    def apply(self, entry: TarEntry, reader: TarReader) -> None:
        parts = clean_path(entry.path)
        if len(self.dirs) >= MAX_CACHED_DIRS:
            self.forget_dirs()
        if self.retired:
            self.close_retired()
        if not parts:
            self._root_entry(entry)
            return
        name = parts[-1]
        if parts[0].startswith(AUFS_META_PREFIX) and parts != [OPAQUE_MARKER]:
            return  # AUFS bookkeeping (.wh..wh.plnk ...), as docker skips it
        if name.startswith(WHITEOUT_PREFIX):
            self._whiteout(entry, parts)
            return
        if len(parts) == 1:
            dir_fd, real, parent = self.root_fd, name, ""
            real_dir: tuple[str, ...] = ()
        else:
            # the common case: the parent is in the cache (what resolve_dir looks up first)
            resolved = self.dirs.get("/".join(parts[:-1])) or self.resolve_dir(
                parts[:-1], entry.path
            )
            assert resolved is not None
            dir_fd, real_dir = resolved
            parent = _join(real_dir)
            real = f"{parent}/{name}" if real_dir else name
        # a node made in a directory without setgid is born ours (euid/egid) and a
        # new directory there does not inherit the setgid bit
        plain_parent = parent in self.plain_dirs
        born_owned = plain_parent and entry.uid == self.euid and entry.gid == self.egid
        kind = entry.kind
        if kind == FILE:
            self._file(entry, reader, dir_fd, name, real, born_owned)
        elif kind == DIR:
            self._dir(entry, parts, dir_fd, name, real, real_dir, plain_parent, born_owned)
        elif kind == SYMLINK:
            self._symlink(entry, dir_fd, name, real, born_owned)
        elif kind == HARDLINK:
            self._hardlink(entry, dir_fd, name, real)
        else:
            self._node(entry, dir_fd, name, real)
        mine = self.mine
        while real not in mine:  # the entry and its ancestors are this layer's
            mine.add(real)
            real = real.rpartition("/")[0]

    def _root_entry(self, entry: TarEntry) -> None:
        if entry.kind != DIR:
            raise UnsafeArchive(entry.path, "refusing to change the type of the root")
        fd = os.open(".", _READ_DIR_FLAGS, dir_fd=self.root_fd)
        try:
            self._fd_metadata(fd, entry)
        finally:
            os.close(fd)
        self._note_setgid("", entry.mode)
        self.dir_times[""] = entry.mtime_ns

    def _make_room(self, dir_fd: int, name: str, real: str, *, for_dir: bool) -> bool:
        """An entry exists where a new one goes: remove it unless dir meets dir.

        Returns True when the existing entry is a directory kept for merging.
        """
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            if for_dir:
                return True
            self.forget_dirs()
            remove_at(dir_fd, name)
            prefix = real + "/"
            for path in [p for p in self.dir_times if p == real or p.startswith(prefix)]:
                del self.dir_times[path]
            return False
        if stat.S_ISLNK(st.st_mode):
            self.forget_dirs()  # cached paths may lead through the link
        os.unlink(name, dir_fd=dir_fd)
        self.dir_times.pop(real, None)
        return False

    def _create_mode(self, mode: int, private: int) -> int:
        """``mode`` when creating with it yields exactly it, else ``private``."""
        return mode if not (mode & (0o7000 | self.umask)) else private

    def _file(
        self,
        entry: TarEntry,
        reader: TarReader,
        dir_fd: int,
        name: str,
        real: str,
        born_owned: bool,
    ) -> None:
        mode = entry.mode
        create_mode = self._create_mode(mode, 0o600)
        try:
            fd = os.open(name, _NEW_FILE_FLAGS, create_mode, dir_fd=dir_fd)
        except FileExistsError:
            self._make_room(dir_fd, name, real, for_dir=False)
            fd = os.open(name, _NEW_FILE_FLAGS, create_mode, dir_fd=dir_fd)
        try:
            write = os.write
            if entry.sparse is not None:
                pwrite = os.pwrite
                for offset, view in reader.chunks():
                    while view:
                        done = pwrite(fd, view, offset)
                        view = view[done:]
                        offset += done
                os.ftruncate(fd, entry.size)
            elif (view := reader.content()) is not None:  # a small file: usually one write
                while view:
                    view = view[write(fd, view) :]
            else:
                for _, view in reader.chunks():
                    while view:
                        view = view[write(fd, view) :]
            self._fd_metadata(fd, entry, chown=not born_owned, chmod=create_mode != mode)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)

    def _fd_metadata(
        self, fd: int, entry: TarEntry, *, chown: bool = True, chmod: bool = True
    ) -> None:
        """Owner, mode and xattrs through ``fd``; ``chown``/``chmod`` False when the
        node was born with them.

        A capability goes after a chown and a chmod, always: a FUSE filesystem with
        writeback caching (fuse-overlayfs) may push a file's data later than it was
        written, and a data write clears security.capability; a setattr makes the
        kernel flush that data first (the example driver's case 37 shows it).
        """
        xattrs = self._xattrs(entry) if entry.xattrs else ()
        capability = any(key == "security.capability" for key, _ in xattrs)
        if chown or capability:
            os.fchown(fd, entry.uid, entry.gid)
        if chmod or capability:
            os.fchmod(fd, entry.mode)
        for key, value in xattrs:
            os.setxattr(fd, key, value)

    def _note_setgid(self, real: str, mode: int) -> None:
        """Keep :attr:`plain_dirs` true for the directory ``real`` that now has ``mode``."""
        if mode & stat.S_ISGID:
            self.plain_dirs.discard(real)
        else:
            self.plain_dirs.add(real)

    def _xattrs(self, entry: TarEntry) -> list[tuple[str, bytes]]:
        kept = []
        for key, value in entry.xattrs.items():
            if key in _KEPT_XATTRS or key.startswith(_KEPT_XATTR_PREFIXES):
                kept.append((key, value))
            elif key.startswith(_REFUSED_XATTR_PREFIXES):
                raise UnsafeArchive(
                    entry.path,
                    f"the xattr {key!r} is reserved to overlayfs and never taken from a layer",
                )
            else:
                self.dropped_xattrs.add(key)
        return kept

    def _dir(
        self,
        entry: TarEntry,
        parts: list[str],
        dir_fd: int,
        name: str,
        real: str,
        real_dir: tuple[str, ...],
        plain_parent: bool,
        born_owned: bool,
    ) -> None:
        mode = entry.mode
        create_mode = self._create_mode(mode, 0o700)
        # in a setgid directory mkdir adds the setgid bit: chmod there whatever the mode
        chmod = create_mode != mode or not plain_parent
        try:
            os.mkdir(name, create_mode, dir_fd=dir_fd)
        except FileExistsError:
            if self._make_room(dir_fd, name, real, for_dir=True):
                born_owned = False  # an existing directory: set everything
                chmod = True
            else:
                os.mkdir(name, create_mode, dir_fd=dir_fd)
        fd = os.open(name, _READ_DIR_FLAGS, dir_fd=dir_fd)
        try:
            self._fd_metadata(fd, entry, chown=not born_owned, chmod=chmod)
        except BaseException:
            os.close(fd)
            raise
        self._note_setgid(real, mode)
        self.dir_times[real] = entry.mtime_ns
        if not self._keep("/".join(parts), fd, (*real_dir, name)):
            os.close(fd)

    def _symlink(
        self, entry: TarEntry, dir_fd: int, name: str, real: str, born_owned: bool
    ) -> None:
        try:
            os.symlink(entry.linkname, name, dir_fd=dir_fd)
        except FileExistsError:
            self._make_room(dir_fd, name, real, for_dir=False)
            os.symlink(entry.linkname, name, dir_fd=dir_fd)
        self._path_metadata(entry, dir_fd, name, chmod=False, chown=not born_owned)

    def _path_metadata(
        self, entry: TarEntry, dir_fd: int, name: str, *, chmod: bool, chown: bool = True
    ) -> None:
        """Metadata of a node we cannot open for writing (symlink, fifo, device)."""
        if chown:
            os.chown(name, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=False)
        if chmod:
            # Linux has no lchmod: chmod the node through an O_PATH fd of it
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                if stat.S_ISLNK(os.fstat(fd).st_mode):
                    raise UnsafeArchive(entry.path, "the node turned into a symlink")
                os.chmod(f"/proc/self/fd/{fd}", entry.mode)
            finally:
                os.close(fd)
        if entry.xattrs:
            path = f"/proc/self/fd/{dir_fd}/{name}"
            for key, value in self._xattrs(entry):
                try:
                    os.setxattr(path, key, value, follow_symlinks=False)
                except PermissionError:
                    # user.* xattrs exist only on files and directories
                    self.dropped_xattrs.add(key)
        os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)

    def _hardlink(self, entry: TarEntry, dir_fd: int, name: str, real: str) -> None:
        try:
            target_parts = clean_path(entry.linkname)
        except UnsafeArchive:
            raise UnsafeArchive(
                entry.path, f"the hardlink target {entry.linkname!r} leads outside the root"
            ) from None
        if not target_parts:
            raise UnsafeArchive(entry.path, "a hardlink to the root")
        resolved = self.resolve_dir(target_parts[:-1], entry.path, create=False)
        if resolved is None:
            raise CorruptArchive(
                f"hardlink {entry.path!r} points to {entry.linkname!r}, which does not exist"
            )
        target_fd, target_dir = resolved
        target_name = target_parts[-1]
        target_real = _join((*target_dir, target_name))
        if target_real == real:
            return  # a link to itself: already there
        for attempt in (1, 2):
            try:
                os.link(
                    target_name,
                    name,
                    src_dir_fd=target_fd,
                    dst_dir_fd=dir_fd,
                    follow_symlinks=False,
                )
                return
            except FileExistsError:
                if attempt == 2:
                    raise
                self._make_room(dir_fd, name, real, for_dir=False)
            except FileNotFoundError:
                raise CorruptArchive(
                    f"hardlink {entry.path!r} points to {entry.linkname!r}, which does not exist"
                ) from None
            except PermissionError:
                st = os.stat(target_name, dir_fd=target_fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise UnsafeArchive(entry.path, "a hardlink to a directory") from None
                raise

    def _node(self, entry: TarEntry, dir_fd: int, name: str, real: str) -> None:
        if entry.kind == FIFO:

            def make() -> None:
                os.mkfifo(name, 0o600, dir_fd=dir_fd)
        else:
            if entry.devmajor > MAX_MAJOR or entry.devminor > MAX_MINOR:
                raise UnsafeArchive(
                    entry.path,
                    f"device number {entry.devmajor}:{entry.devminor} is out of range",
                )
            if not self.devices:
                self.skipped_devices += 1
                return
            kind = stat.S_IFCHR if entry.kind == CHAR else stat.S_IFBLK
            device = os.makedev(entry.devmajor, entry.devminor)

            def make() -> None:
                os.mknod(name, kind | 0o600, device, dir_fd=dir_fd)

        try:
            make()
        except FileExistsError:
            self._make_room(dir_fd, name, real, for_dir=False)
            make()
        self._path_metadata(entry, dir_fd, name, chmod=True)

    def _whiteout(self, entry: TarEntry, parts: list[str]) -> None:
        name = parts[-1]  # any entry type counts, as in docker: only the name matters
        if name == OPAQUE_MARKER:
            resolved = self.resolve_dir(parts[:-1], entry.path)
            assert resolved is not None
            dir_fd, real_dir = resolved
            self.forget_dirs()
            self.whiteouts.opaque(dir_fd, _join(real_dir))
            return
        target = name[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", "..") or name.startswith(AUFS_META_PREFIX):
            raise UnsafeArchive(entry.path, "invalid whiteout name")
        resolved = self.resolve_dir(parts[:-1], entry.path, create=self.whiteouts.create_parents)
        if resolved is None:
            return  # the parent is gone or is not a directory: nothing to hide
        dir_fd, real_dir = resolved
        real = f"{_join(real_dir)}/{target}" if real_dir else target
        if real in self.mine:
            return  # whiteouts hide lower layers only, never this layer's entries
        try:
            st = os.stat(target, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        except NotADirectoryError:
            return
        if st is not None and (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            self.forget_dirs()  # cached fds may point into (or through) what goes away
        self.whiteouts.whiteout(dir_fd, target)

    # -- the end ---------------------------------------------------------------------------

    def _chain_to(self, chain: list[tuple[str, int]], path: str) -> int | None:
        """An fd of the real directory ``path``, reusing and extending ``chain``.

        None when the path is no longer a directory (a later entry replaced it).
        """
        while chain and not (path == chain[-1][0] or path.startswith(chain[-1][0] + "/")):
            os.close(chain.pop()[1])
        base, fd = chain[-1] if chain else ("", self.root_fd)
        rest = path[len(base) :].strip("/")
        for part in rest.split("/") if rest else ():
            try:
                fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                return None
            base = f"{base}/{part}" if base else part
            chain.append((base, fd))
        return fd

    def finish(self) -> None:
        """Directory mtimes, after every child is in place."""
        self.forget_dirs()
        self.close_retired()
        chain: list[tuple[str, int]] = []  # open directories from the root down
        try:
            for real in sorted(self.dir_times):  # parents first: the chain is reused
                mtime = self.dir_times[real]
                if not real:
                    os.utime(f"/proc/self/fd/{self.root_fd}", ns=(mtime, mtime))
                    continue
                parent, _, name = real.rpartition("/")
                fd = self._chain_to(chain, parent)
                if fd is not None:
                    os.utime(name, ns=(mtime, mtime), dir_fd=fd, follow_symlinks=False)
        finally:
            for _, fd in chain:
                os.close(fd)
        if self.dropped_xattrs or self.skipped_devices:
            self._warn()

    def _warn(self) -> None:
        """Say what the layer asked for and did not get (logging is imported only then:
        it costs every command's start-up ~5 ms)."""
        import logging

        log = logging.getLogger(__name__)
        if self.dropped_xattrs:
            log.warning(
                "dropped xattrs a layer may not set: %s", ", ".join(sorted(self.dropped_xattrs))
            )
        if self.skipped_devices:
            log.warning(
                "skipped %d device node(s): not root in the initial user namespace",
                self.skipped_devices,
            )


def apply_tar(stream: IO[bytes], root: Path, *, whiteouts: Whiteouts | None = None) -> ApplyResult:
    """Apply the uncompressed layer tar ``stream`` to the directory ``root``.

    ``whiteouts`` records deletions; None deletes for real (``root`` is the
    merged view of the layer). Returns the diff id (sha256 of the whole
    stream) and the number of bytes read. On any error it raises, possibly
    leaving a partial tree under ``root`` (never outside it), for the caller
    to remove.
    """
    if whiteouts is None:
        return apply_tar_with(stream, root)
    return apply_tar_with(stream, root, whiteouts_for=lambda _mine: whiteouts)


def apply_tar_with(
    stream: IO[bytes],
    root: Path,
    *,
    whiteouts_for: Callable[[set[str]], Whiteouts] | None = None,
    before: Callable[[TarEntry], None] | None = None,
    after: Callable[[int], None] | None = None,
) -> ApplyResult:
    """:func:`apply_tar` with a driver's own steps, for drivers whose layer is not
    the merged view (overlay's upper directory).

    ``whiteouts_for(mine)`` makes the whiteout strategy; ``mine`` is the live
    set of real paths this layer made (and their ancestors). ``before(entry)``
    runs before each entry is applied (a copy-up), ``after(root_fd)`` once every
    entry and directory mtime is in place. Errors are translated as in
    :func:`apply_tar`, whichever step raised them.
    """
    reader = TarReader(stream, read_ahead=True)
    try:
        return _apply_entries(reader, Path(root), whiteouts_for, before, after)
    finally:
        reader.close()  # no thread reads the stream any more: the caller may close it


def _apply_entries(
    reader: TarReader,
    root: Path,
    whiteouts_for: Callable[[set[str]], Whiteouts] | None,
    before: Callable[[TarEntry], None] | None,
    after: Callable[[int], None] | None,
) -> ApplyResult:
    applier = _Applier(root, None)
    if whiteouts_for is not None:
        applier.whiteouts = whiteouts_for(applier.mine)
    entry: TarEntry | None = None
    try:
        for entry in reader:
            if before is not None:
                before(entry)
            applier.apply(entry, reader)
        applier.finish()
        if after is not None:
            after(applier.root_fd)
    except LaminaError:
        raise
    except OSError as exc:
        where = f"entry {entry.path!r}" if entry is not None else "the layer"
        if exc.errno == errno.EFBIG:
            raise ArchiveLimit(f"{where} is larger than the filesystem allows: {exc}") from exc
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise host_error(
                exc, f"apply {where}", "",  # the entry names the place, not exc's relative name
                hint="nothing was stored; free space on the store's "
                "filesystem (or use a --root on a larger one), then apply again",
            ) from exc
        raise DriverError(
            f"applying {where} failed: {exc}",
            hint="check free space and that the filesystem supports the entry's features",
        ) from exc
    finally:
        applier.close()
    return ApplyResult(diff_id=reader.diff_id, size=reader.size)
