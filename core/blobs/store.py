"""The content-addressed blob store: ``blobs/sha256/<hex>``.

A blob becomes visible only complete and verified: it is written to a temp
file in the same filesystem, fsynced, checked against the declared size and
digest, then renamed into place and the directory fsynced. A crash leaves at
most a temp file, which the next ingest sweeps. Reading stops at the declared
size, so an endless stream cannot fill the disk.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import IO, NamedTuple

from ..errors import ContentError, DigestMismatch
from ..host.locks import FileLock

DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
CHUNK = 1 << 20
#: temp files older than this are debris of a crashed ingest
STALE_TEMP_SECONDS = 3600


class Descriptor(NamedTuple):
    """A blob's identity: ``sha256:<hex>`` and its size in bytes (a cheap named tuple)."""

    digest: str
    size: int


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is a well-formed sha256 digest, else raise ContentError."""
    if not DIGEST_RE.match(digest):
        raise ContentError(
            f"invalid digest {digest!r}",
            hint="a digest is 'sha256:' followed by 64 lowercase hex digits",
        )
    return digest


class BlobStore:
    """Blobs under ``<root>/blobs/sha256``; temp files under ``<root>/tmp``."""

    def __init__(self, root: Path) -> None:
        # the directories are made by the first ingest: opening a store to read
        # must create nothing under its root
        self.dir = root / "blobs" / "sha256"
        self.tmp = root / "tmp"

    def path(self, digest: str) -> Path:
        return self.dir / check_digest(digest).removeprefix("sha256:")

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def open(self, digest: str) -> IO[bytes]:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise ContentError(f"blob {digest} is not in the store") from None

    def ingest(
        self,
        stream: IO[bytes],
        *,
        digest: str | None = None,
        size: int | None = None,
    ) -> Descriptor:
        """Copy ``stream`` into the store, verifying ``digest``/``size`` if declared.

        With a declared size, at most ``size + 1`` bytes are read: more is an
        error found without reading the rest. A mismatch raises
        :class:`DigestMismatch` and stores nothing. Ingesting a blob that is
        already present is allowed and returns the same descriptor.
        """
        import tempfile  # ~3 ms with shutil and random: for an ingest, not every open store

        if digest is not None:
            check_digest(digest)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._sweep()
        import hashlib  # ~3 ms (OpenSSL's start): for an ingest, not every open store

        hasher = hashlib.sha256()
        written = 0
        fd, tmp_name = tempfile.mkstemp(prefix="ingest-", dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                limit = None if size is None else size + 1
                while True:
                    want = CHUNK if limit is None else min(CHUNK, limit - written)
                    if want <= 0:
                        break
                    chunk = stream.read(want)
                    if not chunk:
                        break
                    hasher.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            actual = "sha256:" + hasher.hexdigest()
            if size is not None and written != size:
                raise DigestMismatch(
                    f"blob size mismatch: declared {size} bytes, got "
                    f"{'more' if written > size else written}",
                    hint="the source is corrupt or was changed; nothing was stored",
                )
            if digest is not None and actual != digest:
                raise DigestMismatch(
                    f"blob digest mismatch: declared {digest}, got {actual}",
                    hint="the source is corrupt or was changed; nothing was stored",
                )
            target = self.path(actual)
            with self._lock(actual):
                os.chmod(tmp_name, 0o644)
                os.replace(tmp_name, target)
                _fsync_dir(self.dir)
            return Descriptor(actual, written)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    def adopt(self, path: Path, digest: str) -> None:
        """Move the file ``path``, already verified to hash to ``digest``, into the store.

        For a file written and hashed elsewhere (a download spool): no second
        read. ``path`` must be on the store's filesystem (under ``tmp/``). Neither
        the bytes nor the rename are fsynced: after a power loss the blob may be
        missing or hold less than its digest says, which :meth:`intact` finds in
        both cases. (An fsync of the directory committed the filesystem's journal
        with all a pull had just applied: ~5 ms at the end of every pull, for
        nothing a reader could rely on.)
        """
        check_digest(digest)
        self.dir.mkdir(parents=True, exist_ok=True)
        target = self.path(digest)
        with self._lock(digest):
            os.chmod(path, 0o644)
            os.replace(path, target)

    def intact(self, digest: str, size: int | None = None) -> bool:
        """Whether the stored blob still has ``size`` bytes that hash to its name.

        A damaged blob is removed and False returned (as for one not here). A pull's
        blob is moved in without an fsync (:meth:`adopt`; of its bytes, that would cost
        every pull tens of ms), so after a power loss a file can stand under a digest
        its bytes lack, or be gone: whatever sends a kept blob on as it is (push, save)
        asks here first and, on False, makes the layer's tar again from the layer store.
        """
        import hashlib

        path = self.path(digest)
        hasher = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                if size is not None and os.fstat(f.fileno()).st_size != size:
                    good = False
                else:
                    while chunk := f.read(CHUNK):
                        hasher.update(chunk)
                    good = "sha256:" + hasher.hexdigest() == digest
        except FileNotFoundError:
            return False
        if not good:
            self.remove(digest)
        return good

    def size(self, digest: str) -> int | None:
        """The stored blob's size, or None if it is not here."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def digests(self) -> list[str]:
        """Every stored blob's digest."""
        try:
            return [f"sha256:{name}" for name in os.listdir(self.dir) if DIGEST_RE.match(
                f"sha256:{name}")]
        except FileNotFoundError:
            return []

    def remove(self, digest: str) -> None:
        with self._lock(digest):
            self.path(digest).unlink(missing_ok=True)

    def _lock(self, digest: str) -> FileLock:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return FileLock(self.tmp / f"lock-{digest.removeprefix('sha256:')}")

    def _sweep(self) -> None:
        now = time.time()
        for entry in os.scandir(self.tmp):
            if entry.name.startswith("ingest-"):
                try:
                    if now - entry.stat().st_mtime > STALE_TEMP_SECONDS:
                        os.unlink(entry.path)
                except FileNotFoundError:
                    pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
