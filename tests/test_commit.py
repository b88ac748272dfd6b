"""``commit``: a container's writable layer as a new image, with vfs, overlay and btrfs.

The "container" is what ``lamina run`` makes: a writable layer on the image's top
layer, mounted, written to and unmounted. The committed image's tree (its top layer
mounted read-only) must equal the container's; its config and history must say what
was asked; failures must leave the store as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_root

from lamina.conformance.trees import compare, snapshot
from lamina.core.containers.commit import commit, layer_id_of
from lamina.core.errors import ContainerError, InvalidChange, NoSpace
from lamina.core.host import mounts
from lamina.core.images.rootfs import import_rootfs
from lamina.core.images.space import usage
from lamina.core.images.store import ImageStore
from lamina.core.layers.store import Store

pytestmark = [needs_root]

DRIVERS = ["vfs", "overlay", "btrfs"]


def driver_class(name: str) -> type:
    if name == "vfs":
        from lamina.drivers.vfs import VfsDriver

        return VfsDriver
    if name == "overlay":
        from lamina.drivers.overlay import OverlayDriver

        return OverlayDriver
    pytest.importorskip("btrfsutil", reason="pip install 'lamina[btrfs]'")
    from lamina.drivers.btrfs import BtrfsDriver

    return BtrfsDriver


@pytest.fixture(params=DRIVERS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store of each driver on a filesystem it works on (btrfs: a loop btrfs)."""
    name = request.param
    if name == "btrfs":
        root = request.getfixturevalue("btrfs_root") / "store"
    else:
        root = tmp_path / "store"
    root.mkdir(parents=True)
    cls = driver_class(name)
    reason = cls.check_support(root)
    if reason:
        pytest.skip(reason)
    (root / name).mkdir(mode=0o700)  # the home the engine makes
    opened = Store(root, cls(root / name))
    try:
        yield opened
    finally:
        opened.close()
        for point in mounts.mounts_under(root):
            mounts.detach(Path(point))


@pytest.fixture
def base(store: Store, busybox_tar: Path) -> str:
    return import_rootfs(ImageStore(store), str(busybox_tar), names=["docker.io/test/base:1"])


def container(store: Store, images: ImageStore, image_id: str) -> tuple[str, Path]:
    """A container's writable layer on the image, mounted (unmount it when done)."""
    rw = store.create_layer(images.image(image_id).top_layer, writable=True).id
    return rw, store.mount(rw)


def change_tree(path: Path) -> None:
    """Add, change and delete: a new file and directory, a rewrite, a deleted file and dir."""
    (path / "new-dir" / "sub").mkdir(parents=True)
    (path / "new-dir" / "sub" / "added").write_bytes(b"added\n")
    os.symlink("../bin/busybox", path / "new-dir" / "link")
    (path / "etc").mkdir(exist_ok=True)
    (path / "etc" / "hostname").write_text("committed\n")
    os.chmod(path / "etc" / "hostname", 0o600)
    os.unlink(path / "bin" / "ls")  # a whiteout
    shutil.rmtree(path / "usr" / "sbin")  # a deleted directory


def tree_problems(a: Path, b: Path) -> list[str]:
    problems = compare(snapshot(a, subsecond=False), snapshot(b, subsecond=False),
                       mtime_kinds={"file", "symlink"})
    return [p for p in problems if not p.startswith("/:")]  # the root's own metadata


def image_tree_equals(store: Store, images: ImageStore, image_id: str, path: Path) -> list[str]:
    top = images.image(image_id).top_layer
    assert store.layer(top).writable is False
    mounted = store.mount(top)
    try:
        with pytest.raises(OSError):  # a read-only layer
            (mounted / "probe").write_bytes(b"x")
        return tree_problems(path, mounted)
    finally:
        store.unmount(top)


def test_commit_gives_the_containers_tree_config_and_history(store: Store, base: str) -> None:
    images = ImageStore(store)
    rw, path = container(store, images, base)
    change_tree(path)
    out = io.BytesIO()
    store.diff(rw, out)
    new = commit(store, images, layer_id=rw, base_image_id=base, created_by="/bin/sh -c edit",
                 comment="edited", author="Tester <t@example.com>",
                 changes=['CMD ["sh"]', "ENV A=1", "WORKDIR /srv"],
                 names=["docker.io/test/committed:1"])
    assert image_tree_equals(store, images, new, path) == []
    store.unmount(rw)

    diff_id = "sha256:" + hashlib.sha256(out.getvalue()).hexdigest()
    base_doc, doc = images.config_json(base), images.config_json(new)
    assert doc["rootfs"]["diff_ids"] == [*base_doc["rootfs"]["diff_ids"], diff_id]
    assert doc["history"][:-1] == base_doc["history"]
    last = doc["history"][-1]
    assert (last["created_by"], last["comment"], last["author"]) == (
        "/bin/sh -c edit", "edited", "Tester <t@example.com>")
    assert "empty_layer" not in last
    assert doc["author"] == "Tester <t@example.com>"
    assert doc["config"] == {"Cmd": ["sh"], "Env": ["A=1"], "WorkingDir": "/srv"}
    assert (doc["os"], doc["architecture"]) == (base_doc["os"], base_doc["architecture"])

    # the new layer: a proper image layer, id its ChainID, on the base's top layer
    layers = images.layers(new)
    assert layers[:-1] == images.layers(base)
    top = store.layer(layers[-1].layer_id)
    assert top.id == layer_id_of(base_doc["rootfs"]["diff_ids"], diff_id)
    assert (top.parent, top.diff_id, top.writable) == (images.image(base).top_layer, diff_id,
                                                        False)
    # the exported tar is the layer's blob, byte for byte
    assert images.blobs.path(diff_id).read_bytes() == out.getvalue()
    assert images.by_name("docker.io/test/committed:1") == new
    assert not list((store.root / "tmp").glob("ingest-commit-*"))


def test_commit_twice_rmi_and_an_image_built_on_it(store: Store, base: str) -> None:
    images = ImageStore(store)
    rw, path = container(store, images, base)
    (path / "one").write_text("1\n")
    store.unmount(rw)
    first = commit(store, images, layer_id=rw, base_image_id=base, created_by="step 1")
    # the same container again, changed further: a second image, its own layer
    path = store.mount(rw)
    (path / "two").write_text("2\n")
    second = commit(store, images, layer_id=rw, base_image_id=base, created_by="step 2",
                    names=["docker.io/test/second:1"])
    assert image_tree_equals(store, images, second, path) == []
    store.unmount(rw)
    assert first != second
    assert images.image(first).top_layer != images.image(second).top_layer

    # a container of the first image, committed: three images sharing the base layer
    rw2, path2 = container(store, images, first)
    (path2 / "three").write_text("3\n")
    store.unmount(rw2)
    third = commit(store, images, layer_id=rw2, base_image_id=first, created_by="step 3")
    assert [la.layer_id for la in images.layers(third)][:-1] == \
        [la.layer_id for la in images.layers(first)]
    by_id = {u.image_id: u for u in usage(images).images}
    base_size = store.layer(images.image(base).top_layer).size
    assert by_id[base].shared == base_size and by_id[base].unique == 0
    assert by_id[third].shared == by_id[first].size  # its parent image's layers, all shared
    assert by_id[third].unique == store.layer(images.image(third).top_layer).size

    # rmi of the committed image keeps the base (and what others use)
    store.remove_layer(rw)  # the container is gone first, as `lamina rm` would do
    second_top = images.image(second).top_layer
    assert images.remove(second) == [second_top]  # its own layer only
    assert images.exists(base) and images.exists(first) and images.exists(third)
    store.remove_layer(rw2)
    third_top, first_top = images.image(third).top_layer, images.image(first).top_layer
    assert images.remove(third) == [third_top]
    assert images.remove(first) == [first_top]
    assert images.exists(base)
    assert [layer.id for layer in store.layers()] == [images.image(base).top_layer]


def test_nothing_changed_still_adds_a_layer(store: Store, base: str) -> None:
    images = ImageStore(store)
    rw = store.create_layer(images.image(base).top_layer, writable=True).id
    new = commit(store, images, layer_id=rw, base_image_id=base, created_by="nothing")
    assert len(images.layers(new)) == 2
    mounted = store.mount(images.image(new).top_layer)
    try:
        base_top = store.mount(images.image(base).top_layer)
        try:
            assert tree_problems(base_top, mounted) == []
        finally:
            store.unmount(images.image(base).top_layer)
    finally:
        store.unmount(images.image(new).top_layer)


def test_bad_requests_are_refused_before_any_work(store: Store, base: str) -> None:
    images = ImageStore(store)
    before = ({la.id for la in store.layers()}, set(images.blobs.digests()))
    loose = store.create_layer(writable=True).id  # not on the image
    with pytest.raises(ContainerError, match="not a container's writable layer"):
        commit(store, images, layer_id=loose, base_image_id=base, created_by="x")
    rw = store.create_layer(images.image(base).top_layer, writable=True).id
    with pytest.raises(InvalidChange, match="RUN cannot be applied by commit"):
        commit(store, images, layer_id=rw, base_image_id=base, created_by="x",
               changes=["RUN true"])
    assert {la.id for la in store.layers()} - {loose, rw} == before[0]
    assert set(images.blobs.digests()) == before[1]


def test_interrupted_registration_leaves_no_layer_or_blob(
        store: Store, base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    images = ImageStore(store)
    rw, path = container(store, images, base)
    (path / "file").write_bytes(b"data\n")
    store.unmount(rw)
    layers_before = {la.id for la in store.layers()}
    blobs_before = set(images.blobs.digests())

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ImageStore, "record", interrupted)  # what register does, too
    with pytest.raises(KeyboardInterrupt):
        commit(store, images, layer_id=rw, base_image_id=base, created_by="x",
               names=["docker.io/test/half:1"])
    assert {la.id for la in store.layers()} == layers_before
    assert set(images.blobs.digests()) == blobs_before
    assert [i.id for i in images.images()] == [base]
    assert not list((store.root / "tmp").glob("ingest-commit-*"))
    monkeypatch.undo()
    new = commit(store, images, layer_id=rw, base_image_id=base, created_by="x")
    assert images.exists(new)  # and it works once nothing interrupts it


def test_full_disk_leaves_the_store_as_it_was(busybox_tar: Path, tmp_path: Path) -> None:
    """A commit that does not fit: the export fits, the new layer does not."""
    from lamina.drivers.vfs import VfsDriver

    point = tmp_path / "small"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(point)], check=True)
    try:
        with Store(point, VfsDriver(point / "vfs")) as store:
            images = ImageStore(store)
            base = import_rootfs(images, str(busybox_tar))
            rw, path = container(store, images, base)
            (path / "big").write_bytes(os.urandom(14 << 20))
            store.unmount(rw)
            layers_before = {la.id for la in store.layers()}
            blobs_before = set(images.blobs.digests())
            with pytest.raises(NoSpace):
                commit(store, images, layer_id=rw, base_image_id=base, created_by="x")
            assert {la.id for la in store.layers()} == layers_before
            assert store.layer_count(ready_only=False) == len(layers_before)
            assert set(images.blobs.digests()) == blobs_before
            assert [i.id for i in images.images()] == [base]
            assert not list((point / "tmp").glob("ingest-commit-*"))
            # the space came back: a small change commits
            (store.mount(rw) / "big").unlink()
            store.unmount(rw)
            assert images.exists(commit(store, images, layer_id=rw, base_image_id=base,
                                        created_by="y"))
    finally:
        for p in mounts.mounts_under(point, include_self=True):
            mounts.detach(Path(p))


def test_history_of_the_committed_image_in_the_cli(store: Store, base: str) -> None:
    """``lamina history`` (the real CLI) reads the committed image's config."""
    from conftest import run_lamina

    images = ImageStore(store)
    rw, path = container(store, images, base)
    (path / "x").write_text("x\n")
    store.unmount(rw)
    new = commit(store, images, layer_id=rw, base_image_id=base,
                 created_by="/bin/sh -c touch x", comment="hi", names=["docker.io/test/hist:1"])
    root, driver = store.root, store.driver.name
    store.close()
    out = run_lamina("--driver", driver, "history", "--format", "json", "test/hist:1",
                     root=root).stdout
    rows = json.loads(out)
    assert (rows[0]["ID"], rows[0]["CreatedBy"], rows[0]["Comment"]) == (
        new, "/bin/sh -c touch x", "hi")
    assert rows[0]["Size"] > 0 and len(rows) == 2
