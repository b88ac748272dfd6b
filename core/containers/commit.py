"""``commit``: a new image whose top layer is a container's changes.

The container's writable layer stands on its image's top layer. Its changes are
exported once (:meth:`Store.diff`: the driver's native diff where it has one,
such as overlay's walk of the layer's own directory, so the cost is the size of
the change, not of the image) into a temp file under the store's ``tmp/``, hashed
as they are written: that sha256 is the new layer's DiffID. The tar is then
applied through the same path a pull or a load takes (:func:`~lamina.core.images.
unpack.ensure_layer`) as a read-only layer whose id is its ChainID and whose
parent is the image's top layer, so every image built on it shares the base's
layers. The new config is the base image's with the DiffID appended to
``rootfs.diff_ids``, a history entry (``created_by``, the ``-m`` comment, the
``-a`` author) and the ``--change`` instructions applied to its ``config``.
With ``keep_blobs`` the temp file itself becomes the layer's blob (an
uncompressed layer tar), so ``save`` and ``push`` send those very bytes.

A failure (a full disk, an interrupt) leaves the store as it was: the temp file
is deleted, a layer this commit applied is removed again, and blobs no image
references are removed. The image is recorded in the transaction that makes its
new layer ready: a SIGKILL leaves the whole image or no image and an incomplete
layer that the next command removes, at most blobs no image references, which
``prune`` removes, and a temp file the next ingest sweeps.

The caller (``lamina commit``) pauses or stops the container first: a layer
written while it is exported gives a tar of some moment in between.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from ..errors import ContainerError, LaminaError, host_error
from ..images.formats import (
    OCI_LAYER,
    canonical_json,
    chain_ids,
    parse_config,
    sha256_digest,
)
from ..images.formats import layer_id as store_id
from ..images.instructions import apply_changes
from ..images.rootfs import history_entry, rfc3339
from ..images.save import HashingFile
from ..images.space import images_lock
from ..images.store import ImageLayer, ImageStore, is_init_layer
from ..images.unpack import ensure_layer
from ..layers.store import Store

#: keys of the base config that describe the container the base was made in, not this one
_BASE_ONLY = ("container", "container_config", "author")


def commit(
    store: Store,
    images: ImageStore,
    *,
    layer_id: str,
    base_image_id: str,
    created_by: str,
    comment: str | None = None,
    author: str | None = None,
    changes: Sequence[str] = (),
    names: Sequence[str] = (),
    keep_blobs: bool = True,
) -> str:
    """Make an image of ``base_image_id`` plus the changes of the writable ``layer_id``.

    ``layer_id`` must be a ready writable layer on the image's top layer, or on the
    init layer of a container on it (core/containers/store.py): its own changes are
    committed, the init layer's mount points are not. ``names`` are full references
    (``registry/repository:tag``) the new image gets. ``changes`` are Dockerfile
    instructions for its config
    (:func:`~lamina.core.images.instructions.apply_changes`), checked before any work.
    Returns the new image's id (``sha256:<hex>``).
    """
    image = images.image(base_image_id)
    container_layer = store.layer(layer_id)
    parent = container_layer.parent
    if parent is not None:
        grandparent = store.layer(parent).parent
        if is_init_layer(parent, grandparent):  # a container's: not its mount points
            parent = grandparent
    if not container_layer.writable or parent != image.top_layer:
        raise ContainerError(
            f"layer {layer_id} is not a container's writable layer on image {base_image_id}",
            hint="commit a container of that image",
        )
    base_config = images.config(base_image_id)
    base = dict(base_config.raw)
    container_config = apply_changes(base.get("config") or {}, changes, command="commit")
    tmp = store.root / "tmp"
    tmp.mkdir(mode=0o700, exist_ok=True)
    with images_lock(store):
        fd, name = tempfile.mkstemp(prefix="ingest-commit-", dir=tmp)
        path = Path(name)
        try:
            diff_id, size = export_changes(store, layer_id, fd, path)
            now = time.time()
            doc = {key: value for key, value in base.items() if key not in _BASE_ONLY}
            doc["created"] = rfc3339(now)
            if author:
                doc["author"] = author
            doc["config"] = container_config
            doc["rootfs"] = {"type": "layers", "diff_ids": [*base_config.diff_ids, diff_id]}
            doc["history"] = [*base_config.history, history_entry(
                now, created_by, comment=comment, author=author)]
            config_bytes = canonical_json(doc)
            top = layer_id_of(base_config.diff_ids, diff_id)
            layers = [*images.layers(base_image_id),
                      ImageLayer(top, diff_id, diff_id, OCI_LAYER, size)]
            return _register(store, images, path, top, image.top_layer, config_bytes, layers,
                             names=names, keep_blobs=keep_blobs)
        finally:
            path.unlink(missing_ok=True)  # adopted as the blob, it is gone already


def layer_id_of(base_diff_ids: Sequence[str], diff_id: str) -> str:
    """The store id of the layer ``diff_id`` on a stack: the hex of its ChainID."""
    return store_id(chain_ids([*base_diff_ids, diff_id])[-1])


def export_changes(store: Store, source: str, fd: int, path: Path) -> tuple[str, int]:
    """Write the layer's changes to ``fd`` (closed here); return its DiffID and size."""
    try:
        out = HashingFile(fd)
        try:
            store.diff(source, out)  # type: ignore[arg-type]
        except OSError as exc:
            raise host_error(exc, "write the container's changes to", path) from exc
    finally:
        os.close(fd)
    return "sha256:" + out.sha.hexdigest(), out.size


def _register(
    store: Store,
    images: ImageStore,
    path: Path,
    top: str,
    parent: str | None,
    config_bytes: bytes,
    layers: list[ImageLayer],
    *,
    names: Sequence[str],
    keep_blobs: bool,
) -> str:
    """Apply the tar at ``path`` as layer ``top`` and record the image; undo both on failure.

    The blobs go first; the image is recorded in the transaction that makes its new
    layer ready, so that a commit killed in between leaves no layer that no image
    uses (it did: only ``prune`` removed it), at most blobs that ``prune`` removes.
    """
    diff_id = layers[-1].diff_id
    image_id = sha256_digest(config_bytes)
    config = parse_config(config_bytes)
    added: list[str] = []
    source = path
    try:
        if keep_blobs and not images.blobs.has(diff_id):
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            images.blobs.adopt(path, diff_id)  # the exported tar becomes the blob: no copy
            added.append(diff_id)
            source = images.blobs.path(diff_id)
        if not images.blobs.has(image_id):
            images.blobs.ingest(io.BytesIO(config_bytes), digest=image_id,
                                size=len(config_bytes))
            added.append(image_id)

        def record(_db: object) -> None:
            images.record(image_id, config, layers, manifest=None, manifest_type=None,
                          names=names)

        def open_tar() -> IO[bytes]:
            return open(source, "rb")

        if not ensure_layer(store, top, parent, diff_id, open_tar,
                            what="the container's changes", record=record):
            # the layer was there already (an image of the same changes)
            images.register(image_id, config, layers, manifest=None, manifest_type=None,
                            names=names)
    except BaseException:
        _undo(images, added)  # a layer applied here went with its failed transaction
        raise
    return image_id


def _undo(images: ImageStore, blobs: list[str]) -> None:
    """Remove the blobs a failed commit added that no image uses (best effort: the first
    error is the one the user sees; ``prune`` takes what is left)."""
    with contextlib.suppress(LaminaError, OSError):
        used = images.referenced_blobs()
        for digest in blobs:
            if digest not in used:
                images.blobs.remove(digest)
