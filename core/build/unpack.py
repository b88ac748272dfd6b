"""ADD's local archives: told from other files by their content, unpacked safely.

As BuildKit (``isArchivePath`` and ``chrootarchive.Untar``): a regular file whose bytes,
decompressed if they are gzip, bzip2, xz or zstd, start with a tar header whose checksum
is right is an archive; anything else is copied as it is (a ``.tar.gz`` of text too). The
name never counts. The archive is unpacked by lamina's layer applier
(:mod:`lamina.core.layertar.apply`) with the destination directory as its root, the way
Docker chroots into it: ``..`` above it is refused, absolute symlinks resolve inside it,
nothing is written outside it. Entries keep their owners (``--chown`` sets them all)
and times (clamped to an epoch when one is given); ``.wh.`` entries delete, as a layer's.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from pathlib import Path
from typing import IO

from ..errors import BuildError, CorruptArchive, LaminaError
from .context import Entry, open_file

_BZIP2 = b"BZh"
_XZ = b"\xfd7zXZ\x00"


def unpack(stream: IO[bytes], dest_fd: int, match: str, *,
           owner: tuple[int, int] | None, epoch_ns: int | None) -> None:
    """The archive ``stream`` (decompressed) unpacked into the directory ``dest_fd``."""
    from ..layertar.apply import apply_tar_with
    from ..layertar.reader import TarEntry

    parents: set[str] = set()

    def before(entry: TarEntry) -> None:
        if owner is not None:
            entry.uid, entry.gid = owner
        if epoch_ns is not None:
            entry.mtime_ns = min(entry.mtime_ns, epoch_ns)
            parents.add(posixpath.dirname(entry.path.strip("/")))

    try:
        apply_tar_with(stream, Path(f"/proc/self/fd/{dest_fd}"), before=before)
    except LaminaError as exc:
        raise BuildError(f"cannot unpack the archive {match}: {exc}",
                         hint="check the archive: ADD refuses entries that would leave the "
                         "destination, and damaged or truncated data") from None
    if epoch_ns is not None:
        _clamp(dest_fd, parents, epoch_ns)


def _clamp(dest_fd: int, paths: set[str], epoch_ns: int) -> None:
    """Clamp the times of the directories the archive changed without listing them."""
    from ..launcher.rootfs import open_beneath

    for path in sorted(paths, key=len, reverse=True):
        with contextlib.suppress(OSError):
            fd = open_beneath(dest_fd, path) if path else os.dup(dest_fd)
            try:
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode) and st.st_mtime_ns > epoch_ns:
                    os.utime(f"/proc/self/fd/{fd}",
                             ns=(min(st.st_atime_ns, epoch_ns), epoch_ns))
            finally:
                os.close(fd)


def open_archive(entry: Entry) -> tuple[IO[bytes], IO[bytes]] | None:
    """The decompressed stream of a tar archive (plain, gzip, bzip2, xz, zstd), or None
    when the file is not one (then ADD copies it as it is, as Docker)."""
    fd = open_file(entry)
    raw = os.fdopen(fd, "rb")
    try:
        head = raw.read(512)
        raw.seek(0)
        stream = _decompress(raw, head)
        try:
            first = stream.read(512)
        except (OSError, EOFError, LaminaError, ValueError):
            first = b""
        if not _is_tar_header(first):
            raw.close()
            return None
        raw.seek(0)
        return raw, _decompress(raw, head)
    except BaseException:
        raw.close()
        raise


class _Decoded:
    """A decompressor seen only as a stream: with ``fileno`` the tar reader would map
    the compressed file underneath and parse that."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except (EOFError, ValueError, OSError, LaminaError) as exc:
            raise CorruptArchive(f"the compressed data is damaged: {exc}") from None
        except Exception as exc:  # lzma.LZMAError
            raise CorruptArchive(f"the compressed data is damaged: {exc}") from None

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def __enter__(self) -> _Decoded:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()


def _decompress(raw: IO[bytes], head: bytes) -> IO[bytes]:
    if head.startswith(_BZIP2):
        import bz2

        return _Decoded(bz2.BZ2File(raw))  # type: ignore[return-value]
    if head.startswith(_XZ):
        import lzma

        return _Decoded(lzma.LZMAFile(raw))  # type: ignore[return-value]
    from ..layertar.compression import open_layer_stream

    return open_layer_stream(raw)


def _is_tar_header(block: bytes) -> bool:
    """Go's ``tar.Reader.Next`` succeeding: a full header whose checksum is right."""
    if len(block) < 512 or not block.strip(b"\0"):
        return False
    field = block[148:156].replace(b"\0", b" ").strip()
    try:
        stored = int(field, 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:512])
    signed = (sum(b - 256 if b > 127 else b for b in block[:148]) + 8 * 32
              + sum(b - 256 if b > 127 else b for b in block[156:512]))
    return stored in (unsigned, signed)
