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

Speed: a regular file is mapped whole instead of read (:class:`.source.MappedFile`),
and the well-formed common case of a header is parsed by the compiled
``_tarfast`` module, which hands everything else back to the parser here.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from typing import IO, NamedTuple
from zlib import adler32

from ..errors import ArchiveLimit, CorruptArchive
from .source import CHUNK, RESERVE, Hasher, MappedFile, ReadAhead

try:  # the compiled common case (core/layertar/_tarfast.c); without it this module does all
    from ._tarfast import next_entry as _fast_next_entry
except ImportError:  # pragma: no cover - built without a C compiler
    _fast_next_entry = None

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_EMPTY = memoryview(b"")

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
        self._hasher = Hasher()
        #: bytes read from the stream so far
        self.size = 0
        #: the unparsed bytes are ``_buf[_pos:]``; ``_buf`` views a buffer of the hasher's pool
        self._buf = _EMPTY
        self._pos = 0
        self._left = 0  # content bytes of the current entry not consumed yet
        self._pad = 0  # padding after the current entry's content
        self._regions: list[tuple[int, int]] | None = None
        self._finished = False
        self._ahead: ReadAhead | None = None
        #: a regular file is mapped whole: parsed and written from with no read copy
        self._mapped = MappedFile.of(stream)
        if self._mapped is not None:
            self._buf = self._mapped.view
            self.size = len(self._buf)
        elif read_ahead:
            #: a thread reads and hashes the stream ahead of the parser
            self._ahead = ReadAhead(self._read_into, abort=getattr(stream, "abort", None))

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
            return "sha256:" + self._ahead.hexdigest()
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
        """:meth:`_fill` from the read-ahead thread's next buffer (its hash is under way)."""
        got = self._ahead.take()  # type: ignore[union-attr]
        if got is None:
            self._buf = memoryview(carry)
            return False
        buffer, n = got
        kept = len(carry)
        view = memoryview(buffer)
        if kept <= RESERVE:  # the leftover goes in front of the new bytes: no big copy
            start = RESERVE - kept
            view[start:RESERVE] = carry
            self._buf = view[start : RESERVE + n]
        else:  # a big pax header across two reads: rare
            self._buf = memoryview(carry + view[RESERVE : RESERVE + n].tobytes())
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


def _signed_checksum(block: bytes) -> int:
    """The historic checksum over signed chars, still written by some old tars."""
    values = struct.unpack("512b", block)
    return sum(values[:148]) + sum(values[156:]) + 8 * 32
