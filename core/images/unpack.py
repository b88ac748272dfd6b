"""Putting an image's layers into the store, each once, whoever else is at it.

A layer's id is its ChainID (:func:`~.formats.chain_ids`), so "is it here?" is one
lookup, and two images (or two pulls) that share a base share its layers. Each
layer is applied under a lock file of its own (``<root>/tmp/layer-<id>.lock``):
a second process pulling the same image waits for the first to finish that
layer, then finds it ready and skips it. Locks are taken base first, and every
stack of ChainIDs is a path in one tree, so two processes never wait on each
other in a circle.

A layer becomes ready only when its content checks out: the blob's digest and
size (checked as it streams) and the tar's DiffID against the image config.
Anything else removes it again (:meth:`Store.apply_layer`'s ``verify``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from ..driver import ApplyResult
from ..errors import DigestMismatch, ImageFormatError, LayerNotFound
from ..host.locks import FileLock
from ..layers.store import Store

if TYPE_CHECKING:
    import sqlite3

CHUNK = 1 << 20


def layer_ready(store: Store, layer_id: str) -> bool:
    try:
        return store.layer(layer_id).state == "ready"
    except LayerNotFound:
        return False


def layer_lock(store: Store, layer_id: str) -> FileLock:
    tmp = store.root / "tmp"
    tmp.mkdir(mode=0o700, exist_ok=True)
    return FileLock(tmp / f"layer-{layer_id}.lock")


def ensure_layer(
    store: Store,
    layer_id: str,
    parent: str | None,
    diff_id: str,
    open_stream: Callable[[], IO[bytes]],
    *,
    check: Callable[[], None] | None = None,
    what: str = "layer",
    record: Callable[[sqlite3.Connection], None] | None = None,
) -> bool:
    """Apply the layer unless it is in the store already; return whether it was applied.

    ``open_stream`` is called only when the layer must be applied; ``check`` runs
    after the tar was applied, before the layer may become ready (the blob's
    digest verdict). ``what`` names the layer in errors ("layer 3 of busybox").
    ``record`` runs in the transaction that makes the applied layer ready
    (:meth:`Store.apply_layer`); not at all when the layer was there already.
    """
    with layer_lock(store, layer_id):
        if layer_ready(store, layer_id):
            return False

        def verify(result: ApplyResult) -> None:
            if check is not None:
                check()
            if result.diff_id != diff_id:
                raise ImageFormatError(
                    f"{what}: its content has diff id {result.diff_id}, but the image config "
                    f"says {diff_id}",
                )

        stream = open_stream()
        try:
            store.apply_layer(stream, parent, layer_id=layer_id, verify=verify, record=record)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        return True


class VerifiedStream:
    """A blob stream hashed and counted as it is read, for sources that are not spooled.

    :meth:`check` reads what the consumer left (padding after a tar's end) and
    raises :class:`DigestMismatch` unless exactly ``size`` bytes hashing to
    ``digest`` came through. Never reads more than ``size + 1`` bytes.
    """

    def __init__(self, stream: IO[bytes], digest: str, size: int, *, what: str = "blob") -> None:
        self._stream = stream
        self.digest = digest
        self.size = size
        self.what = what
        self._hasher = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        limit = self.size + 1 - self.count
        if limit <= 0:
            return b""
        data = self._stream.read(limit if n is None or n < 0 else min(n, limit))
        self._hasher.update(data)
        self.count += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def check(self) -> None:
        while self.read(CHUNK):
            pass
        if self.count != self.size:
            raise DigestMismatch(
                f"{self.what} is {'larger' if self.count > self.size else 'smaller'} than the "
                f"{self.size} bytes its manifest declares",
                hint="the source is corrupt or truncated; nothing was stored",
            )
        actual = "sha256:" + self._hasher.hexdigest()
        if actual != self.digest:
            raise DigestMismatch(
                f"{self.what} does not match its digest {self.digest} (got {actual})",
                hint="the source is corrupt; nothing was stored",
            )

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()
