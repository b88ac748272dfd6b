"""Layer records: the core's own copy of each ready layer's metadata, beside the database.

``<root>/layerdb/<id>.json`` holds what the ``layers`` row of a ready layer holds
(driver, parent, writable, diff id, size, creation times). It exists for one
purpose: ``lamina system repair`` rebuilds a lost or corrupt ``lamina.db`` from
these records, checked against the drivers (:meth:`Driver.exists`). The drivers
are not asked for the parent graph: the core owns it, and drivers need not store
it (Docker keeps its layer metadata as such files, ``image/<driver>/layerdb``).

A record is written (temp file, rename) before its row turns ``ready`` and
deleted after the driver removed the layer, so every ready row has its record;
a record without a row is a layer whose completion or removal was interrupted,
which the next open's recovery or a repair settles. Records are not fsynced:
they are as durable as the database itself (``synchronous=NORMAL``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DIRNAME = "layerdb"
#: the row's columns a record keeps
FIELDS = ("id", "driver", "parent", "writable", "diff_id", "size", "created", "created_ns")


def record_dir(root: Path) -> Path:
    return root / DIRNAME


def record_path(root: Path, layer_id: str) -> Path:
    """Where the record of ``layer_id`` is (it exists once the layer is ready)."""
    return record_dir(root) / f"{layer_id}.json"


def write(root: Path, row: Mapping[str, Any]) -> None:
    """Write the record of a layer (a ``layers`` row, or a mapping with :data:`FIELDS`)."""
    directory = record_dir(root)
    directory.mkdir(mode=0o700, exist_ok=True)
    record = {key: row[key] for key in FIELDS}
    record["writable"] = bool(record["writable"])
    tmp = directory / f".tmp-{row['id']}-{os.urandom(4).hex()}"
    try:
        tmp.write_text(json.dumps(record, sort_keys=True) + "\n")
        os.rename(tmp, record_path(root, row["id"]))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove(root: Path, layer_id: str) -> None:
    record_path(root, layer_id).unlink(missing_ok=True)


def read_all(root: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Every readable record by id, and a line for each one that cannot be read."""
    records: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    try:
        entries = sorted(os.scandir(record_dir(root)), key=lambda e: e.name)
    except FileNotFoundError:
        return records, problems
    for entry in entries:
        if not entry.name.endswith(".json") or entry.name.startswith("."):
            continue
        try:
            record = json.loads(Path(entry.path).read_text())
            if not isinstance(record, dict) or set(FIELDS) - set(record):
                raise ValueError("fields are missing")
            if record["id"] != entry.name.removesuffix(".json"):
                raise ValueError(f"it names layer {record['id']!r}")
        except (OSError, ValueError) as exc:
            problems.append(f"unreadable layer record {entry.path}: {exc}")
            continue
        records[record["id"]] = record
    return records, problems


def holds_records(root: Path) -> bool:
    try:
        with os.scandir(record_dir(root)) as it:
            return any(e.name.endswith(".json") and not e.name.startswith(".") for e in it)
    except FileNotFoundError:
        return False
