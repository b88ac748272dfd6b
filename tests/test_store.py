"""The layer store: life cycle, counted mounts, concurrency and crash recovery.

All against the real vfs driver on the real disk.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from conftest import LAMINA, needs_root, run_lamina

from lamina.core.config import Config
from lamina.core.engine import Engine
from lamina.core.errors import (
    AmbiguousLayerId,
    InvalidLayerId,
    LayerExists,
    LayerHasChildren,
    LayerIncomplete,
    LayerInUse,
    LayerNotFound,
    LayerOptionError,
    NotMounted,
    StoreClosed,
    StoreError,
)
from lamina.core.host import mounts
from lamina.core.layers.store import Store

pytestmark = needs_root


def open_store(root: Path) -> Store:
    return Engine(Config(driver="vfs", driver_source="test", root=root)).open_store()


def small_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_root_is_private(store_root: Path) -> None:
    with open_store(store_root) as store:
        assert store_root.stat().st_mode & 0o777 == 0o700
        assert (store_root / "lamina.db").exists()
        assert not (store_root / "blobs").exists()  # made by the first blob, not by an open
        store.blobs.ingest(io.BytesIO(b"x"))
    assert (store_root / "blobs" / "sha256").is_dir()


def test_apply_records_diff_id_and_size(store_root: Path) -> None:
    data = small_tar({"a.txt": b"hello"})
    with open_store(store_root) as store:
        layer = store.apply_layer(io.BytesIO(data))
        import hashlib

        assert layer.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
        assert layer.size == len(data)
        assert layer.state == "ready"
        assert [x.id for x in store.layers()] == [layer.id]
        store.remove_layer(layer.id)


def test_layer_ids_are_validated(store_root: Path) -> None:
    with open_store(store_root) as store:
        for bad in ["../x", "", "a/b", ".hidden", "x" * 200]:
            with pytest.raises(InvalidLayerId):
                store.create_layer(layer_id=bad)
        store.create_layer(layer_id="base-1.0")
        with pytest.raises(LayerExists):
            store.create_layer(layer_id="base-1.0")
        store.remove_layer("base-1.0")


def test_short_ids_resolve_like_docker(store_root: Path) -> None:
    with open_store(store_root) as store:
        for layer_id in ["cafe", "cafe01", "cafe02", "beef", "b_x"]:
            store.create_layer(layer_id=layer_id)
        assert store.resolve("be") == "beef"
        assert store.resolve("cafe01") == "cafe01"
        assert store.resolve("cafe") == "cafe"  # a full id wins over a prefix of others
        with pytest.raises(AmbiguousLayerId) as info:
            store.resolve("caf")
        assert "3 layers start with it" in str(info.value)
        assert "cafe01" in str(info.value) and "more characters" in info.value.hint
        with pytest.raises(LayerNotFound, match="no layer 'dead'"):
            store.resolve("dead")
        # "_" and "%" are no wildcards: "b_" names b_x alone, not beef
        assert store.resolve("b_") == "b_x"
        with pytest.raises(InvalidLayerId):
            store.resolve("b%")
        with pytest.raises(InvalidLayerId):
            store.resolve("")
        # the Python API keeps taking full ids only
        with pytest.raises(LayerNotFound):
            store.layer("bee")
        plan = " ".join(
            str(row[-1]) for row in store._db.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM layers WHERE id >= ? AND id < ?"
                " AND driver = ? ORDER BY id LIMIT 6", ("ca", "cb", "vfs"),
            )
        )
        assert "SEARCH" in plan and "SCAN" not in plan, plan


def test_parent_rules(store_root: Path) -> None:
    with open_store(store_root) as store:
        with pytest.raises(LayerNotFound):
            store.create_layer("missing")
        a = store.create_layer(layer_id="a")
        b = store.create_layer(a.id, layer_id="b")
        assert store.chain(b.id) == ["b", "a"]
        assert store.parents("b") == ["a"] and store.parents("a") == []
        with pytest.raises(LayerNotFound):
            store.parents("missing")
        with pytest.raises(LayerHasChildren):
            store.remove_layer("a")
        store.remove_layer("b")
        store.remove_layer("a")
        store.create_layer(layer_id="a")  # reusable after remove
        store.remove_layer("a")


def test_mounts_are_counted_and_persist_across_processes(store_root: Path) -> None:
    with open_store(store_root) as store:
        layer = store.apply_layer(io.BytesIO(small_tar({"f": b"x"})))
    # a user mount made by one command stays for the next one
    path = run_lamina("layer", "mount", layer.id, root=store_root,
                      env={"LAMINA_DRIVER": "vfs"}).stdout.decode().strip()
    assert mounts.is_mountpoint(Path(path))
    with open_store(store_root) as store:
        assert store.mount_count(layer.id) == 1
        assert store.mount(layer.id) == Path(path)
        assert store.mount_count(layer.id) == 2
        with pytest.raises(LayerInUse):
            store.remove_layer(layer.id)
        store.unmount(layer.id)
        assert mounts.is_mountpoint(Path(path))  # one reference left
        store.unmount(layer.id)
        assert not mounts.is_mountpoint(Path(path))
        with pytest.raises(NotMounted):
            store.unmount(layer.id)
        store.remove_layer(layer.id)


def test_process_references_die_with_the_store(store_root: Path) -> None:
    with open_store(store_root) as store:
        layer = store.create_layer(layer_id="base")
        path = store.mount("base", holder=store.process_holder)
        assert mounts.is_mountpoint(path)
    assert not mounts.is_mountpoint(path)
    with open_store(store_root) as store:
        assert store.mount_count(layer.id) == 0
        store.remove_layer("base")


def test_closed_store_refuses_work(store_root: Path) -> None:
    store = open_store(store_root)
    store.close()
    store.close()
    with pytest.raises(StoreClosed):
        store.layers()


def test_incomplete_layer_cannot_be_mounted_or_parented(store_root: Path) -> None:
    with open_store(store_root) as store:
        store._begin(None, False, "pending")  # what a process mid-apply has recorded
        with pytest.raises(LayerIncomplete):
            store.mount("pending")
        with pytest.raises(LayerIncomplete):
            store.create_layer("pending")
        assert store.layers() == []
        store._abort("pending")


def test_failed_apply_leaves_nothing(store_root: Path) -> None:
    with open_store(store_root) as store:
        base = store.apply_layer(io.BytesIO(small_tar({"keep": b"1"})))
        with pytest.raises(Exception) as info:
            store.apply_layer(io.BytesIO(b"\x1f\x8b" + os.urandom(4000)), base.id)
        assert "lamina" in type(info.value).__module__
        assert [x.id for x in store.layers()] == [base.id]
        assert sorted(os.listdir(store_root / "vfs" / "dir")) == [base.id]
        store.remove_layer(base.id)


def test_newer_schema_is_refused(store_root: Path) -> None:
    with open_store(store_root):
        pass
    db = sqlite3.connect(store_root / "lamina.db")
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        open_store(store_root)


# --- crashes -------------------------------------------------------------------------


def many_files_tar(count: int, size: int) -> bytes:
    return small_tar({f"d{i % 50}/file{i}": os.urandom(size) for i in range(count)})


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def incomplete_layers(root: Path) -> list[str]:
    if not (root / "lamina.db").exists():
        return []
    db = sqlite3.connect(root / "lamina.db", timeout=30)
    try:
        return [r[0] for r in db.execute("SELECT id FROM layers WHERE state != 'ready'")]
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def test_sigkill_during_apply_is_undone_by_the_next_command(store_root: Path) -> None:
    data = many_files_tar(2000, 2048)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    proc = subprocess.Popen(
        [*LAMINA, "--root", str(store_root), "--driver", "vfs", "layer", "apply", "-",
         "--id", "victim"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    assert proc.stdin is not None
    # half the tar, then wait until files are landing in the layer: the apply is midway
    proc.stdin.write(data[: len(data) // 2])
    proc.stdin.flush()
    layer_dir = store_root / "vfs" / "dir" / "victim"
    wait_for(lambda: layer_dir.is_dir() and len(os.listdir(layer_dir)) > 10)
    assert incomplete_layers(store_root) == ["victim"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert layer_dir.exists()  # debris is there until someone opens the store

    listing = run_lamina("layer", "ls", "--format", "json", root=store_root,
                         env={"LAMINA_DRIVER": "vfs"})
    assert json.loads(listing.stdout) == []
    assert incomplete_layers(store_root) == []
    assert not layer_dir.exists()
    assert mounts.mounts_under(store_root) == []

    # the same layer applies again, under the same id, completely
    again = run_lamina("layer", "apply", "-", "--id", "victim", root=store_root,
                       env={"LAMINA_DRIVER": "vfs"}, input=data)
    assert again.stdout.decode().strip() == "victim"
    assert sum(len(files) for _, _, files in os.walk(layer_dir)) == 2000


def test_mount_of_a_killed_process_is_released(store_root: Path) -> None:
    with open_store(store_root) as store:
        store.create_layer(layer_id="base")
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from lamina.core.config import Config\n"
        "from lamina.core.engine import Engine\n"
        f"s = Engine(Config(driver='vfs', root=Path({str(store_root)!r}))).open_store()\n"
        "print(s.mount('base', holder=s.process_holder), flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    path = Path(proc.stdout.readline().decode().strip())
    assert mounts.is_mountpoint(path)
    proc.kill()
    proc.wait()
    assert mounts.is_mountpoint(path)  # nobody cleaned up yet
    with open_store(store_root) as store:
        assert not mounts.is_mountpoint(path)
        assert store.mount_count("base") == 0
        store.remove_layer("base")


def test_stray_mount_under_the_root_is_detached(store_root: Path) -> None:
    with open_store(store_root):
        pass
    stray = store_root / "vfs" / "mnt" / "stray"
    stray.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(stray)], check=True)
    with open_store(store_root) as store:
        assert not mounts.is_mountpoint(stray)
        assert store.layers() == []


def test_recovery_leaves_a_store_nested_in_the_root_alone(store_root: Path) -> None:
    """Recovery sweeps its own driver's home, not every mount below the root."""
    inner = store_root / "projects" / "inner"
    with open_store(store_root):
        pass  # the outer store first: a root holding data without a database is refused
    with open_store(inner) as store:
        store.create_layer(layer_id="base")
        path = store.mount("base")
    with open_store(store_root):
        pass
    assert mounts.is_mountpoint(path), "the outer store detached the inner store's mount"
    with open_store(inner) as store:
        assert store.mount_count("base") == 1
        store.unmount("base")
    assert mounts.mounts_under(store_root) == []


def test_concurrent_applies_in_two_processes(store_root: Path) -> None:
    with open_store(store_root):
        pass
    data = many_files_tar(300, 1024)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    procs = [
        subprocess.Popen([*LAMINA, "--root", str(store_root), "--driver", "vfs", "layer",
                          "apply", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
        for _ in range(3)
    ]
    outs = [p.communicate(data, timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    ids = {o[0].decode().strip() for o in outs}
    assert len(ids) == 3
    with open_store(store_root) as store:
        assert {x.id for x in store.layers()} == ids
        assert len({x.diff_id for x in store.layers()}) == 1


def test_parents_of_a_deep_chain_nearest_first(store_root: Path) -> None:
    """What the driver is handed: every ancestor, nearest first, from one query."""
    with open_store(store_root) as store:
        ids = [store.create_layer(layer_id="l0").id]
        for i in range(1, 300):
            ids.append(store.create_layer(ids[-1], layer_id=f"l{i}").id)
        assert store.parents("l299") == ids[-2::-1]
        assert store.chain("l299") == ids[::-1]


# --- per-layer options (--storage-opt) ------------------------------------------------


def test_layer_options_a_driver_does_not_take_are_refused_before_anything(
        store_root: Path) -> None:
    with open_store(store_root) as store:
        base = store.create_layer().id
        with pytest.raises(LayerOptionError) as info:
            store.create_layer(base, writable=True, options={"size": "10M"})
        assert "the vfs driver takes no per-layer options (asked for: size)" in str(info.value)
        assert "btrfs" in info.value.hint
        assert [layer.id for layer in store.layers()] == [base]
        assert store.layer_count(ready_only=False) == 1
        assert sorted(os.listdir(store.driver.home / "dir")) == [base]  # vfs's layers


def test_a_driver_written_before_layer_options_keeps_working(store_root: Path) -> None:
    """A third party's create without the ``options`` keyword: never passed one unasked."""
    from lamina.drivers.vfs import VfsDriver

    class OldDriver(VfsDriver):
        def create(self, layer_id: str, parents, *, writable: bool) -> None:  # type: ignore
            super().create(layer_id, parents, writable=writable)

    store_root.mkdir()
    (store_root / "vfs").mkdir()
    with Store(store_root, OldDriver(store_root / "vfs")) as store:
        base = store.create_layer().id
        rw = store.create_layer(base, writable=True, options={}).id
        assert store.layer(rw).parent == base
        with pytest.raises(LayerOptionError, match="takes no per-layer options"):
            store.create_layer(base, writable=True, options={"size": "1G"})
