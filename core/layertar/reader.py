"""A streaming reader for OCI layer tars that never hangs and never balloons.

Why our own reader: the stdlib ``tarfile`` seeks, keeps every member in
memory, and has had hangs and quadratic time on hostile PAX headers. Layers
come from the network, so every field here is bounded (:class:`Limits`) and
every malformation is a :class:`~lamina.core.errors.CorruptArchive` or an
:class:`~lamina.core.errors.ArchiveLimit`, raised before anything bigger than
a limit is buffered.

Formats read: ustar (with prefix), POSIX pax (``x`` headers; ``g`` headers are
validated and ignored, as docker and containerd do), GNU long names and long
links (``L``/``K``), GNU sparse files (old ``S`` headers and the pax formats
0.1 and 1.0), v7. File content is never buffered: :meth:`TarReader.chunks`
hands out views of the read buffer.

The reader also computes the layer's diff id: sha256 over every byte of the
uncompressed stream, including what follows the end-of-archive marker (docker
hashes the whole stream). That trailing part is read to the end of the stream
but capped (:attr:`Limits.max_trailing`): a tar followed by gigabytes of zeros
is an :class:`ArchiveLimit` error after at most that many bytes, never an
endless read.

Speed: a regular file is mapped whole instead of read (:class:`_MappedFile`),
and the well-formed common case of a header is parsed by the compiled
``_tarfast`` module, which hands everything else back to the parser here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import mmap
import os
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from queue import SimpleQueue
from typing import IO, NamedTuple
from zlib import adler32

from ..errors import ArchiveLimit, CorruptArchive

try:  # the compiled common case (core/layertar/_tarfast.c); without it this module does all
    from ._tarfast import next_entry as _fast_next_entry
except ImportError:  # pragma: no cover - built without a C compiler
    _fast_next_entry = None

BLOCK = 512
#: bytes asked from the stream per read (without read-ahead); also the largest
#: content view handed out then
CHUNK = 1 << 20
_ZERO_BLOCK = bytes(BLOCK)

# entry kinds (TarEntry.kind)
FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"
CHAR = "char"
BLOCKDEV = "block"
FIFO = "fifo"

_KINDS = {
    b"0": FILE,
    b"\0": FILE,
    b"7": FILE,  # contiguous file: an ordinary file everywhere that matters
    b"1": HARDLINK,
    b"2": SYMLINK,
    b"3": CHAR,
    b"4": BLOCKDEV,
    b"5": DIR,
    b"6": FIFO,
    b"D": DIR,  # GNU dump directory: its data (a listing) is skipped
}
#: the same, keyed by the typeflag byte's value
_KINDS_BY_FLAG = {flag[0]: kind for flag, kind in _KINDS.items()}
#: typeflags of extension headers (their data describes the next header)
_EXTENSION_TYPES = frozenset(b"xXgLK")
_PAX_TYPES = frozenset(b"xXg")
#: pax keys fully handled without looking for xattrs or sparse records
_PLAIN_PAX_KEYS = frozenset(
    {"path", "linkpath", "size", "uid", "gid", "mtime", "atime", "ctime", "uname", "gname"}
    | {"comment", "charset", "hdrcharset"}
)
#: the kinds by the numbers the compiled parser gives them
_FAST_KINDS = (FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCKDEV, FIFO)
#: kinds whose header is followed by no data, whatever the size field says (as Go reads)
_HEADER_ONLY = frozenset({HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO})

#: chunks read but not hashed yet, at most (memory stays bounded by this many buffers)
_HASH_IN_FLIGHT = 8
#: size of the pooled read buffers: a CHUNK and what is left of the previous one
#: (the part of a header that straddles two reads); a bigger leftover gets its own
_BUFFER_SIZE = CHUNK + (16 << 10)
_EMPTY = memoryview(b"")
#: buffers a read-ahead thread may fill before the parser takes them (made on
#: demand). Deep, because the two sides' speeds change along a layer: through
#: small files the applier is the slower one and the reader gets ahead, through
#: big files the applier catches up; with 3 buffers the applier waited ~0.08 s
#: of a 0.3 s minbase apply (docs/performance.md). 16 x 2 MiB: 32 MiB at most.
_AHEAD = 16
#: bytes per read of the read-ahead thread: big, as each read and hash costs
#: that thread a wait for the GIL while the applier runs Python code
_AHEAD_CHUNK = 2 << 20
#: room in front of a read-ahead buffer for the unparsed end of the previous one
_RESERVE = 16 << 10

#: bytes hashed per step from a mapped file (the hash checks for a stop between steps)
_MAP_HASH_STEP = 8 << 20

_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_OCTAL_DIGITS = b"01234567"


class Limits(NamedTuple):
    """Safety limits of the reader; each exceeded one is an :class:`ArchiveLimit`."""

    #: size of one pax extended header (``x`` or ``g``) or GNU long name/link
    max_pax_size: int = 1 << 20
    #: bytes of a path (Linux PATH_MAX, counting the final NUL)
    max_path: int = 4096
    #: bytes of one path component (NAME_MAX)
    max_component: int = 255
    #: data regions of one sparse file
    max_sparse_entries: int = 1 << 16
    #: bytes read after the end-of-archive marker (padding), hashed but ignored
    max_trailing: int = 1 << 20


class TarEntry:
    """One member of a layer tar, with every extension already folded in.

    ``path`` and ``linkname`` are as written in the archive (decoded with
    surrogateescape, so any bytes round-trip through ``os`` calls); cleaning
    them is the applier's job. ``size`` is the file's size (the real size of
    a sparse file); ``sparse`` lists its data regions as ``(offset, length)``.
    """

    __slots__ = (
        "devmajor",
        "devminor",
        "gid",
        "kind",
        "linkname",
        "mode",
        "mtime_ns",
        "offset",
        "path",
        "size",
        "sparse",
        "uid",
        "xattrs",
    )  # fmt: skip

    def __init__(
        self,
        path: str,
        kind: str,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        size: int = 0,
        mtime_ns: int = 0,
        linkname: str = "",
        devmajor: int = 0,
        devminor: int = 0,
        xattrs: dict[str, bytes] | None = None,
        sparse: list[tuple[int, int]] | None = None,
        offset: int = 0,
    ) -> None:
        self.path = path
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.mtime_ns = mtime_ns
        self.linkname = linkname
        self.devmajor = devmajor
        self.devminor = devminor
        self.xattrs: dict[str, bytes] = {} if xattrs is None else xattrs
        self.sparse = sparse
        #: offset of the entry's first header in the uncompressed stream (for messages)
        self.offset = offset

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TarEntry):
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"TarEntry({fields})"


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstr(raw: bytes) -> bytes:
    """A NUL-terminated header field."""
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


#: parsed numeric fields: modes, owners and sizes repeat a lot across headers
_NUMBERS: dict[bytes, int] = {}


def _number(raw: bytes, what: str, offset: int) -> int:
    """An octal (or GNU base-256) numeric header field."""
    value = _NUMBERS.get(raw)
    if value is not None:
        return value
    body = raw[:-1]
    if raw[-1] in (0, 32) and body.isdigit():  # the usual "0001234\0" form
        try:
            value = int(body, 8)
        except ValueError:  # an 8 or a 9: the careful parse says so
            value = _parse_number(raw, what, offset)
    else:
        value = _parse_number(raw, what, offset)
    if len(_NUMBERS) < 4096:
        _NUMBERS[raw] = value
    return value


#: checksum field -> the sum of all the header's bytes that the field promises
_CHECKSUM_TOTALS: dict[bytes, int] = {}


def _checksum_total(raw: bytes, offset: int) -> int:
    """What the unsigned byte sum of a whole header block is when its checksum
    field ``raw`` is right: the checksum counts the field itself as 8 spaces."""
    total = _number(raw, "checksum", offset) + sum(raw) - 8 * 32
    if len(_CHECKSUM_TOTALS) < 4096:
        _CHECKSUM_TOTALS[raw] = total
    return total


def _parse_number(raw: bytes, what: str, offset: int) -> int:
    if raw and raw[0] & 0x80:
        value = int.from_bytes(bytes([raw[0] & 0x7F]) + raw[1:], "big")
        if raw[0] & 0x40:
            value -= 1 << (8 * len(raw) - 1)
        return value
    digits = _cstr(raw).strip(b" ")
    if not digits:
        return 0
    if digits.translate(None, _OCTAL_DIGITS):
        raise CorruptArchive(
            f"not a tar stream: invalid {what} field {raw!r} in the header at offset {offset}"
        )
    return int(digits, 8)


#: pax keys seen in most layers, decoded once
_PAX_KEY_NAMES = {
    key.encode(): key
    for key in ("path", "linkpath", "size", "uid", "gid", "mtime", "atime", "ctime")
}


def _pax_records(data: bytes, offset: int) -> dict[str, bytes]:
    """Parse ``"<len> <key>=<value>\\n"`` records; every record advances, so no hang."""
    records: dict[str, bytes] = {}
    pos = 0
    end = len(data)
    find = data.find
    while pos < end:
        # the well-formed case, checked as strictly as the careful path below
        space = find(b" ", pos, pos + 21)
        if space > pos:
            digits = data[pos:space]
            if digits.isdigit():
                length = int(digits)
                stop = pos + length
                if length >= space - pos + 4 and stop <= end and data[stop - 1] == 10:
                    equals = find(b"=", space + 1, stop)
                    if equals > space + 1:
                        raw_key = data[space + 1 : equals]
                        key = _PAX_KEY_NAMES.get(raw_key)
                        if key is None:
                            try:
                                key = raw_key.decode("utf-8")
                            except UnicodeDecodeError:
                                raise CorruptArchive(
                                    f"pax record key is not UTF-8 at offset {offset + pos}"
                                ) from None
                        records[key] = data[equals + 1 : stop - 1]
                        pos = stop
                        continue
        _pax_record_careful(data, offset, pos, records)
        break
    return records


def _pax_record_careful(data: bytes, offset: int, pos: int, records: dict[str, bytes]) -> None:
    """The rest of a pax header from a record the fast path did not take: its
    NUL padding, or the error that says what is wrong."""
    end = len(data)
    while pos < end:
        space = data.find(b" ", pos, min(end, pos + 21))
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            if not data[pos:].strip(b"\0"):
                break  # NUL padding after the last record
            raise CorruptArchive(f"malformed pax record at offset {offset + pos}: no length")
        length = int(digits)
        # shortest legal record: "<len> k=\n"
        if length < len(digits) + 4:
            raise CorruptArchive(
                f"malformed pax record at offset {offset + pos}: length {length} is too small"
            )
        if pos + length > end:
            raise CorruptArchive(
                f"malformed pax record at offset {offset + pos}: length {length} "
                "runs past the end of the header"
            )
        record = data[space + 1 : pos + length]
        equals = record.find(b"=")
        if record[-1:] != b"\n" or equals <= 0:
            raise CorruptArchive(f"malformed pax record at offset {offset + pos}")
        try:
            key = record[:equals].decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptArchive(f"pax record key is not UTF-8 at offset {offset + pos}") from None
        records[key] = record[equals + 1 : -1]
        pos += length


def _pax_int(records: dict[str, bytes], key: str, offset: int) -> int | None:
    raw = records.get(key)
    if raw is None:
        return None
    if not raw.isdigit():
        raise CorruptArchive(f"pax {key}={raw[:40]!r} is not a non-negative integer (at {offset})")
    if len(raw) > 20:
        raise ArchiveLimit(f"pax {key} has more than 20 digits (at offset {offset})")
    return int(raw)


def _pax_time_ns(raw: bytes, offset: int) -> int:
    """A pax time (``[-]seconds[.fraction]``) in nanoseconds, truncated, never rounded."""
    negative = raw.startswith(b"-")
    body = raw[1:] if negative else raw
    seconds, _, fraction = body.partition(b".")
    if not seconds.isdigit() or (fraction and not fraction.isdigit()) or len(seconds) > 20:
        raise CorruptArchive(f"invalid pax time {raw[:40]!r} at offset {offset}")
    ns = int(seconds) * 1_000_000_000 + int((fraction[:9] or b"0").ljust(9, b"0"))
    return -ns if negative else ns


def _xattr_name_unquote(name: str) -> str:
    """LIBARCHIVE.xattr.* names are %-encoded."""
    from urllib.parse import unquote

    return unquote(name, errors="surrogateescape")


class TarReader:
    """Iterate the entries of an uncompressed tar stream, hashing every byte.

    Use it as ``for entry in reader:`` and read a file's content with
    :meth:`chunks` before asking for the next entry (unread content is
    skipped). After the iteration ended, :attr:`diff_id` and :attr:`size`
    describe the whole stream.
    """

    def __init__(
        self,
        stream: IO[bytes],
        limits: Limits | None = None,
        *,
        read_ahead: bool = False,
        compiled: bool = True,
    ) -> None:
        self._read = stream.read
        # readinto1 (one read of the raw stream) hands a pipe's bytes over as they
        # come, where readinto would wait for a whole buffer
        self._readinto = getattr(stream, "readinto1", None) or getattr(stream, "readinto", None)
        self.limits = limits or Limits()
        #: names this long or shorter need no component or PATH_MAX check
        self._short_path = min(self.limits.max_component, self.limits.max_path - 1)
        #: the compiled parser takes the entries it is sure about (``compiled=False``:
        #: this module parses everything, as without a C compiler)
        self._fast = _fast_next_entry if compiled else None
        self._hasher = _Hasher()
        #: bytes read from the stream so far
        self.size = 0
        #: the unparsed bytes are ``_buf[_pos:]``; ``_buf`` views a buffer of the hasher's pool
        self._buf = _EMPTY
        self._pos = 0
        self._left = 0  # content bytes of the current entry not consumed yet
        self._pad = 0  # padding after the current entry's content
        self._regions: list[tuple[int, int]] | None = None
        self._finished = False
        self._ahead: _ReadAhead | None = None
        #: a regular file is mapped whole: parsed and written from with no read copy
        self._mapped = _MappedFile.of(stream)
        if self._mapped is not None:
            self._buf = self._mapped.view
            self.size = len(self._buf)
        elif read_ahead:
            #: a thread reads and hashes the stream ahead of the parser
            self._ahead = _ReadAhead(self._read_into)

    def close(self) -> None:
        """Stop the threads: after it returns none touches the stream, so the
        caller may close it. Required with ``read_ahead`` or a regular file."""
        if self._ahead is not None:
            self._ahead.close()
        if self._mapped is not None:
            self._buf = _EMPTY
            self._mapped.close()

    # -- low level ------------------------------------------------------------

    @property
    def offset(self) -> int:
        """Bytes of the stream consumed by parsing so far."""
        return self.size - (len(self._buf) - self._pos)

    @property
    def diff_id(self) -> str:
        """``sha256:<hex>`` of the bytes read; the diff id once the stream ended."""
        if self._mapped is not None:
            return "sha256:" + self._mapped.hexdigest()
        if self._ahead is not None:
            return "sha256:" + self._ahead.sha.hexdigest()
        return "sha256:" + self._hasher.hexdigest()

    def _fill(self) -> bool:
        """Read up to CHUNK more bytes after the unparsed ones; False at the end.

        The bytes land in a spare buffer of the hasher's pool (a buffer comes
        back once hashed and no longer parsed), so the read neither allocates
        nor page-faults, and the hasher sees the very bytes that are parsed.
        """
        if self._mapped is not None:
            return False  # the whole file is in the buffer already
        buf = self._buf
        carry = buf[self._pos :].tobytes() if self._pos < len(buf) else b""
        self._buf = _EMPTY  # the old buffer is ours no more: it may come back as spare
        self._pos = 0
        if self._ahead is not None:
            return self._fill_ahead(carry)
        kept = len(carry)
        hasher = self._hasher
        buffer = hasher.spare(kept + CHUNK)
        view = memoryview(buffer)
        if kept:
            view[:kept] = carry
        try:
            n = self._read_into(view[kept : kept + CHUNK])
        except BaseException:
            hasher.give_back(buffer)
            raise
        if not n:
            hasher.give_back(buffer)
            self._buf = memoryview(carry)
            return False
        hasher.update(view[kept : kept + n], buffer)
        self.size += n
        self._buf = view[: kept + n]
        return True

    def _fill_ahead(self, carry: bytes) -> bool:
        """:meth:`_fill` from the read-ahead thread's next buffer (already hashed)."""
        got = self._ahead.take()  # type: ignore[union-attr]
        if got is None:
            self._buf = memoryview(carry)
            return False
        buffer, n = got
        kept = len(carry)
        view = memoryview(buffer)
        if kept <= _RESERVE:  # the leftover goes in front of the new bytes: no big copy
            start = _RESERVE - kept
            view[start:_RESERVE] = carry
            self._buf = view[start : _RESERVE + n]
        else:  # a big pax header across two reads: rare
            self._buf = memoryview(carry + view[_RESERVE : _RESERVE + n].tobytes())
        self.size += n
        return True

    def _read_into(self, view: memoryview) -> int:
        """One read of the stream into ``view``: readinto when the stream has it."""
        if self._readinto is not None:
            try:
                return self._readinto(view) or 0
            except (NotImplementedError, io.UnsupportedOperation):
                self._readinto = None  # a stream that only implements read()
        data = self._read(len(view)) or b""
        view[: len(data)] = data
        return len(data)

    def _take(self, n: int, what: str) -> bytes:
        while len(self._buf) - self._pos < n:
            if not self._fill():
                raise CorruptArchive(
                    f"the tar stream is truncated: it ends inside {what} (at offset {self.size})"
                )
        start = self._pos
        self._pos = start + n
        return self._buf[start : self._pos].tobytes()

    def _skip(self, n: int) -> None:
        avail = len(self._buf) - self._pos
        while n > avail:
            n -= avail
            self._buf, self._pos = _EMPTY, 0
            if not self._fill():
                raise CorruptArchive(
                    f"the tar stream is truncated: it ends inside an entry's content "
                    f"(at offset {self.size})"
                )
            avail = len(self._buf)
        self._pos += n

    def _block_or_eof(self) -> bytes | None:
        """The next 512-byte block, or None at a clean end of stream."""
        if len(self._buf) - self._pos < BLOCK:
            while len(self._buf) - self._pos < BLOCK:
                if not self._fill():
                    if self._pos == len(self._buf):
                        return None
                    raise CorruptArchive(
                        f"the tar stream is truncated: it ends inside a header "
                        f"(at offset {self.size})"
                    )
        start = self._pos
        self._pos = start + BLOCK
        return self._buf[start : self._pos].tobytes()

    # -- content ------------------------------------------------------------------

    def content(self) -> memoryview | None:
        """The current file's whole content as one view, when it is in the read
        buffer already and the file is not sparse (most small files); else None,
        and :meth:`chunks` hands it out. The view is valid until the next call
        into the reader."""
        n = self._left
        pos = self._pos
        if self._regions is not None or len(self._buf) - pos < n:
            return None
        self._pos = pos + n
        self._left = 0
        return self._buf[pos : pos + n]

    def chunks(self) -> Iterator[tuple[int, memoryview]]:
        """The current file's content as ``(file offset, view)`` pieces, in order.

        A view is valid until the next call into the reader. Sparse files give
        only their data regions; the holes are implied by the offsets and
        :attr:`TarEntry.size`.
        """
        regions = self._regions
        if regions is None:
            regions = [(0, self._left)]
        self._regions = []
        for start, length in regions:
            offset = start
            remaining = length
            while remaining:
                avail = len(self._buf) - self._pos
                if not avail:
                    if not self._fill():
                        raise CorruptArchive(
                            f"the tar stream is truncated: it ends inside a file's content "
                            f"(at offset {self.size})"
                        )
                    avail = len(self._buf)
                n = min(avail, remaining)
                view = self._buf[self._pos : self._pos + n]
                self._pos += n
                self._left -= n
                remaining -= n
                yield offset, view
                offset += n

    # -- entries ---------------------------------------------------------------------

    def __iter__(self) -> Iterator[TarEntry]:
        while (entry := self.next()) is not None:
            yield entry

    def next(self) -> TarEntry | None:
        """The next entry, or None after the end of the archive."""
        if self._finished:
            return None
        skip = self._left + self._pad
        if skip:
            if len(self._buf) - self._pos >= skip:
                self._pos += skip
            else:
                self._skip(skip)
            self._left = self._pad = 0
        self._regions = None
        if self._fast is not None:
            buf = self._buf
            pos = self._pos
            got = self._fast(buf, pos, self._short_path, self.limits.max_pax_size)
            if got is not None:
                kind, path, mode, uid, gid, size, mtime_ns, link, major, minor, xattrs, at = got
                self._pos = at
                self._left = size
                self._pad = -size % BLOCK
                return TarEntry(
                    path, _FAST_KINDS[kind], mode, uid, gid, size, mtime_ns, link, major, minor,
                    {} if xattrs is None else xattrs, None, self.size - len(buf) + pos,
                )  # fmt: skip
        pax: dict[str, bytes] | None = None
        longname: bytes | None = None
        longlink: bytes | None = None
        first = -1
        while True:
            buf = self._buf
            pos = self._pos
            offset = self.size - len(buf) + pos
            if first < 0:
                first = offset
            if len(buf) - pos >= BLOCK:
                self._pos = pos + BLOCK
                block: bytes | None = buf[pos : pos + BLOCK].tobytes()
            else:
                block = self._block_or_eof()
            if block is None or block == _ZERO_BLOCK:
                if block is not None:
                    second = self._block_or_eof()
                    if second is not None and second != _ZERO_BLOCK:
                        raise CorruptArchive(
                            f"a single zero block followed by data at offset {offset}"
                        )
                if pax is not None or longname is not None or longlink is not None:
                    raise CorruptArchive(
                        f"the archive ends after an extended header at offset {first}"
                    )
                if block is None and offset == 0:
                    raise CorruptArchive("the stream is empty: not a tar archive")
                self._finish()
                return None
            chksum = block[148:156]
            # the byte sum in C: Adler-32's first half is 1 + the byte sum modulo 65521,
            # exact for 256 bytes (at most 65280); much faster than sum(block)
            total = _CHECKSUM_TOTALS.get(chksum)
            if total is None:
                total = _checksum_total(chksum, offset)
            if total != (adler32(block[:256]) & 0xFFFF) + (
                adler32(block[256:]) & 0xFFFF
            ) - 2 and _number(chksum, "checksum", offset) != _signed_checksum(block):
                raise CorruptArchive(
                    f"not a tar stream, or a corrupt one: bad header checksum at offset {offset}"
                )
            size = block[124:136]
            data_size = _NUMBERS.get(size)
            if data_size is None:
                data_size = _number(size, "size", offset)
            if data_size < 0:
                raise CorruptArchive(f"negative size in the header at offset {offset}")
            typeflag = block[156]
            if typeflag in _EXTENSION_TYPES:
                data = self._extension(typeflag, data_size, offset)
                if typeflag == 0x78 or typeflag == 0x58:  # x, X
                    records = _pax_records(data, offset + BLOCK)
                    if pax is None:
                        pax = records
                    else:
                        pax.update(records)
                elif typeflag == 0x4C:  # L
                    longname = _cstr(data)
                elif typeflag == 0x4B:  # K
                    longlink = _cstr(data)
                continue
            entry = self._header(block, typeflag, data_size, offset, pax, longname, longlink)
            if entry is not None:
                entry.offset = first
                return entry

    def _extension(self, typeflag: int, data_size: int, offset: int) -> bytes:
        """The data of an extension header (pax, GNU long name), within the limit."""
        limit = self.limits.max_pax_size
        if data_size > limit:
            what = "pax header" if typeflag in _PAX_TYPES else "GNU long name"
            raise ArchiveLimit(
                f"{what} of {data_size} bytes at offset {offset} exceeds the limit of {limit} bytes"
            )
        end = self._pos + data_size
        if end <= len(self._buf):
            data = self._buf[self._pos : end].tobytes()
            self._pos = end
        else:
            data = self._take(data_size, "an extended header")
        pad = -data_size % BLOCK
        if len(self._buf) - self._pos >= pad:
            self._pos += pad
        else:
            self._skip(pad)
        if typeflag == 0x67:  # g
            _pax_records(data, offset + BLOCK)  # validated, then ignored
        return data

    def _header(
        self,
        block: bytes,
        typeflag: int,
        data_size: int,
        offset: int,
        pax: dict[str, bytes] | None,
        longname: bytes | None,
        longlink: bytes | None,
    ) -> TarEntry | None:
        """Parse an entry's header block (its extensions folded in); None for a volume label."""
        if typeflag == 0x56:  # V: a GNU volume label, not a file
            self._skip(data_size + (-data_size % BLOCK))
            return None
        (
            name,
            mode,
            uid,
            gid,
            _size,
            mtime,
            _chksum,
            _typeflag,
            linkname,
            magic,
            _version,
            _uname,
            _gname,
            devmajor,
            devminor,
            prefix,
        ) = _HEADER.unpack(block)

        kind = _KINDS_BY_FLAG.get(typeflag)
        sparse: list[tuple[int, int]] | None = None
        real_size = data_size
        if kind is None:
            if typeflag == 0x53:  # S: old GNU sparse file
                kind = FILE
                sparse, real_size = self._old_gnu_sparse(block, offset)
            else:
                raise CorruptArchive(
                    f"unsupported tar entry type {bytes([typeflag])!r} in the header "
                    f"at offset {offset}"
                )

        # the name: pax path > GNU long name > ustar prefix/name
        if pax is not None and "path" in pax:
            raw_name = pax["path"]
        elif longname is not None:
            raw_name = longname
        else:
            raw_name = name.partition(b"\0")[0]
            if prefix[0] and magic == b"ustar\0":
                raw_name = prefix.partition(b"\0")[0] + b"/" + raw_name

        numbers = _NUMBERS
        mode_value = numbers.get(mode)
        if mode_value is None:
            mode_value = _number(mode, "mode", offset)
        uid_value = numbers.get(uid)
        if uid_value is None:
            uid_value = _number(uid, "uid", offset)
        gid_value = numbers.get(gid)
        if gid_value is None:
            gid_value = _number(gid, "gid", offset)
        # a pax mtime replaces the header's (parsed later): skip the work then
        if pax is not None and "mtime" in pax:
            mtime_ns = 0
        else:
            mtime_ns = _number(mtime, "mtime", offset) * 1_000_000_000
        entry = TarEntry("", kind, mode_value & 0o7777, uid_value, gid_value, 0, mtime_ns)
        if kind is CHAR or kind is BLOCKDEV:
            entry.devmajor = _number(devmajor, "devmajor", offset)
            entry.devminor = _number(devminor, "devminor", offset)
        if typeflag == 0 and raw_name.endswith(b"/"):
            entry.kind = kind = DIR  # v7 archives mark directories by a trailing slash (as Go)

        if pax:
            raw_name, real_size, data_size, sparse = self._apply_pax(
                entry, pax, offset, raw_name, real_size, data_size, sparse
            )

        if entry.uid < 0 or entry.gid < 0:
            raise CorruptArchive(f"negative owner in the header at offset {offset}")
        if 0 < len(raw_name) <= self._short_path and 0 not in raw_name:
            entry.path = raw_name.decode("utf-8", "surrogateescape")  # the common case
        else:
            entry.path = self._check_path(raw_name, offset, "name")
        if kind is SYMLINK or kind is HARDLINK:
            if pax is not None and "linkpath" in pax:
                raw_link = pax["linkpath"]
            elif longlink is not None:
                raw_link = longlink
            else:
                raw_link = linkname.partition(b"\0")[0]
            # a symlink target is only a string: the kernel limits its length, not its parts
            entry.linkname = self._check_path(
                raw_link, offset, "link target", components=kind is HARDLINK
            )

        if kind in _HEADER_ONLY:
            data_size = 0
        self._left = data_size
        self._pad = -data_size % BLOCK
        if sparse is not None:
            if pax is not None and pax.get("GNU.sparse.major") == b"1":
                sparse = self._pax_sparse_map(offset)
            self._check_regions(sparse, real_size, self._left, offset)
            self._regions = sparse
            entry.sparse = sparse
        if kind is FILE:
            entry.size = data_size if sparse is None else real_size
        return entry

    def _apply_pax(
        self,
        entry: TarEntry,
        pax: dict[str, bytes],
        offset: int,
        raw_name: bytes,
        real_size: int,
        data_size: int,
        sparse: list[tuple[int, int]] | None,
    ) -> tuple[bytes, int, int, list[tuple[int, int]] | None]:
        """Fold pax records into the entry; returns the values that depend on them."""
        if "size" in pax:
            data_size = real_size = _pax_int(pax, "size", offset)  # type: ignore[assignment]
        if "uid" in pax:
            entry.uid = _pax_int(pax, "uid", offset)  # type: ignore[assignment]
        if "gid" in pax:
            entry.gid = _pax_int(pax, "gid", offset)  # type: ignore[assignment]
        if "mtime" in pax:
            entry.mtime_ns = _pax_time_ns(pax["mtime"], offset)
        if pax.keys() <= _PLAIN_PAX_KEYS:
            return raw_name, real_size, data_size, sparse  # no xattrs, not sparse
        for key, raw in pax.items():
            if key.startswith("SCHILY.xattr."):
                entry.xattrs[key[len("SCHILY.xattr.") :]] = raw
            elif key.startswith("LIBARCHIVE.xattr."):
                import base64
                import binascii

                try:
                    decoded = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
                except binascii.Error:
                    raise CorruptArchive(
                        f"invalid base64 in pax {key} at offset {offset}"
                    ) from None
                name = _xattr_name_unquote(key[len("LIBARCHIVE.xattr.") :])
                entry.xattrs.setdefault(name, decoded)
        if "GNU.sparse.major" in pax or "GNU.sparse.map" in pax or "GNU.sparse.size" in pax:
            major = pax.get("GNU.sparse.major", b"0")
            minor = pax.get("GNU.sparse.minor", b"1" if "GNU.sparse.map" in pax else b"0")
            if "GNU.sparse.name" in pax:
                raw_name = pax["GNU.sparse.name"]
            if (major, minor) == (b"1", b"0"):
                size = _pax_int(pax, "GNU.sparse.realsize", offset)
                sparse = []  # the map is read from the data, once the size is known
            elif (major, minor) == (b"0", b"1"):
                size = _pax_int(pax, "GNU.sparse.size", offset)
                sparse = self._pax_01_map(pax.get("GNU.sparse.map", b""), offset)
            else:
                raise CorruptArchive(
                    f"unsupported GNU sparse format {major!r}.{minor!r} at offset {offset}"
                )
            if size is None:
                raise CorruptArchive(f"GNU sparse entry without a real size at offset {offset}")
            real_size = size
            entry.kind = FILE
        return raw_name, real_size, data_size, sparse

    # -- sparse maps ---------------------------------------------------------------

    def _too_many_regions(self, count: int, offset: int) -> ArchiveLimit:
        return ArchiveLimit(
            f"sparse file at offset {offset} has {count} or more data regions, "
            f"more than the limit of {self.limits.max_sparse_entries}"
        )

    def _old_gnu_sparse(self, block: bytes, offset: int) -> tuple[list[tuple[int, int]], int]:
        """Old GNU ``S`` headers: 4 regions in the header, 21 per extension block."""
        regions: list[tuple[int, int]] = []

        def read_regions(area: bytes, count: int) -> None:
            for i in range(count):
                raw_offset = area[i * 24 : i * 24 + 12]
                if not raw_offset.strip(b"\0"):
                    return
                regions.append(
                    (
                        _number(raw_offset, "sparse offset", offset),
                        _number(area[i * 24 + 12 : i * 24 + 24], "sparse length", offset),
                    )
                )

        read_regions(block[386:482], 4)
        real_size = _number(block[483:495], "sparse real size", offset)
        extended = block[482]
        while extended:
            if len(regions) >= self.limits.max_sparse_entries:
                raise self._too_many_regions(len(regions), offset)
            ext = self._take(BLOCK, "a sparse header")
            read_regions(ext[:504], 21)
            extended = ext[504]
        return regions, real_size

    def _pax_01_map(self, raw: bytes, offset: int) -> list[tuple[int, int]]:
        if raw.count(b",") + 1 > 2 * self.limits.max_sparse_entries:
            raise self._too_many_regions(raw.count(b",") // 2, offset)
        numbers = raw.split(b",") if raw else []
        if len(numbers) % 2 or not all(n.isdigit() for n in numbers):
            raise CorruptArchive(f"malformed GNU.sparse.map at offset {offset}")
        values = [int(n) for n in numbers]
        return list(zip(values[0::2], values[1::2], strict=True))

    def _pax_sparse_map(self, offset: int) -> list[tuple[int, int]]:
        """Format 1.0: decimal lines at the start of the data, padded to a block."""
        text = b""
        numbers: list[int] = []
        wanted = 1
        consumed = 0
        while len(numbers) < wanted:
            if consumed + BLOCK > self._left:
                raise CorruptArchive(f"GNU sparse map runs past the entry at offset {offset}")
            text += self._take(BLOCK, "a sparse map")
            consumed += BLOCK
            lines = text.split(b"\n")
            text = lines.pop()
            for line in lines:
                if not line.isdigit() or len(line) > 20:
                    raise CorruptArchive(f"malformed GNU sparse map at offset {offset}")
                numbers.append(int(line))
                if len(numbers) == 1:
                    if numbers[0] > self.limits.max_sparse_entries:
                        raise self._too_many_regions(numbers[0], offset)
                    wanted = 1 + 2 * numbers[0]
                if len(numbers) == wanted:
                    break
            if len(numbers) < wanted and len(text) > 20:
                raise CorruptArchive(f"malformed GNU sparse map at offset {offset}")
        self._left -= consumed
        values = numbers[1:]
        return list(zip(values[0::2], values[1::2], strict=True))

    def _check_regions(
        self, regions: list[tuple[int, int]], real_size: int, stored: int, offset: int
    ) -> None:
        if len(regions) > self.limits.max_sparse_entries:
            raise self._too_many_regions(len(regions), offset)
        end = 0
        total = 0
        for start, length in regions:
            if start < end or length < 0 or start + length > real_size:
                raise CorruptArchive(f"invalid sparse map at offset {offset}")
            end = start + length
            total += length
        if total != stored:
            raise CorruptArchive(
                f"sparse map at offset {offset} describes {total} bytes of data "
                f"but the entry stores {stored}"
            )

    # -- names and the end ------------------------------------------------------------

    def _check_path(self, raw: bytes, offset: int, what: str, *, components: bool = True) -> str:
        if b"\0" in raw:
            raise CorruptArchive(f"the entry {what} at offset {offset} contains a NUL byte")
        if not raw:
            raise CorruptArchive(f"the entry at offset {offset} has an empty {what}")
        limits = self.limits
        if len(raw) >= limits.max_path:
            raise ArchiveLimit(
                f"the entry {what} at offset {offset} is {len(raw)} bytes long, "
                f"longer than PATH_MAX ({limits.max_path})"
            )
        if (
            components
            and len(raw) > limits.max_component
            and any(len(part) > limits.max_component for part in raw.split(b"/"))
        ):
            raise ArchiveLimit(
                f"the entry {what} at offset {offset} has a component longer than "
                f"{limits.max_component} bytes"
            )
        return _decode(raw)

    def _finish(self) -> None:
        """After the end marker: hash what follows up to the end, within the cap."""
        self._finished = True
        limit = self.limits.max_trailing
        trailing = len(self._buf) - self._pos
        self._buf, self._pos = _EMPTY, 0
        while trailing <= limit and self._fill():
            trailing += len(self._buf)
            self._buf, self._pos = _EMPTY, 0
        if trailing > limit:
            raise ArchiveLimit(
                f"more than {limit} bytes follow the end of the tar archive",
                hint="the layer stream carries data after its end; it is malformed or hostile",
            )


class _Hasher:
    """sha256 of a stream, computed on the process-wide hashing thread, and the
    pool of read buffers that the hash hands back.

    hashlib drops the GIL while it hashes a big buffer, so the hash runs on the
    second core while the applier parses and writes. The hand-off is one queue
    put per CHUNK and the reader never waits for the hash, except when
    :data:`_HASH_IN_FLIGHT` chunks are still queued (memory stays bounded) or
    when it asks for the digest. One worker thread serves every reader in FIFO
    order, so each reader's chunks are hashed in stream order.
    """

    __slots__ = ("_error", "_free", "_made", "_sha", "_slots")

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._slots = threading.Semaphore(_HASH_IN_FLIGHT)
        self._error: BaseException | None = None
        #: pooled buffers the hash is done with
        self._free: SimpleQueue[bytearray] = SimpleQueue()
        self._made = 0

    def spare(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes that nobody uses; the caller must
        have let go of the buffer it parsed before (a spare may be that one)."""
        if size > _BUFFER_SIZE:
            return bytearray(size)  # a huge leftover (a pax header): not pooled
        free = self._free
        if not free.empty() or self._made > _HASH_IN_FLIGHT:
            return free.get()  # waits for the hash only when all are in flight
        self._made += 1
        return bytearray(_BUFFER_SIZE)

    def give_back(self, buffer: bytearray) -> None:
        """A spare that was not used after all."""
        if len(buffer) == _BUFFER_SIZE:
            self._free.put(buffer)

    def update(self, data: memoryview, buffer: bytearray) -> None:
        """Hash ``data`` (a view of ``buffer``), then put ``buffer`` back in the pool."""
        self._slots.acquire()
        _hash_queue().put((self, data, buffer))

    def _work(self, data: memoryview, buffer: bytearray) -> None:
        """On the worker thread."""
        try:
            self._sha.update(data)
        except BaseException as exc:  # re-raised by hexdigest
            self._error = exc
        finally:
            data.release()
            self.give_back(buffer)
            self._slots.release()

    def hexdigest(self) -> str:
        """Waits until every queued chunk is hashed."""
        for _ in range(_HASH_IN_FLIGHT):
            self._slots.acquire()
        self._slots.release(_HASH_IN_FLIGHT)
        if self._error is not None:
            raise self._error
        return self._sha.hexdigest()


class _ReadAhead:
    """Reads and hashes a stream on a thread of its own, a few buffers ahead of
    the parser: the read (a copy, or a decompression) and the hash overlap the
    applier's writes, and the parser gets bytes that are hashed already.

    Memory is bounded: :data:`_AHEAD` buffers circulate between the thread and
    the parser. A stream error is raised to the parser where it would have met
    it. :meth:`close` returns only once the thread touches the stream no more.
    """

    def __init__(self, read_into: Callable[[memoryview], int]) -> None:
        self.sha = hashlib.sha256()
        self._free: SimpleQueue[bytearray | None] = SimpleQueue()
        self._ready: SimpleQueue[tuple[bytearray | None, int, BaseException | None]] = SimpleQueue()
        #: buffers made so far, and how many may circulate (made on demand by the
        #: thread: a small stream never pays for zeroing them all)
        self._made = 0
        self.limit = _AHEAD
        self._current: bytearray | None = None
        self._end: BaseException | bool | None = False
        self._stop = False
        self._thread = threading.Thread(
            target=self._run, args=(read_into,), name="lamina-read", daemon=True
        )
        self._thread.start()

    def _run(self, read_into: Callable[[memoryview], int]) -> None:
        free, ready, update = self._free, self._ready, self.sha.update
        while True:
            if free.empty() and self._made < self.limit:
                self._made += 1
                buffer: bytearray | None = bytearray(_RESERVE + _AHEAD_CHUNK)
            else:
                buffer = free.get()
            if buffer is None or self._stop:
                return
            view = memoryview(buffer)[_RESERVE:]
            try:
                n = read_into(view)
                if n:
                    update(view[:n])
            except BaseException as exc:  # the parser raises it
                ready.put((None, 0, exc))
                return
            if not n:
                ready.put((None, 0, None))
                return
            ready.put((buffer, n, None))

    def take(self) -> tuple[bytearray, int] | None:
        """The next buffer and how many bytes it holds after the reserve; None at
        the end. The previous buffer goes back to the thread: let go of it first."""
        if self._current is not None:
            self._free.put(self._current)
            self._current = None
        if self._end is not False:
            if isinstance(self._end, BaseException):
                raise self._end
            return None
        buffer, n, exc = self._ready.get()
        if buffer is None:
            self._end = exc
            if exc is not None:
                raise exc
            return None
        self._current = buffer
        return buffer, n

    def close(self) -> None:
        self._stop = True
        self._free.put(None)
        self._thread.join()


class _MappedFile:
    """A regular file mapped read-only, hashed from the mapping on a thread of its own.

    Mapping saves the read copies (~0.04 s of a 211 MB layer) and the hand-over
    of buffers between threads: the parser sees the whole stream as one buffer
    and file content is written straight from the page cache. The hash runs
    ahead of the parser, independently, and stops early when the reader is
    closed (a corrupt layer found at its start costs no hash of its rest).

    A file that shrinks while it is mapped kills the process with SIGBUS (the
    kernel's rule for mappings); the store then recovers as after any kill (the
    incomplete layer is removed on the next start). Appending is harmless.
    """

    def __init__(self, mapping: mmap.mmap, start: int) -> None:
        self._map = mapping
        self.view = memoryview(mapping)[start:]
        #: bytes of the stream (the file from where the caller stood)
        self.length = len(self.view)
        self._sha = hashlib.sha256()
        self._stop = False
        self._error: BaseException | None = None
        #: bytes hashed so far
        self.hashed = 0
        self._thread = threading.Thread(
            target=self._run, args=(memoryview(mapping)[start:],), name="lamina-hash-map",
            daemon=True,
        )
        self._thread.start()

    @classmethod
    def of(cls, stream: object) -> _MappedFile | None:
        """The mapping of ``stream`` from its current position, when it is a
        regular file with something left to read; else None (read it instead)."""
        fileno = getattr(stream, "fileno", None)
        tell = getattr(stream, "tell", None)
        if fileno is None or tell is None:
            return None
        try:
            fd = fileno()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            start = tell()
            if not 0 <= start < st.st_size:
                return None
            mapping = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        except (OSError, ValueError, io.UnsupportedOperation):
            return None  # not mappable here (a pipe, a /proc file, an odd filesystem)
        return cls(mapping, start)

    def _run(self, view: memoryview) -> None:
        update = self._sha.update
        try:
            for start in range(0, len(view), _MAP_HASH_STEP):
                if self._stop:
                    return
                update(view[start : start + _MAP_HASH_STEP])
                self.hashed = min(len(view), start + _MAP_HASH_STEP)
        except BaseException as exc:  # re-raised by hexdigest
            self._error = exc
        finally:
            view.release()

    def hexdigest(self) -> str:
        """Waits for the hash of the whole file."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self.hashed < self.length:  # closed first: never a digest of a part
            raise RuntimeError("the tar reader was closed before its diff id was asked")
        return self._sha.hexdigest()

    def close(self) -> None:
        """Stop hashing and unmap, once nobody views the mapping any more."""
        self._stop = True
        self._thread.join()
        self.view.release()
        # a caller may still hold a content view: the mapping then goes with it
        with contextlib.suppress(BufferError):
            self._map.close()


_QUEUE: SimpleQueue[tuple[_Hasher, memoryview, bytearray]] | None = None


def _hash_queue() -> SimpleQueue[tuple[_Hasher, memoryview, bytearray]]:
    """The queue of the process-wide hashing thread, started on first use."""
    global _QUEUE
    if _QUEUE is None:
        queue: SimpleQueue[tuple[_Hasher, memoryview, bytearray]] = SimpleQueue()
        threading.Thread(target=_hash_loop, args=(queue,), name="lamina-hash", daemon=True).start()
        _QUEUE = queue
    return _QUEUE


def _hash_loop(queue: SimpleQueue[tuple[_Hasher, memoryview, bytearray]]) -> None:
    get = queue.get
    while True:
        hasher, data, buffer = get()
        hasher._work(data, buffer)
        del hasher, data, buffer  # hold no buffer while waiting


def _forget_worker() -> None:
    """A forked child has no hashing thread: it must start its own, not queue forever."""
    global _QUEUE
    _QUEUE = None


os.register_at_fork(after_in_child=_forget_worker)


def _signed_checksum(block: bytes) -> int:
    """The historic checksum over signed chars, still written by some old tars."""
    values = struct.unpack("512b", block)
    return sum(values[:148]) + sum(values[156:]) + 8 * 32
