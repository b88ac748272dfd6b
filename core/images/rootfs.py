"""``lamina import``: a plain root filesystem tarball as a one-layer image.

The layer's id must be its ChainID, which for a base layer is its DiffID: the
sha256 of the uncompressed tar, known only after reading it all. A file is
therefore read twice: once to hash it (at memory speed when it is plain; a
compressed one is inflated twice), then to apply it under its id. A pipe is
spooled into the store's ``tmp/`` first, as it cannot be read twice.

With ``keep_blobs`` the tarball itself is kept as the layer's blob (media type
by its sniffed compression), so that ``save`` and ``push`` send the very bytes
its DiffID was computed over: a file is first copied into ``tmp/`` (in the
kernel; a reflink where the filesystem can), and that copy, hashed, applied and
moved into the blob store, is the only one.
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
from typing import IO, Any, NamedTuple

from ..errors import host_error
from .formats import (
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    canonical_json,
    layer_id,
    parse_config,
    sha256_digest,
)
from .platform import host_platform
from .space import images_lock
from .store import ImageLayer, ImageStore
from .unpack import ensure_layer

CHUNK = 1 << 20


def rfc3339(stamp: float) -> str:
    """Go's RFC3339Nano, as Docker writes image times: the fraction (to the microsecond a
    float holds) without its trailing zeros, none for a whole second (``--timestamp``),
    so that images made within one second still sort by time."""
    micros = round(stamp * 1_000_000)
    seconds, fraction = divmod(micros, 1_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{fraction:06d}".rstrip("0").rstrip(".") + "Z"


def history_entry(
    created: float, created_by: str, *, comment: str | None = None, author: str | None = None
) -> dict[str, Any]:
    """One entry of a config's ``history``, for a layer made here (import, commit)."""
    entry: dict[str, Any] = {"created": rfc3339(created), "created_by": created_by}
    if author:
        entry["author"] = author
    if comment:
        entry["comment"] = comment
    return entry


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


class Digests(NamedTuple):
    diff_id: str  # of the uncompressed tar
    blob: str  # of the file as it is
    size: int
    media_type: str  # of the file, by its sniffed compression


def _digests(path: Path) -> Digests:
    from ..layertar.compression import GZIP_MAGIC, ZSTD_MAGIC, open_layer_stream

    with open(path, "rb") as raw:
        head = raw.read(4)
        raw.seek(0)
        size = os.fstat(raw.fileno()).st_size
        if not head.startswith((GZIP_MAGIC, ZSTD_MAGIC)):
            hasher = hashlib.sha256()
            while chunk := raw.read(CHUNK):
                hasher.update(chunk)
            digest = "sha256:" + hasher.hexdigest()
            return Digests(digest, digest, size, OCI_LAYER)
        counted = _Hashed(raw)
        stream = open_layer_stream(counted)  # type: ignore[arg-type]
        hasher = hashlib.sha256()
        while chunk := stream.read(CHUNK):
            hasher.update(chunk)
        while counted.read(CHUNK):  # what follows the compressed stream is the blob's too
            pass
    media_type = OCI_LAYER_GZIP if head.startswith(GZIP_MAGIC) else OCI_LAYER_ZSTD
    return Digests("sha256:" + hasher.hexdigest(), "sha256:" + counted.sha.hexdigest(), size,
                   media_type)


class _Hashed:
    """A file read through a hash (no ``fileno``: the decoder must read, not map)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.sha.update(data)
        return data


@contextlib.contextmanager
def _seekable(source: str, tmp: Path, *, copy: bool) -> Iterator[tuple[Path, bool]]:
    """``source`` as a path that can be read twice, and whether it is a copy of ours
    (``-``: stdin, spooled to ``tmp``; a file with ``copy``: copied there)."""
    if source != "-" and not copy:
        yield Path(source), False
        return
    tmp.mkdir(mode=0o700, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="ingest-import-", dir=tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                if source == "-":
                    shutil.copyfileobj(_stdin(), out, CHUNK)
                else:
                    with open(source, "rb") as src:
                        _copy_file(src.fileno(), out.fileno())
            except OSError as exc:
                if exc.filename is None and source != "-" and not os.path.exists(source):
                    raise host_error(exc, "read", source) from exc
                raise host_error(exc, "copy the tarball to", name) from exc
        yield Path(name), True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _copy_file(src: int, dst: int) -> None:
    """In the kernel: ``copy_file_range`` (a reflink where the filesystem can)."""
    size = os.fstat(src).st_size
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, size - done)
        except OSError:
            n = 0
        if n == 0:
            data = os.read(src, CHUNK)
            if not data:
                break
            n = os.write(dst, data)
        done += n


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
    keep_blobs: bool = False,
) -> str:
    """Import the tarball ``source`` (a path or ``-``) as an image; return its id."""
    store = images.store
    with images_lock(store), _seekable(source, store.root / "tmp", copy=keep_blobs) as (
        path, ours
    ):
        try:
            digests = _digests(path)
        except OSError as exc:
            raise host_error(exc, "read", source if not ours else path) from exc
        diff_id = digests.diff_id
        now = time.time()
        history = history_entry(now, "lamina import", comment=message)
        config_doc = new_config([diff_id], [history], created=now,
                                container_config=container_config)
        config_bytes = canonical_json(config_doc)
        image_id = sha256_digest(config_bytes)
        chain = layer_id(diff_id)

        def open_tar() -> IO[bytes]:
            return open(path, "rb")

        ensure_layer(store, chain, None, diff_id, open_tar, what=f"the tarball {source}")
        if keep_blobs and not images.blobs.has(digests.blob):
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            images.blobs.adopt(path, digests.blob)  # the copy becomes the blob: no other
        images.blobs.ingest(io.BytesIO(config_bytes), digest=image_id, size=len(config_bytes))
        images.register(
            image_id, parse_config(config_bytes),
            [ImageLayer(chain, diff_id, digests.blob, digests.media_type, digests.size)],
            manifest=None, manifest_type=None, names=names,
        )
    return image_id
