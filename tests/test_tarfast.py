"""The compiled header parser (core/layertar/_tarfast.c) against the Python one.

The compiled parser takes only entries it is sure about and hands anything else
to the Python parser, so a layer must read exactly the same either way: the
same entries, contents, offsets and diff id, or the same error. These tests
hold the two equal on archives of every format GNU tar and Python write, on
generated ones, and on headers with bytes flipped at random.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tarmaker import BLOCK, TarBuilder, entries_with_content, header, pax_record

from lamina.core.errors import LaminaError
from lamina.core.layertar import reader as tarstream
from lamina.core.layertar.reader import FILE, TarReader

_tarfast = pytest.importorskip(
    "lamina.core.layertar._tarfast",
    reason="the compiled parser is not built (no C compiler at install)",
)

Outcome = tuple[list[tuple[tarstream.TarEntry, bytes]], str] | tuple[str, str]


def outcome(
    data: bytes, *, compiled: bool, mapped: bool = False, limits: tarstream.Limits | None = None
) -> Outcome:
    """Everything a reader makes of ``data``: entries with contents and the diff
    id, or the error's class and message. ``mapped``: read from a regular file
    (the reader maps it: every header is in its buffer from the start)."""
    with tempfile.TemporaryFile() if mapped else io.BytesIO() as stream:
        stream.write(data)
        stream.seek(0)
        reader = TarReader(stream, limits, compiled=compiled)
        try:
            return entries_with_content(reader), reader.diff_id
        except LaminaError as exc:
            return type(exc).__name__, str(exc)
        finally:
            reader.close()


def assert_same(data: bytes, limits: tarstream.Limits | None = None) -> Outcome:
    """The Python parser on a stream is the reference; the compiled one must give
    the same on a stream (headers across buffer ends) and on a mapped file."""
    python = outcome(data, compiled=False, limits=limits)
    assert outcome(data, compiled=True, limits=limits) == python
    if data:
        assert outcome(data, compiled=True, mapped=True, limits=limits) == python
    return python


def compiled_takes(data: bytes) -> int:
    """How many entries the compiled parser took itself."""
    reader = TarReader(io.BytesIO(data))
    taken = 0
    real = reader._fast
    assert real is not None

    def counting(*args: object) -> object:
        nonlocal taken
        got = real(*args)
        taken += got is not None
        return got

    reader._fast = counting
    for _ in reader:
        pass
    return taken


def sample_tree(top: Path) -> Path:
    """Files, long names, links, a fifo, a device, xattrs and odd modes."""
    tree = top / "tree"
    deep = tree / ("d" * 90) / ("e" * 90) / "f"
    deep.mkdir(parents=True)
    (deep / ("long-name-" * 12)).write_bytes(os.urandom(3000))
    (tree / "small").write_bytes(b"hello")
    (tree / "empty").write_bytes(b"")
    (tree / "big").write_bytes(os.urandom(300_000))
    os.chmod(tree / "big", 0o4755)
    os.link(tree / "big", tree / "hard")
    os.symlink("small", tree / "link")
    os.symlink("x" * 150, tree / "longlink")
    os.mkfifo(tree / "fifo")
    if os.geteuid() == 0:
        os.mknod(tree / "null", 0o20666, os.makedev(1, 3))
        os.chown(tree / "small", 1234, 5678)
    with contextlib.suppress(OSError):  # no user xattrs here: the rest still counts
        os.setxattr(tree / "small", "user.note", b"value")
    os.utime(tree / "small", ns=(1, 1_700_000_000_123_456_789))
    return tree


@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "posix", "ustar", "v7"])
def test_gnu_tar_archives_read_the_same(tmp_path: Path, fmt: str) -> None:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    tree = sample_tree(tmp_path)
    out = tmp_path / f"{fmt}.tar"
    extra = ["--xattrs", "--xattrs-include=*"] if fmt == "posix" else []
    names = ["small", "empty", "big", "hard", "link"]  # what every format can hold
    if fmt != "v7":
        names = ["."] if fmt != "ustar" else [*names, "fifo"]
    subprocess.run(["tar", f"--format={fmt}", "--numeric-owner", *extra, "-C", str(tree),
                    "-cf", str(out), *names], check=True)  # fmt: skip
    data = out.read_bytes()
    entries, _ = assert_same(data)  # type: ignore[misc]
    assert len(entries) >= 5
    if fmt != "v7":
        # left to Python: the first entry (read before the first buffer is filled)
        # and the one path longer than NAME_MAX (checked per component there)
        assert compiled_takes(data) >= len(entries) - 2


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_python_tarfile_archives_read_the_same(tmp_path: Path, fmt: int) -> None:
    tree = sample_tree(tmp_path)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for name in ("small", "empty", "big", "hard", "link", "fifo"):
            archive.add(tree / name, arcname=name)
        if fmt != tarfile.USTAR_FORMAT:
            archive.add(tree, arcname="all")
    assert_same(buffer.getvalue())


def test_generated_shapes_are_taken_by_the_compiled_parser() -> None:
    """The common shapes never fall back: pax times and xattrs, long pax paths,
    GNU long names and links, ustar prefixes, devices, hardlinks."""
    for fmt in ("pax", "gnu", "ustar"):
        builder = TarBuilder(format=fmt)  # type: ignore[arg-type]
        builder.dir("d", mtime_ns=1_600_000_000_000_000_001)
        builder.file("d/" + "a" * 120 if fmt != "ustar" else "d/" * 60 + "f", b"x" * 700)
        builder.file("plain", b"content", mode=0o2755, uid=70000, gid=3)
        builder.symlink("s", "t" * (150 if fmt != "ustar" else 50))
        builder.hardlink("h", "plain")
        builder.chardev("c", 4, 64)
        builder.fifo("p")
        if fmt == "pax":
            builder.file("x", b"", xattrs={"user.a": b"1", "security.capability": b"\1\2"})
        data = builder.bytes()
        entries, _ = assert_same(data)  # type: ignore[misc]
        assert compiled_takes(data) == len(entries) - 1  # all but the one before the first read


def test_xattrs_and_times_come_out_exactly() -> None:
    data = (
        TarBuilder()
        .file("f", b"x", xattrs={"user.k": b"v\0w", "user.\u00e9": b""},
              mtime_ns=1_234_567_890_987_654_321)
        .bytes()
    )  # fmt: skip
    (entry, content), = outcome(data, compiled=True)[0]  # type: ignore[misc]
    assert entry.xattrs == {"user.k": b"v\0w", "user.\u00e9": b""}
    assert entry.mtime_ns == 1_234_567_890_987_654_321
    assert (entry.kind, content) == (FILE, b"x")


def test_entries_beyond_the_buffer_or_the_limits_go_to_python() -> None:
    """The compiled parser never reads past the buffer it was given, and leaves
    the limits to Python (which names them)."""
    data = TarBuilder().file("a" * 300, b"x").bytes()  # a pax path
    for cut in range(0, 3 * BLOCK, 37):
        assert _tarfast.next_entry(data[:cut], 0, 255, 1 << 20) is None
    assert _tarfast.next_entry(data, 0, 255, 1 << 20) is None  # 300 > 255: Python checks it
    assert _tarfast.next_entry(data, 0, 4095, 10) is None  # pax over the limit: Python says so
    assert _tarfast.next_entry(data, len(data) + BLOCK, 4095, 1 << 20) is None
    assert _tarfast.next_entry(data, -BLOCK, 4095, 1 << 20) is None
    assert_same(data, tarstream.Limits(max_pax_size=10))


_BASE = (
    TarBuilder()
    .dir("d")
    .file("d/f", b"data" * 100, xattrs={"user.x": b"1"}, mtime_ns=1_500_000_000_000_000_007)
    .symlink("d/l", "f")
    .hardlink("h", "d/f")
    .chardev("c", 1, 3)
    .bytes()
)
_GNU = TarBuilder(format="gnu").file("n" * 130, b"z").symlink("s", "q" * 120).bytes()


def _end(*blocks: bytes) -> bytes:
    return b"".join(blocks) + bytes(2 * BLOCK)


def _with(block: bytes, offset: int, field: bytes) -> bytes:
    """A header block with one field's bytes replaced and its checksum right again."""
    changed = bytearray(block)
    changed[offset : offset + len(field)] = field
    changed[148:156] = b" " * 8
    changed[148:156] = b"%06o\0 " % sum(changed)
    return bytes(changed)


#: archives at the edges of what the compiled parser takes: it must answer as Python
EDGES = {
    "mode with file type bits": _end(header("f", mode=0o100644), header("d", typeflag=b"5",
                                                                         mode=0o40755)),
    "empty name": _end(header("")),
    "empty pax path": TarBuilder().pax(pax_record("path", "")).file("f", b"").bytes(),
    "empty symlink target": _end(header("l", typeflag=b"2")),
    "NUL in a pax path": TarBuilder().pax(pax_record("path", b"a\0b")).file("f").bytes(),
    "name of NAME_MAX bytes": TarBuilder().file("n" * 255, b"x").bytes(),
    "name of NAME_MAX + 1 bytes": TarBuilder().file("n" * 256, b"x").bytes(),
    "a pax record without its newline": TarBuilder().pax(
        b"11 mtime=55" + pax_record("path", "p")).file("f").bytes(),
    "a pax record that ends in the next one": TarBuilder().pax(
        b"7 a=bc\n" + pax_record("mtime", "5")).file("f").bytes(),
    "a pax key with no name": TarBuilder().pax(b"5 =x\n").file("f").bytes(),
    "pax padding of NULs": TarBuilder().pax(pax_record("mtime", "5") + bytes(9)).file(
        "f").bytes(),
    "a negative pax time": TarBuilder().pax(pax_record("mtime", "-5.5")).file("f").bytes(),
    "a pax time of 18 digits": TarBuilder().pax(pax_record("mtime", "9" * 18 + ".5")).file(
        "f").bytes(),
    "a pax time with no seconds": TarBuilder().pax(pax_record("mtime", ".5")).file("f").bytes(),
    "a pax size of 19 digits": TarBuilder().pax(pax_record("size", "1" * 19)).file("f").bytes(),
    "an empty pax uid": TarBuilder().pax(pax_record("uid", "")).file("f").bytes(),
    "a pax xattr with no name": TarBuilder().pax(pax_record("SCHILY.xattr.", "v")).file(
        "f").bytes(),
    "a pax xattr named in bad UTF-8": TarBuilder().pax(
        pax_record(b"SCHILY.xattr.user.\xff", "v")).file("f").bytes(),
    "two pax headers": TarBuilder().pax({"mtime": "5.25", "path": "a"}).pax(
        {"path": "b", "SCHILY.xattr.user.k": "2"}).file("f", b"x").bytes(),
    "an mtime field of 12 octal digits": _end(_with(header("f"), 136, b"7" * 12)),
    "a size field with an 8": _end(_with(header("f"), 124, b"0000000008\0\0")),
    "a mode field with spaces": _end(_with(header("f"), 100, b" 644  \0\0")),
    "a base-256 uid": _end(_with(header("f"), 108, b"\x80" + bytes(6) + b"\x07")),
    "a GNU magic with a prefix": _end(header("f", prefix="p", magic=b"ustar  \0")),
    "a ustar prefix": _end(header("f", prefix="p/q")),
    "a v7 directory": _end(header("dir/", typeflag=b"\0")),
    "a file with a size, then a directory with one": _end(
        header("f", size=3), b"abc".ljust(BLOCK, b"\0"), header("d", typeflag=b"5", size=3),
        b"xyz".ljust(BLOCK, b"\0"), header("e")),
    "a hardlink with a size": _end(header("f", size=1), b"x".ljust(BLOCK, b"\0"),
                                   header("h", typeflag=b"1", linkname="f", size=1)),
    "a checksum in signed chars": _end(header("\xe9t\xe9".encode("latin-1"),
                                             chksum=b"%06o\0 " % (
        sum(header("\xe9t\xe9".encode("latin-1"))[:148]) - 256 * 2 - 99))),
}


@pytest.mark.parametrize("name", list(EDGES))
def test_edge_archives_read_the_same(name: str) -> None:
    assert_same(EDGES[name])


def header_starts(data: bytes) -> list[int]:
    """Where the headers of a well-formed archive start."""
    starts, pos = [], 0
    while data[pos : pos + BLOCK].strip(b"\0"):
        starts.append(pos)
        size = int(data[pos + 124 : pos + 136].strip(b"\0 ") or b"0", 8)
        typeflag = data[pos + 156 : pos + 157]
        pos += BLOCK + (-(-size // BLOCK) * BLOCK if typeflag in b"0\0xLK" else 0)
    return starts


#: (offset, length) of each ustar header field
_FIELDS = [(0, 100), (100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (148, 8), (156, 1),
           (157, 100), (257, 6), (263, 2), (329, 8), (337, 8), (345, 155)]  # fmt: skip
#: bytes that matter to a parser: digits and non-octal digits, terminators, the
#: high bit of base-256, separators, typeflags
_NASTY = b"0123456789 \x00\x80\xff/.x=\nLKSgV5"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), base=st.sampled_from([_BASE, _GNU]), fix_checksum=st.booleans())
def test_changed_header_fields_read_the_same(
    data: st.DataObject, base: bytes, fix_checksum: bool
) -> None:
    """Bytes of header fields changed to what parsers trip on, the checksum made
    right again or not: both parsers agree on the result, error message included."""
    changed = bytearray(base)
    starts = header_starts(base)
    touched = set()
    for _ in range(data.draw(st.integers(1, 4))):
        header = data.draw(st.sampled_from(starts))
        field, length = data.draw(st.sampled_from(_FIELDS))
        position = header + field + data.draw(st.integers(0, length - 1))
        changed[position] = data.draw(st.sampled_from(_NASTY) | st.integers(0, 255))
        touched.add(header)
    if fix_checksum:
        for header in touched:
            block = changed[header : header + BLOCK]
            block[148:156] = b" " * 8
            changed[header + 148 : header + 156] = b"%06o\0 " % sum(block)
    assert_same(bytes(changed))


@settings(max_examples=200, deadline=None)
@given(
    records=st.lists(
        st.tuples(
            st.sampled_from(["path", "linkpath", "size", "uid", "gid", "mtime", "atime",
                             "SCHILY.xattr.user.a", "SCHILY.xattr.", "GNU.sparse.major",
                             "comment", "weird key"]),
            st.one_of(st.binary(max_size=12), st.from_regex(rb"\A-?[0-9]{0,21}(\.[0-9]{0,12})?\Z")),
        ),
        max_size=5,
    ),
    length_skew=st.integers(-2, 2),
)
def test_pax_records_of_any_shape_read_the_same(
    records: list[tuple[str, bytes]], length_skew: int
) -> None:
    """Pax records with odd keys, odd values and wrong lengths: the same result."""
    body = b""
    for key, value in records:
        inner = b" " + key.encode() + b"=" + value + b"\n"
        length = len(inner) + len(str(len(inner)))
        if len(str(length)) != len(str(len(inner))):
            length += 1
        body += str(length + length_skew).encode() + inner
    data = TarBuilder().pax(body).file("f", b"content").bytes()
    assert_same(data)
