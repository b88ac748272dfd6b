"""The image store: images by config digest, their layers by ChainID, their names.

It shares the layer store's database and lock (:class:`~lamina.core.layers.store.Store`):
an image row and its ``image_layers`` rows are written in one transaction after
every layer is ready, so an image is either whole or absent. Manifests and
configs are blobs in the store's blob store; an image's layers are the layers
whose ids are its ChainIDs, shared by every image whose stack begins the same.

Contracts:
- :meth:`register` is idempotent: registering an image that exists adds names
  and digests; a name moves to the newest image registered or tagged with it.
- :meth:`remove` deletes the image's names and row, then the layers no other
  image uses, top first; a layer with other children (another image, a
  container's writable layer) stays. The init layer containers of the image share
  (:func:`init_layer_id`) goes first, when no container stands on it.
- Ids are ``sha256:<hex>``; any unique hex prefix of at least one digit finds one.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..errors import AmbiguousImageId, ImageInUse, ImageNotFound, LayerError
from ..layers import metadata
from ..layers.store import Store
from . import records as image_records
from .formats import MAX_CONFIG_SIZE, ImageConfig, load_json, parse_config

#: matches shown when an id prefix is ambiguous
AMBIGUOUS_SHOWN = 5


class ImageLayer(NamedTuple):
    """One layer of an image, base first."""

    layer_id: str  # the ChainID's hex: the layer's id in the store
    diff_id: str
    blob: str | None  # the digest of the layer as distributed (compressed), if known
    media_type: str | None
    blob_size: int | None


class Image(NamedTuple):
    id: str  # sha256:<hex> of the config
    top_layer: str | None
    created: float  # when it was stored
    manifest: str | None
    manifest_type: str | None
    layer_count: int
    size: int  # its layers, uncompressed
    config_created: str | None
    names: tuple[str, ...]


class ImageStore:
    """Images over one layer store (same root, database and lock)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.blobs = store.blobs

    @property
    def _db(self) -> sqlite3.Connection:
        return self.store.db

    # -- reading ----------------------------------------------------------------------

    def images(self) -> list[Image]:
        """Every image, newest first."""
        names: dict[str, list[str]] = {}
        for row in self._db.execute("SELECT name, image_id FROM image_names ORDER BY name"):
            names.setdefault(row[1], []).append(row[0])
        return [
            self._image(row, names.get(row["id"], []))
            for row in self._db.execute("SELECT * FROM images ORDER BY created DESC, id")
        ]

    def image(self, image_id: str) -> Image:
        row = self._db.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise ImageNotFound(f"no image {image_id}", hint="list images with `lamina images`")
        names = [r[0] for r in self._db.execute(
            "SELECT name FROM image_names WHERE image_id = ? ORDER BY name", (image_id,))]
        return self._image(row, names)

    @staticmethod
    def _image(row: sqlite3.Row, names: Sequence[str]) -> Image:
        return Image(row["id"], row["top_layer"], row["created"], row["manifest"],
                     row["manifest_type"], row["layer_count"], row["size"],
                     row["config_created"], tuple(names))

    def exists(self, image_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() \
            is not None

    def layers(self, image_id: str) -> list[ImageLayer]:
        return [
            ImageLayer(r["layer_id"], r["diff_id"], r["blob"], r["media_type"], r["blob_size"])
            for r in self._db.execute(
                "SELECT * FROM image_layers WHERE image_id = ? ORDER BY position", (image_id,)
            )
        ]

    def by_name(self, name: str) -> str | None:
        row = self._db.execute("SELECT image_id FROM image_names WHERE name = ?",
                               (name,)).fetchone()
        return None if row is None else row[0]

    def by_digest(self, repository: str, digest: str) -> str | None:
        row = self._db.execute(
            "SELECT image_id FROM image_digests WHERE repository = ? AND digest = ?",
            (repository, digest),
        ).fetchone()
        return None if row is None else row[0]

    def digests(self, image_id: str) -> list[tuple[str, str]]:
        """``(repository, manifest digest)`` pairs the image was pulled or pushed by."""
        return [(r[0], r[1]) for r in self._db.execute(
            "SELECT repository, digest FROM image_digests WHERE image_id = ?"
            " ORDER BY repository, digest", (image_id,))]

    def all_digests(self) -> dict[str, list[tuple[str, str]]]:
        """:meth:`digests` of every image at once, by image id (one query for a listing)."""
        found: dict[str, list[tuple[str, str]]] = {}
        for row in self._db.execute("SELECT image_id, repository, digest FROM image_digests"
                                    " ORDER BY repository, digest"):
            found.setdefault(row[0], []).append((row[1], row[2]))
        return found

    def by_id_prefix(self, prefix: str) -> str | None:
        """The image whose id starts with ``prefix`` (hex, ``sha256:`` optional), if one does."""
        hex_part = prefix.removeprefix("sha256:")
        if not hex_part or not all(c in "0123456789abcdef" for c in hex_part):
            return None
        rows = [r[0] for r in self._db.execute(
            "SELECT id FROM images WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
            (f"sha256:{hex_part}", f"sha256:{hex_part}\uffff", AMBIGUOUS_SHOWN + 1),
        )]
        if len(rows) > 1:
            shown = ", ".join(r.removeprefix("sha256:")[:12] for r in rows[:AMBIGUOUS_SHOWN])
            raise AmbiguousImageId(
                f"image id prefix {prefix!r} matches several images: {shown}",
                hint="give more of the id",
            )
        return rows[0] if rows else None

    def config(self, image_id: str) -> ImageConfig:
        """The image's config, read from the blob store."""
        with self.blobs.open(image_id) as f:
            return parse_config(f.read(MAX_CONFIG_SIZE + 1))

    def config_json(self, image_id: str) -> dict[str, Any]:
        with self.blobs.open(image_id) as f:
            return load_json(f.read(MAX_CONFIG_SIZE + 1), "image config", MAX_CONFIG_SIZE)

    def images_using_layer(self, layer_id: str) -> list[str]:
        return [r[0] for r in self._db.execute(
            "SELECT DISTINCT image_id FROM image_layers WHERE layer_id = ?", (layer_id,))]

    def referenced_blobs(self) -> set[str]:
        """Blobs some image needs: configs, manifests, layer blobs."""
        found: set[str] = set()
        for row in self._db.execute("SELECT id, manifest FROM images"):
            found.add(row[0])
            if row[1]:
                found.add(row[1])
        found.update(r[0] for r in self._db.execute(
            "SELECT DISTINCT blob FROM image_layers WHERE blob IS NOT NULL"))
        found.update(r[0] for r in self._db.execute("SELECT DISTINCT digest FROM image_digests"))
        return found

    # -- writing ----------------------------------------------------------------------

    def register(
        self,
        image_id: str,
        config: ImageConfig,
        layers: Sequence[ImageLayer],
        *,
        manifest: str | None,
        manifest_type: str | None,
        names: Sequence[str] = (),
        digests: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Record an image whose config blob and layers are all in the store.

        ``names`` are full references (``registry/repository:tag``); each moves
        to this image. ``digests`` are ``(repository, manifest digest)`` pairs.
        """
        with self.store.lock, metadata.transaction(self._db):
            self.record(image_id, config, layers, manifest=manifest,
                        manifest_type=manifest_type, names=names, digests=digests)

    def record(
        self,
        image_id: str,
        config: ImageConfig,
        layers: Sequence[ImageLayer],
        *,
        manifest: str | None,
        manifest_type: str | None,
        names: Sequence[str] = (),
        digests: Sequence[tuple[str, str]] = (),
    ) -> None:
        """:meth:`register` in the caller's transaction, under the store lock: the
        ``record`` of :meth:`Store.apply_layer` that makes an image's top layer ready
        (``commit``), so that a crash leaves both or neither."""
        now = time.time()
        size = 0
        for layer in layers:
            size += self.store.layer(layer.layer_id).size or 0
        if not self.exists(image_id):
            self._db.execute(
                "INSERT INTO images (id, top_layer, created, manifest, manifest_type,"
                " layer_count, size, config_created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (image_id, layers[-1].layer_id if layers else None, now, manifest,
                 manifest_type, len(layers), size, config.created),
            )
            self._db.executemany(
                "INSERT INTO image_layers (image_id, position, layer_id, diff_id, blob,"
                " media_type, blob_size) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(image_id, n, *layer) for n, layer in enumerate(layers)],
            )
        elif manifest is not None:
            # the newest manifest it came with: what a push sends unless asked otherwise
            self._db.execute(
                "UPDATE images SET manifest = ?, manifest_type = ? WHERE id = ?",
                (manifest, manifest_type, image_id),
            )
            for n, layer in enumerate(layers):
                if layer.blob is not None:
                    self._db.execute(
                        "UPDATE image_layers SET blob = ?, media_type = ?, blob_size = ?"
                        " WHERE image_id = ? AND position = ?",
                        (layer.blob, layer.media_type, layer.blob_size, image_id, n),
                    )
        touched = {image_id}
        for name in names:
            touched |= self._set_name(name, image_id, now)
        self._db.executemany(
            "INSERT OR REPLACE INTO image_digests (repository, digest, image_id)"
            " VALUES (?, ?, ?)",
            [(repo, digest, image_id) for repo, digest in digests],
        )
        self._write_records(touched)

    def tag(self, name: str, image_id: str) -> None:
        self.image(image_id)
        with self.store.lock, metadata.transaction(self._db):
            self._write_records(self._set_name(name, image_id, time.time()))

    def _write_records(self, image_ids: set[str]) -> None:
        """Rewrite the records of these images (in the caller's transaction: see records)."""
        for image_id in image_ids:
            image_records.write(self.store.root, self._db, image_id)

    def _set_name(self, name: str, image_id: str, now: float) -> set[str]:
        """Give ``name`` to ``image_id``; return the images whose names changed."""
        before = self.by_name(name)
        self._db.execute(
            "INSERT INTO image_names (name, image_id, created) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id,"
            " created = excluded.created",
            (name, image_id, now),
        )
        return {image_id} | ({before} if before else set())

    def untag(self, name: str) -> str:
        """Remove one name; return the image it named."""
        with self.store.lock, metadata.transaction(self._db):
            image_id = self.by_name(name)
            if image_id is None:
                raise ImageNotFound(f"no image named {name}",
                                    hint="list images with `lamina images`")
            self._db.execute("DELETE FROM image_names WHERE name = ?", (name,))
            self._write_records({image_id})
        return image_id

    def remove(self, image_id: str) -> list[str]:
        """Remove the image (names, digests, row) and the layers only it used.

        Its blobs go too, unless another image references them. Return the ids of
        the layers removed. Layers go top first; one still
        used (by another image or as a parent) ends the walk down the stack.
        """
        layers = self.layers(image_id)
        row = self._db.execute("SELECT manifest FROM images WHERE id = ?", (image_id,)).fetchone()
        blobs = {image_id, *(d for _, d in self.digests(image_id)),
                 *(layer.blob for layer in layers if layer.blob)}
        if row is not None and row[0]:
            blobs.add(row[0])
        with self.store.lock:
            with metadata.transaction(self._db):
                self._db.execute("DELETE FROM images WHERE id = ?", (image_id,))
            image_records.remove(self.store.root, image_id)
            # its config, manifests and layer blobs, unless another image has them too
            for digest in blobs - self.referenced_blobs():
                self.blobs.remove(digest)
            removed = []
            if layers and not self.images_using_layer(layers[-1].layer_id):
                init = init_layer_id(layers[-1].layer_id)
                with contextlib.suppress(LayerError):  # not made, or containers on it
                    self.store.remove_layer(init)
                    removed.append(init)
            for layer in reversed(layers):
                if self.images_using_layer(layer.layer_id):
                    break
                try:
                    self.store.remove_layer(layer.layer_id)
                except LayerError:
                    break  # a child (a container's layer, another image) or a mount keeps it
                removed.append(layer.layer_id)
        return removed

    def containers_using(self, image_id: str) -> list[str]:
        """The ids of the containers made from the image."""
        return [row[0] for row in self._containers(
            "SELECT id FROM containers WHERE image = ? ORDER BY id", (image_id,))]

    def container_counts(self) -> dict[str, int]:
        """How many containers were made from each image (images with none left out)."""
        return dict(self._containers("SELECT image, COUNT(*) FROM containers GROUP BY image"))

    def _containers(self, query: str, params: tuple[str, ...] = ()) -> list[Any]:
        """Rows of the containers table, which a store that never had one lacks."""
        try:
            return self._db.execute(query, params).fetchall()
        except sqlite3.OperationalError:
            return []

    def check_unused(self, image_id: str) -> None:
        """Refuse to remove an image a container's layer stands on."""
        users = self.containers_using(image_id)
        if users:
            raise ImageInUse(
                f"image {image_id} is used by container {users[0]}",
                hint="remove the container first, or force with -f",
            )


def init_layer_id(top_layer: str | None) -> str:
    """The id of the init layer every container of an image stands on.

    It holds the mount points the launcher needs (core/containers/store.py makes it
    at the image's first container); its id follows from the image's top layer, so
    images with the same layers share it and the image store can remove it with them.
    """
    return hashlib.sha256(f"{top_layer or 'scratch'}-init".encode()).hexdigest()


def is_init_layer(layer_id: str, parent: str | None) -> bool:
    return layer_id == init_layer_id(parent)


def short_id(image_id: str) -> str:
    """Docker's 12-digit short form of an image id."""
    return image_id.removeprefix("sha256:")[:12]

