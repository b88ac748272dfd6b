"""Image archives as read by ``lamina load``: the members of a tar or of a layout directory.

An archive is a ``docker save`` tar, an OCI layout in a tar, or an OCI layout
directory. :func:`open_archive` gives an :class:`Archive` whose members are read
where they lie:

- a tar in a regular file is *indexed*: its headers are read and each member's
  data skipped by seeking, so indexing a 1 GB archive reads a few kilobytes; a
  member is then read in place through a :class:`Window` (``pread`` on the file);
- a directory is read file by file, each opened without following symlinks;
- a pipe, or a compressed tar (``docker save | gzip``), cannot be read in place:
  it is spooled (decompressed) into the store's ``tmp/`` first and the spool is
  indexed. That is the one copy a load makes; it is deleted when the load ends (named
  ``ingest-*``, so that after a SIGKILL the blob store's sweep of stale temp files
  removes it an hour later).

Everything here is untrusted. A member name is normalised (``./`` dropped); a
name that is absolute or climbs out (``..``), a name repeated, a symlink or any
other non-regular file where a file is needed, a member running past the end of
the file, an oversized header, too many members: each is an
:class:`~lamina.core.errors.ArchiveError` before anything is stored.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, NamedTuple

from ..errors import ArchiveError, host_error

CHUNK = 1 << 20
#: one header (a PAX record set, a GNU long name) larger than this is refused unread
MAX_HEADER = 1 << 20
#: an image archive has a few members per layer: more than this is an attack
MAX_MEMBERS = 100_000


class Member(NamedTuple):
    """A regular file of the archive: where its data starts in the file, and its size."""

    name: str
    offset: int
    size: int


def clean_name(name: str, *, where: str = "the archive") -> str:
    """``name`` as a member name: relative, ``./`` and empty components dropped.

    Absolute names and ``..`` anywhere are refused: archive paths never need them,
    and a reader that resolved them would read outside the archive.
    """
    if not isinstance(name, str) or not name or "\0" in name:
        raise ArchiveError(f"{where} names an invalid path {name!r}")
    if name.startswith("/"):
        raise ArchiveError(f"{where} names an absolute path {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"{where} names a path outside the archive: {name!r}")
    if not parts:
        raise ArchiveError(f"{where} names an invalid path {name!r}")
    return "/".join(parts)


class Window(io.RawIOBase):
    """``size`` bytes of the file ``fd`` from ``offset``, read with ``pread``.

    It has no ``fileno``: readers must stream it, never map or seek the whole file.
    """

    def __init__(self, fd: int, offset: int, size: int) -> None:
        super().__init__()
        self._fd = fd
        self._pos = offset
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._left)
        if n <= 0:
            return 0
        got = os.preadv(self._fd, [view[:n]], self._pos)
        if got == 0:
            raise ArchiveError("the archive is truncated: a member ends early",
                               hint="the file is incomplete or was changed while loading")
        self._pos += got
        self._left -= got
        return got


class Archive:
    """Members of an archive by name; :meth:`open` reads one in place."""

    def __init__(self, description: str) -> None:
        self.description = description

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def size(self, name: str) -> int:
        """The member's size; :class:`ArchiveError` when it is missing or not a regular file."""
        raise NotImplementedError

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def copy_to(self, name: str, fd: int) -> int:
        """Copy the member's bytes to ``fd`` in the kernel (no read into this process)."""
        raise NotImplementedError

    def read(self, name: str, limit: int, what: str) -> bytes:
        """The whole member, refused unread when larger than ``limit``."""
        size = self.size(name)
        if size > limit:
            raise ArchiveError(f"{what} ({name}) is {size} bytes, more than the {limit} allowed")
        with self.open(name) as f:
            data = f.read(size + 1)
        if len(data) != size:
            raise ArchiveError(f"{what} ({name}) is truncated")
        return data

    def close(self) -> None:
        pass

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _copy_range(src: int, offset: int, size: int, dst: int) -> int:
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, size - done, offset + done)
        except OSError:
            n = 0
        if n == 0:  # another filesystem that refuses, or a short file: plain copy
            data = os.pread(src, min(CHUNK, size - done), offset + done)
            if not data:
                raise ArchiveError("the archive is truncated: a member ends early")
            n = os.write(dst, data)
        done += n
    return done


class TarArchive(Archive):
    """A tar in a regular file, indexed by its headers (module docstring)."""

    def __init__(self, fd: int, description: str, *, spool: Path | None = None) -> None:
        super().__init__(description)
        self._fd = fd
        self._spool = spool
        self.members: dict[str, Member] = {}
        #: names of members that are not regular files (symlinks, devices, ...)
        self.others: dict[str, str] = {}
        self._index()

    def _index(self) -> None:
        import tarfile

        file_size = os.fstat(self._fd).st_size
        reader = _HeaderReads(self._fd)
        try:
            tar = tarfile.open(fileobj=reader, mode="r:")  # type: ignore[call-overload] # noqa: SIM115 - holds no file of its own
            count = 0
            for info in tar:
                count += 1
                if count > MAX_MEMBERS:
                    raise ArchiveError(f"{self.description} has more than {MAX_MEMBERS} members")
                if info.isdir():
                    continue
                name = clean_name(info.name, where=self.description)
                if name in self.members or name in self.others:
                    raise ArchiveError(
                        f"{self.description} holds {name!r} more than once",
                        hint="an image archive names each file once; this one is malformed or "
                        "hostile, nothing was stored",
                    )
                if info.isreg() and not info.issparse():
                    if info.offset_data + info.size > file_size:
                        raise ArchiveError(
                            f"{self.description} is truncated: {name!r} runs past its end",
                            hint="the file is incomplete; nothing was stored",
                        )
                    self.members[name] = Member(name, info.offset_data, info.size)
                else:
                    self.others[name] = "a symlink" if info.issym() else (
                        "a hard link" if info.islnk() else "not a regular file")
        except tarfile.TarError as exc:
            raise ArchiveError(f"{self.description} is not a readable tar archive ({exc})",
                               hint="lamina loads docker save archives and OCI layouts, as "
                               "tar (plain, gzip or zstd) or directory") from None
        if not self.members and not self.others:
            raise ArchiveError(f"{self.description} is empty",
                               hint="give a docker save archive or an OCI layout")

    def _member(self, name: str) -> Member:
        member = self.members.get(name)
        if member is None:
            if name in self.others:
                raise ArchiveError(
                    f"{self.description}: {name!r} is {self.others[name]}, not a file",
                    hint="image archives hold regular files only; this one is malformed or "
                    "hostile, nothing was stored",
                )
            raise ArchiveError(f"{self.description} has no {name!r}",
                               hint="the archive is incomplete or malformed; nothing was stored")
        return member

    def has(self, name: str) -> bool:
        return name in self.members or name in self.others

    def size(self, name: str) -> int:
        return self._member(name).size

    def open(self, name: str) -> IO[bytes]:
        member = self._member(name)
        return Window(self._fd, member.offset, member.size)  # type: ignore[return-value]

    def copy_to(self, name: str, fd: int) -> int:
        member = self._member(name)
        return _copy_range(self._fd, member.offset, member.size, fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._spool is not None:
            with contextlib.suppress(FileNotFoundError):
                self._spool.unlink()
            self._spool = None


class _HeaderReads(io.RawIOBase):
    """The archive file for :mod:`tarfile`'s indexing: seeks are free, a read over
    :data:`MAX_HEADER` (a huge PAX header) is refused before anything is allocated."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = os.fstat(self._fd).st_size + offset
        return self._pos

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        if size is None or size < 0 or size > MAX_HEADER:
            raise ArchiveError(f"a tar header of the archive is larger than {MAX_HEADER} bytes",
                               hint="the archive is malformed or hostile; nothing was stored")
        data = os.pread(self._fd, size, self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class DirArchive(Archive):
    """An OCI layout directory; every member opened beneath it, following no symlink."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"the directory {path}")
        try:
            self._dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise host_error(exc, "open", path) from None

    def _open_fd(self, name: str) -> int:
        parts = name.split("/")
        dirfd = self._dirfd
        opened: list[int] = []
        try:
            for part in parts[:-1]:
                try:
                    dirfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                    dir_fd=dirfd)
                except OSError as exc:
                    raise self._refused(name, exc) from None
                opened.append(dirfd)
            try:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                             dir_fd=dirfd)
            except OSError as exc:
                raise self._refused(name, exc) from None
        finally:
            for d in opened:
                os.close(d)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ArchiveError(f"{self.description}: {name!r} is not a regular file",
                               hint="an OCI layout holds regular files only; nothing was stored")
        return fd

    def _refused(self, name: str, exc: OSError) -> ArchiveError:
        import errno

        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return ArchiveError(f"{self.description}: {name!r} is a symlink or not a file",
                                hint="an OCI layout holds regular files only; nothing was "
                                "stored")
        if exc.errno == errno.ENOENT:
            return ArchiveError(f"{self.description} has no {name!r}",
                                hint="the layout is incomplete or malformed; nothing was stored")
        return host_error(exc, "open", name)  # type: ignore[return-value]

    def has(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self._dirfd, follow_symlinks=False)
        except OSError:
            return False
        return True

    def size(self, name: str) -> int:
        fd = self._open_fd(name)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def open(self, name: str) -> IO[bytes]:
        return os.fdopen(self._open_fd(name), "rb")

    def copy_to(self, name: str, fd: int) -> int:
        src = self._open_fd(name)
        try:
            return _copy_range(src, 0, os.fstat(src).st_size, fd)
        finally:
            os.close(src)

    def close(self) -> None:
        if self._dirfd >= 0:
            os.close(self._dirfd)
            self._dirfd = -1


def open_archive(source: str, tmp: Path, stdin: IO[bytes] | None = None) -> Archive:
    """The archive at ``source``: a directory, a tar file, or ``-`` (``stdin``).

    A plain tar in a regular file is read in place; anything else (a pipe, a gzip
    or zstd tar) is spooled, decompressed, into ``tmp`` (module docstring).
    """
    from ..layertar.compression import open_layer_stream

    if source != "-" and os.path.isdir(source):
        return DirArchive(Path(source))
    if source == "-":
        if stdin is None:
            import sys

            stdin = sys.stdin.buffer
        raw: IO[bytes] = stdin
        description = "the archive on standard input"
    else:
        try:
            raw = open(source, "rb")  # noqa: SIM115 - closed below or owned by the archive
        except OSError as exc:
            raise host_error(exc, "open", source) from None
        description = f"the archive {source}"
    try:
        stream = open_layer_stream(raw)
        if stream is raw:  # a plain tar in a regular file: indexed in place
            fd = os.dup(raw.fileno())
            try:
                return TarArchive(fd, description)
            except BaseException:
                os.close(fd)
                raise
        return _spooled(stream, tmp, description)
    finally:
        if raw is not stdin:
            raw.close()


def _spooled(stream: IO[bytes], tmp: Path, description: str) -> TarArchive:
    tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="ingest-load-", dir=tmp)
    path = Path(name)
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            try:
                shutil.copyfileobj(stream, out, CHUNK)
            except OSError as exc:
                raise host_error(exc, "spool the archive to", path) from None
        return TarArchive(fd, description, spool=path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
