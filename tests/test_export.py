"""The deterministic OCI layer tar export.

The output is read back with the stdlib tarfile module (trusted here: we
wrote it) and byte by byte where the format matters; applying it onto a copy
of the lower tree must reproduce the upper tree exactly.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import shutil
import socket
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from test_changes import CAP, T0, DirViews, PlainDriver, build_rich_tree, copy

from lamina.conformance.trees import assert_same_tree
from lamina.core.driver import Change, ChangeKind
from lamina.core.errors import DriverError
from lamina.core.layers.changes import compare_trees
from lamina.core.layertar.export import generic_diff, write_layer_tar

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, xattrs)")


def export(lower: Path | None, upper: Path, **kwargs) -> bytes:
    buf = io.BytesIO()
    written = write_layer_tar(buf, upper, compare_trees(lower, upper), **kwargs)
    data = buf.getvalue()
    assert written == len(data)
    assert len(data) % 512 == 0 and data.endswith(bytes(1024))
    return data


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def ustar_block(data: bytes, member: tarfile.TarInfo) -> bytes:
    """The raw ustar header of a member (after any PAX header)."""
    return data[member.offset_data - 512 : member.offset_data]


def pax_mtime_ns(member: tarfile.TarInfo) -> int:
    raw = member.pax_headers.get("mtime")
    if raw is None:
        return int(member.mtime) * 1_000_000_000
    negative = raw.startswith("-")
    whole, _, frac = raw.lstrip("-").partition(".")
    ns = int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])
    return -ns if negative else ns


# --- a small, trusting applier for round trips -------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def extract(data: bytes, root: Path) -> None:
    """Apply a layer tar onto ``root`` the way an OCI applier does (test output only)."""
    dir_times: list[tuple[Path, int]] = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            rel = os.path.normpath(m.name)
            target = root if rel == "." else root / rel
            base = os.path.basename(rel)
            if base == ".wh..wh..opq":
                for child in target.parent.iterdir():
                    _remove(child)
                continue
            if base.startswith(".wh."):
                _remove(target.parent / base[4:])
                continue
            if not (m.isdir() and target.is_dir() and not target.is_symlink()):
                _remove(target)
            if m.isdir():
                target.mkdir(exist_ok=True)
            elif m.isreg():
                target.write_bytes(tar.extractfile(m).read())
            elif m.issym():
                os.symlink(m.linkname, target)
            elif m.islnk():
                os.link(root / m.linkname, target)
                continue
            elif m.ischr() or m.isblk():
                kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
                os.mknod(target, kind | 0o600, os.makedev(m.devmajor, m.devminor))
            elif m.isfifo():
                os.mkfifo(target)
            os.lchown(target, m.uid, m.gid)
            if not m.issym():
                os.chmod(target, m.mode)  # after chown, which clears setuid
            for key, value in m.pax_headers.items():
                if key.startswith("SCHILY.xattr."):
                    os.setxattr(
                        target,
                        key[len("SCHILY.xattr.") :],
                        value.encode("utf-8", "surrogateescape"),
                        follow_symlinks=False,
                    )
            ns = pax_mtime_ns(m)
            if m.isdir():
                dir_times.append((target, ns))
            else:
                os.utime(target, ns=(ns, ns), follow_symlinks=False)
    for path, ns in reversed(dir_times):
        os.utime(path, ns=(ns, ns))


def _appliers() -> list[Callable[[bytes, Path], None]]:
    """Our small applier, and the core's ``apply_tar`` once it exists."""
    found: list[Callable[[bytes, Path], None]] = [extract]
    with contextlib.suppress(ImportError):
        apply_tar = importlib.import_module("lamina.core.layertar.apply").apply_tar

        def core_apply(data: bytes, root: Path) -> None:
            apply_tar(io.BytesIO(data), root)

        found.append(core_apply)
    return found


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    lower = tmp_path / "lower"
    build_rich_tree(lower)
    return lower, copy(lower, tmp_path / "upper")


# --- round trips --------------------------------------------------------------------------


def change_metadata(upper: Path) -> None:
    os.chmod(upper / "usr" / "bin" / "ping", 0o755)
    os.setxattr(upper / "usr" / "bin" / "ping", "user.origin", b"\x00\xffbinary")
    os.chown(upper / "home" / "user" / ".profile", 2000, 2001)
    os.chown(upper / "etc" / "passwd", 0, 42)
    os.chmod(upper / "tmp", 0o1770)
    os.setxattr(upper / "tmp", "user.dir", b"yes")
    os.lchown(upper / "bin" / "cat", 7, 7)
    os.utime(upper / "bin" / "cat", ns=(T0 + 123, T0 + 123), follow_symlinks=False)


def change_deletions(upper: Path) -> None:
    shutil.rmtree(upper / "var" / "lib")
    os.unlink(upper / "etc" / "conf.d" / "a.conf")
    os.unlink(upper / "bin" / "ls")  # one name of a hardlink group
    os.unlink(upper / "dev" / "null")


def change_replacements(upper: Path) -> None:
    shutil.rmtree(upper / "etc" / "conf.d")
    (upper / "etc" / "conf.d").write_bytes(b"a file now")
    os.unlink(upper / "etc" / "passwd")
    (upper / "etc" / "passwd").mkdir()
    (upper / "etc" / "passwd" / "inside").write_bytes(b"x")
    shutil.rmtree(upper / "home" / "user")
    (upper / "home" / "user").mkdir()
    (upper / "home" / "user" / "new").write_bytes(b"recreated")
    os.unlink(upper / "bin" / "cat")
    os.symlink("/bin/busybox", upper / "bin" / "cat")
    os.unlink(upper / "dev" / "loop0")
    os.mknod(upper / "dev" / "loop0", 0o60640, os.makedev(7, 3))
    os.unlink(upper / "dev" / "initctl")
    os.symlink("null", upper / "dev" / "initctl")


def change_hardlinks(upper: Path) -> None:
    os.link(upper / "etc" / "passwd", upper / "etc" / "passwd-")
    data = (upper / "bin" / "sh").read_bytes()
    os.unlink(upper / "bin" / "sh")
    (upper / "bin" / "sh").write_bytes(data)
    (upper / "new").mkdir()
    (upper / "new" / "one").write_bytes(b"1")
    os.link(upper / "new" / "one", upper / "new" / "two")
    os.link(upper / "new" / "one", upper / "new" / "zz-three")


FAR_TARGET = "/" + "/".join(["t" * 50] * 6)  # longer than the 100-byte ustar field


def change_new_tree(upper: Path) -> None:
    deep = upper / "opt" / ("long-directory-name-" * 6) / ("x" * 120)
    deep.mkdir(parents=True)
    # not random: 70 kB of random bytes hold b"GNU" one time in ~240, which the pax test
    # below takes for a GNU header
    (deep / "file").write_bytes(bytes(range(256)) * 273 + bytes(112))
    os.symlink(FAR_TARGET, deep / "far")
    os.mkfifo(upper / "opt" / "pipe")
    os.mknod(upper / "opt" / "tty", 0o20620, os.makedev(5, 0))
    os.mknod(upper / "opt" / "sda", 0o60660, os.makedev(259, 70000))
    (upper / "opt" / "big-ids").write_bytes(b"ids")
    os.chown(upper / "opt" / "big-ids", 3_000_000, 4_000_000)
    os.chmod(upper / "opt" / "big-ids", 0o6755)
    os.setxattr(upper / "opt" / "big-ids", "security.capability", CAP)
    name = os.fsdecode(b"caf\xe9-not-utf8")
    (upper / "opt" / name).write_bytes(b"latin1")
    (upper / "opt" / "empty").write_bytes(b"")
    os.utime(upper / "opt" / "empty", ns=(1_999_999_999, 1_999_999_999))
    os.utime(upper / "opt" / "pipe", ns=(-1_500_000_000, -1_500_000_000))


def change_root(upper: Path) -> None:
    os.chmod(upper, 0o711)
    os.setxattr(upper, "user.root", b"r")


SCENARIOS = {
    "metadata": change_metadata,
    "deletions": change_deletions,
    "replacements": change_replacements,
    "hardlinks": change_hardlinks,
    "new-tree": change_new_tree,
    "root": change_root,
    "everything": lambda up: [
        f(up) for f in (change_metadata, change_hardlinks, change_new_tree, change_root)
    ],
}


@pytest.mark.parametrize("applier", _appliers(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_applying_the_export_onto_lower_gives_upper(
    tmp_path: Path, trees: tuple[Path, Path], scenario: str, applier
) -> None:
    lower, upper = trees
    SCENARIOS[scenario](upper)
    data = export(lower, upper)
    target = copy(lower, tmp_path / "target")
    applier(data, target)
    assert_same_tree(upper, target)


@pytest.mark.parametrize("applier", _appliers(), ids=lambda f: f.__name__)
def test_base_layer_round_trip(tmp_path: Path, trees: tuple[Path, Path], applier) -> None:
    lower, _ = trees
    os.unlink(lower / "dev" / "log")  # sockets cannot travel in a tar
    data = export(None, lower)
    target = tmp_path / "fresh"
    target.mkdir()
    applier(data, target)
    assert_same_tree(lower, target)


# --- the format, byte by byte ---------------------------------------------------------------


def test_entries_are_sorted_numeric_and_typed(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    change_replacements(upper)
    data = export(lower, upper)
    found = members(data)
    names = [m.name for m in found]
    assert names == sorted(names)
    by_name = {m.name: m for m in found}
    assert by_name["etc/conf.d"].isreg()
    assert by_name["etc/passwd"].isdir()
    assert by_name["bin/cat"].issym() and by_name["bin/cat"].linkname == "/bin/busybox"
    loop = by_name["dev/loop0"]
    assert loop.isblk() and (loop.devmajor, loop.devminor) == (7, 3) and loop.mode == 0o640
    for m in found:
        assert (m.uname, m.gname) == ("", "")
        assert not {"atime", "ctime"} & set(m.pax_headers)
        raw = ustar_block(data, m)
        assert raw[257:265] == b"ustar\x0000"
        if m.isdir():
            assert raw[:100].rstrip(b"\0").endswith(b"/")


def test_unchanged_layer_is_an_empty_tar(trees: tuple[Path, Path]) -> None:
    assert export(*trees) == bytes(1024)


def test_mtime_is_truncated_with_exact_pax_value(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for name, ns in [("whole", 1_700_000_000_000_000_000), ("frac", 1_999_999_999)]:
        (root / name).write_bytes(b"")
        os.utime(root / name, ns=(ns, ns))
    data = export(None, root)
    by_name = {m.name: m for m in members(data)}
    frac = by_name["frac"]
    assert ustar_block(data, frac)[136:148] == b"00000000001\0"  # 1.999999999 -> 1, not 2
    assert frac.pax_headers["mtime"] == "1.999999999"
    whole = by_name["whole"]
    assert "mtime" not in whole.pax_headers
    assert int(ustar_block(data, whole)[136:147], 8) == 1_700_000_000


def test_whiteouts_and_opaque_markers(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    change_deletions(upper)
    data = export(lower, upper, opaque_dirs=["etc/conf.d", ""])
    found = members(data)
    names = [m.name for m in found]
    assert names[:2] == [".", ".wh..wh..opq"]  # the root (a parent of the changes), its marker
    assert names[names.index("etc/conf.d") + 1] == "etc/conf.d/.wh..wh..opq"
    assert {"var/.wh.lib", "etc/conf.d/.wh.a.conf", "bin/.wh.ls", "dev/.wh.null"} <= set(names)
    assert not any(n.startswith("var/lib/") for n in names)
    for m in found:
        if os.path.basename(m.name).startswith(".wh."):
            assert m.isreg() and (m.size, m.mode, m.uid, m.gid, m.mtime) == (0, 0, 0, 0, 0)
            assert m.pax_headers == {}


def test_xattrs_are_sorted_pax_records_without_overlay_ones(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    f = root / "f"
    f.write_bytes(b"")
    for name in ["user.zeta", "security.capability", "user.alpha", "trusted.overlay.origin"]:
        os.setxattr(f, name, CAP if name == "security.capability" else b"v")
    data = export(None, root)
    (m,) = [m for m in members(data) if m.name == "f"]
    keys = [k for k in m.pax_headers if k.startswith("SCHILY.xattr.")]
    assert keys == [
        "SCHILY.xattr.security.capability",
        "SCHILY.xattr.user.alpha",
        "SCHILY.xattr.user.zeta",
    ]
    assert (
        m.pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == CAP
    )
    assert b"trusted.overlay" not in data


def test_later_names_of_an_inode_are_hardlinks_to_the_first(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "b").mkdir(parents=True)
    (root / "b" / "x").write_bytes(b"content")
    os.link(root / "b" / "x", root / "a")
    os.link(root / "b" / "x", root / "c")
    data = export(None, root)
    by_name = {m.name: m for m in members(data)}
    assert by_name["a"].isreg() and by_name["a"].size == 7
    assert by_name["b/x"].islnk() and by_name["b/x"].linkname == "a"
    assert by_name["c"].islnk() and by_name["c"].linkname == "a"


def test_long_names_non_utf8_names_and_big_ids_use_pax(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    change_new_tree(upper)
    data = export(lower, upper)
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as t:
        found = {m.name: m for m in t.getmembers()}
    long = [n for n in found if n.endswith("/file")]
    assert len(long) == 1 and len(long[0]) > 200 and "path" in found[long[0]].pax_headers
    far = next(m for n, m in found.items() if n.endswith("/far"))
    assert far.linkname == FAR_TARGET and "linkpath" in far.pax_headers
    assert b"GNU" not in data and b"././@LongLink" not in data
    ids = found["opt/big-ids"]
    assert (ids.uid, ids.gid, ids.mode) == (3_000_000, 4_000_000, 0o6755)
    assert os.fsdecode(b"opt/caf\xe9-not-utf8") in found
    sda = found["opt/sda"]
    assert (sda.devmajor, sda.devminor) == (259, 70000)
    assert pax_mtime_ns(found["opt/pipe"]) == -1_500_000_000


def test_sockets_are_left_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))
    assert [m.name for m in members(export(None, root))] == ["."]


# --- determinism --------------------------------------------------------------------------


def test_two_runs_give_identical_bytes(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    SCENARIOS["everything"](upper)
    change_deletions(upper)
    first = export(lower, upper)
    assert export(lower, upper) == first


def test_a_copy_of_the_tree_exports_identically(tmp_path: Path, trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    change_new_tree(upper)
    change_hardlinks(upper)
    again = copy(upper, tmp_path / "again")
    assert export(lower, again) == export(lower, upper)


def test_writes_through_an_unbuffered_file(tmp_path: Path, trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    change_new_tree(upper)
    expected = export(lower, upper)
    with open(tmp_path / "out.tar", "wb", buffering=0) as raw:
        written = write_layer_tar(raw, upper, compare_trees(lower, upper))
    assert written == len(expected)
    assert (tmp_path / "out.tar").read_bytes() == expected


# --- refusals ---------------------------------------------------------------------------------


def test_file_growing_or_shrinking_while_read_fails_clearly(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    f = root / "f"
    f.write_bytes(b"x" * 1000)
    stale = {"f": os.lstat(f)}
    changes = [Change("f", ChangeKind.ADDED)]
    with open(f, "ab") as out:
        out.write(b"more")
    with pytest.raises(DriverError, match="grew while it was being exported"):
        write_layer_tar(io.BytesIO(), root, changes, stats=stale)
    os.truncate(f, 10)
    with pytest.raises(DriverError, match="shrank while it was being exported"):
        write_layer_tar(io.BytesIO(), root, changes, stats=stale)


def test_vanished_entry_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="disappeared"):
        write_layer_tar(io.BytesIO(), tmp_path, [Change("gone", ChangeKind.ADDED)])


def test_whiteout_device_is_refused(tmp_path: Path) -> None:
    os.mknod(tmp_path / "wh", 0o20000, os.makedev(0, 0))
    with pytest.raises(DriverError, match="0/0 character device"):
        write_layer_tar(io.BytesIO(), tmp_path, [Change("wh", ChangeKind.ADDED)])


@pytest.mark.parametrize("path", ["/abs", "a/../b", "a//b", "./a", "a/"])
def test_unclean_change_paths_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(DriverError, match="not a clean relative path"):
        write_layer_tar(io.BytesIO(), tmp_path, [Change(path, ChangeKind.DELETED)])


def test_deleting_the_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="deletion of the layer root"):
        write_layer_tar(io.BytesIO(), tmp_path, [Change("", ChangeKind.DELETED)])


# --- through the driver-facing function --------------------------------------------------------


def test_generic_diff(tmp_path: Path, trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    change_metadata(upper)
    views = DirViews({"base": lower, "child": upper})
    out = io.BytesIO()
    written = generic_diff(
        "child", ["base"], out, views, root_mode=PlainDriver.capabilities.root_mode
    )
    assert written == len(out.getvalue())
    assert out.getvalue() == export(lower, upper)
    assert views.open == []


def test_export_is_fast_for_many_small_files(tmp_path: Path) -> None:
    import time

    root = tmp_path / "root"
    for d in range(100):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(100):
            (root / f"d{d}" / f"f{f}").write_bytes(b"y" * 100)
    start = time.perf_counter()
    data = export(None, root)
    elapsed = time.perf_counter() - start
    assert len(members(data)) == 10_101
    assert elapsed < 2.0, f"exporting 10k files took {elapsed:.2f}s"


def test_tar_tool_reads_the_export(tmp_path: Path, trees: tuple[Path, Path]) -> None:
    if not shutil.which("tar"):
        pytest.skip("GNU tar is not installed")
    lower, upper = trees
    change_new_tree(upper)
    (tmp_path / "layer.tar").write_bytes(export(lower, upper))
    listing = subprocess.run(
        ["tar", "-tvf", str(tmp_path / "layer.tar")], capture_output=True, check=True, text=True
    )
    assert "opt/big-ids" in listing.stdout
    assert listing.stderr == ""
