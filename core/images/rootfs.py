"""``lamina import``: a plain root filesystem tarball as a one-layer image.

The layer's id must be its ChainID, which for a base layer is its DiffID: the
sha256 of the uncompressed tar, known only after reading it all. A file is
therefore read twice: once to hash it (at memory speed when it is plain; a
compressed one is inflated twice), then to apply it under its id. A pipe is
spooled into the store's ``tmp/`` first, as it cannot be read twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import host_error
from .formats import canonical_json, layer_id, parse_config, sha256_digest
from .platform import host_platform
from .space import images_lock
from .store import ImageLayer, ImageStore
from .unpack import ensure_layer

CHUNK = 1 << 20


def rfc3339(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def new_config(
    diff_ids: Sequence[str],
    history: Sequence[Mapping[str, Any]],
    *,
    created: float,
    container_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An OCI image config for this host's platform."""
    platform = host_platform()
    config: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": rfc3339(created),
        "config": dict(container_config or {}),
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [dict(h) for h in history],
    }
    if platform.variant:
        config["variant"] = platform.variant
    return config


def _diff_id(path: Path) -> str:
    from ..layertar.compression import open_layer_stream

    hasher = hashlib.sha256()
    with open(path, "rb") as raw:
        stream = open_layer_stream(raw)
        while chunk := stream.read(CHUNK):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


@contextlib.contextmanager
def _seekable(source: str, tmp: Path) -> Iterator[Path]:
    """``source`` as a path that can be read twice (``-``: stdin, spooled to ``tmp``)."""
    if source != "-":
        yield Path(source)
        return
    tmp.mkdir(mode=0o700, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="import-", dir=tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                shutil.copyfileobj(_stdin(), out, CHUNK)
            except OSError as exc:
                raise host_error(exc, "spool standard input to", name) from exc
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _stdin() -> IO[bytes]:
    import sys

    return sys.stdin.buffer


def import_rootfs(
    images: ImageStore,
    source: str,
    *,
    names: Sequence[str] = (),
    message: str = "",
    container_config: Mapping[str, Any] | None = None,
) -> str:
    """Import the tarball ``source`` (a path or ``-``) as an image; return its id."""
    store = images.store
    with images_lock(store), _seekable(source, store.root / "tmp") as path:
        try:
            diff_id = _diff_id(path)
        except OSError as exc:
            raise host_error(exc, "read", path) from exc
        now = time.time()
        history = {"created": rfc3339(now), "created_by": "lamina import",
                   **({"comment": message} if message else {})}
        config_doc = new_config([diff_id], [history], created=now,
                                container_config=container_config)
        config_bytes = canonical_json(config_doc)
        image_id = sha256_digest(config_bytes)
        chain = layer_id(diff_id)

        def open_tar() -> IO[bytes]:
            return open(path, "rb")

        ensure_layer(store, chain, None, diff_id, open_tar, what=f"the tarball {source}")
        images.blobs.ingest(io.BytesIO(config_bytes), digest=image_id, size=len(config_bytes))
        images.register(
            image_id, parse_config(config_bytes),
            [ImageLayer(chain, diff_id, None, None, None)],
            manifest=None, manifest_type=None, names=names,
        )
    return image_id

