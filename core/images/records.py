"""Image records: each image's rows as a file beside the database, for ``system repair``.

``<root>/imagedb/<hex>.json`` holds what the database holds of one image: its
manifest, layers (ChainIDs, DiffIDs, blobs), names and the manifest digests it
came by. The image store rewrites it after every change of the image (register,
tag, untag) and deletes it with the image. ``lamina system repair`` first
rebuilds the layers from their records (:mod:`lamina.core.layers.repair`), then
:func:`restore` puts back every image whose config blob and layers are all
there. Without these files a repaired store would keep the layers but lose the
images, and ``prune`` would then take the layers for garbage.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from ..layers import metadata

DIRNAME = "imagedb"


def record_dir(root: Path) -> Path:
    return root / DIRNAME


def _path(root: Path, image_id: str) -> Path:
    return record_dir(root) / f"{image_id.removeprefix('sha256:')}.json"


def write(root: Path, db: sqlite3.Connection, image_id: str) -> None:
    """Write the record of ``image_id`` from its rows (temp file, rename)."""
    row = db.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
    if row is None:
        remove(root, image_id)
        return
    record: dict[str, Any] = dict(zip(row.keys(), tuple(row), strict=True))
    record["layers"] = [
        [r["layer_id"], r["diff_id"], r["blob"], r["media_type"], r["blob_size"]]
        for r in db.execute("SELECT * FROM image_layers WHERE image_id = ? ORDER BY position",
                            (image_id,))
    ]
    record["names"] = [[r[0], r[1]] for r in db.execute(
        "SELECT name, created FROM image_names WHERE image_id = ? ORDER BY name", (image_id,))]
    record["digests"] = [[r[0], r[1]] for r in db.execute(
        "SELECT repository, digest FROM image_digests WHERE image_id = ? ORDER BY 1, 2",
        (image_id,))]
    directory = record_dir(root)
    directory.mkdir(mode=0o700, exist_ok=True)
    target = _path(root, image_id)
    tmp = directory / f".tmp-{target.name}-{os.urandom(4).hex()}"
    try:
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove(root: Path, image_id: str) -> None:
    _path(root, image_id).unlink(missing_ok=True)


def restore(root: Path, db: sqlite3.Connection, blob_dir: Path) -> list[str]:
    """Put back the images the records name and the database lacks; a line per image."""
    lines: list[str] = []
    try:
        entries = sorted(os.scandir(record_dir(root)), key=lambda e: e.name)
    except FileNotFoundError:
        return lines
    for entry in entries:
        if not entry.name.endswith(".json") or entry.name.startswith("."):
            continue
        try:
            record = json.loads(Path(entry.path).read_text())
            image_id = record["id"]
            layers = record["layers"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            lines.append(f"unreadable image record {entry.path}: {exc}")
            continue
        if db.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone():
            continue
        if not (blob_dir / image_id.removeprefix("sha256:")).is_file():
            lines.append(f"left out image {image_id}: its config blob is gone")
            continue
        missing = [lay[0] for lay in layers if not db.execute(
            "SELECT 1 FROM layers WHERE id = ? AND state = 'ready'", (lay[0],)).fetchone()]
        if missing:
            lines.append(f"left out image {image_id}: its layer {missing[0]} is gone")
            continue
        with metadata.transaction(db):
            db.execute(
                "INSERT INTO images (id, top_layer, created, manifest, manifest_type,"
                " layer_count, size, config_created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (image_id, record.get("top_layer"), record.get("created", 0),
                 record.get("manifest"), record.get("manifest_type"), len(layers),
                 record.get("size", 0), record.get("config_created")),
            )
            db.executemany(
                "INSERT INTO image_layers (image_id, position, layer_id, diff_id, blob,"
                " media_type, blob_size) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(image_id, n, *lay) for n, lay in enumerate(layers)],
            )
            for name, created in record.get("names", []):
                # a name two records claim goes to the image that took it last
                db.execute(
                    "INSERT INTO image_names (name, image_id, created) VALUES (?, ?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id,"
                    " created = excluded.created WHERE excluded.created > created",
                    (name, image_id, created),
                )
            db.executemany(
                "INSERT OR IGNORE INTO image_digests (repository, digest, image_id)"
                " VALUES (?, ?, ?)",
                [(repo, digest, image_id) for repo, digest in record.get("digests", [])],
            )
        names = [n for n, _ in record.get("names", [])]
        lines.append(f"recovered image {image_id}" + (f" ({', '.join(names)})" if names else ""))
    return lines
