"""Cases 36-43: changes, diff and apply."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from decimal import Decimal
from pathlib import Path

import pytest

from lamina.conformance.scenarios import (
    NS,
    OPAQUE_MARKER,
    T0,
    WHITEOUT_PREFIX,
    TarMember,
    apply_tar_layer,
    build_tar,
    can_make_devices,
    chmod,
    commit_step,
    device,
    diff_bytes,
    directory,
    file,
    hardlink,
    init_reference,
    member_from_tree,
    mounted,
    opaque,
    recreate_dir,
    remove,
    rich_base,
    setxattr,
    step,
    step_time,
    symlink,
)

FILLS = ["tar", "commit"]


def _base(store, reference: Path, capabilities, one=None) -> str:
    init_reference(reference, capabilities.root_mode)
    one = one or rich_base()
    one.apply(reference)
    return apply_tar_layer(store, one.layer_tar(reference), None)


def _tar_members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def _name(member: tarfile.TarInfo) -> str:
    return member.name.removeprefix("./").rstrip("/")


# --- 36 -----------------------------------------------------------------------------------

CHANGES_BASE = step(
    directory("a"), directory("a/b"), file("a/b/c", b"c"), file("a/b/keep", b"keep"),
    directory("d"), file("d/e", b"e"), file("d/f", b"f"), file("f", b"f"), file("g", b"g"),
    symlink("l", "g"), directory("dd"), directory("dd/sub"), file("dd/sub/x", b"x"),
    directory("untouched"), file("untouched/u", b"u"), name="base",
)
CHANGES_STEP = step(
    file("a/b/c", b"c changed", mtime=step_time(1)), remove("d/e"), file("a/new", b"new"),
    remove("f"), directory("h"), file("h/i", b"i"), chmod("g", 0o600), remove("dd"),
    parent_mtime=None, name="changes",
)
CHANGES_EXPECTED = {
    "": "C", "a": "C", "a/b": "C", "a/b/c": "C", "a/new": "A", "d": "C", "d/e": "D", "f": "D",
    "g": "C", "h": "A", "h/i": "A", "dd": "D",
}


@pytest.mark.parametrize("fill", FILLS)
def test_36_changes_exact(store, reference_dir, capabilities, fill) -> None:
    """changes() is the exact add/modify/delete set; parents of changes (root too) are modified."""
    base = _base(store, reference_dir, capabilities, CHANGES_BASE)
    for change in store.changes(base):
        assert change.kind.value == ("C" if change.path == "" else "A"), (
            f"layer without parent: {change.path!r} reported {change.kind.value}"
        )
    CHANGES_STEP.apply(reference_dir)
    if fill == "tar":
        layers = [apply_tar_layer(store, CHANGES_STEP.layer_tar(reference_dir), base)]
    else:
        rw = store.create_layer(base, writable=True).id
        with mounted(store, rw) as path:
            CHANGES_STEP.apply(path)
        committed = apply_tar_layer(store, diff_bytes(store, rw), base)
        layers = [rw, committed]
    for layer_id in layers:
        changes = store.changes(layer_id)
        assert [c.path for c in changes] == sorted(c.path for c in changes), "not sorted by path"
        got = {c.path: c.kind.value for c in changes}
        assert got == CHANGES_EXPECTED, (
            f"changes of {layer_id}: extra {sorted(got.items() - CHANGES_EXPECTED.items())}, "
            f"missing {sorted(CHANGES_EXPECTED.items() - got.items())}"
        )


# --- 37 -----------------------------------------------------------------------------------


def _modifications() -> list:
    ops = [
        file("etc/hostname", b"changed\n", mtime=step_time(1)), remove("setgid"),
        recreate_dir("sticky", mode=0o1777), file("sticky/new", b"n"), chmod("big", 0o600),
        directory("new/deeper/still", mode=0o700), file("new/deeper/still/f", b"f" * 5000),
        hardlink("new/link-to-new", "new/deeper/still/f"),
        symlink("link-rel", "etc/empty", mtime=T0 + 3 * NS),
        setxattr("xattrs", "user.added", b"yes"), remove("a/b/c/deep"),
    ]
    if can_make_devices():
        ops.append(device("new/null", "c", 1, 3))
    return ops


def test_37_diff_apply_round_trip(store, reference_dir, capabilities, assert_tree) -> None:
    """diff then apply on a fresh child of the same parent is identical; sizes and ids agree."""
    base = _base(store, reference_dir, capabilities)
    mods = step(*_modifications(), parent_mtime=step_time(2), name="modifications")
    mods.apply(reference_dir)
    child, data = commit_step(store, mods, base, reference_dir, assert_tree, "round trip")
    layer = store.layer(child)
    assert layer.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert layer.size == len(data)
    with mounted(store, child) as path:
        assert_tree(reference_dir, path, "applied diff")
    # a layer applied from a tar gives back a diff that rebuilds it too
    again = apply_tar_layer(store, diff_bytes(store, child), base)
    with mounted(store, again) as path:
        assert_tree(reference_dir, path, "diff of an applied layer, applied again")
    # and so does a layer without parent
    whole = apply_tar_layer(store, diff_bytes(store, base), None)
    with mounted(store, whole) as got, mounted(store, base) as want:
        assert_tree(want, got, "diff of the base layer, applied without parent")


# --- 38 -----------------------------------------------------------------------------------


def test_38_exported_tar_format(store, reference_dir, capabilities) -> None:
    """.wh. whiteouts, no 0/0 char devices or overlay xattrs, opaque only over lower dirs."""
    base = _base(store, reference_dir, capabilities, step(
        directory("d"), file("d/x", b"x"), file("d/y", b"y"), file("f", b"f"),
        directory("g"), file("g/h", b"h"), directory("keep"), file("keep/k", b"k"), name="base"))
    rw = store.create_layer(base, writable=True).id
    mods = [remove("f"), remove("g"), recreate_dir("d"), file("d/new", b"n"),
            directory("newdir"), file("newdir/n", b"n"), file("keep/k2", b"k2"),
            file("xf", b"x", xattrs={"user.k": b"v"})]
    if can_make_devices():
        mods.append(device("cdev", "c", 1, 3))
    with mounted(store, rw) as path:
        step(*mods).apply(path)
    members = _tar_members(diff_bytes(store, rw))
    names = [_name(m) for m in members]
    assert ".wh.f" in names and ".wh.g" in names, f"whiteouts missing: {names}"
    assert not [n for n in names if n.startswith("g/")], f"entries below a deleted dir: {names}"
    hidden = {"d/x", "d/y"}
    marker = f"d/{OPAQUE_MARKER}"
    assert marker in names or {f"d/{WHITEOUT_PREFIX}x", f"d/{WHITEOUT_PREFIX}y"} <= set(names), (
        f"the old entries {sorted(hidden)} of the recreated d are neither whited out nor "
        f"hidden by an opaque marker: {names}"
    )
    with mounted(store, base) as lower:
        for member in members:
            name = _name(member)
            parent, _, leaf = name.rpartition("/")
            assert not member.name.startswith("/") and ".." not in name.split("/"), name
            if leaf == OPAQUE_MARKER:
                assert (lower / parent).is_dir() and not (lower / parent).is_symlink(), (
                    f"opaque marker {name} for a directory the parent layer does not have"
                )
            elif leaf.startswith(WHITEOUT_PREFIX):
                target = lower / parent / leaf[len(WHITEOUT_PREFIX):]
                assert os.path.lexists(target), f"whiteout {name} for nothing of the parent"
            if leaf.startswith(WHITEOUT_PREFIX):
                assert member.isreg() and member.size == 0, f"whiteout {name} is not an empty file"
            assert not (member.ischr() and member.devmajor == 0 and member.devminor == 0), (
                f"{name} is a 0/0 character device (an overlay whiteout) in a layer tar"
            )
            overlay = [k for k in member.pax_headers if "trusted.overlay." in k]
            assert not overlay, f"{name} carries overlay xattrs {overlay}"
    by_name = {_name(m): m for m in members}
    assert f"newdir/{OPAQUE_MARKER}" not in by_name
    assert by_name["xf"].pax_headers.get("SCHILY.xattr.user.k") == "v"
    if can_make_devices():
        assert by_name["cdev"].ischr() and (by_name["cdev"].devmajor,
                                            by_name["cdev"].devminor) == (1, 3)


# --- 39 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["dir-first", "nested-first"])
def test_39_whiteout_with_nested_whiteout(store, reference_dir, capabilities, assert_tree,
                                          order) -> None:
    """`.wh.foo` together with `foo/.wh.bar` applies (ENOTDIR/ENOENT tolerated)."""
    base = _base(store, reference_dir, capabilities, step(
        directory("foo"), file("foo/bar", b"b"), file("foo/baz", b"z"), file("plain", b"p"),
        name="base"))
    one = step(remove("foo"), parent_mtime=step_time(1))
    one.apply(reference_dir)
    whiteouts = [TarMember.whiteout("foo"), TarMember.whiteout("foo/bar")]
    if order == "nested-first":
        whiteouts.reverse()
    members = [member_from_tree(reference_dir, ""), *whiteouts, TarMember.whiteout("plain/x")]
    layer = apply_tar_layer(store, build_tar(members), base)
    with mounted(store, layer) as path:
        assert_tree(reference_dir, path, f"whiteouts {order}")


# --- 40 -----------------------------------------------------------------------------------

FRACTION = 1_600_000_000 * NS + 987_654_321


def _expect_mtime(got_ns: int, want_ns: int, subsecond: bool, what: str) -> None:
    if subsecond:
        assert got_ns == want_ns, f"{what}: mtime {got_ns} ns, expected {want_ns} ns"
    else:
        assert got_ns // NS == want_ns // NS, (
            f"{what}: mtime {got_ns // NS} s, expected {want_ns // NS} s (truncated, not rounded)"
        )


def _raw_mtime(data: bytes, member: tarfile.TarInfo) -> int:
    header = data[member.offset_data - 512: member.offset_data]
    field = header[136:148].rstrip(b"\0 ").decode()
    return int(field, 8)


def test_40_mtimes_truncated_not_rounded(store, capabilities) -> None:
    """Applied and exported mtimes keep their nanoseconds where claimed and truncate otherwise."""
    sub = capabilities.subsecond_mtime
    members = [
        TarMember.directory("", mtime=T0),
        TarMember("frac", data=b"f", mtime=FRACTION),
        TarMember("whole", data=b"w", mtime=1_600_000_001 * NS),
        TarMember.directory("fdir", mtime=1_600_000_002 * NS + 999_999_999),
        TarMember("fdir/inner", data=b"i", mtime=1_600_000_003 * NS + 1),
        TarMember("flink", type=tarfile.SYMTYPE, linkname="frac",
                  mtime=1_600_000_004 * NS + 500_000_000),
    ]
    layer = apply_tar_layer(store, build_tar(members), None)
    with mounted(store, layer) as path:
        for member in members[1:]:
            got = os.lstat(path / member.name).st_mtime_ns
            _expect_mtime(got, member.mtime, sub, f"applied {member.name}")
    rw = store.create_layer(writable=True).id
    with mounted(store, rw) as path:
        (path / "frac").write_bytes(b"f")
        os.utime(path / "frac", ns=(FRACTION, FRACTION))
        os.symlink("frac", path / "flink")
        os.utime(path / "flink", ns=(FRACTION + NS, FRACTION + NS), follow_symlinks=False)
        os.mkdir(path / "fdir")
        os.utime(path / "fdir", ns=(FRACTION + 2 * NS, FRACTION + 2 * NS))
    data = diff_bytes(store, rw)
    exported = {_name(m): m for m in _tar_members(data)}
    for name, want in (("frac", FRACTION), ("flink", FRACTION + NS),
                       ("fdir", FRACTION + 2 * NS)):
        member = exported[name]
        raw = _raw_mtime(data, member)
        assert raw == want // NS, (
            f"exported {name}: ustar mtime {raw}, expected {want // NS} (truncated, not rounded)"
        )
        pax = member.pax_headers.get("mtime")
        if sub:
            assert pax is not None, f"exported {name}: no PAX mtime for a sub-second time"
            assert Decimal(pax) == Decimal(want) / NS, (
                f"exported {name}: PAX mtime {pax}, expected {Decimal(want) / NS}"
            )
        elif pax is not None:
            assert int(Decimal(pax)) == want // NS, f"exported {name}: PAX mtime {pax}"
    back = apply_tar_layer(store, data, None)
    with mounted(store, back) as path:
        for name, want in (("frac", FRACTION), ("flink", FRACTION + NS),
                           ("fdir", FRACTION + 2 * NS)):
            _expect_mtime(os.lstat(path / name).st_mtime_ns, want, sub, f"re-applied {name}")


# --- 41 -----------------------------------------------------------------------------------


def test_41_diff_of_unchanged_layer_is_empty(store, reference_dir, capabilities,
                                             assert_tree) -> None:
    """An unchanged layer diffs to a tar without entries, and that tar applies."""
    empty_root = store.create_layer().id
    base = _base(store, reference_dir, capabilities)
    child = store.create_layer(base).id
    rw = store.create_layer(base, writable=True).id
    with mounted(store, rw) as path:
        os.listdir(path)
        (path / "etc" / "hostname").read_bytes()
    for layer_id, what in ((empty_root, "empty layer"), (child, "empty child"),
                           (rw, "writable child only read")):
        data = diff_bytes(store, layer_id)
        assert _tar_members(data) == [], f"{what}: diff has {_tar_members(data)}"
        assert store.changes(layer_id) == [], f"{what}: changes {store.changes(layer_id)}"
        assert store.diff_size(layer_id) == 0
    applied = apply_tar_layer(store, diff_bytes(store, child), base)
    with mounted(store, applied) as path:
        assert_tree(reference_dir, path, "empty diff applied")
    assert store.changes(applied) == []


# --- 42 -----------------------------------------------------------------------------------


def test_42_diff_deterministic(store_factory, reference_dir, capabilities) -> None:
    """The same layer diffs to the same bytes every time, across remounts and restarts."""
    store = store_factory()
    base = _base(store, reference_dir, capabilities)
    rw = store.create_layer(base, writable=True).id
    with mounted(store, rw) as path:
        step(*_modifications()).apply(path)
    first = {layer_id: diff_bytes(store, layer_id) for layer_id in (base, rw)}
    for layer_id, data in first.items():
        assert diff_bytes(store, layer_id) == data, f"second diff of {layer_id} differs"
    with mounted(store, rw):
        assert diff_bytes(store, rw) == first[rw], "diff differs while the layer is mounted"
    store.close()
    again = store_factory(store.root)
    for layer_id, data in first.items():
        assert diff_bytes(again, layer_id) == data, f"diff of {layer_id} differs after a restart"


# --- 43 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["marker-last", "marker-first"])
def test_43_opaque_marker_order(store, reference_dir, capabilities, assert_tree, where) -> None:
    """An opaque marker hides the lower layers only, wherever it sits among its siblings."""
    base = _base(store, reference_dir, capabilities, step(
        directory("d"), file("d/old1", b"1"), file("d/old2", b"2"), directory("d/sub"),
        file("d/sub/x", b"x"), file("outside", b"o"), name="base"))
    one = step(directory("d", mtime=step_time(1)), file("d/new1", b"n1"), directory("d/sub"),
               file("d/sub/y", b"y"), opaque("d"), parent_mtime=step_time(1))
    one.apply(reference_dir)
    members = one.members(reference_dir)
    names = [m.name for m in members]
    assert names[-1] == f"d/{OPAQUE_MARKER}"
    if where == "marker-first":
        marker = members.pop()
        members.insert(names.index("d") + 1, marker)
    layer = apply_tar_layer(store, build_tar(members), base)
    with mounted(store, layer) as path:
        assert sorted(os.listdir(path / "d")) == ["new1", "sub"]
        assert os.listdir(path / "d" / "sub") == ["y"]
        assert_tree(reference_dir, path, f"opaque marker ({where})")
    assert stat.S_ISDIR(os.lstat(reference_dir / "d").st_mode)
