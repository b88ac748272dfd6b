"""The ways out of lost or damaged metadata: repair (rebuild what can be) and reset (start over).

``lamina system repair`` rebuilds ``lamina.db`` from the layer records the core
keeps beside it (:mod:`lamina.core.layers.records`), each checked against its
driver: a layer is recovered only when its driver is installed and
:meth:`Driver.exists` says it holds the layer, and only after its parent was
recovered (parents first, so every row's parent is a row). A damaged database
is kept aside as ``lamina.db.corrupt-<time>``, never deleted. Nothing a driver
holds is deleted either: a layer left out keeps its data and its record, and
the report says where.

``lamina system reset`` removes everything under the root: layers (through
their drivers where they can be named, so a btrfs read-only snapshot goes the
way btrfs removes it), blobs, records and the database.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from ..driver import Driver
from ..errors import LaminaError, MetadataCorrupt, StoreError
from ..host import mounts
from ..host.locks import FileLock
from ..host.treecopy import remove_tree
from . import metadata
from . import records as layer_records
from .store import DB_NAME, check_metadata, stored_data

#: makes the driver of a name on its home, or None when no installed plugin provides it
DriverFactory = Callable[[str], Driver | None]


def repair(root: Path, driver_for: DriverFactory) -> list[str]:
    """Rebuild the metadata of ``root``; return a line per thing done or left out.

    Idempotent: on a healthy store it adds only records the database lacks
    (none, normally) and says so.
    """
    lines: list[str] = []
    if not root.is_dir():
        return [f"no store at {root}: nothing to repair"]
    with FileLock(root / "lock"):
        db_path = root / DB_NAME
        try:
            check_metadata(root)
            if metadata.is_present(db_path):
                metadata.connect(db_path, create=False).close()
        except MetadataCorrupt as exc:
            aside = _set_aside(db_path)
            lines.append(f"{exc}; kept it as {aside}")
        except LaminaError:
            pass  # missing or empty: a new database is what repair makes
        if db_path.exists() and not metadata.is_present(db_path):
            db_path.unlink()  # zero bytes: nothing to keep
        db = metadata.connect(db_path)
        try:
            lines += _forget_lost_rows(root, db, driver_for)
            lines += _restore_rows(root, db, driver_for)
        finally:
            db.close()
    return lines


def _set_aside(db_path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = db_path.with_name(f"{db_path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{db_path}{suffix}")
        if src.exists():
            os.rename(src, f"{aside}{suffix}")
    return aside


def _forget_lost_rows(root: Path, db: sqlite3.Connection, driver_for: DriverFactory) -> list[str]:
    """Drop the rows of layers their (installed) driver no longer holds, and their children.

    A driver's home deleted behind the store's back leaves rows nothing can use; until
    they go, every write refuses to run (:meth:`lamina.core.engine.Engine.make_driver`).
    A child goes with its parent: the graph must stay whole, and the child's layer
    needs its parents' data to mount.
    """
    rows = db.execute("SELECT id, parent, driver FROM layers").fetchall()
    children: dict[str, list[str]] = {}
    for row in rows:
        if row["parent"] is not None:
            children.setdefault(row["parent"], []).append(row["id"])
    drivers: dict[str, Driver | None] = {}
    lost: dict[str, str] = {}
    try:
        for row in rows:
            name = row["driver"]
            if name not in drivers:
                drivers[name] = driver_for(name)
            driver = drivers[name]
            if driver is not None and not driver.exists(row["id"]):
                lost[row["id"]] = f"driver {name!r} does not hold it"
    finally:
        for driver in drivers.values():
            if driver is not None:
                driver.close()
    order: list[str] = []  # children before their parents

    def forget(layer_id: str, why: str) -> None:
        for child in children.get(layer_id, []):
            if child not in order:
                forget(child, f"its parent {layer_id} is gone")
        if layer_id not in order:
            order.append(layer_id)
            lines.append(f"forgot layer {layer_id}: {why}")

    lines: list[str] = []
    for layer_id, why in sorted(lost.items()):
        forget(layer_id, why)
    if order:
        with metadata.transaction(db):
            for layer_id in order:
                # an image standing on a lost layer cannot be used either: it goes too
                # (its names and layer rows cascade); its blobs stay for `prune`
                for (image_id,) in db.execute(
                    "SELECT image_id FROM image_layers WHERE layer_id = ?"
                    " UNION SELECT id FROM images WHERE top_layer = ?", (layer_id, layer_id)
                ).fetchall():
                    db.execute("DELETE FROM images WHERE id = ?", (image_id,))
                    lines.append(f"forgot image {image_id}: its layer {layer_id} is gone")
                db.execute("DELETE FROM mounts WHERE layer_id = ?", (layer_id,))
                db.execute("DELETE FROM layers WHERE id = ?", (layer_id,))
        for layer_id in order:
            layer_records.remove(root, layer_id)
    return lines


def _restore_rows(root: Path, db: sqlite3.Connection, driver_for: DriverFactory) -> list[str]:
    lines: list[str] = []
    records, problems = layer_records.read_all(root)
    lines += problems
    known = {r["id"] for r in db.execute("SELECT id FROM layers").fetchall()}
    drivers: dict[str, Driver | None] = {}
    recovered: list[str] = []
    left_out: dict[str, str] = {}

    def usable(layer_id: str) -> bool:
        """Whether the layer is (or can be made) a row; sets ``left_out`` when not."""
        if layer_id in known:
            return True
        if layer_id in left_out:
            return False
        record = records.get(layer_id)
        if record is None:
            left_out[layer_id] = "it has no layer record"
            return False
        name = record["driver"]
        if name not in drivers:
            drivers[name] = driver_for(name)
        driver = drivers[name]
        if driver is None:
            left_out[layer_id] = f"driver {name!r} is not installed; its data stays in {name}/"
            return False
        if not driver.exists(layer_id):
            left_out[layer_id] = f"driver {name!r} does not hold it; its record was removed"
            layer_records.remove(root, layer_id)
            return False
        parent = record["parent"]
        left_out[layer_id] = "its parents form a cycle"  # until its parent is settled
        if parent is not None and not usable(parent):
            left_out[layer_id] = (
                f"its parent {parent} was not recovered; its data stays in {name}/"
            )
            return False
        del left_out[layer_id]
        with metadata.transaction(db):
            db.execute(
                "INSERT INTO layers (id, parent, driver, writable, state, owner, diff_id, size,"
                " created, created_ns) VALUES (?, ?, ?, ?, 'ready', NULL, ?, ?, ?, ?)",
                (layer_id, parent, name, int(record["writable"]), record["diff_id"],
                 record["size"], record["created"], record["created_ns"]),
            )
        known.add(layer_id)
        recovered.append(layer_id)
        parent_text = f", parent {parent}" if parent else ""
        lines.append(f"recovered layer {layer_id} ({name}{parent_text})")
        return True

    try:
        for layer_id in sorted(records, key=lambda i: (records[i]["created"], i)):
            usable(layer_id)
    finally:
        for driver in drivers.values():
            if driver is not None:
                driver.close()
    for layer_id, why in sorted(left_out.items()):
        if layer_id in records:
            lines.append(f"left out layer {layer_id}: {why}")
    recorded = {records[i]["driver"] for i in records}
    for name in stored_data(root):
        # blobs/ and imagedb/ (the image records, core/images/records.py) are no driver's
        if name not in recorded and name not in ("blobs", "imagedb", layer_records.DIRNAME):
            lines.append(
                f"{name}/ holds data that no layer record names; it was left as it is "
                "(`lamina system reset` removes it)"
            )
    lines.append(
        f"repaired {root / DB_NAME}: {len(recovered)} layer(s) recovered, "
        f"{sum(1 for i in left_out if i in records)} left out"
    )
    return lines


def reset(root: Path, driver_for: DriverFactory) -> list[str]:
    """Remove everything under ``root`` (the directory itself stays); return what was done."""
    if not root.is_dir():
        return [f"no store at {root}: nothing to reset"]
    lines: list[str] = []
    with FileLock(root / "lock"):
        lines += _remove_layers_through_drivers(root, driver_for)
        for point in reversed(mounts.mounts_under(root)):
            mounts.detach(Path(point))
            lines.append(f"detached {point}")
        failed = []
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name == "lock":
                continue
            try:
                remove_tree(Path(entry.path))
            except LaminaError as exc:
                failed.append(f"{entry.path}: {exc}")
        if failed:
            raise StoreError(
                f"could not remove everything under {root}: {'; '.join(failed)}",
                hint="remove what is left by hand, then run `lamina system reset` again",
            )
        (root / "lock").unlink(missing_ok=True)
    lines.append(f"removed everything under {root}")
    return lines


def _remove_layers_through_drivers(root: Path, driver_for: DriverFactory) -> list[str]:
    """Remove the layers the records name through their drivers, children first.

    Best effort: what a driver cannot remove is removed as plain files after.
    """
    records, _ = layer_records.read_all(root)

    def depth(layer_id: str) -> int:
        n, seen = 0, set()
        parent = records[layer_id]["parent"]
        while parent in records and parent not in seen:
            seen.add(parent)
            n += 1
            parent = records[parent]["parent"]
        return n

    drivers: dict[str, Driver | None] = {}
    removed = 0
    try:
        for layer_id in sorted(records, key=depth, reverse=True):
            name = records[layer_id]["driver"]
            if name not in drivers:
                drivers[name] = driver_for(name) if (root / name).is_dir() else None
            driver = drivers[name]
            if driver is None:
                continue
            with contextlib.suppress(LaminaError, OSError):
                driver.unmount(layer_id)
                if driver.exists(layer_id):
                    driver.remove(layer_id)
                    removed += 1
    finally:
        for driver in drivers.values():
            if driver is not None:
                driver.close()
    return [f"removed {removed} layer(s) through their drivers"] if removed else []
