"""COPY and ADD: sources from a :class:`~.context.SourceTree` (or heredocs) written into a
root filesystem, by BuildKit's rules (its ``fsutil`` copy and Dockerfile front end):

- ``dest`` is relative to the WORKDIR. It is a directory when it ends with ``/`` (or
  ``/.``), when it exists as one, or when there are several sources (several patterns,
  or a glob matching several: Docker requires the ``/`` then; lamina takes the meaning).
  Otherwise a file source is written *as* ``dest``.
- A directory source copies its contents, merged with what is there: the destination
  directory keeps its owner and mode (it takes the source's times), directories beneath
  it take the source's metadata. A non-directory never replaces a directory, nor the
  other way round (a BuildError); an existing file or symlink is replaced, not followed.
- Missing directories on the way to ``dest`` are made 0755 (the ``--chmod`` mode when
  it is octal, as BuildKit now does), owned by the ``--chown`` user, else root.
- Owners: context files become 0:0, a root filesystem's keep theirs, ``--chown`` sets
  all (names from the *destination* root's /etc/passwd and /etc/group; a user without a
  group takes the uid as the gid, as Docker documents). ``--chmod`` is octal or
  symbolic (``u+x``, ``go=rX``, ``g=u``), applied to every file and directory copied.
- Permission bits (setuid, setgid and sticky included), symlinks (as symlinks), device
  nodes and fifos, hardlinks within one COPY, ``user.*`` and ``security.capability``
  xattrs and times (atime, mtime) are kept. With ``mtime`` (SOURCE_DATE_EPOCH), every
  time this COPY writes is clamped to at most that epoch, as BuildKit's
  ``rewrite-timestamp`` does to the layer; the directories it changes included.
- A heredoc source is a file named after its delimiter, mode 0644 before ``--chmod``.
- ``ADD`` (``extract``): a local source that is a tar, plain or gzip/bzip2/xz/zstd
  (sniffed from the content, never the name), is unpacked into ``dest`` as a directory
  (:mod:`.unpack`: lamina's hardened layer applier; nothing leaves the destination,
  ``..`` is refused, absolute symlinks resolve inside it); ``--chown`` sets every
  entry's owner.

The destination root is hostile too: every path in it is walked one component at a time
from an open directory fd, its symlinks resolved as if it were ``/`` (``/app -> /etc``
leads to ``<root>/etc``, ``../../..`` stops at the root), and the last component of
anything written is never followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from ..errors import BuildError, ContainerError
from .chmod import Chmod
from .context import MAX_SYMLINKS, Entry, SourceTree, kept_xattrs, open_file
from .dockerignore import Dockerignore
from .parser import Heredoc

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FALLBACK = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


def copy_into(
    root: Path,
    tree: SourceTree | None,
    sources: Sequence[str | Heredoc],
    dest: str,
    *,
    workdir: str = "/",
    chown: str | None = None,
    chmod: str | None = None,
    extract: bool = False,
    mtime: int | None = None,
    exclude: Sequence[str] = (),
) -> None:
    """One COPY (or ADD, ``extract=True``) of ``sources`` into the root filesystem ``root``.

    ``sources`` are the instruction's patterns as the Dockerfile gives them (variables
    expanded) and its heredocs (bodies expanded); ``tree`` is where patterns are read
    (None: no context, only heredocs). ``dest`` is relative to ``workdir`` (absolute).
    ``chown`` and ``chmod`` are the flags' values, ``exclude`` the ``--exclude``
    patterns, ``mtime`` the SOURCE_DATE_EPOCH to clamp times to. Every failure is a
    :class:`BuildError` naming the source and the destination; a failed copy may leave
    part of its files in ``root`` (the engine drops the layer).
    """
    mode = Chmod.parse(chmod) if chmod else None
    matcher = Dockerignore.parse("\n".join(exclude), filename="--exclude") if exclude else None
    items: list[tuple[str | Heredoc, str | None]] = []
    for source in sources:
        if isinstance(source, Heredoc):
            items.append((source, None))
            continue
        if tree is None:
            raise BuildError(f"COPY {source}: there is no build context to copy from",
                             hint="give a context directory, or copy from a stage with --from")
        items.extend((source, match) for match in tree.resolve(source, exclude=matcher))
    full = posixpath.join(workdir or "/", dest)
    parts = [p for p in full.split("/") if p not in ("", ".")]
    as_dir = (dest.endswith(("/", "/.")) or dest in ("", ".") or not parts or len(items) > 1
              or len(sources) > 1)
    with _Writer(root, mode, mtime) as writer:
        if chown:
            writer.owner = writer.resolve_owner(chown)
        for source, match in items:
            what = source.name if isinstance(source, Heredoc) else source
            try:
                if isinstance(source, Heredoc):
                    writer.heredoc(source, parts, as_dir)
                else:
                    assert tree is not None and match is not None
                    writer.copy(tree, source, match, parts, as_dir, extract, matcher)
            except BuildError as exc:
                raise BuildError(f"{'ADD' if extract else 'COPY'} {what} to {dest}: {exc}",
                                 hint=exc.hint) from None
            except OSError as exc:
                raise BuildError(
                    f"{'ADD' if extract else 'COPY'} {what} to {dest}: "
                    f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""),
                    hint="check free space, and that the destination's filesystem supports "
                    "what is copied (device nodes, xattrs)") from exc
        writer.clamp_touched()


class _Writer:
    """One copy's state: the root's fd, owner and mode settings, hardlinks seen, and the
    directories it changed (to clamp their times)."""

    def __init__(self, root: Path, mode: Chmod | None, epoch: int | None) -> None:
        try:
            self.root_fd = os.open(root, _DIR & ~os.O_NOFOLLOW)
        except OSError as exc:
            raise BuildError(f"cannot open the root filesystem {root}: {exc.strerror}",
                             hint="the engine passes the mounted layer's directory") from None
        self.mode = mode
        self.epoch_ns = None if epoch is None else epoch * 1_000_000_000
        self.owner: tuple[int, int] | None = None
        self.links: dict[tuple[int, int], tuple[str, ...]] = {}
        self.touched: set[tuple[str, ...]] = set()
        self.euid = os.geteuid()

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.root_fd)

    # -- --chown -------------------------------------------------------------------------

    def resolve_owner(self, spec: str) -> tuple[int, int]:
        """``--chown=USER[:GROUP]`` by the destination root's own passwd and group files."""
        from ..containers.users import resolve_user

        user, _, group = spec.partition(":")
        if not user or spec.endswith(":"):
            raise BuildError(f"invalid --chown={spec}", hint="write USER[:GROUP], names or ids")
        numeric = user.isdigit() and (not group or group.isdigit())
        if numeric:
            return int(user), int(group) if group else int(user)
        with self._etc("passwd") as passwd, self._etc("group") as groups:
            try:
                found = resolve_user(spec if group else user, passwd=passwd, group=groups)
            except ContainerError as exc:
                raise BuildError(f"--chown={spec}: {exc}".replace("the container's", "the "
                                 "destination's"), hint="give a user and group the image "
                                 "has in /etc/passwd and /etc/group, or numeric ids") from None
        return found.uid, found.gid if group else found.uid

    @contextlib.contextmanager
    def _etc(self, name: str) -> Iterator[str]:
        """A path reading the root's /etc/NAME resolved inside the root; /dev/null when it
        is missing or not a regular file (a fifo there must not block the build)."""
        from ..launcher.rootfs import open_beneath

        try:
            fd = open_beneath(self.root_fd, f"/etc/{name}")
        except OSError:
            yield os.devnull
            return
        try:
            yield f"/proc/self/fd/{fd}" if stat.S_ISREG(os.fstat(fd).st_mode) else os.devnull
        finally:
            os.close(fd)

    # -- the destination -----------------------------------------------------------------

    def lookup(self, parts: Sequence[str], *, create: bool, dir_mode: int | None = None,
               ) -> tuple[int, str, tuple[str, ...], os.stat_result | None]:
        """``(parent fd, name, parent's real path, lstat or None)`` of ``parts`` in the root,
        every symlink (the last one too) resolved inside it; missing directories on the way
        made when ``create``. The root itself is ``(root fd dup, "", (), its stat)``."""
        queue = [p for p in parts if p not in ("", ".")]
        stack = [os.dup(self.root_fd)]
        real: list[str] = []
        hops = 0
        try:
            while queue:
                name = queue.pop(0)
                if name == "..":
                    if real:
                        real.pop()
                        os.close(stack.pop())
                    continue
                try:
                    st: os.stat_result | None = os.lstat(name, dir_fd=stack[-1])
                except FileNotFoundError:
                    st = None
                if st is not None and stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > MAX_SYMLINKS:
                        raise BuildError(f"too many symbolic links resolving /{'/'.join(parts)}",
                                         hint="the image has a symlink loop on that path")
                    target = os.readlink(name, dir_fd=stack[-1])
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop())
                        real.clear()
                    queue[:0] = [p for p in target.split("/") if p not in ("", ".")]
                    continue
                if not queue:
                    return os.dup(stack[-1]), name, tuple(real), st
                if st is None:
                    if not create:
                        raise FileNotFoundError(errno.ENOENT, "no such directory",
                                                "/" + "/".join((*real, name)))
                    stack.append(self.mkdir(stack[-1], name, tuple(real), dir_mode))
                elif not stat.S_ISDIR(st.st_mode):
                    raise BuildError(f"/{'/'.join((*real, name))} is not a directory",
                                     hint="the destination path goes through a file")
                else:
                    stack.append(os.open(name, _DIR, dir_fd=stack[-1]))
                real.append(name)
            if real:  # the path ended on '..' below the root
                return os.dup(stack[-2]), real[-1], tuple(real[:-1]), os.fstat(stack[-1])
            return os.dup(stack[0]), "", (), os.fstat(stack[0])
        finally:
            for fd in stack:
                os.close(fd)

    def ensure_dir(self, parts: Sequence[str], dir_mode: int | None = None,
                   ) -> tuple[int, tuple[str, ...]]:
        """A read fd of directory ``parts`` (made with its parents if missing), its real path."""
        parent, name, real, st = self.lookup(parts, create=True, dir_mode=dir_mode)
        try:
            if not name:
                return os.dup(parent), ()
            if st is None:
                return self.mkdir(parent, name, real, dir_mode), (*real, name)
            if not stat.S_ISDIR(st.st_mode):
                raise BuildError(f"/{'/'.join((*real, name))} exists and is not a directory",
                                 hint="remove it first, or copy to another path")
            return os.open(name, _DIR, dir_fd=parent), (*real, name)
        finally:
            os.close(parent)

    def mkdir(self, parent: int, name: str, real: tuple[str, ...],
              dir_mode: int | None = None) -> int:
        """A directory made on the way: 0755 (or --chmod's octal), the --chown owner."""
        os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIR, dir_fd=parent)
        uid, gid = self.owner or (0, 0)
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
        if dir_mode is None:
            dir_mode = self.mode.dir_mode if self.mode else 0o755
        os.fchmod(fd, dir_mode)
        self.touched.add(real)
        self.touched.add((*real, name))
        return fd

    # -- sources -------------------------------------------------------------------------

    def heredoc(self, doc: Heredoc, parts: list[str], as_dir: bool) -> None:
        data = doc.content.encode("utf-8", "surrogateescape")
        parent, name, real = self._file_target(parts, as_dir, doc.name)
        try:
            self._make_room(parent, name, real)
            fd = os.open(name, _CREATE, 0o600, dir_fd=parent)
            try:
                _write_all(fd, data)
                uid, gid = self.owner or (0, 0)
                if (uid, gid) != (self.euid, os.getegid()):
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, self.mode.apply(0o644, False) if self.mode else 0o644)
                if self.epoch_ns is not None:
                    os.utime(fd, ns=self._times(os.fstat(fd)))
            finally:
                os.close(fd)
        finally:
            os.close(parent)

    def copy(self, tree: SourceTree, pattern: str, match: str, parts: list[str],
             as_dir: bool, extract: bool, exclude: Dockerignore | None) -> None:
        entries = tree.walk(match, exclude=exclude, pattern=pattern)
        with contextlib.closing(entries):
            top = next(entries)
            if extract and stat.S_ISREG(top.st.st_mode):
                from .unpack import open_archive

                archive = open_archive(top)
                if archive is not None:
                    raw, stream = archive
                    with raw, stream:
                        self.extract(stream, parts, match)
                    return
            if not stat.S_ISDIR(top.st.st_mode):
                parent, name, real = self._file_target(parts, as_dir, posixpath.basename(match))
                try:
                    self.node(tree, top, parent, name, real)
                finally:
                    os.close(parent)
                return
            if as_dir:
                fd, real = self.ensure_dir(parts)
            else:
                parent, name, preal, st = self.lookup(parts, create=True)
                try:
                    if st is None:
                        fd, real = self.mkdir(parent, name, preal), (*preal, name)
                    elif not name or stat.S_ISDIR(st.st_mode):
                        fd = os.open(name or ".", _DIR, dir_fd=parent)
                        real = (*preal, name) if name else ()
                    else:
                        raise BuildError(f"cannot copy the directory {match} over the file "
                                         f"/{'/'.join((*preal, name))}",
                                         hint="end the destination with / or remove the file")
                finally:
                    os.close(parent)
            self.tree_into(tree, top, entries, fd, real)

    def _file_target(self, parts: list[str], as_dir: bool, base: str,
                     ) -> tuple[int, str, tuple[str, ...]]:
        """Where a non-directory source goes: ``(parent fd, name, parent's real path)``."""
        if as_dir:
            fd, real = self.ensure_dir(parts)
            return fd, base, real
        parent, name, real, st = self.lookup(parts, create=True)
        if name and (st is None or not stat.S_ISDIR(st.st_mode)):
            return parent, name, real
        try:  # an existing directory: the file goes in it
            fd = os.open(name or ".", _DIR, dir_fd=parent)
            return fd, base, (*real, name) if name else ()
        finally:
            os.close(parent)

    def tree_into(self, tree: SourceTree, top: Entry, entries: Iterator[Entry], top_fd: int,
                  top_real: tuple[str, ...]) -> None:
        """A directory's contents merged into the directory ``top_fd``. Directories get
        their times last, after their children changed them."""
        # frames: (rel prefix, fd, real path, the source's stat)
        frames: list[tuple[str, int, tuple[str, ...], os.stat_result]] = [
            ("", top_fd, top_real, top.st)]
        try:
            for entry in entries:
                parent_rel = entry.rel.rpartition("/")[0]
                parent_rel = parent_rel + "/" if parent_rel else ""
                while frames[-1][0] != parent_rel:
                    self._finish_dir(frames.pop())
                _, fd, real, _ = frames[-1]
                if stat.S_ISDIR(entry.st.st_mode):
                    child = self.dir(tree, entry, fd, real)
                    frames.append((entry.rel + "/", child, (*real, entry.name), entry.st))
                else:
                    self.node(tree, entry, fd, entry.name, real)
            while frames:
                self._finish_dir(frames.pop())
        finally:
            for frame in frames:
                os.close(frame[1])

    def _finish_dir(self, frame: tuple[str, int, tuple[str, ...], os.stat_result]) -> None:
        _, fd, _, st = frame
        try:
            os.utime(fd, ns=self._times(st))
        finally:
            os.close(fd)

    def dir(self, tree: SourceTree, entry: Entry, parent: int, real: tuple[str, ...]) -> int:
        """A directory beneath the copied one: made, or an existing one taking its metadata."""
        try:
            st = os.lstat(entry.name, dir_fd=parent)
        except FileNotFoundError:
            os.mkdir(entry.name, 0o700, dir_fd=parent)
            self.touched.add(real)
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise BuildError(f"cannot copy the directory {entry.real} over the "
                                 f"non-directory /{'/'.join((*real, entry.name))}",
                                 hint="remove it first, or copy to another path")
        fd = os.open(entry.name, _DIR, dir_fd=parent)
        uid, gid = self._owner_of(tree, entry.st)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, self._mode_of(entry.st, True))
        src = os.open(entry.name, _DIR, dir_fd=entry.dir_fd)
        try:
            _set_xattrs(fd, kept_xattrs(src))
        finally:
            os.close(src)
        return fd

    def node(self, tree: SourceTree, entry: Entry, parent: int, name: str,
             real: tuple[str, ...]) -> None:
        """A file, symlink, device or fifo written as ``name`` in ``parent``."""
        st = entry.st
        fmt = stat.S_IFMT(st.st_mode)
        self._make_room(parent, name, real)
        uid, gid = self._owner_of(tree, st)
        if fmt != stat.S_IFDIR and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key)
            if first is not None and self._link(first, parent, name):
                return
            self.links[key] = (*real, name)
        if fmt == stat.S_IFREG:
            src = open_file(entry)
            try:
                fd = os.open(name, _CREATE, 0o600, dir_fd=parent)
                try:
                    _copy_data(src, fd, st.st_size)
                    os.fchown(fd, uid, gid)
                    os.fchmod(fd, self._mode_of(st, False))
                    _set_xattrs(fd, kept_xattrs(src))
                    os.utime(fd, ns=self._times(st))
                finally:
                    os.close(fd)
            finally:
                os.close(src)
        elif fmt == stat.S_IFLNK:
            os.symlink(entry.link or "", name, dir_fd=parent)
            os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
            os.utime(name, ns=self._times(st), dir_fd=parent, follow_symlinks=False)
        else:
            os.mknod(name, fmt | 0o600, st.st_rdev, dir_fd=parent)
            os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
            os.chmod(name, self._mode_of(st, False), dir_fd=parent)  # our new node, no link
            os.utime(name, ns=self._times(st), dir_fd=parent, follow_symlinks=False)

    def _make_room(self, parent: int, name: str, real: tuple[str, ...]) -> None:
        """Remove a file or symlink where a non-directory goes; a directory is an error."""
        self.touched.add(real)
        try:
            st = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise BuildError(f"cannot replace the directory /{'/'.join((*real, name))} "
                             "with a file", hint="copy the file into it with a trailing /, "
                             "or to another path")
        os.unlink(name, dir_fd=parent)

    def _link(self, first: tuple[str, ...], parent: int, name: str) -> bool:
        """Hardlink ``name`` to the copy made earlier; False when that one is gone."""
        fd = self._open_real(first[:-1])
        if fd is None:
            return False
        try:
            os.link(first[-1], name, src_dir_fd=fd, dst_dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)
        return True

    def _open_real(self, real: Sequence[str]) -> int | None:
        """A directory this copy resolved (no symlinks on it), opened without following any."""
        fd = os.dup(self.root_fd)
        for part in real:
            try:
                nfd = os.open(part, _DIR, dir_fd=fd)
            except OSError:
                os.close(fd)
                return None
            os.close(fd)
            fd = nfd
        return fd

    def _owner_of(self, tree: SourceTree, st: os.stat_result) -> tuple[int, int]:
        if self.owner is not None:
            return self.owner
        return (0, 0) if tree.is_context else (st.st_uid, st.st_gid)

    def _mode_of(self, st: os.stat_result, is_dir: bool) -> int:
        bits = st.st_mode & 0o7777
        return self.mode.apply(bits, is_dir) if self.mode else bits

    def _times(self, st: os.stat_result) -> tuple[int, int]:
        atime, mtime = st.st_atime_ns, st.st_mtime_ns
        if self.epoch_ns is not None:
            atime, mtime = min(atime, self.epoch_ns), min(mtime, self.epoch_ns)
        return atime, mtime

    # -- ADD -----------------------------------------------------------------------------

    def extract(self, stream: IO[bytes], parts: list[str], match: str) -> None:
        """An archive unpacked into directory ``parts`` (made 0755 whatever --chmod says,
        as BuildKit)."""
        from .unpack import unpack

        fd, real = self.ensure_dir(parts, 0o755)
        self.touched.add(real)
        try:
            unpack(stream, fd, match, owner=self.owner, epoch_ns=self.epoch_ns)
        finally:
            os.close(fd)

    # -- times ---------------------------------------------------------------------------

    def clamp_touched(self) -> None:
        """With an epoch, no directory this copy changed keeps a later mtime."""
        if self.epoch_ns is None:
            return
        for real in sorted(self.touched, key=len, reverse=True):
            fd = self._open_real(real)
            if fd is None:
                continue
            try:
                st = os.fstat(fd)
                if st.st_mtime_ns > self.epoch_ns or st.st_atime_ns > self.epoch_ns:
                    os.utime(fd, ns=self._times(st))
            finally:
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy_data(src: int, dst: int, size: int) -> None:
    """File bytes in the kernel where it can (``copy_file_range``: reflinks on btrfs/xfs)."""
    copied = 0
    try:
        while copied < size:
            n = os.copy_file_range(src, dst, size - copied, copied, copied)
            if n == 0:
                break
            copied += n
        return
    except OSError as exc:
        if exc.errno not in _FALLBACK:
            raise
    os.lseek(src, copied, os.SEEK_SET)
    os.lseek(dst, copied, os.SEEK_SET)
    while chunk := os.read(src, 1 << 20):
        _write_all(dst, chunk)


def _set_xattrs(fd: int, xattrs: list[tuple[str, bytes]]) -> None:
    for name, value in xattrs:  # best effort, as BuildKit: a filesystem may refuse them
        with contextlib.suppress(OSError):
            os.setxattr(fd, name, value)
