"""Where the store's space goes (``system df``) and taking back what nothing uses (``prune``).

Sizes are the layers' uncompressed tar sizes, as Docker shows them. A layer
shared by two images counts once in the total and as *shared* size for each
image; the rest of an image's size is *unique* (what removing it would free).
Blobs are counted apart: configs and manifests (small, always kept) and the
compressed layer blobs a pull keeps (``images.keep_blobs``) to push them again
without recompressing.

Pruning runs under the exclusive *images lock*; every pull, load and import
holds it shared from start to registration (:func:`images_lock`). So a layer a
running pull applied but has not yet registered is never taken for garbage: the
prune waits for the pull, and a pull started meanwhile waits for the prune.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from ..host.locks import FileLock
from ..layers.store import Layer, Store
from .formats import sha256_digest
from .spool import stale_parts
from .store import ImageStore, is_init_layer


def images_lock(store: Store, *, exclusive: bool = False) -> FileLock:
    """Shared by operations that add images; exclusive for ``prune``."""
    tmp = store.root / "tmp"
    tmp.mkdir(mode=0o700, exist_ok=True)
    return FileLock(tmp / "images.lock", shared=not exclusive)


class ImageUsage(NamedTuple):
    image_id: str
    names: tuple[str, ...]
    size: int
    shared: int
    unique: int
    created: str | None
    #: containers made from the image (it cannot be removed while there are any)
    containers: int


class Usage(NamedTuple):
    images: list[ImageUsage]
    #: every layer images use, counted once
    image_layers_size: int
    #: of those, what removing every image no container uses would free (Docker's
    #: "reclaimable": the layers of images with containers stay)
    reclaimable_images_size: int
    #: ready layers no image uses (a container's, a plumbing layer, a dead pull's)
    other_layers: int
    other_layers_size: int
    #: of those, layers prune would remove (image layers left by an interrupted pull)
    reclaimable_layers: int
    reclaimable_layers_size: int
    blobs: int
    blobs_size: int
    #: compressed layer blobs kept for pushing (``prune --blobs`` removes them)
    layer_blobs: int
    layer_blobs_size: int
    #: blobs no image references (prune removes them)
    unreferenced_blobs: int
    unreferenced_blobs_size: int


def is_chain_layer(layer: Layer) -> bool:
    """Whether ``layer`` is an image layer: its id is the ChainID of its parent and diff id.

    Layers made by ``lamina layer create/apply`` have random or chosen ids and are
    never pruned; an image layer left by an interrupted pull is recognised by
    its id alone.
    """
    if layer.diff_id is None or layer.writable:
        return False
    if layer.parent is None:
        return layer.id == layer.diff_id.removeprefix("sha256:")
    expected = sha256_digest(f"sha256:{layer.parent} {layer.diff_id}".encode())
    return layer.id == expected.removeprefix("sha256:")


def usage(images: ImageStore) -> Usage:
    store = images.store
    layers = {layer.id: layer for layer in store.layers() if layer.state == "ready"}
    users: dict[str, set[str]] = {}
    per_image: dict[str, list[str]] = {}
    for row in store.db.execute("SELECT image_id, layer_id FROM image_layers"):
        users.setdefault(row[1], set()).add(row[0])
        per_image.setdefault(row[0], []).append(row[1])
    containers = images.container_counts()
    result_images = []
    kept: set[str] = set()  # layers of images that containers use
    for image in images.images():
        ids = per_image.get(image.id, [])
        size = sum(layers[i].size or 0 for i in ids if i in layers)
        shared = sum(layers[i].size or 0 for i in ids if i in layers and len(users[i]) > 1)
        result_images.append(ImageUsage(image.id, image.names, size, shared, size - shared,
                                        image.config_created, containers.get(image.id, 0)))
        if containers.get(image.id):
            kept.update(ids)
    used = set(users)
    used_size = sum(layers[i].size or 0 for i in used if i in layers)
    other = [layer for i, layer in layers.items() if i not in used]
    garbage = prunable_layers(store, used)
    referenced = images.referenced_blobs()
    layer_blobs = {r[0] for r in store.db.execute(
        "SELECT DISTINCT blob FROM image_layers WHERE blob IS NOT NULL")}
    counts = {"all": [0, 0], "layer": [0, 0], "unref": [0, 0]}
    for digest in images.blobs.digests():
        size = images.blobs.size(digest) or 0
        counts["all"][0] += 1
        counts["all"][1] += size
        if digest in layer_blobs:
            counts["layer"][0] += 1
            counts["layer"][1] += size
        elif digest not in referenced:
            counts["unref"][0] += 1
            counts["unref"][1] += size
    return Usage(
        result_images,
        used_size,
        used_size - sum(layers[i].size or 0 for i in kept if i in layers),
        len(other), sum(layer.size or 0 for layer in other),
        len(garbage), sum(layer.size or 0 for layer in garbage),
        *counts["all"], *counts["layer"], *counts["unref"],
    )


def prunable_layers(store: Store, used: set[str]) -> list[Layer]:
    """Image layers no image uses and init layers no container uses, leaves first, with
    their parents as they become leaves."""
    layers = {layer.id: layer for layer in store.layers() if layer.state == "ready"}
    children: dict[str, int] = {}
    for layer in store.layers():
        if layer.parent is not None:
            children[layer.parent] = children.get(layer.parent, 0) + 1
    mounts = store.mount_counts()
    order: list[Layer] = []
    candidates = [lay for lay in layers.values() if lay.id not in used
                  and (is_chain_layer(lay) or is_init_layer(lay.id, lay.parent))]
    ready = [lay for lay in candidates if not children.get(lay.id) and not mounts.get(lay.id)]
    candidate_ids = {lay.id for lay in candidates}
    while ready:
        layer = ready.pop()
        order.append(layer)
        parent = layer.parent
        if parent is not None:
            children[parent] -= 1
            if (not children[parent] and parent in candidate_ids and not mounts.get(parent)):
                ready.append(layers[parent])
    return order


class PruneResult(NamedTuple):
    layers: list[str]
    blobs: list[str]
    reclaimed: int


def prune(images: ImageStore, *, layer_blobs: bool = False) -> PruneResult:
    """Remove image layers no image uses, unreferenced blobs and dead pulls' leftovers.

    With ``layer_blobs`` the compressed layer blobs kept for pushing go too (the
    images stay whole; a push then compresses their layers again).
    """
    store = images.store
    reclaimed = 0
    removed_layers: list[str] = []
    removed_blobs: list[str] = []
    with images_lock(store, exclusive=True):
        used = {r[0] for r in store.db.execute("SELECT DISTINCT layer_id FROM image_layers")}
        for layer in prunable_layers(store, used):
            store.remove_layer(layer.id)
            removed_layers.append(layer.id)
            reclaimed += layer.size or 0
        referenced = images.referenced_blobs()
        if layer_blobs:
            referenced -= {r[0] for r in store.db.execute(
                "SELECT DISTINCT blob FROM image_layers WHERE blob IS NOT NULL")}
        for digest in images.blobs.digests():
            if digest not in referenced:
                reclaimed += images.blobs.size(digest) or 0
                images.blobs.remove(digest)
                removed_blobs.append(digest)
        tmp = store.root / "tmp"
        for part in stale_parts(tmp):
            with contextlib.suppress(FileNotFoundError):
                reclaimed += part.stat().st_size
                part.unlink()
        for lock in _idle_locks(tmp):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
    return PruneResult(removed_layers, removed_blobs, reclaimed)


def _idle_locks(tmp: Path) -> Iterator[Path]:
    """Per-layer and per-blob lock files (one per layer or blob ever stored). Only called
    under the exclusive images lock: every holder of such a lock holds the images lock
    shared, so none is held.
    """
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(tmp):
            if (name.startswith("layer-") and name.endswith(".lock")) or name.startswith("lock-"):
                yield tmp / name
