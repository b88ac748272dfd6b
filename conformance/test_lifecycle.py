"""Cases 1-12: layer life cycle and metadata (create, chain, remove, mount, persist, close)."""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

import pytest

from lamina.conformance import trees
from lamina.conformance.requirements import READ_ONLY_ERRNOS
from lamina.conformance.scenarios import (
    T0,
    TarMember,
    apply_tar_layer,
    build_tar,
    chmod,
    diff_bytes,
    file,
    init_reference,
    mounted,
    remove,
    rich_base,
    run_scenario,
    step,
)
from lamina.core.errors import (
    LayerExists,
    LayerHasChildren,
    LayerNotFound,
    NotMounted,
    StoreClosed,
)
from lamina.core.host import mounts
from lamina.core.host.fsinfo import filesystem_type


def _base(store, reference: Path, capabilities) -> str:
    """A read-only layer holding the rich base tree; ``reference`` gets the same tree."""
    init_reference(reference, capabilities.root_mode)
    base = rich_base()
    base.apply(reference)
    return apply_tar_layer(store, base.layer_tar(reference), None)


def test_01_create_without_parent(store, capabilities) -> None:
    """A layer without parent is an empty root of the declared mode, writable when asked."""
    for writable in (False, True):
        layer = store.create_layer(writable=writable)
        assert layer.parent is None
        assert layer.writable is writable
        with mounted(store, layer.id) as path:
            st = os.lstat(path)
            assert stat.S_ISDIR(st.st_mode), f"mount of {layer.id} is not a directory"
            assert os.listdir(path) == [], f"new layer is not empty: {os.listdir(path)}"
            assert stat.S_IMODE(st.st_mode) == capabilities.root_mode, (
                f"root mode {stat.S_IMODE(st.st_mode):o}, declared root_mode "
                f"{capabilities.root_mode:o}"
            )
            assert (st.st_uid, st.st_gid) == (0, 0)
            if writable:
                (path / "hello").write_bytes(b"hi")
                assert (path / "hello").read_bytes() == b"hi"
        if writable:
            with mounted(store, layer.id) as path:
                assert (path / "hello").read_bytes() == b"hi", "write lost across remount"


def test_02_create_with_parent(store, reference_dir, capabilities, assert_tree) -> None:
    """A new child shows its parent's tree and metadata exactly, read-only or writable."""
    base = _base(store, reference_dir, capabilities)
    for writable in (False, True):
        child = store.create_layer(base, writable=writable)
        assert child.parent == base
        with mounted(store, child.id) as path:
            assert_tree(reference_dir, path, f"new {'writable' if writable else 'read-only'} child")
        with mounted(store, base) as parent_path, mounted(store, child.id) as child_path:
            assert_tree(parent_path, child_path, "child against its parent's own view")


def test_03_parent_chain(store, reference_dir, capabilities, assert_tree) -> None:
    """A<-B<-C: parents and chain are reported, and each view holds its own ancestors only."""
    init_reference(reference_dir, capabilities.root_mode)
    steps = [
        step(file("a", b"from A", mode=0o600, uid=1), name="A"),
        step(file("b", b"from B"), file("a", b"A changed by B", mode=0o640), name="B"),
        step(file("c", b"from C"), remove("b"), chmod("a", 0o444), name="C"),
    ]
    snaps = []
    ids: list[str] = []
    for one in steps:
        ids += run_scenario(store, [one], reference_dir, assert_tree, fill="tar",
                            parent=ids[-1] if ids else None)
        snaps.append(trees.snapshot(reference_dir))
    a, b, c = ids
    assert store.layer(a).parent is None
    assert store.layer(b).parent == a
    assert store.layer(c).parent == b
    assert store.chain(c) == [c, b, a]
    assert store.chain(a) == [a]
    # every view still shows its own state after the children were made
    for layer_id, snap, name in zip(ids, snaps, "ABC", strict=True):
        with mounted(store, layer_id) as path:
            assert_tree(snap, path, f"layer {name} after its children were created")


def test_04_create_existing_id_fails(store, reference_dir, capabilities, assert_tree) -> None:
    """Creating an id that exists raises LayerExists and leaves the existing layer alone."""
    base = _base(store, reference_dir, capabilities)
    store.create_layer(base, layer_id="taken")
    with pytest.raises(LayerExists):
        store.create_layer(layer_id="taken")
    with pytest.raises(LayerExists):
        store.apply_layer(io.BytesIO(build_tar([TarMember("f")])), None, layer_id="taken")
    with pytest.raises(LayerExists):
        store.create_layer(layer_id=base)
    assert store.layer("taken").parent == base
    with mounted(store, "taken") as path:
        assert_tree(reference_dir, path, "layer after a refused re-create")


def test_04_create_over_crash_debris(store) -> None:
    """Debris of a crash (a driver layer the store never recorded) does not block a create."""
    store.driver.create("debris", [], writable=True)
    path = store.driver.mount("debris", [], readonly=False)
    (path / "left-over").write_bytes(b"from the crashed process")
    store.driver.unmount("debris")
    layer = store.create_layer(layer_id="debris")
    assert layer.id == "debris"
    with mounted(store, "debris") as path:
        assert os.listdir(path) == [], "re-created layer still holds the debris' files"


def test_04_failed_create_leaves_nothing(store) -> None:
    """A create that fails (missing parent) leaves nothing, so the id can be created after."""
    with pytest.raises(LayerNotFound):
        store.create_layer("no-such-parent", layer_id="orphan")
    assert not store.driver.exists("orphan")
    assert "orphan" not in {layer.id for layer in store.layers()}
    store.create_layer(layer_id="orphan")
    assert store.driver.exists("orphan")
    # the store checks the parent first; the driver must hold the same rule on its own
    with pytest.raises(LayerNotFound):
        store.driver.create("orphan-2", ["no-such-parent"], writable=False)
    assert not store.driver.exists("orphan-2"), "a failed driver create left a layer behind"


def test_05_remove(store, reference_dir, capabilities, assert_tree) -> None:
    """Remove refuses a layer with children, works top-down, and frees the id."""
    base = _base(store, reference_dir, capabilities)
    child = store.create_layer(base, layer_id="child").id
    with pytest.raises(LayerHasChildren):
        store.remove_layer(base)
    with mounted(store, base) as path:
        assert_tree(reference_dir, path, "parent after a refused remove")
    with mounted(store, child) as path:
        assert_tree(reference_dir, path, "child after its parent's refused remove")
    store.remove_layer(child)
    assert not store.driver.exists(child)
    with pytest.raises(LayerNotFound):
        store.layer(child)
    with pytest.raises(LayerNotFound):
        store.mount(child)
    store.remove_layer(base)
    assert not store.driver.exists(base)
    assert store.layers() == []
    with pytest.raises(LayerNotFound):
        store.remove_layer(base)
    # the ids are free again, and nothing of the old content comes back
    reused = store.create_layer(layer_id="child", writable=True)
    with mounted(store, reused.id) as path:
        assert os.listdir(path) == []
    again = apply_tar_layer(store, build_tar([TarMember("only")]), None, layer_id=base)
    with mounted(store, again) as path:
        assert os.listdir(path) == ["only"]


def _write_attempts(root: Path) -> dict[str, object]:
    existing = root / "etc" / "hostname"
    return {
        "create a file": lambda: open(root / "new-file", "wb").close(),
        "open an existing file for writing": lambda: open(existing, "r+b").close(),
        "append to a file": lambda: open(existing, "ab").close(),
        "truncate a file": lambda: os.truncate(existing, 0),
        "mkdir": lambda: os.mkdir(root / "new-dir"),
        "unlink": lambda: os.unlink(existing),
        "rmdir": lambda: os.rmdir(root / "empty-dir"),
        "rename": lambda: os.rename(existing, root / "etc" / "renamed"),
        "symlink": lambda: os.symlink("x", root / "new-link"),
        "hardlink": lambda: os.link(existing, root / "new-hardlink"),
        "chmod": lambda: os.chmod(existing, 0o777),
        "chown": lambda: os.chown(existing, 12, 34),
        "utime": lambda: os.utime(existing, ns=(T0, T0)),
        "setxattr": lambda: os.setxattr(existing, "user.written", b"1"),
        "mknod fifo": lambda: os.mkfifo(root / "new-fifo"),
    }


def test_06_read_only_refuses_writes(store, reference_dir, capabilities, assert_tree) -> None:
    """Every kind of write into a read-only layer fails with EROFS (or EACCES/EPERM)."""
    base = _base(store, reference_dir, capabilities)
    child = store.create_layer(base).id
    for layer_id in (base, child):
        with mounted(store, layer_id) as path:
            accepted, odd = [], []
            for what, attempt in _write_attempts(path).items():
                try:
                    attempt()  # type: ignore[operator]
                except OSError as exc:
                    if exc.errno not in READ_ONLY_ERRNOS:
                        odd.append(f"{what}: {errno.errorcode.get(exc.errno, exc.errno)}")
                else:
                    accepted.append(what)
            assert not accepted, f"read-only layer {layer_id} accepted writes: {accepted}"
            assert not odd, f"writes failed with other errors than EROFS/EACCES/EPERM: {odd}"
        with mounted(store, layer_id) as path:
            assert_tree(reference_dir, path, "read-only layer after the refused writes")


def test_06_writable_layer_writes_stay_in_it(store, reference_dir, capabilities,
                                            assert_tree) -> None:
    """Writes into a writable layer succeed and never reach its parent or a sibling."""
    base = _base(store, reference_dir, capabilities)
    sibling = store.create_layer(base).id
    rw = store.create_layer(base, writable=True).id
    with mounted(store, rw) as path:
        for what, attempt in _write_attempts(path).items():
            if what in ("unlink", "rename", "truncate a file"):
                continue  # done last: the other attempts use the file
            try:
                attempt()  # type: ignore[operator]
            except OSError as exc:
                pytest.fail(f"{what} in a writable layer failed: {exc}")
        os.truncate(path / "etc" / "hostname", 0)
        os.rename(path / "etc" / "hostname", path / "etc" / "renamed")
    for layer_id in (base, sibling):
        with mounted(store, layer_id) as path:
            assert_tree(reference_dir, path, f"layer {layer_id} after writes into a child")


def test_07_mount_counting(store, reference_dir, capabilities) -> None:
    """Two mounts share one path and are counted; unmounts balance; one more is NotMounted."""
    base = _base(store, reference_dir, capabilities)
    rw = store.create_layer(base, writable=True).id
    before = set(mounts.mounts_under(store.root))
    for layer_id in (base, rw):
        first = store.mount(layer_id)
        second = store.mount(layer_id)
        assert first == second, "a second mount of the same layer gave another path"
        assert store.mount_count(layer_id) == 2
        store.unmount(layer_id)
        assert store.mount_count(layer_id) == 1
        assert (Path(first) / "etc" / "hostname").read_bytes() == b"lamina\n", (
            "the mount stopped working while one reference was still held"
        )
        store.unmount(layer_id)
        assert store.mount_count(layer_id) == 0
        left = set(mounts.mounts_under(store.root)) - before
        assert not left, f"mounts left after the last unmount of {layer_id}: {sorted(left)}"
        with pytest.raises(NotMounted):
            store.unmount(layer_id)
        # mounting again after a full unmount works
        with mounted(store, layer_id) as path:
            assert (path / "etc" / "hostname").read_bytes() == b"lamina\n"
    with pytest.raises(LayerNotFound):
        store.mount("never-created")


def test_08_exists_and_list(store) -> None:
    """exists and layers() show exactly the layers created, and forget removed ones."""
    assert store.layers() == []
    a = store.create_layer(layer_id="la").id
    b = store.create_layer(a, layer_id="lb", writable=True).id
    c = apply_tar_layer(store, build_tar([TarMember("f")]), b, layer_id="lc")
    assert {layer.id for layer in store.layers()} == {a, b, c}
    for layer_id in (a, b, c):
        assert store.driver.exists(layer_id)
        assert store.layer(layer_id).state == "ready"
    assert not store.driver.exists("ld")
    with pytest.raises(LayerNotFound):
        store.layer("ld")
    store.remove_layer(c)
    assert {layer.id for layer in store.layers()} == {a, b}
    assert not store.driver.exists(c)


def test_09_restart_persistence(store_factory, reference_dir, capabilities, assert_tree) -> None:
    """A new store and driver instance on the same root sees the same layers and trees."""
    first = store_factory()
    base = _base(first, reference_dir, capabilities)
    rw = first.create_layer(base, writable=True, layer_id="rw").id
    with mounted(first, rw) as path:
        (path / "written").write_bytes(b"before the restart")
    before = {layer.id: layer for layer in first.layers()}
    views = {}
    for layer_id in before:
        with mounted(first, layer_id) as path:
            views[layer_id] = trees.snapshot(path)
    first.close()

    second = store_factory(first.root)
    after = {layer.id: layer for layer in second.layers()}
    assert set(after) == set(before)
    for layer_id, layer in after.items():
        assert (layer.parent, layer.writable) == (before[layer_id].parent,
                                                  before[layer_id].writable)
        assert second.driver.exists(layer_id)
        with mounted(second, layer_id) as path:
            assert_tree(views[layer_id], path, f"layer {layer_id} after a restart")
    with mounted(second, rw) as path:
        (path / "written-after").write_bytes(b"after the restart")
    child = second.create_layer(base).id
    with mounted(second, child) as path:
        assert_tree(reference_dir, path, "child created after the restart")
    second.remove_layer(child)
    second.remove_layer(rw)


def test_10_close(store) -> None:
    """close twice is fine; every operation after close raises StoreClosed."""
    layer = store.create_layer(writable=True).id
    store.close()
    store.close()
    store.driver.close()
    calls = {
        "create_layer": lambda: store.create_layer(),
        "apply_layer": lambda: store.apply_layer(io.BytesIO(build_tar([]))),
        "layers": store.layers,
        "layer": lambda: store.layer(layer),
        "mount": lambda: store.mount(layer),
        "unmount": lambda: store.unmount(layer),
        "remove_layer": lambda: store.remove_layer(layer),
        "changes": lambda: store.changes(layer),
        "diff": lambda: store.diff(layer, io.BytesIO()),
        "diff_size": lambda: store.diff_size(layer),
    }
    for name, call in calls.items():
        with pytest.raises(StoreClosed):
            call()
            pytest.fail(f"{name} after close did not raise StoreClosed")


def test_11_status(store) -> None:
    """status() is a non-empty list of (str, str) that names the backing filesystem."""
    status = store.driver.status()
    assert isinstance(status, list) and status, "status() returned nothing"
    for item in status:
        assert isinstance(item, tuple) and len(item) == 2, f"status item {item!r}"
        assert all(isinstance(part, str) for part in item), f"status item {item!r}"
    backing = [v for k, v in status if "backing" in k.lower() or "filesystem" in k.lower()]
    assert backing, f"no backing filesystem fact in status: {status}"
    fstype = filesystem_type(store.driver.home)
    assert any(fstype.lower() in value.lower() for value in backing), (
        f"status says the backing filesystem is {backing}, but {store.driver.home} is on {fstype}"
    )


def test_12_diff_size(store, reference_dir) -> None:
    """Empty layers count ~0; N bytes written count >= N; the parents' content is excluded."""
    empty = store.create_layer().id
    assert store.diff_size(empty) == 0
    big = 1 << 20
    init = step(file("big", os.urandom(big)), file("small", b"x" * 1000))
    init_reference(reference_dir, store.driver.capabilities.root_mode)
    init.apply(reference_dir)
    base = apply_tar_layer(store, init.layer_tar(reference_dir), None)
    assert store.diff_size(base) >= big + 1000
    child = store.create_layer(base).id
    assert store.diff_size(child) == 0, "an empty child counts its parent's content"
    rw = store.create_layer(base, writable=True).id
    written = 200_000
    with mounted(store, rw) as path:
        (path / "new").write_bytes(os.urandom(written))
    size = store.diff_size(rw)
    assert size >= written, f"diff size {size} after writing {written} bytes"
    assert size < written + big, f"diff size {size} counts the parent's {big}-byte file"
    # the diff carries those bytes too
    assert len(diff_bytes(store, rw)) >= written
