"""The streaming tar reader and the layer stream decoder, on real and hostile archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import pytest
from streams import Trickle, Zeros
from tarmaker import BLOCK, TarBuilder, entries_with_content, header

from lamina.core.errors import ArchiveLimit, ContentError, CorruptArchive
from lamina.core.layertar.compression import open_layer_stream
from lamina.core.layertar.reader import (
    CHAR,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    SYMLINK,
    Limits,
    TarEntry,
    TarReader,
)


def read_all(data: bytes | io.RawIOBase, limits: Limits | None = None) -> tuple[
    list[tuple[TarEntry, bytes]], TarReader
]:  # fmt: skip
    """Every entry with its content (sparse files expanded, holes as zeros)."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    reader = TarReader(stream, limits)  # type: ignore[arg-type]
    return entries_with_content(reader), reader


# --- formats ---------------------------------------------------------------------------


def test_entries_of_every_kind_with_their_metadata() -> None:
    tar = (
        TarBuilder()
        .dir("etc", mode=0o750, uid=1, gid=2, mtime=1_600_000_000)
        .file("etc/passwd", b"root\n", mode=0o4755, uid=1000, gid=1001, mtime=1_600_000_001)
        .symlink("etc2", "/etc")
        .hardlink("etc/passwd2", "etc/passwd")
        .fifo("pipe", mode=0o600)
        .chardev("null", 1, 3)
        .bytes()
    )
    entries, reader = read_all(tar)
    got = [(e.path, e.kind, e.mode, e.uid, e.gid, e.mtime_ns, e.linkname, c) for e, c in entries]
    assert got == [
        ("etc/", DIR, 0o750, 1, 2, 1_600_000_000 * 10**9, "", b""),
        ("etc/passwd", FILE, 0o4755, 1000, 1001, 1_600_000_001 * 10**9, "", b"root\n"),
        ("etc2", SYMLINK, 0o777, 0, 0, 1_700_000_000 * 10**9, "/etc", b""),
        ("etc/passwd2", HARDLINK, 0o644, 0, 0, 1_700_000_000 * 10**9, "etc/passwd", b""),
        ("pipe", FIFO, 0o600, 0, 0, 1_700_000_000 * 10**9, "", b""),
        ("null", CHAR, 0o666, 0, 0, 1_700_000_000 * 10**9, "", b""),
    ]
    assert (entries[-1][0].devmajor, entries[-1][0].devminor) == (1, 3)
    assert reader.size == len(tar)
    assert reader.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()


@pytest.mark.parametrize("fmt", ["pax", "gnu", "ustar"])
def test_long_names_in_each_format(fmt: str) -> None:
    name = "/".join(["d" * 60] * 3) + "/file"
    target = "t" * 150
    builder = TarBuilder(format=fmt).file(name, b"x")  # type: ignore[arg-type]
    if fmt != "ustar":
        builder.symlink("link", target)
    entries, _ = read_all(builder.bytes())
    assert entries[0][0].path == name
    if fmt != "ustar":
        assert entries[1][0].linkname == target


def test_pax_records_override_the_header() -> None:
    tar = (
        TarBuilder()
        .pax({"path": "real/name", "uid": "70000", "gid": "80000", "mtime": "1700000000.123456789"})
        .raw_header("short", data=b"abc")
        .bytes()
    )
    (entry, content), = read_all(tar)[0]  # fmt: skip
    assert (entry.path, entry.uid, entry.gid, entry.mtime_ns, content) == (
        "real/name", 70000, 80000, 1_700_000_000_123_456_789, b"abc",
    )  # fmt: skip


def test_subsecond_mtimes_are_truncated_never_rounded() -> None:
    tar = TarBuilder().pax({"mtime": "5.9999999999"}).raw_header("a").bytes()
    assert read_all(tar)[0][0][0].mtime_ns == 5_999_999_999
    tar = TarBuilder().pax({"mtime": "-1.5"}).raw_header("a").bytes()
    assert read_all(tar)[0][0][0].mtime_ns == -1_500_000_000


def test_pax_size_overrides_a_huge_file_header() -> None:
    data = b"z" * 3000
    tar = TarBuilder().pax({"size": "3000"}).raw_header("big", data=data, size=0).bytes()
    assert read_all(tar)[0][0][1] == data


def test_xattrs_from_schily_and_libarchive_records() -> None:
    tar = (
        TarBuilder()
        .pax({"SCHILY.xattr.user.a": b"1\n=2", "LIBARCHIVE.xattr.user.b%3Dc": "aGk"})
        .raw_header("f")
        .bytes()
    )
    assert read_all(tar)[0][0][0].xattrs == {"user.a": b"1\n=2", "user.b=c": b"hi"}


def test_global_headers_are_validated_and_ignored() -> None:
    tar = TarBuilder().pax({"uid": "5", "comment": "x"}, typeflag=b"g").file("a").bytes()
    assert read_all(tar)[0][0][0].uid == 0
    bad = TarBuilder().pax(b"0 x=1\n", typeflag=b"g").file("a").bytes()
    with pytest.raises(CorruptArchive):
        read_all(bad)


def test_base256_numbers_and_v7_directories() -> None:
    tar = (
        TarBuilder()
        .raw_header("big-uid", uid=8**7 + 5, mtime=-1)
        .raw_header("olddir/", typeflag=b"\0", magic=b"")
        .bytes()
    )
    entries, _ = read_all(tar)
    assert (entries[0][0].uid, entries[0][0].mtime_ns) == (8**7 + 5, -(10**9))
    assert entries[1][0].kind == DIR


def test_signed_checksums_of_old_tars_are_accepted() -> None:
    block = bytearray(header("caf\xe9".encode("latin-1"), magic=b""))
    block[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in block)
    block[148:156] = b"%06o\0 " % signed
    entries, _ = read_all(bytes(block) + bytes(1024))
    assert entries[0][0].path == "caf\udce9"  # raw bytes survive (surrogateescape)


def test_header_only_types_have_no_data_whatever_the_size_says() -> None:
    # as Go's reader (and so docker) reads them: the next header follows at once
    tar = TarBuilder().raw_header("d/", typeflag=b"5", size=5000).file("f", b"1").bytes()
    assert [e.path for e, _ in read_all(tar)[0]] == ["d/", "f"]


@pytest.mark.parametrize("fmt", ["pax1.0", "pax0.1", "oldgnu"])
def test_sparse_formats(fmt: str) -> None:
    regions = [(i * 100_000, bytes([65 + i]) * 700) for i in range(30)]  # > 4 + 21: extensions
    tar = TarBuilder().sparse("sparse", 5_000_000, regions, format=fmt).file("after", b"!").bytes()  # type: ignore[arg-type]
    entries, _ = read_all(tar)
    entry, content = entries[0]
    assert (entry.path, entry.kind, entry.size) == ("sparse", FILE, 5_000_000)
    assert entry.sparse == [(off, len(chunk)) for off, chunk in regions]
    expected = bytearray(5_000_000)
    for off, chunk in regions:
        expected[off : off + len(chunk)] = chunk
    assert content == expected
    assert entries[1][0].path == "after" and entries[1][1] == b"!"


def gnu_tar(tmp_path: Path, *args: str) -> bytes:
    out = tmp_path / "out.tar"
    subprocess.run(["tar", "-cf", str(out), *args], check=True, cwd=tmp_path / "src")
    return out.read_bytes()


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
@pytest.mark.parametrize("fmt", ["posix", "gnu"])
def test_archives_written_by_gnu_tar(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    (src / "dir" / ("n" * 200)).mkdir(parents=True)
    (src / "dir" / ("n" * 200) / "f").write_bytes(b"deep")
    with open(src / "holes", "wb") as f:
        f.truncate(10 << 20)
        f.seek(3 << 20)
        f.write(b"data")
    os.symlink("l" * 300, src / "longlink")
    os.setxattr(src / "holes", "user.k", b"v")
    tar = gnu_tar(tmp_path, f"--format={fmt}", "--sparse", "--xattrs", "--numeric-owner", ".")
    entries = {e.path.rstrip("/"): (e, c) for e, c in read_all(tar)[0]}
    holes, content = entries["./holes"]
    assert holes.size == 10 << 20 and holes.sparse is not None
    assert content[3 << 20 : (3 << 20) + 4] == b"data" and content.count(0) == (10 << 20) - 4
    assert entries["./longlink"][0].linkname == "l" * 300
    assert entries["./dir/" + "n" * 200 + "/f"][1] == b"deep"
    if fmt == "posix":
        assert holes.xattrs == {"user.k": b"v"}


def test_agrees_with_the_stdlib_on_a_pax_archive(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(50):
            info = tarfile.TarInfo(f"dir{i % 3}/{'x' * (i * 5)}file{i}")
            payload = os.urandom(i * 97)
            info.size = len(payload)
            info.mode = 0o600 + i
            info.uid = i * 1000
            info.mtime = 1_600_000_000 + i
            tf.addfile(info, io.BytesIO(payload))
    data = buf.getvalue()
    ours = [(e.path, e.mode, e.uid, e.mtime_ns // 10**9, c) for e, c in read_all(data)[0]]
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        theirs = [
            (m.name, m.mode, m.uid, int(m.mtime), tf.extractfile(m).read())  # type: ignore[union-attr]
            for m in tf
        ]
    assert ours == theirs


# --- the diff id and the end of the archive -------------------------------------------


def test_diff_id_covers_the_whole_stream_including_padding() -> None:
    tar = TarBuilder().file("a", b"1").bytes() + bytes(9 * BLOCK)  # GNU tar's 10 KiB records
    entries, reader = read_all(tar)
    assert len(entries) == 1
    assert reader.size == len(tar)
    assert reader.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()


def test_small_trailing_garbage_is_hashed_and_ignored() -> None:
    tar = TarBuilder().file("a", b"1").bytes() + b"garbage" * 100
    _, reader = read_all(tar)
    assert reader.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()


def test_gigabytes_of_zeros_after_the_end_stop_at_the_cap() -> None:
    stream = Zeros(8 << 30, prefix=TarBuilder().file("a", b"1").bytes())
    start = time.monotonic()
    with pytest.raises(ArchiveLimit, match="follow the end"):
        read_all(stream)  # type: ignore[arg-type]
    assert stream.read_bytes < 4 << 20
    assert time.monotonic() - start < 5


def test_an_archive_of_only_the_end_marker_is_empty_not_corrupt() -> None:
    entries, reader = read_all(bytes(1024))
    assert entries == [] and reader.size == 1024


def test_archive_without_end_marker_ends_at_a_block_boundary() -> None:
    entries, _ = read_all(TarBuilder().file("a", b"1").bytes(end=False))
    assert [e.path for e, _ in entries] == ["a"]


# --- corruption and limits ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (os.urandom(4096), "not a tar stream"),
        (b"hello world\n" * 100, "not a tar stream"),
        (b"short", "truncated"),
        (TarBuilder().file("a", b"x" * 1000).bytes(end=False)[:900], "truncated"),
        (bytes(BLOCK) + TarBuilder().file("a").bytes(), "single zero block"),
        (TarBuilder().pax({"path": "x"}).bytes(), "ends after an extended header"),
    ],
    ids=["empty", "random", "text", "short", "truncated-content", "lone-zero", "dangling-pax"],
)
def test_corrupt_streams(data: bytes, match: str) -> None:
    with pytest.raises(CorruptArchive, match=match):
        read_all(data)


def test_bad_checksum() -> None:
    bad = header("a", chksum=b"0000000\0")
    with pytest.raises(CorruptArchive, match="checksum"):
        read_all(bad + bytes(1024))


@pytest.mark.parametrize(
    "field", [b"-0000001", b"00_0001\0", b"+000001\0", b"0009\0\0\0\0", b"12 34\0\0\0"]
)
def test_numeric_fields_are_strict_octal(field: bytes) -> None:
    block = bytearray(header("a"))
    block[100:108] = field
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    with pytest.raises(CorruptArchive, match="mode"):
        read_all(bytes(block) + bytes(1024))


@pytest.mark.parametrize(
    "records",
    [
        b"0 path=x\n",  # zero length: a naive parser loops forever
        b"-10 path=x\n",
        b"3 a\n",
        b"999 path=x\n",  # longer than the header
        b"10 pathx\n\n",  # no '='
        b"11 path=xy\0",  # no newline
        b"garbage",
    ],
)
def test_malformed_pax_records(records: bytes) -> None:
    with pytest.raises(CorruptArchive, match="pax record"):
        read_all(TarBuilder().pax(records).file("a").bytes())


def test_malformed_pax_values() -> None:
    for key, value in [("size", "-5"), ("uid", "1e9"), ("mtime", "12x"), ("size", "9" * 30)]:
        with pytest.raises((CorruptArchive, ArchiveLimit)):
            read_all(TarBuilder().pax({key: value}).file("a").bytes())


def test_pax_header_size_cap_before_buffering() -> None:
    # the header claims 1 GiB; the reader must refuse before reading it
    stream = Zeros(1 << 30, prefix=header("././@PaxHeader", typeflag=b"x", size=1 << 30))
    with pytest.raises(ArchiveLimit, match="pax header"):
        read_all(stream)  # type: ignore[arg-type]
    assert stream.read_bytes <= 2 << 20


def test_gnu_long_name_cap() -> None:
    with pytest.raises(ArchiveLimit, match="GNU long name"):
        read_all(header("././@LongLink", typeflag=b"L", size=10 << 20) + bytes(1024))


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("a/" * 2100 + "f", ArchiveLimit, "PATH_MAX"),
        ("d/" + "c" * 256, ArchiveLimit, "component"),
        ("a\0b", CorruptArchive, "NUL"),
        ("", CorruptArchive, "empty"),
    ],
)
def test_path_limits(name: str, error: type[Exception], match: str) -> None:
    tar = TarBuilder().pax({"path": name}).raw_header("x").bytes()
    with pytest.raises(error, match=match):
        read_all(tar)


def test_a_component_of_255_bytes_is_fine() -> None:
    name = "d/" + "c" * 255
    assert read_all(TarBuilder().file(name).bytes())[0][0][0].path == name


def test_sparse_map_cap_pax10() -> None:
    # the map claims millions of regions: refused before they are read
    tar = TarBuilder().sparse("s", 1 << 40, [(0, b"x")], map_count=5_000_000).bytes()
    with pytest.raises(ArchiveLimit, match="regions"):
        read_all(tar)


def test_sparse_map_cap_old_gnu() -> None:
    regions = [(i * 2, b"") for i in range(200)]
    tar = TarBuilder().sparse("s", 1000, regions, format="oldgnu").bytes()
    with pytest.raises(ArchiveLimit, match="regions"):
        read_all(tar, Limits(max_sparse_entries=50))


def test_sparse_map_must_match_the_data() -> None:
    tar = TarBuilder().sparse("s", 100, [(50, b"x" * 60)]).bytes()  # past the real size
    with pytest.raises(CorruptArchive, match="sparse map"):
        read_all(tar)


def test_unknown_entry_type() -> None:
    with pytest.raises(CorruptArchive, match="unsupported tar entry type"):
        read_all(TarBuilder().raw_header("a", typeflag=b"Q").bytes())


# --- decoding layer blobs --------------------------------------------------------------


def layer() -> bytes:
    return TarBuilder().file("a", os.urandom(300_000)).file("b", b"b" * 3_000_000).bytes()


@pytest.fixture(params=["isal", "zlib"])
def inflate(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each gzip test with ISA-L's inflate and with zlib's (the fallback)."""
    if request.param == "isal":
        pytest.importorskip("isal", reason="isal is not installed (zlib is tested alone)")
        monkeypatch.delenv("LAMINA_INFLATE", raising=False)
    else:
        monkeypatch.setenv("LAMINA_INFLATE", "zlib")
    from lamina.core.layertar.compression import inflater

    assert inflater()[0].__module__.split(".")[0] == request.param
    return str(request.param)


def decode(blob: bytes) -> bytes:
    stream = open_layer_stream(io.BytesIO(blob))
    out = bytearray()
    while chunk := stream.read(65536):
        assert len(chunk) <= 65536
        out += chunk
    return bytes(out)


def test_plain_gzip_and_multimember_gzip(inflate: str) -> None:
    tar = layer()
    assert decode(tar) == tar
    assert decode(gzip.compress(tar)) == tar
    half = len(tar) // 2
    assert decode(gzip.compress(tar[:half]) + gzip.compress(tar[half:])) == tar
    assert decode(gzip.compress(tar) + bytes(4096)) == tar  # zero padding after the member


def test_zstd() -> None:
    zstandard = pytest.importorskip("zstandard")
    tar = layer()
    assert decode(zstandard.ZstdCompressor().compress(tar)) == tar
    two = zstandard.ZstdCompressor().compress(tar[:1000]) + zstandard.ZstdCompressor().compress(
        tar[1000:]
    )
    assert decode(two) == tar


def test_missing_zstandard_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(ContentError) as info:
        open_layer_stream(io.BytesIO(b"\x28\xb5\x2f\xfd" + bytes(100)))
    assert info.value.hint == "pip install 'lamina[zstd]'"


@pytest.mark.parametrize(
    "blob",
    [
        gzip.compress(b"x" * 100_000)[:-20],  # truncated
        gzip.compress(b"x" * 100)[:10] + b"\xff" * 50 + gzip.compress(b"x")[10:],  # corrupt
        gzip.compress(b"x") + b"trailing junk",
        gzip.compress(b"x")[:-8] + b"\0\0\0\0" + gzip.compress(b"x")[-4:],  # bad CRC
        b"\x28\xb5\x2f\xfd" + os.urandom(200),
    ],
    ids=["truncated", "corrupt", "trailing-junk", "bad-crc", "zstd-junk"],
)
def test_broken_compressed_streams(blob: bytes, inflate: str) -> None:
    if blob.startswith(b"\x28\xb5"):
        pytest.importorskip("zstandard")
    with pytest.raises(CorruptArchive):
        decode(blob)


def test_gzip_padding_is_capped(inflate: str) -> None:
    blob = Zeros(1 << 30, prefix=gzip.compress(layer()))
    with pytest.raises(CorruptArchive, match="padding"):
        read_all(open_layer_stream(blob))  # type: ignore[arg-type, arg-type]
    assert blob.read_bytes < 8 << 20


def test_gzip_bomb_is_streamed_in_bounded_pieces(inflate: str) -> None:
    blob = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = blob.compress(bytes(200 << 20)) + blob.flush()
    stream = open_layer_stream(io.BytesIO(bomb))
    assert len(stream.read(1 << 20)) <= 1 << 20


def test_short_reads_are_handled() -> None:
    tar = TarBuilder().pax({"uid": "7"}).file("a" * 150, os.urandom(5000)).file("b", b"2").bytes()
    expected, _ = read_all(tar)
    got, reader = read_all(Trickle(tar, 7))  # type: ignore[arg-type]
    assert [(e.path, e.uid, c) for e, c in got] == [(e.path, e.uid, c) for e, c in expected]
    assert reader.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()


def test_hashing_works_in_a_forked_child() -> None:
    data = TarBuilder().file("a", os.urandom(3 << 20)).bytes()
    expected = "sha256:" + hashlib.sha256(data).hexdigest()
    assert read_all(data)[1].diff_id == expected  # the hashing thread runs now
    pid = os.fork()
    if pid == 0:  # the child has no hashing thread: it must not wait for one forever
        try:
            signal.alarm(20)
            os._exit(0 if read_all(data)[1].diff_id == expected else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_pooled_read_buffers_are_reused_without_mixing_content() -> None:
    """Far more chunks than the pool holds, headers straddling reads: every file
    and the diff id must come out as written (a buffer reused too early would not)."""
    from lamina.core.layertar import source

    builder = TarBuilder()
    files = {}
    # enough files to go round both pools (hashing and read-ahead) more than once
    pooled = max((source._HASH_IN_FLIGHT + 4) * source.CHUNK,
                 (source._AHEAD + 2) * source._AHEAD_CHUNK)
    count = max(60, pooled // (source.CHUNK // 3) + 10)
    for i in range(count):
        # sizes that move the next header across the 1 MiB read boundaries
        data = os.urandom(source.CHUNK // 3 + 7 * i + (i % 5) * 300)
        files[f"f{i}"] = data
        builder.pax({"mtime": f"{i}.5"}).file(f"f{i}", data)
    tar = builder.bytes()
    assert len(tar) > (source._HASH_IN_FLIGHT + 4) * source.CHUNK
    assert len(tar) > (source._AHEAD + 2) * source._AHEAD_CHUNK
    for stream in (io.BytesIO(tar), Trickle(tar, source.CHUNK // 2 + 3)):
        got, reader = read_all(stream)  # type: ignore[arg-type]
        assert {e.path: c for e, c in got} == files
        assert [e.mtime_ns for e, _ in got] == [i * 10**9 + 5 * 10**8 for i in range(count)]
        assert reader.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    for stream in (io.BytesIO(tar), Trickle(tar, source.CHUNK // 2 + 3)):
        reader = TarReader(stream, read_ahead=True)  # type: ignore[arg-type]
        try:
            seen = {}
            for entry in reader:
                seen[entry.path] = b"".join(bytes(view) for _, view in reader.chunks())
        finally:
            reader.close()
        assert seen == files
        assert reader.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()


def test_content_is_the_whole_small_file_in_one_view() -> None:
    big = os.urandom(3 << 20)
    tar = TarBuilder().file("small", b"hello").file("big", big).file("empty", b"").bytes()
    reader = TarReader(io.BytesIO(tar))
    seen = {}
    for entry in reader:
        view = reader.content()
        if view is None:  # not all in the read buffer: the chunks hand it out
            view = b"".join(bytes(v) for _, v in reader.chunks())
        else:
            assert list(reader.chunks()) == []  # nothing left to hand out
        seen[entry.path] = bytes(view)
    assert seen == {"small": b"hello", "big": big, "empty": b""}


def varied_tar() -> bytes:
    """Every shape the reader folds: pax, GNU long names, sparse maps, links, xattrs."""
    builder = TarBuilder()
    builder.dir("d", mtime_ns=1_500_000_000_123_456_789)
    builder.file("d/" + "n" * 200, os.urandom(5000), xattrs={"user.k": b"v"})
    builder.file("big", os.urandom(3 << 20), mode=0o4755, uid=7, gid=8)
    builder.symlink("d/link", "../big")
    builder.hardlink("hard", "big")
    builder.sparse("sparse", 1 << 24, [(0, b"head"), ((1 << 24) - 4, b"tail")])
    builder.fifo("fifo")
    builder.file("empty", b"")
    return builder.bytes() + bytes(3 * BLOCK)  # padding after the end marker, hashed too


def test_a_regular_file_is_mapped_and_read_as_a_stream_would_be(tmp_path: Path) -> None:
    """The reader maps a regular file (from the stream's position, not the file's
    start) and gives exactly what reading the same bytes as a stream gives."""
    tar = varied_tar()
    prefix = os.urandom(12345)  # the caller read this much before handing the file over
    path = tmp_path / "layer.tar"
    path.write_bytes(prefix + tar)
    streamed, stream_reader = read_all(tar)
    with open(path, "rb") as stream:
        stream.seek(len(prefix))
        reader = TarReader(stream)
        try:
            assert reader._mapped is not None, "a regular file is mapped"
            got = entries_with_content(reader)
            assert reader.diff_id == stream_reader.diff_id == (
                "sha256:" + hashlib.sha256(tar).hexdigest()
            )
            assert reader.size == stream_reader.size == len(tar)
        finally:
            reader.close()
    assert got == streamed


def test_a_mapped_file_with_gigabytes_after_the_end_is_refused_early(tmp_path: Path) -> None:
    """Case 29 for a mapped file: 16 GiB of zeros (a hole) after the archive is an
    ArchiveLimit, and the hash that ran ahead stops instead of reading them all."""
    path = tmp_path / "layer.tar"
    path.write_bytes(TarBuilder().file("a", b"1").bytes())
    os.truncate(path, 16 << 30)
    with open(path, "rb") as stream:
        reader = TarReader(stream)
        try:
            with pytest.raises(ArchiveLimit, match="follow the end"):
                list(reader)
        finally:
            reader.close()
    assert reader._mapped is not None
    assert reader._mapped.hashed < 1 << 30
    with pytest.raises(RuntimeError, match="closed before"):  # never a digest of a part
        reader.diff_id  # noqa: B018


def test_a_plain_blob_in_a_regular_file_is_handed_over_as_the_file(tmp_path: Path) -> None:
    """open_layer_stream gives back a plain tar file itself, at the position the
    caller handed it over (so the reader can map it); a compressed one is decoded."""
    tar = TarBuilder().file("a", b"hello").bytes()
    plain, packed = tmp_path / "plain.tar", tmp_path / "layer.tar.gz"
    plain.write_bytes(b"xx" + tar)
    packed.write_bytes(gzip.compress(tar))
    with open(plain, "rb") as blob:
        blob.seek(2)
        stream = open_layer_stream(blob)
        assert stream is blob and blob.tell() == 2
        got, _ = read_all(stream)  # type: ignore[arg-type]
        assert [(e.path, c) for e, c in got] == [("a", b"hello")]
    with open(packed, "rb") as blob:
        stream = open_layer_stream(blob)
        assert stream is not blob
        assert stream.read() == tar


def test_a_plain_layer_stream_reads_into_the_callers_buffer() -> None:
    """readinto of a plain blob: the sniffed head first, then straight from the file
    (or through read() for a stream without readinto), every byte exactly once."""
    data = os.urandom(100_000)
    for blob in (io.BytesIO(data), Trickle(data, 3000)):
        stream = open_layer_stream(blob)  # type: ignore[arg-type]
        got = bytearray()
        buffer = bytearray(7001)
        while n := stream.readinto(buffer):  # type: ignore[attr-defined]
            got += buffer[:n]
        assert bytes(got) == data


@pytest.mark.parametrize("read_ahead", [False, True])
def test_entries_come_out_of_a_pipe_before_it_is_closed(read_ahead: bool) -> None:
    """A layer streamed through a pipe is applied as it arrives: no read waits for
    a whole buffer (megabytes) when the bytes that are there make an entry."""
    import threading

    tar = TarBuilder().file("first", b"1" * 5000).file("second", b"2").bytes()
    read_fd, write_fd = os.pipe()
    first_seen = threading.Event()
    with open(read_fd, "rb") as stream:
        reader = TarReader(stream, read_ahead=read_ahead)
        try:
            os.write(write_fd, tar[:6000])  # the first entry, not the end

            def rest() -> None:
                first_seen.wait(10)
                os.write(write_fd, tar[6000:])
                os.close(write_fd)

            writer = threading.Thread(target=rest)
            writer.start()
            entry = reader.next()
            assert entry is not None and entry.path == "first"
            assert writer.is_alive()  # it still waits to send the rest
            first_seen.set()
            assert [e.path for e in reader] == ["second"]
            writer.join()
        finally:
            first_seen.set()
            reader.close()
    assert reader.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_read_ahead_reuses_a_buffer_only_once_its_hash_is_done(limit: int) -> None:
    """The hash runs on another thread: a buffer read into again before its hash was
    done would change the digest (each read fills the buffer with new bytes)."""
    from lamina.core.layertar import source

    data = os.urandom(9 * source._AHEAD_CHUNK + 12345)
    stream = io.BytesIO(data)
    ahead = source.ReadAhead(lambda view: stream.readinto(view), limit=limit)
    out = bytearray()
    try:
        while (got := ahead.take()) is not None:
            buffer, n = got
            out += buffer[source.RESERVE:source.RESERVE + n]
    finally:
        ahead.close()
    assert out == data
    assert ahead.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_closing_early_stops_a_read_ahead_waiting_for_a_download(tmp_path: Path,
                                                                 compression: str | None) -> None:
    """A pull's applier that fails or is interrupted closes its reader while the
    read-ahead thread waits for bytes a stalled download has not written: the close
    makes that wait end (through the decompressor), instead of waiting with it."""
    import threading

    from lamina.core.images.spool import Spool

    tar = TarBuilder().file("big", os.urandom(6 << 20)).file("after", b"x").bytes()
    if compression == "gzip":
        blob = gzip.compress(tar, compresslevel=1)
    elif compression == "zstd":
        blob = pytest.importorskip("zstandard").ZstdCompressor(level=1).compress(tar)
    else:
        blob = tar
    spool = Spool(tmp_path, "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob))
    spool.open_for_writing()
    spool.write(blob[: len(blob) // 2])  # and nothing more: the download stalls
    stream = spool.reader()
    reader = TarReader(open_layer_stream(stream), read_ahead=True)
    assert next(iter(reader)).path == "big"
    time.sleep(0.2)  # the read-ahead thread reaches the missing half and waits
    closing = threading.Thread(target=reader.close, daemon=True)
    closing.start()
    closing.join(5)
    assert not closing.is_alive(), "close waited for the stalled download"
    stream.close()
    assert not spool.done and not spool.cancelled  # the download itself is the pull's
    spool.close()
