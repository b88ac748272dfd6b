"""The generic tree comparison: exact change sets on real trees, and its cost.

Each test copies a lower tree with `cp -a` (which keeps every attribute, so
the copy compares equal), changes the copy as a container would, and checks
the exact set of reported changes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.core.driver import Capabilities, ChangeKind, Driver
from lamina.core.layers.changes import compare_trees, generic_changes, generic_diff_size

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, xattrs)")

CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service
T0 = 1_600_000_000_500_000_000


def build_rich_tree(root: Path) -> None:
    """A lower tree with every file type, special modes, owners, xattrs and hardlinks."""
    root.mkdir()
    (root / "etc" / "conf.d").mkdir(parents=True)
    (root / "etc" / "passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    (root / "etc" / "conf.d" / "a.conf").write_bytes(b"a=1\n")
    (root / "etc" / "conf.d" / "b.conf").write_bytes(b"b=2\n")
    (root / "bin").mkdir()
    (root / "bin" / "busybox").write_bytes(os.urandom(3000))
    os.chmod(root / "bin" / "busybox", 0o755)
    os.link(root / "bin" / "busybox", root / "bin" / "sh")
    os.link(root / "bin" / "busybox", root / "bin" / "ls")
    os.symlink("busybox", root / "bin" / "cat")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "ping").write_bytes(b"\x7fELF ping")
    os.chown(root / "usr" / "bin" / "ping", 0, 0)
    os.chmod(root / "usr" / "bin" / "ping", 0o4755)
    os.setxattr(root / "usr" / "bin" / "ping", "security.capability", CAP)
    os.setxattr(root / "usr" / "bin" / "ping", "user.origin", b"debian")
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "home" / "user").mkdir(parents=True)
    (root / "home" / "user" / ".profile").write_bytes(b"export PS1=$\n")
    os.chown(root / "home" / "user", 1000, 1000)
    os.chown(root / "home" / "user" / ".profile", 1000, 1000)
    (root / "dev").mkdir()
    os.mknod(root / "dev" / "null", 0o20666, os.makedev(1, 3))
    os.mknod(root / "dev" / "loop0", 0o60660, os.makedev(7, 0))
    os.mkfifo(root / "dev" / "initctl")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "dev" / "log"))
    (root / "var" / "lib" / "deep" / "er").mkdir(parents=True)
    (root / "var" / "lib" / "deep" / "er" / "file").write_bytes(b"deep")
    for path in [*root.rglob("*"), root]:
        os.utime(path, ns=(T0, T0), follow_symlinks=False)


def copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    lower = tmp_path / "lower"
    build_rich_tree(lower)
    return lower, copy(lower, tmp_path / "upper")


def changed(lower: Path | None, upper: Path) -> dict[str, str]:
    """The changes below the root, after checking the root rule.

    The root is reported MODIFIED whenever anything changed (it is the parent
    of every change), and otherwise only when it differs itself.
    """
    result = compare_trees(lower, upper)
    assert [c.path for c in result] == sorted(c.path for c in result)
    found = {c.path: c.kind.value for c in result}
    if len(found) > 1 or (found and "" not in found):
        assert found.pop("") == "C", "the root must be reported as a parent of every change"
    return found


def test_copy_is_unchanged(trees: tuple[Path, Path]) -> None:
    assert compare_trees(*trees) == []


def test_added_file_marks_parents(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    (upper / "etc" / "conf.d" / "c.conf").write_bytes(b"c=3\n")
    assert changed(lower, upper) == {"etc/conf.d/c.conf": "A", "etc/conf.d": "C", "etc": "C"}


def test_parents_reported_even_when_their_mtime_is_unchanged(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    os.chmod(upper / "var" / "lib" / "deep" / "er" / "file", 0o600)
    assert changed(lower, upper) == {
        "var": "C",
        "var/lib": "C",
        "var/lib/deep": "C",
        "var/lib/deep/er": "C",
        "var/lib/deep/er/file": "C",
    }


def test_added_directory_reports_every_entry_below(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    (upper / "opt" / "app").mkdir(parents=True)
    (upper / "opt" / "app" / "run").write_bytes(b"#!/bin/sh\n")
    os.symlink("run", upper / "opt" / "app" / "start")
    assert changed(lower, upper) == {
        "opt": "A",
        "opt/app": "A",
        "opt/app/run": "A",
        "opt/app/start": "A",
    }


def test_deleted_subtree_reports_only_its_top(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    subprocess.run(["rm", "-rf", str(upper / "var" / "lib")], check=True)
    os.unlink(upper / "etc" / "passwd")
    assert changed(lower, upper) == {"var": "C", "var/lib": "D", "etc": "C", "etc/passwd": "D"}


def test_directory_replaced_by_file_hides_the_old_children(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    subprocess.run(["rm", "-rf", str(upper / "etc" / "conf.d")], check=True)
    (upper / "etc" / "conf.d").write_bytes(b"now a file")
    assert changed(lower, upper) == {"etc": "C", "etc/conf.d": "C"}


def test_file_replaced_by_directory_adds_its_children(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    os.unlink(upper / "etc" / "passwd")
    (upper / "etc" / "passwd").mkdir()
    (upper / "etc" / "passwd" / "x").write_bytes(b"")
    assert changed(lower, upper) == {"etc": "C", "etc/passwd": "C", "etc/passwd/x": "A"}


def test_recreated_directory_reports_its_old_children_deleted(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    subprocess.run(["rm", "-rf", str(upper / "etc" / "conf.d")], check=True)
    (upper / "etc" / "conf.d").mkdir()
    (upper / "etc" / "conf.d" / "a.conf").write_bytes(b"new\n")
    assert changed(lower, upper) == {
        "etc": "C",
        "etc/conf.d": "C",
        "etc/conf.d/a.conf": "C",
        "etc/conf.d/b.conf": "D",
    }


def restoring_mtime(path: Path) -> contextlib.AbstractContextManager[None]:
    """Keep ``path``'s mtime across a change, to see one attribute alone."""

    @contextlib.contextmanager
    def keep() -> Iterator[None]:
        ns = os.lstat(path).st_mtime_ns
        yield
        os.utime(path, ns=(ns, ns), follow_symlinks=False)

    return keep()


@pytest.mark.parametrize(
    ("what", "path", "apply"),
    [
        ("mode", "etc/passwd", lambda p: os.chmod(p, 0o600)),
        ("setuid bit", "usr/bin/ping", lambda p: os.chmod(p, 0o755)),
        ("sticky bit", "tmp", lambda p: os.chmod(p, 0o777)),
        ("uid", "home/user/.profile", lambda p: os.chown(p, 1001, -1)),
        ("gid", "home/user/.profile", lambda p: os.chown(p, -1, 1001)),
        ("symlink owner", "bin/cat", lambda p: os.lchown(p, 5, 5)),
        ("mtime ns", "etc/passwd", lambda p: os.utime(p, ns=(T0 + 1, T0 + 1))),
        ("symlink mtime", "bin/cat", lambda p: os.utime(p, ns=(1, 1), follow_symlinks=False)),
        ("xattr added", "etc/passwd", lambda p: os.setxattr(p, "user.new", b"1")),
        ("xattr value", "usr/bin/ping", lambda p: os.setxattr(p, "user.origin", b"other")),
        ("xattr removed", "usr/bin/ping", lambda p: os.removexattr(p, "user.origin")),
        ("capability", "usr/bin/ping", lambda p: os.removexattr(p, "security.capability")),
        ("dir xattr", "tmp", lambda p: os.setxattr(p, "user.x", b"")),
    ],
)
def test_each_metadata_change_alone_is_modified(
    trees: tuple[Path, Path], what: str, path: str, apply
) -> None:
    lower, upper = trees
    apply(upper / path)
    expected = {path: "C"} | {p: "C" for p in _parents(path)}
    assert changed(lower, upper) == expected, what


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def test_size_change_with_same_mtime_is_modified(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    with restoring_mtime(upper / "etc" / "passwd"):
        (upper / "etc" / "passwd").write_bytes(b"root::0:0::/:/bin/sh\n")
    assert changed(lower, upper) == {"etc": "C", "etc/passwd": "C"}


def test_same_size_rewrite_is_modified_through_its_mtime(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    (upper / "etc" / "conf.d" / "a.conf").write_bytes(b"a=2\n")
    assert changed(lower, upper) == {"etc": "C", "etc/conf.d": "C", "etc/conf.d/a.conf": "C"}


def test_same_size_same_mtime_rewrite_is_found_through_its_ctime(
    trees: tuple[Path, Path],
) -> None:
    """Metadata alone cannot see it; the ctime after the layer's creation can."""
    lower, upper = trees
    created = time.time_ns()
    time.sleep(0.1)  # beyond the coarse-clock slack
    with restoring_mtime(upper / "etc" / "conf.d" / "a.conf"):
        (upper / "etc" / "conf.d" / "a.conf").write_bytes(b"a=9\n")
    assert changed(lower, upper) == {}
    found = {c.path: c.kind.value for c in compare_trees(lower, upper, since_ns=created)}
    assert found == {"": "C", "etc": "C", "etc/conf.d": "C", "etc/conf.d/a.conf": "C"}


def test_files_untouched_since_creation_are_not_read(trees: tuple[Path, Path]) -> None:
    """Only files whose ctime is after the layer's creation get a content check."""
    lower, upper = trees
    with restoring_mtime(upper / "etc" / "conf.d" / "a.conf"):
        (upper / "etc" / "conf.d" / "a.conf").write_bytes(b"a=9\n")
    time.sleep(0.1)
    assert compare_trees(lower, upper, since_ns=time.time_ns()) == []


def test_symlink_target_of_same_length(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    with restoring_mtime(upper / "bin"):
        os.unlink(upper / "bin" / "cat")
        os.symlink("busyboy", upper / "bin" / "cat")
        os.utime(upper / "bin" / "cat", ns=(T0, T0), follow_symlinks=False)
    assert changed(lower, upper) == {"bin": "C", "bin/cat": "C"}


def test_device_number_change(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    with restoring_mtime(upper / "dev"):
        os.unlink(upper / "dev" / "loop0")
        os.mknod(upper / "dev" / "loop0", 0o60660, os.makedev(7, 1))
        os.utime(upper / "dev" / "loop0", ns=(T0, T0))
    assert changed(lower, upper) == {"dev": "C", "dev/loop0": "C"}


def test_type_change_with_same_metadata(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    with restoring_mtime(upper / "dev"):
        os.unlink(upper / "dev" / "initctl")
        (upper / "dev" / "initctl").write_bytes(b"")
        os.chmod(upper / "dev" / "initctl", 0o644)
        os.utime(upper / "dev" / "initctl", ns=(T0, T0))
    assert changed(lower, upper) == {"dev": "C", "dev/initctl": "C"}


def test_overlay_xattrs_are_not_changes(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    os.setxattr(upper / "etc", "trusted.overlay.opaque", b"y")
    assert changed(lower, upper) == {}


def test_root_metadata_change_is_reported_as_empty_path(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    with restoring_mtime(upper):
        os.chmod(upper, 0o711)
    assert changed(lower, upper) == {"": "C"}


def test_new_hardlink_relinks_the_whole_group(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    with restoring_mtime(upper / "etc"):
        os.link(upper / "etc" / "passwd", upper / "etc" / "passwd-")
    assert changed(lower, upper) == {"etc": "C", "etc/passwd": "C", "etc/passwd-": "A"}


def test_broken_hardlink_group(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    with restoring_mtime(upper / "bin"):
        data = (upper / "bin" / "ls").read_bytes()
        os.unlink(upper / "bin" / "ls")
        (upper / "bin" / "ls").write_bytes(data)
        os.chmod(upper / "bin" / "ls", 0o755)
        os.utime(upper / "bin" / "ls", ns=(T0, T0))
    # busybox and sh still share an inode, but no longer with ls
    assert changed(lower, upper) == {"bin": "C", "bin/busybox": "C", "bin/sh": "C"}


def test_unchanged_hardlink_group_with_different_inodes(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    assert os.lstat(lower / "bin" / "sh").st_ino != os.lstat(upper / "bin" / "sh").st_ino
    assert changed(lower, upper) == {}


def test_without_lower_everything_is_added(trees: tuple[Path, Path]) -> None:
    lower, _ = trees
    result = changed(None, lower)
    assert set(result.values()) == {"A"}
    assert set(result) == {str(p.relative_to(lower)) for p in lower.rglob("*")}


def test_without_lower_a_fresh_empty_root_has_no_changes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    assert compare_trees(None, root) == []
    # a root that differs from a fresh one must travel in the layer
    assert [c.path for c in compare_trees(None, root, root_mode=0o700)] == [""]


def test_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    lower = tmp_path / "lower"
    lower.mkdir()
    os.symlink(outside, lower / "escape")
    upper = copy(lower, tmp_path / "upper")
    (outside / "planted").write_bytes(b"x")
    assert compare_trees(lower, upper) == []


def test_not_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    from lamina.core.errors import DriverError

    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DriverError, match="not a directory"):
        compare_trees(None, tmp_path / "file")
    with pytest.raises(DriverError, match="cannot compare"):
        compare_trees(tmp_path / "missing", tmp_path)


def test_ten_thousand_entries_one_change(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    for d in range(500):
        sub = lower / f"d{d // 50}" / f"sub{d}"
        sub.mkdir(parents=True)
        for f in range(20):
            (sub / f"f{f}").write_bytes(b"x" * f)
    upper = copy(lower, tmp_path / "upper")
    (upper / "d3" / "sub170" / "f4").write_bytes(b"changed")
    result = compare_trees(lower, upper)
    assert {c.path for c in result} == {"", "d3", "d3/sub170", "d3/sub170/f4"}


# --- the driver-facing functions, through real directories -------------------------


class DirViews:
    """LayerViews over plain directories, one per layer id."""

    def __init__(self, layers: dict[str, Path]) -> None:
        self.layers = layers
        self.open: list[str] = []

    @contextlib.contextmanager
    def view(self, layer_id: str) -> Iterator[Path]:
        self.open.append(layer_id)
        try:
            yield self.layers[layer_id]
        finally:
            self.open.remove(layer_id)

    populate = view

    def created_ns(self, layer_id: str) -> int | None:
        return None


class PlainDriver(Driver):
    name = "plain-test"
    capabilities = Capabilities(root_mode=0o755)


def test_generic_changes_views_both_layers(tmp_path: Path, trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    (upper / "etc" / "hostname").write_bytes(b"box\n")
    views = DirViews({"base": lower, "child": upper})
    driver = PlainDriver(tmp_path / "home")
    result = generic_changes("child", ["base"], views, root_mode=driver.capabilities.root_mode)
    assert [(c.path, c.kind) for c in result] == [
        ("", ChangeKind.MODIFIED),
        ("etc", ChangeKind.MODIFIED),
        ("etc/hostname", ChangeKind.ADDED),
    ]
    assert views.open == []


def test_diff_size(tmp_path: Path, trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    views = DirViews({"base": lower, "child": upper})
    mode = PlainDriver.capabilities.root_mode
    assert generic_diff_size("child", ["base"], views, root_mode=mode) == 0
    (upper / "data").write_bytes(b"z" * 12345)
    os.link(upper / "data", upper / "data-link")  # one inode counts once
    os.chmod(upper / "etc" / "passwd", 0o600)  # a modified file counts whole
    passwd = os.lstat(upper / "etc" / "passwd").st_size
    assert generic_diff_size("child", ["base"], views, root_mode=mode) == 12345 + passwd
    inodes = {
        st.st_ino: st.st_size
        for st in (os.lstat(p) for p in lower.rglob("*"))
        if stat.S_ISREG(st.st_mode)
    }
    assert generic_diff_size("base", [], views, root_mode=mode) == sum(inodes.values())
    assert views.open == []
