"""The blob store: verified, atomic ingest (hostile case 31 lives here)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from streams import Zeros

from lamina.core.blobs.store import BlobStore, check_digest
from lamina.core.errors import ContentError, DigestMismatch


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_ingest_and_read_back(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    data = os.urandom(3 << 20)
    desc = blobs.ingest(io.BytesIO(data), digest=digest(data), size=len(data))
    assert desc.digest == digest(data) and desc.size == len(data)
    with blobs.open(desc.digest) as f:
        assert f.read() == data
    # ingesting the same content again is fine and changes nothing
    assert blobs.ingest(io.BytesIO(data)) == desc
    assert not any(n.startswith("ingest-") for n in os.listdir(blobs.tmp))


def test_digest_mismatch_stores_nothing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    data = b"the real content"
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        blobs.ingest(io.BytesIO(data), digest=digest(b"something else"))
    assert list(blobs.dir.iterdir()) == []
    assert not any(n.startswith("ingest-") for n in os.listdir(blobs.tmp))


def test_size_mismatch_short_and_long(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    with pytest.raises(DigestMismatch, match="declared 100 bytes, got 10"):
        blobs.ingest(io.BytesIO(b"x" * 10), size=100)
    with pytest.raises(DigestMismatch, match="got more"):
        blobs.ingest(io.BytesIO(b"x" * 1000), size=100)
    assert list(blobs.dir.iterdir()) == []


def test_endless_stream_stops_at_declared_size(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    stream = Zeros()
    with pytest.raises(DigestMismatch):
        blobs.ingest(stream, digest=digest(b""), size=1 << 20)
    assert stream.read_bytes <= (1 << 20) + 1
    assert list(blobs.dir.iterdir()) == []


@pytest.mark.parametrize(
    "bad", ["sha256:abc", "md5:" + "a" * 32, "sha256:" + "A" * 64, "sha256:../" + "a" * 61]
)
def test_malformed_digests_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ContentError, match="invalid digest"):
        check_digest(bad)
    with pytest.raises(ContentError):
        BlobStore(tmp_path).path(bad)


def test_intact_hashes_the_file_and_removes_a_damaged_one(tmp_path: Path) -> None:
    """A kept blob whose bytes changed on disk (a power loss before they were written) is
    found by its hash, whatever its size, and removed so nothing sends it on."""
    blobs = BlobStore(tmp_path)
    data = os.urandom(3 << 20)
    good = blobs.ingest(io.BytesIO(data))
    assert blobs.intact(good.digest) and blobs.intact(good.digest, good.size)
    assert not blobs.intact(good.digest, good.size + 1)  # another size: damaged, removed
    assert not blobs.has(good.digest)
    flipped = blobs.ingest(io.BytesIO(data))
    with open(blobs.path(flipped.digest), "r+b") as f:  # same size, one byte changed
        f.seek(len(data) // 2)
        f.write(bytes([data[len(data) // 2] ^ 1]))
    assert not blobs.intact(flipped.digest, flipped.size)
    assert not blobs.has(flipped.digest)
    assert not blobs.intact(flipped.digest)  # absent
