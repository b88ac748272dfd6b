"""Opening a store: never wedges, never creates anything on a read, never forgets data.

Real stores in temporary directories, the real `lamina` command, real drivers
(vfs and overlay). The metadata database is damaged the ways an operator meets:
random bytes written into it, truncated, emptied, deleted; `lamina system repair`
and `lamina system reset` are the ways out.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import needs_root, run_lamina
from tarmaker import TarBuilder

from lamina.core.host import mounts
from lamina.core.plugins.discovery import collect_drivers, load_plugins

pytestmark = needs_root

DRIVERS = ["vfs", "overlay"]
WAY_OUT = "`lamina system repair`"


def stderr(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.decode(errors="replace")


def driver_env(name: str) -> dict[str, str]:
    return {"LAMINA_DRIVER": name}


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    name = request.param
    driver_class = collect_drivers(load_plugins()).drivers[name]
    reason = driver_class.check_support(tmp_path)
    if reason:
        pytest.skip(f"{name} does not work here: {reason}")
    return name


def make_store(root: Path, driver: str) -> tuple[str, str]:
    """A store of two layers, a child on a parent with a file; returns (parent, child)."""
    tar = TarBuilder().dir("etc", mode=0o755).file("etc/hello", b"hello\n").bytes()
    env = driver_env(driver)
    base = run_lamina("layer", "apply", "-", "--id", "base", root=root, env=env, input=tar)
    top = run_lamina("layer", "create", "--parent", "base", "--id", "top", root=root, env=env)
    return base.stdout.decode().strip(), top.stdout.decode().strip()


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` with its type, size and content hash (the db's sidecars
    that SQLite makes and removes per connection are left out)."""
    found: dict[str, tuple] = {}
    if not root.exists():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if rel in ("lamina.db-wal", "lamina.db-shm"):
                continue
            st = path.lstat()
            digest = (hashlib.sha256(path.read_bytes()).hexdigest()
                      if path.is_file() and not path.is_symlink() else None)
            found[rel] = (st.st_mode, st.st_size if digest else 0, digest)
    return found


def layers(root: Path, driver: str) -> dict[str, str | None]:
    out = run_lamina("layer", "ls", "--format", "json", root=root, env=driver_env(driver))
    return {row["id"]: row["parent"] for row in json.loads(out.stdout)}


def assert_refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    err = stderr(proc)
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert lines[0].startswith("lamina: error: "), err
    assert len(lines) == 2 and lines[1].startswith("hint: "), err
    for word in words:
        assert word in err, err
    return err


COMMANDS = [("layer", "ls"), ("info",), ("layer", "create"), ("layer", "rm", "top")]


# --- defect 3: a corrupt lamina.db ------------------------------------------------------


def _random_bytes_at(offset: int):
    def damage(db: Path) -> None:
        rng = random.Random(offset)
        with open(db, "r+b") as f:
            f.seek(offset)
            f.write(bytes(rng.randrange(256) for _ in range(1024)))
    return damage


def _truncate(db: Path) -> None:
    os.truncate(db, 3000)


@pytest.mark.parametrize("damage", [_random_bytes_at(0), _random_bytes_at(4096),
                                    _random_bytes_at(8192), _truncate],
                         ids=["header", "page2", "page3", "truncated"])
def test_corrupt_database_is_one_clear_error_and_nothing_changes(
        tmp_path: Path, driver: str, damage) -> None:
    root = tmp_path / "root"
    make_store(root, driver)
    damage(root / "lamina.db")
    before = tree(root)
    for args in COMMANDS:
        proc = run_lamina(*args, root=root, env=driver_env(driver), check=False)
        err = assert_refused(proc, f"the metadata database {root / 'lamina.db'} is corrupt",
                             WAY_OUT, "`lamina system reset`")
        assert "writable" not in err and "network" not in err
    assert tree(root) == before


# --- defect 4: a deleted or emptied lamina.db -------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_lost_database_is_refused_not_replaced(tmp_path: Path, driver: str, how: str) -> None:
    root = tmp_path / "root"
    make_store(root, driver)
    db = root / "lamina.db"
    if how == "deleted":
        db.unlink()
    else:
        db.write_bytes(b"")
    before = tree(root)
    for args in COMMANDS:
        proc = run_lamina(*args, root=root, env=driver_env(driver), check=False)
        word = "is missing" if how == "deleted" else "is empty"
        assert_refused(proc, f"the metadata database {db} {word}", f"{driver}/", WAY_OUT)
    # also without --driver: the choice must not see a fresh root either
    proc = run_lamina("info", root=root, check=False)
    assert_refused(proc, f"{db} {'is missing' if how == 'deleted' else 'is empty'}")
    assert tree(root) == before


@pytest.mark.usefixtures("no_leaked_mounts")
@pytest.mark.parametrize("how", ["deleted", "emptied", "corrupt"])
def test_repair_rebuilds_the_layers_the_driver_holds(tmp_path: Path, driver: str,
                                                     how: str) -> None:
    root = tmp_path / "root"
    make_store(root, driver)
    db = root / "lamina.db"
    if how == "deleted":
        db.unlink()
    elif how == "emptied":
        db.write_bytes(b"")
    else:
        _random_bytes_at(0)(db)
    proc = run_lamina("system", "repair", root=root, env=driver_env(driver))
    out = proc.stdout.decode()
    assert f"recovered layer base ({driver})" in out
    assert f"recovered layer top ({driver}, parent base)" in out
    assert "2 layer(s) recovered, 0 left out" in out
    if how == "corrupt":
        kept = [p.name for p in root.iterdir() if p.name.startswith("lamina.db.corrupt-")]
        assert len(kept) == 1, kept
    assert layers(root, driver) == {"base": None, "top": "base"}
    # the rebuilt store works: the child shows its parent's file, and the
    # plain command (no --driver) finds the driver from the rebuilt metadata
    path = run_lamina("layer", "mount", "top", root=root).stdout.decode().strip()
    try:
        assert Path(path, "etc/hello").read_bytes() == b"hello\n"
    finally:
        run_lamina("layer", "unmount", "top", root=root)
    again = run_lamina("system", "repair", root=root).stdout.decode()
    assert "0 layer(s) recovered, 0 left out" in again


def test_repair_leaves_out_what_the_driver_lacks_and_keeps_data(tmp_path: Path) -> None:
    """A record whose layer the driver lacks is dropped; a child of a dropped layer is
    left out with its data kept: the rebuilt store has no row without its layer and
    every row's parent is a row."""
    root = tmp_path / "root"
    env = driver_env("vfs")
    make_store(root, "vfs")
    run_lamina("layer", "create", "--id", "lone", root=root, env=env)
    (root / "lamina.db").unlink()
    # the vfs layer "base" vanishes behind the store's back
    shutil.rmtree(root / "vfs" / "dir" / "base")
    out = run_lamina("system", "repair", root=root, env=env).stdout.decode()
    assert "recovered layer lone (vfs)" in out
    assert "left out layer base: driver 'vfs' does not hold it; its record was removed" in out
    assert "left out layer top: its parent base was not recovered; its data stays in vfs/" in out
    assert layers(root, "vfs") == {"lone": None}
    assert (root / "vfs" / "dir" / "top").is_dir()
    assert not (root / "layerdb" / "base.json").exists()
    assert (root / "layerdb" / "top.json").exists()


def test_repair_of_a_store_made_before_layer_records(tmp_path: Path) -> None:
    """The first open that writes gives an older store's layers their records."""
    root = tmp_path / "root"
    env = driver_env("vfs")
    make_store(root, "vfs")
    for record in (root / "layerdb").iterdir():
        record.unlink()
    (root / "layerdb").rmdir()
    run_lamina("layer", "create", "--id", "later", root=root, env=env)
    assert sorted(p.name for p in (root / "layerdb").iterdir()) == [
        "base.json", "later.json", "top.json"]
    record = json.loads((root / "layerdb" / "top.json").read_text())
    assert record["parent"] == "base" and record["driver"] == "vfs"


def test_records_follow_the_layers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = driver_env("vfs")
    make_store(root, "vfs")
    base = json.loads((root / "layerdb" / "base.json").read_text())
    assert base["diff_id"].startswith("sha256:") and base["size"] > 0
    run_lamina("layer", "rm", "top", root=root, env=env)
    assert sorted(p.name for p in (root / "layerdb").iterdir()) == ["base.json"]


# --- the way out that starts over --------------------------------------------------------


@pytest.fixture
def no_leaked_mounts(tmp_path: Path):
    yield
    leftover = mounts.mounts_under(tmp_path)
    for point in reversed(leftover):
        mounts.detach(Path(point))
    assert not leftover, f"mounts leaked: {leftover}"


@pytest.mark.usefixtures("no_leaked_mounts")
def test_reset_asks_then_removes_everything(tmp_path: Path, driver: str) -> None:
    root = tmp_path / "root"
    make_store(root, driver)
    path = run_lamina("layer", "mount", "top", root=root).stdout.decode().strip()
    assert Path(path, "etc/hello").exists()
    (root / "lamina.db").unlink()
    before = tree(root)
    proc = run_lamina("system", "reset", root=root, check=False)
    assert_refused(proc, "without a confirmation", "--force")
    assert tree(root) == before
    run_lamina("system", "reset", "--force", root=root)
    assert root.is_dir() and list(root.iterdir()) == []
    assert not Path(path, "etc/hello").exists()
    # a reset root is a fresh root
    assert layers(root, driver) == {}
    run_lamina("layer", "create", "--id", "again", root=root, env=driver_env(driver))
    assert layers(root, driver) == {"again": None}


# --- defect 6: reads create nothing --------------------------------------------------------


READS = [("info",), ("info", "--format", "json"), ("drivers",), ("layer", "ls")]


@pytest.mark.parametrize("exists", [False, True], ids=["missing-root", "empty-root"])
def test_reads_on_a_fresh_root_create_nothing(tmp_path: Path, exists: bool) -> None:
    root = tmp_path / "root"
    if exists:
        root.mkdir()
    for args in READS:
        for env in ({}, driver_env("vfs")):
            run_lamina(*args, root=root, env=env)
            assert root.exists() == exists, args
            if exists:
                assert list(root.iterdir()) == [], args
    info = json.loads(run_lamina("info", "--format", "json", root=root).stdout)
    assert info["layers"] == 0
    # and the first write still makes a new store without complaint
    run_lamina("layer", "create", "--id", "first", root=root, env=driver_env("vfs"))
    assert layers(root, "vfs") == {"first": None}


def test_a_read_with_another_driver_does_not_wedge_the_root(tmp_path: Path,
                                                             driver: str) -> None:
    root = tmp_path / "root"
    make_store(root, driver)
    other = "vfs" if driver == "overlay" else "overlay"
    if collect_drivers(load_plugins()).drivers[other].check_support(tmp_path):
        pytest.skip(f"{other} does not work here")
    before = tree(root)
    for args in READS:
        run_lamina("--driver", other, *args, root=root)
    assert tree(root) == before
    assert not (root / other).exists()
    info = run_lamina("info", root=root).stdout.decode()
    assert f"Storage driver:      {driver}" in info
    assert layers(root, driver) == {"base": None, "top": "base"}


def test_an_empty_home_left_by_an_older_lamina_is_not_prior_state(tmp_path: Path) -> None:
    """`--driver vfs info` of an older lamina left vfs/{dir,mnt,meta} on an overlay root."""
    root = tmp_path / "root"
    driver_class = collect_drivers(load_plugins()).drivers["overlay"]
    if driver_class.check_support(tmp_path):
        pytest.skip("overlay does not work here")
    make_store(root, "overlay")
    for sub in ("dir", "mnt", "meta"):
        (root / "vfs" / sub).mkdir(parents=True)
    assert layers(root, "overlay") == {"base": None, "top": "base"}
    assert "Storage driver:      overlay" in run_lamina("info", root=root).stdout.decode()
