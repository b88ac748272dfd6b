"""Build layer tars byte by byte, including ones no honest tool would write.

Tests of the reader, the applier, the hostile-input cases and the conformance
suite need tars with exact, sometimes malformed, entries. The stdlib
``tarfile`` refuses or normalises much of that, so :class:`TarBuilder` writes
headers itself. Every method returns the builder, so entries chain::

    tar = (TarBuilder()
           .dir("etc", mode=0o755)
           .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\\n", mtime=1_700_000_000.25)
           .symlink("etc2", "/etc")
           .whiteout("usr/old")
           .bytes())

Names longer than ustar allows, xattrs and sub-second mtimes are written as
pax records (or GNU ``L``/``K`` headers with ``format="gnu"``). The hostile
helpers (:meth:`TarBuilder.pax`, :meth:`TarBuilder.raw_header`,
:meth:`TarBuilder.raw`) write exactly what they are given.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Literal

from lamina.core.layertar.reader import FILE, TarEntry, TarReader

BLOCK = 512
#: default mtime of entries: a fixed second, so archives are reproducible
DEFAULT_MTIME = 1_700_000_000

Format = Literal["pax", "gnu", "ustar"]
SparseFormat = Literal["pax1.0", "pax0.1", "oldgnu"]


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _octal(value: int, width: int) -> bytes:
    """A numeric field: octal with a NUL, or GNU base-256 when it does not fit."""
    digits = width - 1
    if 0 <= value < 8**digits:
        return b"%0*o\0" % (digits, value)
    if value < 0:
        value += 1 << (8 * width - 1)
        raw = bytearray(value.to_bytes(width, "big"))
        raw[0] |= 0xC0
        return bytes(raw)
    raw = bytearray(value.to_bytes(width, "big"))
    raw[0] |= 0x80
    return bytes(raw)


def pax_record(key: str | bytes, value: str | bytes) -> bytes:
    """One well-formed ``"<len> key=value\\n"`` record (the length counts itself)."""
    body = b" " + _b(key) + b"=" + _b(value) + b"\n"
    length = len(body) + len(str(len(body)))
    if len(str(length)) != len(str(len(body))):
        length += 1
    return str(length).encode() + body


def header(
    name: str | bytes,
    *,
    typeflag: bytes = b"0",
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = DEFAULT_MTIME,
    linkname: str | bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    prefix: str | bytes = b"",
    magic: bytes = b"ustar\x0000",
    uname: bytes = b"",
    gname: bytes = b"",
    chksum: bytes | None = None,
    gnu_tail: bytes = b"",
) -> bytes:
    """One 512-byte header block with the fields as given.

    Fields are cut to their width. ``chksum`` overrides the computed checksum
    (8 bytes); ``gnu_tail`` fills bytes 345-500 (old GNU sparse data) and
    replaces ``prefix`` when given.
    """
    block = bytearray(BLOCK)
    block[0:100] = _b(name)[:100].ljust(100, b"\0")
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(uid, 8)
    block[116:124] = _octal(gid, 8)
    block[124:136] = _octal(size, 12)
    block[136:148] = _octal(mtime, 12)
    block[148:156] = b" " * 8
    block[156:157] = typeflag[:1]
    block[157:257] = _b(linkname)[:100].ljust(100, b"\0")
    block[257:265] = magic[:8].ljust(8, b"\0")
    block[265:297] = uname[:32].ljust(32, b"\0")
    block[297:329] = gname[:32].ljust(32, b"\0")
    block[329:337] = _octal(devmajor, 8)
    block[337:345] = _octal(devminor, 8)
    if gnu_tail:
        block[345:500] = gnu_tail[:155].ljust(155, b"\0")
    else:
        block[345:500] = _b(prefix)[:155].ljust(155, b"\0")
    if chksum is None:
        block[148:156] = b"%06o\0 " % sum(block)
    else:
        block[148:156] = chksum[:8].ljust(8, b"\0")
    return bytes(block)


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


class TarBuilder:
    """An in-memory tar, built entry by entry (see the module docstring).

    ``format`` decides how long names are written: ``"pax"`` (pax records),
    ``"gnu"`` (``L``/``K`` headers, GNU magic) or ``"ustar"`` (prefix/name
    split only; too long is an error). xattrs and sub-second mtimes always
    use pax records.
    """

    def __init__(self, *, format: Format = "pax", mtime: float = DEFAULT_MTIME) -> None:
        self.format = format
        self.default_mtime = mtime
        self._out = io.BytesIO()

    # -- hostile / low level -------------------------------------------------------

    def raw(self, data: bytes) -> TarBuilder:
        """Append bytes as they are (no padding)."""
        self._out.write(data)
        return self

    def raw_header(
        self, name: str | bytes, *, data: bytes = b"", pad: bool = True, **fields: object
    ) -> TarBuilder:
        """Append one header built from ``fields`` (see :func:`header`) and ``data``.

        ``size`` defaults to ``len(data)`` but may lie; ``pad`` pads the data
        to a block.
        """
        fields.setdefault("size", len(data))
        self._out.write(header(name, **fields))  # type: ignore[arg-type]
        self._out.write(_padded(data) if pad else data)
        return self

    def pax(
        self,
        records: Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]] | bytes,
        *,
        typeflag: bytes = b"x",
        size: int | None = None,
    ) -> TarBuilder:
        """An extended header for the next entry (``typeflag=b"g"``: global).

        ``records`` as a mapping or pairs are encoded correctly; as bytes they
        are written verbatim (malformed records). ``size`` may lie.
        """
        if isinstance(records, bytes):
            data = records
        else:
            items = records.items() if isinstance(records, Mapping) else records
            data = b"".join(pax_record(k, v) for k, v in items)
        name = b"././@PaxHeader" if typeflag == b"x" else b"$GLOBAL/@PaxHeader"
        return self.raw_header(
            name, data=data, typeflag=typeflag, size=len(data) if size is None else size
        )

    def end(self) -> TarBuilder:
        """The end-of-archive marker (two zero blocks)."""
        self._out.write(bytes(2 * BLOCK))
        return self

    def bytes(self, *, end: bool = True) -> bytes:
        """The archive so far; with ``end`` plus the end-of-archive marker."""
        data = self._out.getvalue()
        return data + bytes(2 * BLOCK) if end else data

    def stream(self, *, end: bool = True) -> io.BytesIO:
        """The archive as a readable stream."""
        return io.BytesIO(self.bytes(end=end))

    # -- entries ---------------------------------------------------------------------

    def _entry(
        self,
        name: str | bytes,
        typeflag: bytes,
        *,
        data: bytes = b"",
        size: int | None = None,
        mode: int,
        uid: int = 0,
        gid: int = 0,
        mtime: float | None = None,
        mtime_ns: int | None = None,
        linkname: str | bytes = b"",
        xattrs: Mapping[str, bytes] | None = None,
        devmajor: int = 0,
        devminor: int = 0,
        extra_pax: Iterable[tuple[str, str | bytes]] = (),
    ) -> TarBuilder:
        raw_name = _b(name)
        raw_link = _b(linkname)
        records: list[tuple[str, str | bytes]] = list(extra_pax)
        if mtime_ns is None:
            mtime = self.default_mtime if mtime is None else mtime
            seconds = int(mtime // 1)
            fraction = mtime - seconds
            if fraction:
                records.append(("mtime", repr(mtime)))
        else:
            seconds = mtime_ns // 1_000_000_000
            if mtime_ns % 1_000_000_000:
                records.append(("mtime", f"{seconds}.{mtime_ns % 1_000_000_000:09d}"))
        for key, value in (xattrs or {}).items():
            records.append((f"SCHILY.xattr.{key}", value))
        prefix = b""
        magic = b"ustar  \0" if self.format == "gnu" else b"ustar\x0000"
        if len(raw_name) > 100:
            if self.format == "gnu":
                self.raw_header(b"././@LongLink", typeflag=b"L", data=raw_name + b"\0", magic=magic)
            elif self.format == "pax":
                records.append(("path", raw_name))
            else:
                cut = raw_name.rfind(b"/", 0, 156)
                if cut <= 0 or len(raw_name) - cut - 1 > 100:
                    raise ValueError(f"name too long for ustar: {raw_name!r}")
                prefix, raw_name = raw_name[:cut], raw_name[cut + 1 :]
        if len(raw_link) > 100:
            if self.format == "gnu":
                self.raw_header(b"././@LongLink", typeflag=b"K", data=raw_link + b"\0", magic=magic)
            else:
                records.append(("linkpath", raw_link))
        if records:
            self.pax(records)
        self._out.write(
            header(
                raw_name,
                typeflag=typeflag,
                size=len(data) if size is None else size,
                mode=mode,
                uid=uid,
                gid=gid,
                mtime=seconds,
                linkname=raw_link,
                devmajor=devmajor,
                devminor=devminor,
                prefix=prefix,
                magic=magic,
            )
        )
        self._out.write(_padded(data))
        return self

    def file(
        self,
        name: str | bytes,
        data: bytes = b"",
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: float | None = None,
        mtime_ns: int | None = None,
        xattrs: Mapping[str, bytes] | None = None,
        size: int | None = None,
    ) -> TarBuilder:
        """A regular file; ``size`` may lie about ``len(data)``."""
        return self._entry(
            name, b"0", data=data, size=size, mode=mode, uid=uid, gid=gid,
            mtime=mtime, mtime_ns=mtime_ns, xattrs=xattrs,
        )  # fmt: skip

    def dir(
        self,
        name: str | bytes,
        *,
        mode: int = 0o755,
        uid: int = 0,
        gid: int = 0,
        mtime: float | None = None,
        mtime_ns: int | None = None,
        xattrs: Mapping[str, bytes] | None = None,
    ) -> TarBuilder:
        """A directory (written with a trailing slash, as tar does)."""
        raw = _b(name)
        if not raw.endswith(b"/"):
            raw += b"/"
        return self._entry(
            raw, b"5", mode=mode, uid=uid, gid=gid, mtime=mtime, mtime_ns=mtime_ns,
            xattrs=xattrs,
        )  # fmt: skip

    def symlink(
        self,
        name: str | bytes,
        target: str | bytes,
        *,
        uid: int = 0,
        gid: int = 0,
        mtime: float | None = None,
        mtime_ns: int | None = None,
        xattrs: Mapping[str, bytes] | None = None,
    ) -> TarBuilder:
        """A symlink to ``target`` (written as given, absolute or not)."""
        return self._entry(
            name, b"2", mode=0o777, uid=uid, gid=gid, mtime=mtime, mtime_ns=mtime_ns,
            linkname=target, xattrs=xattrs,
        )  # fmt: skip

    def hardlink(
        self, name: str | bytes, target: str | bytes, *, mode: int = 0o644, uid: int = 0,
        gid: int = 0,
    ) -> TarBuilder:  # fmt: skip
        """A hardlink to the earlier entry ``target``."""
        return self._entry(name, b"1", mode=mode, uid=uid, gid=gid, linkname=target)

    def fifo(
        self, name: str | bytes, *, mode: int = 0o644, uid: int = 0, gid: int = 0,
        mtime: float | None = None,
    ) -> TarBuilder:  # fmt: skip
        """A named pipe."""
        return self._entry(name, b"6", mode=mode, uid=uid, gid=gid, mtime=mtime)

    def chardev(
        self, name: str | bytes, major: int, minor: int, *, mode: int = 0o666, uid: int = 0,
        gid: int = 0, mtime: float | None = None,
    ) -> TarBuilder:  # fmt: skip
        """A character device node."""
        return self._entry(
            name, b"3", mode=mode, uid=uid, gid=gid, mtime=mtime, devmajor=major,
            devminor=minor,
        )  # fmt: skip

    def blockdev(
        self, name: str | bytes, major: int, minor: int, *, mode: int = 0o660, uid: int = 0,
        gid: int = 0, mtime: float | None = None,
    ) -> TarBuilder:  # fmt: skip
        """A block device node."""
        return self._entry(
            name, b"4", mode=mode, uid=uid, gid=gid, mtime=mtime, devmajor=major,
            devminor=minor,
        )  # fmt: skip

    def whiteout(self, path: str) -> TarBuilder:
        """Delete ``path`` of the layers below: the entry ``<dir>/.wh.<name>``."""
        parent, _, name = path.rstrip("/").rpartition("/")
        return self.file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", mode=0o600)

    def opaque(self, directory: str) -> TarBuilder:
        """Hide what the layers below have in ``directory``: ``<dir>/.wh..wh..opq``."""
        directory = directory.strip("/")
        return self.file(f"{directory}/.wh..wh..opq" if directory else ".wh..wh..opq", mode=0o600)

    def sparse(
        self,
        name: str | bytes,
        size: int,
        regions: Iterable[tuple[int, bytes]],
        *,
        format: SparseFormat = "pax1.0",
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: float | None = None,
        map_count: int | None = None,
    ) -> TarBuilder:
        """A sparse file of ``size`` bytes holding ``(offset, data)`` regions.

        ``map_count`` overrides the region count written in a pax 1.0 map (a
        lying map for hostile tests).
        """
        regions = list(regions)
        data = b"".join(chunk for _, chunk in regions)
        raw_name = _b(name)
        mtime_s = int(self.default_mtime if mtime is None else mtime)
        if format == "oldgnu":
            return self._old_gnu_sparse(raw_name, size, regions, data, mode, uid, gid, mtime_s)
        if format == "pax0.1":
            numbers = ",".join(f"{off},{len(chunk)}" for off, chunk in regions)
            records: list[tuple[str, str | bytes]] = [
                ("GNU.sparse.size", str(size)),
                ("GNU.sparse.numblocks", str(len(regions))),
                ("GNU.sparse.name", raw_name),
                ("GNU.sparse.map", numbers),
            ]
            self.pax(records)
            self._out.write(
                header(b"GNUSparseFile.0/" + raw_name[-80:], size=len(data), mode=mode,
                       uid=uid, gid=gid, mtime=mtime_s)
            )  # fmt: skip
            self._out.write(_padded(data))
            return self
        count = len(regions) if map_count is None else map_count
        sparse_map = f"{count}\n".encode() + b"".join(
            f"{off}\n{len(chunk)}\n".encode() for off, chunk in regions
        )
        body = _padded(sparse_map) + data
        self.pax(
            [
                ("GNU.sparse.major", "1"),
                ("GNU.sparse.minor", "0"),
                ("GNU.sparse.name", raw_name),
                ("GNU.sparse.realsize", str(size)),
            ]
        )
        self._out.write(
            header(b"GNUSparseFile.0/" + raw_name[-80:], size=len(body), mode=mode, uid=uid,
                   gid=gid, mtime=mtime_s)
        )  # fmt: skip
        self._out.write(_padded(body))
        return self

    def _old_gnu_sparse(
        self,
        name: bytes,
        size: int,
        regions: list[tuple[int, bytes]],
        data: bytes,
        mode: int,
        uid: int,
        gid: int,
        mtime: int,
    ) -> TarBuilder:
        pairs = [_octal(off, 12) + _octal(len(chunk), 12) for off, chunk in regions]
        first, rest = pairs[:4], pairs[4:]
        # bytes 345-500 of the GNU header: atime, ctime, offset, longnames, pad,
        # 4 sparse pairs (386-482), isextended (482), realsize (483-495)
        tail = bytearray(155)
        area = b"".join(first)
        tail[386 - 345 : 386 - 345 + len(area)] = area
        tail[482 - 345] = 1 if rest else 0
        tail[483 - 345 : 495 - 345] = _octal(size, 12)
        self._out.write(
            header(name, typeflag=b"S", size=len(data), mode=mode, uid=uid, gid=gid,
                   mtime=mtime, magic=b"ustar  \0", gnu_tail=bytes(tail))
        )  # fmt: skip
        while rest:
            chunk, rest = rest[:21], rest[21:]
            ext = bytearray(BLOCK)
            ext[0 : 24 * len(chunk)] = b"".join(chunk)
            ext[504] = 1 if rest else 0
            self._out.write(bytes(ext))
        self._out.write(_padded(data))
        return self


def tar_of(files: Mapping[str, bytes]) -> io.BytesIO:
    """A tar of regular files (mode 0644, one fixed mtime), as a stream to apply."""
    builder = TarBuilder()
    for name, data in files.items():
        builder.file(name, data, mode=0o644, mtime=1_600_000_000)
    return builder.stream()


def entries_with_content(reader: TarReader) -> list[tuple[TarEntry, bytes]]:
    """Every entry a reader gives, with its whole content (holes of sparse files as zeros).

    The buffer grows with the data read, never to a size a header only claims (a
    hostile one may claim an exabyte and end after a block).
    """
    out = []
    for entry in reader:
        content = bytearray()
        for offset, view in reader.chunks():
            if offset > len(content):
                content.extend(bytes(offset - len(content)))
            content[offset : offset + len(view)] = view
        if entry.kind == FILE and len(content) < entry.size:  # a sparse file's last hole
            content.extend(bytes(entry.size - len(content)))
        out.append((entry, bytes(content)))
    return out
