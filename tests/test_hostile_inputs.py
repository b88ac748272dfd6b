"""Hostile layer tars: cases 1-33 of shared/reference/hostile-inputs.md, one test each.

Every test applies into ``<tmp>/dest`` next to a sentinel tree (``victim``,
``dest-evil``) whose names, contents, modes and mtimes are checked after the
test: nothing outside the root may change, whatever the outcome. Absolute
names point at unique paths of the host (``/etc/<unique>``) that must never
appear.

Case 31 (a blob whose digest or size differs from its descriptor) is the blob
store's check while streaming (``core/blobs/store.py``), not the applier's: the
applier only computes the diff id. Cases 34-36 concern images and the
launcher.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from streams import Zeros
from tarmaker import TarBuilder, header

from lamina.core.driver import ApplyResult
from lamina.core.errors import ArchiveLimit, CorruptArchive, UnsafeArchive
from lamina.core.layertar import source
from lamina.core.layertar.apply import apply_tar, can_make_devices
from lamina.core.layertar.compression import open_layer_stream

UNIQUE = f"lamina-hostile-{uuid.uuid4().hex[:12]}"


def snapshot(top: Path, skip: Path) -> dict[str, tuple[object, ...]]:
    """Names, types, modes, owners, mtimes and contents of a tree, not following links."""
    state: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            continue
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            if Path(path) == skip:
                continue
            st = os.lstat(path)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            state[os.path.relpath(path, top)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ino, extra,
            )  # fmt: skip
    return state


@dataclass
class Site:
    """The root to apply into and its untouchable neighbours."""

    root: Path
    victim: Path
    top: Path
    #: "stream": the tar comes as a stream (read in pieces); "file": as a regular
    #: file, which the reader maps whole. Both readings must refuse the same things.
    source: str = "stream"

    def apply(self, tar: bytes | TarBuilder) -> ApplyResult:
        data = tar.bytes() if isinstance(tar, TarBuilder) else tar
        with within(20):
            if self.source == "stream":
                return apply_tar(io.BytesIO(data), self.root)
            layer = self.top.parent / f"{self.top.name}-layer.tar"  # beside the watched tree
            layer.write_bytes(data)
            try:
                with open(layer, "rb") as stream:
                    return apply_tar(stream, self.root)
            finally:
                layer.unlink()

    def inside(self, path: str | Path) -> Path:
        """Where an absolute path of the image lands: under the root."""
        return self.root / str(path).lstrip("/")


@contextlib.contextmanager
def within(seconds: int) -> Iterator[None]:
    """Turn a hang into a test failure."""

    def timeout(signum: int, frame: object) -> None:
        raise AssertionError(f"did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(params=["stream", "file"])
def site(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Site]:
    root = tmp_path / "dest"
    root.mkdir()
    victim = tmp_path / "victim"
    (victim / ".ssh").mkdir(parents=True)
    (victim / "hello").write_text("hello")
    (victim / "hello").chmod(0o640)
    (victim / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA me\n")
    (tmp_path / "dest-evil").mkdir()
    (tmp_path / "dest-evil" / "secret").write_text("secret")
    os.utime(victim / "hello", ns=(1_000_000_000, 1_000_000_000))
    before = snapshot(tmp_path, root)
    yield Site(root=root, victim=victim, top=tmp_path, source=request.param)
    assert snapshot(tmp_path, root) == before, "something outside the root changed"
    for host_path in (f"/{UNIQUE}", f"/etc/{UNIQUE}", f"/usr/bin/{UNIQUE}", f"/run/{UNIQUE}"):
        assert not os.path.lexists(host_path), f"{host_path} was written on the host"


def climb_to(target: Path) -> str:
    """A relative path that climbs far above any root, then down to ``target``."""
    return "../" * 40 + str(target).lstrip("/")


# --- entry names -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../victim/x", "/../victim/x", "..", "../../x", "a/../../x"])
@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
def test_01_dotdot_names_are_rejected(site: Site, name: str, kind: str) -> None:
    tar = TarBuilder()
    if kind == "file":
        tar.file(name, b"x")
    elif kind == "dir":
        tar.dir(name)
    else:
        tar.symlink(name, "/")
    with pytest.raises(UnsafeArchive, match="outside the root"):
        site.apply(tar)
    assert list(site.root.iterdir()) == []


def test_02_absolute_names_land_under_the_root(site: Site) -> None:
    site.apply(TarBuilder().file(f"/{UNIQUE}/file", b"abs").file("//double//slash", b"2"))
    assert (site.root / UNIQUE / "file").read_bytes() == b"abs"
    assert (site.root / "double" / "slash").read_bytes() == b"2"


def test_03_dotdot_through_a_directory(site: Site) -> None:
    with pytest.raises(UnsafeArchive, match="outside the root"):
        site.apply(TarBuilder().dir("tmp").symlink("tmp/../../x", "/"))
    # a symlink whose *target* climbs is fine, and writing through it stays inside
    site.apply(TarBuilder().dir("tmp").symlink("tmp/up", "../../..").file("tmp/up/victim/x", b"1"))
    assert (site.root / "victim" / "x").read_bytes() == b"1"


@pytest.mark.parametrize("name", [".", "/.", "./", "/"])
@pytest.mark.parametrize("kind", ["symlink", "file", "hardlink", "fifo"])
def test_04_the_root_keeps_its_type(site: Site, name: str, kind: str) -> None:
    tar = TarBuilder().file("target", b"t")
    if kind == "symlink":
        tar.symlink(name, "/etc")
    elif kind == "file":
        tar.file(name, b"x")
    elif kind == "hardlink":
        tar.hardlink(name, "target")
    else:
        tar.fifo(name)
    with pytest.raises(UnsafeArchive, match="refusing to change the type of the root"):
        site.apply(tar)
    assert site.root.is_dir() and not site.root.is_symlink()


def test_04_dot_as_a_directory_sets_the_root_metadata(site: Site) -> None:
    site.apply(TarBuilder().dir(".", mode=0o711, uid=7, gid=8, mtime=1_234_567_890).file("f"))
    st = site.root.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o711, 7, 8)
    assert st.st_mtime_ns == 1_234_567_890 * 10**9


def test_05_dotdot_prefixed_names_are_legal(site: Site) -> None:
    site.apply(TarBuilder().file("..name", b"1").file("a/..b/...c", b"2"))
    assert (site.root / "..name").read_bytes() == b"1"
    assert (site.root / "a" / "..b" / "...c").read_bytes() == b"2"


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("a/" * 2100 + "f", ArchiveLimit),  # longer than PATH_MAX
        ("d/" + "x" * 256, ArchiveLimit),  # a component over NAME_MAX
        ("evil\0name", CorruptArchive),  # an embedded NUL
    ],
    ids=["path-max", "name-max", "nul"],
)
def test_06_names_the_kernel_cannot_take(site: Site, name: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        site.apply(TarBuilder().pax({"path": name}).raw_header("placeholder", data=b"x"))
    assert list(site.root.iterdir()) == []


# --- symlinks ----------------------------------------------------------------------------


def test_07_writing_through_a_link_to_outside(site: Site) -> None:
    site.apply(TarBuilder().symlink("link", "../victim").file("link/file", b"x"))
    assert (site.root / "victim" / "file").read_bytes() == b"x"
    assert os.readlink(site.root / "link") == "../victim"


def test_08_two_hops(site: Site) -> None:
    site.apply(
        TarBuilder()
        .dir("in")
        .symlink("in/up", "..")
        .symlink("in/up/esc", "../victim")
        .file("in/up/esc/file", b"x")
    )
    assert os.readlink(site.root / "esc") == "../victim"  # in/up is the root
    assert (site.root / "victim" / "file").read_bytes() == b"x"


def test_09_dot_and_dotdot_chains(site: Site) -> None:
    site.apply(
        TarBuilder()
        .symlink("cur", ".")
        .symlink("par", "cur/..")
        .file("par/evil", b"1")
        .symlink("cur/par2", "..")
        .file("cur/par2/evil2", b"2")
        .file("cur/cur/par/par2/evil3", b"3")
    )
    assert (site.root / "evil").read_bytes() == b"1"
    assert os.readlink(site.root / "par2") == ".."
    assert (site.root / "evil2").read_bytes() == b"2"
    assert (site.root / "evil3").read_bytes() == b"3"


def test_10_absolute_symlinks_resolve_against_the_root(site: Site) -> None:
    site.apply(TarBuilder().dir("etc").symlink("etc2", "/etc").file(f"/etc2/{UNIQUE}", b"x"))
    assert (site.root / "etc" / UNIQUE).read_bytes() == b"x"


@pytest.mark.parametrize("target", ["/", "../..", climb_to(Path("/"))])
def test_11_directory_replaced_by_a_symlink_mid_archive(site: Site, target: str) -> None:
    site.apply(
        TarBuilder()
        .dir("d")
        .file("d/f", b"old")
        .symlink("d", target)
        .file(f"d/{UNIQUE}", b"x")
        .file("d/victim/planted", b"y")
    )
    assert (site.root / "d").is_symlink()
    assert (site.root / UNIQUE).read_bytes() == b"x"
    assert (site.root / "victim" / "planted").read_bytes() == b"y"


@pytest.mark.parametrize(
    "links",
    [
        [("a", "b"), ("b", "a")],
        [("self", "/../self")],
        [("s", "s/x")],
        [("l1", "l2"), ("l2", "l1/.")],
    ],
)
def test_12_symlink_loops_fail_fast(site: Site, links: list[tuple[str, str]]) -> None:
    tar = TarBuilder()
    for name, target in links:
        tar.symlink(name, target)
    tar.file(f"{links[0][0]}/x", b"x")
    start = time.monotonic()
    with pytest.raises(UnsafeArchive, match="ELOOP"):
        site.apply(tar)
    assert time.monotonic() - start < 5


def test_13_symlinks_from_a_lower_layer(site: Site) -> None:
    ssh = site.victim / ".ssh"
    site.apply(TarBuilder().symlink("x", climb_to(ssh)).dir("var").symlink("var/run", "/run"))
    site.apply(
        TarBuilder().file("x/authorized_keys", b"attacker key").file("var/run/a/b/file", b"r")
    )
    assert site.inside(ssh / "authorized_keys").read_bytes() == b"attacker key"
    assert (site.root / "run" / "a" / "b" / "file").read_bytes() == b"r"


# --- hardlinks -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["../victim/hello", "/../victim/hello", "a/../../victim/hello"])
def test_14_hardlinks_to_outside_are_rejected(site: Site, target: str) -> None:
    with pytest.raises(UnsafeArchive, match="outside the root"):
        site.apply(TarBuilder().dir("a").hardlink("link", target))
    assert not (site.root / "link").exists()


def test_15_sibling_prefix_trick(site: Site) -> None:
    with pytest.raises(UnsafeArchive, match="outside the root"):
        site.apply(TarBuilder().hardlink("stolen", "../dest-evil/secret"))


def test_16_hardlink_through_a_symlinked_directory(site: Site) -> None:
    site.apply(
        TarBuilder()
        .file("etc/passwd", b"image passwd")
        .dir("sub")
        .symlink("sub/d1", "../../etc")
        .hardlink("link", "/sub/d1/passwd")
    )
    link = site.root / "link"
    assert link.read_bytes() == b"image passwd"
    assert link.stat().st_ino == (site.root / "etc" / "passwd").stat().st_ino
    assert link.stat().st_ino != os.stat("/etc/passwd").st_ino


def test_17_chmod_through_a_hardlink_to_an_escaping_symlink(site: Site) -> None:
    hello = site.victim / "hello"
    site.apply(
        TarBuilder()
        .symlink("s", str(hello))
        .symlink("rel", "../victim/hello")
        .hardlink("h", "s", mode=0o777)
        .hardlink("h2", "rel", mode=0o4777, uid=1234)
    )
    for name in ("h", "h2"):
        assert (site.root / name).is_symlink()
    # the fixture checks that victim/hello kept its mode (0640), owner and mtime


def test_18_hardlink_to_a_symlink_links_the_symlink(site: Site) -> None:
    site.apply(TarBuilder().file("target", b"t").symlink("s", "target").hardlink("h", "s"))
    h, s = os.lstat(site.root / "h"), os.lstat(site.root / "s")
    assert stat.S_ISLNK(h.st_mode) and h.st_ino == s.st_ino and h.st_nlink == 2


def test_19_absolute_hardlink_targets_resolve_in_the_root(site: Site) -> None:
    site.apply(
        TarBuilder().file(f"usr/bin/{UNIQUE}", b"bin").hardlink("copy", f"/usr/bin/{UNIQUE}")
    )
    assert (site.root / "copy").stat().st_ino == (site.root / "usr/bin" / UNIQUE).stat().st_ino


# --- whiteouts -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "etc/.wh..", "etc/.wh.", "a/.wh..."])
def test_20_invalid_whiteouts(site: Site, name: str) -> None:
    site.apply(TarBuilder().file("keep", b"k").dir("etc").file("etc/keep", b"k"))
    with pytest.raises(UnsafeArchive, match="invalid whiteout"):
        site.apply(TarBuilder().file(name))
    assert (site.root / "keep").exists() and (site.root / "etc" / "keep").exists()


def test_21_whiteout_of_a_symlink_removes_only_the_link(site: Site) -> None:
    site.apply(TarBuilder().dir("etc").file("etc/passwd", b"p").symlink("etc2", "/etc"))
    site.apply(TarBuilder().whiteout("etc2"))
    assert not os.path.lexists(site.root / "etc2")
    assert (site.root / "etc" / "passwd").read_bytes() == b"p"


def test_22_whiteout_below_a_symlink_resolves_in_the_root(site: Site) -> None:
    site.apply(
        TarBuilder().dir("etc").file("etc/passwd", b"p").file("etc/group").symlink("etc2", "/etc")
    )
    site.apply(TarBuilder().whiteout("etc2/passwd").whiteout(f"etc2/{UNIQUE}"))
    assert not (site.root / "etc" / "passwd").exists()
    assert (site.root / "etc" / "group").exists()
    assert os.path.exists("/etc/passwd")


def test_23_whiteout_prefix_counts_only_on_the_last_component(site: Site) -> None:
    site.apply(TarBuilder().file(".wh.dir/file", b"x"))
    assert (site.root / ".wh.dir" / "file").read_bytes() == b"x"


def test_24_opaque_marker_never_hides_its_own_layer(site: Site) -> None:
    site.apply(TarBuilder().dir("a").file("a/old", b"lower").dir("a/sub").file("a/sub/old"))
    site.apply(TarBuilder().dir("a").file("a/b", b"mine").file("a/sub/new", b"n").opaque("a"))
    assert sorted(os.listdir(site.root / "a")) == ["b", "sub"]
    assert os.listdir(site.root / "a" / "sub") == ["new"]
    assert (site.root / "a" / "b").read_bytes() == b"mine"


# --- special files and metadata ----------------------------------------------------------


@pytest.mark.skipif(not can_make_devices(), reason="needs root in the initial user namespace")
def test_25_device_nodes_as_root(site: Site) -> None:
    site.apply(TarBuilder().chardev("dev/null", 1, 3, mode=0o666).blockdev("dev/loop9", 7, 9))
    st = os.lstat(site.root / "dev" / "null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(site.root / "dev" / "loop9")
    assert stat.S_ISBLK(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (7, 9)


@pytest.mark.parametrize(("major", "minor"), [(4096, 0), (0, 1 << 20), (2**40, 1)])
def test_25_out_of_range_device_numbers_are_refused(site: Site, major: int, minor: int) -> None:
    with pytest.raises(UnsafeArchive, match="out of range"):
        site.apply(TarBuilder().chardev("dev/bad", major, minor))
    assert not os.path.lexists(site.root / "dev" / "bad")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a user namespace mapping")
def test_25_device_nodes_are_skipped_in_a_user_namespace(
    site: Site, tmp_path_factory: pytest.TempPathFactory
) -> None:
    layer = tmp_path_factory.mktemp("layer") / "layer.tar"
    layer.write_bytes(TarBuilder().chardev("dev/null", 1, 3).file("dev/regular", b"r").bytes())
    code = (
        "import sys; from pathlib import Path; from lamina.core.layertar.apply import apply_tar;"
        f"apply_tar(open({str(layer)!r}, 'rb'), Path({str(site.root)!r}))"
    )
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-c", code],
        capture_output=True,
        timeout=60,
    )
    if proc.returncode and b"unshare" in proc.stderr and b"Operation not permitted" in proc.stderr:
        pytest.skip("user namespaces are not available here")
    assert proc.returncode == 0, proc.stderr.decode()
    assert (site.root / "dev" / "regular").read_bytes() == b"r"
    assert not os.path.lexists(site.root / "dev" / "null")
    assert b"skipped 1 device node" in proc.stderr


def test_26_fifos_are_never_opened(site: Site) -> None:
    # a writer opening the fifo would block forever: within() turns that into a failure
    site.apply(TarBuilder().dir("etc").fifo("etc/passwd", mode=0o644).fifo("etc/conf"))
    site.apply(TarBuilder().file("etc/conf", b"regular now"))
    assert stat.S_ISFIFO(os.lstat(site.root / "etc" / "passwd").st_mode)
    assert stat.S_IMODE(os.lstat(site.root / "etc" / "passwd").st_mode) == 0o644
    assert (site.root / "etc" / "conf").read_bytes() == b"regular now"


def test_27_setuid_setgid_and_sticky_bits_survive(site: Site) -> None:
    site.apply(
        TarBuilder()
        .file("bin/su", b"su", mode=0o4755, uid=1000, gid=1000)
        .file("bin/wall", b"w", mode=0o2755, gid=5)
        .dir("tmp", mode=0o1777)
        .dir("shared", mode=0o2775, gid=50)
    )
    modes = {n: stat.S_IMODE(os.lstat(site.root / n).st_mode) for n in
             ("bin/su", "bin/wall", "tmp", "shared")}  # fmt: skip
    assert modes == {"bin/su": 0o4755, "bin/wall": 0o2755, "tmp": 0o1777, "shared": 0o2775}
    assert os.lstat(site.root / "bin" / "su").st_uid == 1000


CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")  # v2, cap_net_raw+ep


def test_28_xattrs_kept_dropped_and_refused(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        site.apply(
            TarBuilder().file(
                "bin/ping",
                b"ping",
                mode=0o755,
                uid=0,
                xattrs={
                    "security.capability": CAP_NET_RAW,
                    "user.note": b"kept",
                    "security.selinux": b"system_u:object_r:bin_t:s0",
                },
            )
        )
    ping = site.root / "bin" / "ping"
    assert sorted(os.listxattr(ping)) == ["security.capability", "user.note"]
    assert os.getxattr(ping, "security.capability") == CAP_NET_RAW
    assert "security.selinux" in caplog.text
    for key in ("trusted.overlay.opaque", "trusted.overlay.redirect"):
        with pytest.raises(UnsafeArchive, match="overlayfs"):
            site.apply(TarBuilder().dir("d", xattrs={key: b"y"}))


# --- exhaustion and corruption ---------------------------------------------------------------


def test_29_gigabytes_of_zeros_after_the_archive(site: Site) -> None:
    stream = Zeros(16 << 30, prefix=TarBuilder().file("a", b"1").bytes())
    with within(10), pytest.raises(ArchiveLimit, match="follow the end"):
        apply_tar(stream, site.root)  # type: ignore[arg-type]
    # what the parser took (the archive, the 1 MiB allowed after its end and the piece
    # that crossed that limit) plus what the read-ahead thread may have read before it
    # was stopped (its bounded buffers, each filled by one of this stream's 1 MiB
    # pieces): never the 16 GiB
    parsed = len(TarBuilder().file("a", b"1").bytes()) + (2 << 20)
    assert stream.read_bytes <= parsed + source._AHEAD * (1 << 20)


def test_29_a_1tib_entry_whose_stream_ends(site: Site) -> None:
    tar = header("huge", size=1 << 40) + b"only this"
    with within(10), pytest.raises(CorruptArchive, match="truncated"):
        site.apply(tar)


def test_29_a_1tib_sparse_file_is_written_sparsely(site: Site) -> None:
    size = 1 << 40
    regions = [(0, b"head"), (size // 2, b"middle"), (size - 4, b"tail")]
    site.apply(TarBuilder().sparse("huge", size, regions))
    path = site.root / "huge"
    st = path.stat()
    assert st.st_size == size
    assert st.st_blocks * 512 < 1 << 20  # holes stay holes
    with open(path, "rb") as f:
        f.seek(size // 2)
        assert f.read(6) == b"middle"
        f.seek(size - 4)
        assert f.read() == b"tail"


def test_29_a_huge_pax_header(site: Site) -> None:
    stream = Zeros(8 << 30, prefix=header("././@PaxHeader", typeflag=b"x", size=8 << 30))
    with within(10), pytest.raises(ArchiveLimit, match="pax header"):
        apply_tar(stream, site.root)  # type: ignore[arg-type]
    # the parser stops at the header; a read-ahead thread may have filled its buffers
    # meanwhile (on a busy machine it gets that far before the parser runs)
    assert stream.read_bytes < (4 << 20) + source._AHEAD * source._AHEAD_CHUNK


def test_29_millions_of_sparse_regions(site: Site) -> None:
    tar = TarBuilder().sparse("s", 1 << 40, [(0, b"x")], map_count=10_000_000).bytes()
    with within(10), pytest.raises(ArchiveLimit, match="regions"):
        site.apply(tar)


@pytest.mark.parametrize("record", [b"0 path=x\n", b"-1 path=x\n", b"00 x=\n"])
def test_30_zero_length_or_negative_pax_records(site: Site, record: bytes) -> None:
    with pytest.raises(CorruptArchive, match="pax record"):
        site.apply(TarBuilder().pax(record).file("a", b"x"))
    assert list(site.root.iterdir()) == []


@pytest.mark.parametrize(
    "blob",
    [
        os.urandom(10_000),
        gzip.compress(b"Lorem ipsum dolor sit amet\n" * 1000),
        gzip.compress(b"short text\n"),
        b"\x1f\x8b" + os.urandom(1000),
    ],
    ids=["random", "gzip-text", "gzip-short-text", "gzip-magic-junk"],
)
def test_32_junk_streams(site: Site, blob: bytes) -> None:
    with within(10), pytest.raises(CorruptArchive):
        apply_tar(open_layer_stream(io.BytesIO(blob)), site.root)
    assert list(site.root.iterdir()) == []


def test_33_duplicate_entries(site: Site) -> None:
    site.apply(
        TarBuilder()
        .file("f2d", b"file")
        .dir("f2d", mode=0o750)
        .file("f2d/child", b"c")
        .dir("d2f")
        .file("d2f/deep/x", b"gone")
        .file("d2f", b"now a file")
        .dir("d2s")
        .file("d2s/x")
        .symlink("d2s", "/f2d")
        .file("d2s/through", b"via link")
        .dir("merge", mode=0o700, uid=1, mtime=1)
        .file("merge/a", b"a")
        .dir("merge", mode=0o755, uid=2, mtime=2)
        .file("merge/b", b"b")
        .file("same", b"first", mode=0o600)
        .file("same", b"second", mode=0o640)
    )
    r = site.root
    assert (r / "f2d").is_dir() and stat.S_IMODE((r / "f2d").stat().st_mode) == 0o750
    assert (r / "d2f").read_bytes() == b"now a file"
    assert os.readlink(r / "d2s") == "/f2d"
    assert (r / "f2d" / "through").read_bytes() == b"via link"
    merged = (r / "merge").stat()
    assert sorted(os.listdir(r / "merge")) == ["a", "b"]
    assert (stat.S_IMODE(merged.st_mode), merged.st_uid, merged.st_mtime_ns) == (
        0o755,
        2,
        2 * 10**9,
    )
    assert (r / "same").read_bytes() == b"second"
    assert stat.S_IMODE((r / "same").stat().st_mode) == 0o640
