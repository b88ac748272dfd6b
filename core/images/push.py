"""``lamina push``: an image from the store to a registry, sending only what it lacks.

The steps (also in docs/architecture.md, "Pushing"):

1. each layer's blob is found: the compressed blob a pull kept (``images.keep_blobs``)
   is sent as it is; a layer without one (not kept, ``prune --blobs`` removed it, or
   an image made here) is exported from the store (:meth:`Store.diff`) and gzip'ed into
   an anonymous temp file, hashing the tar (its DiffID) and the gzip (its digest) on
   the way;
2. upload threads take each blob as soon as it is ready: a HEAD first (the registry
   has it: ``Layer already exists``), then a cross-repository mount from a repository
   of the same registry the image came from or was pushed to (``Mounted from``), and
   only then an upload, monolithic for small blobs and in PATCH chunks for large ones;
   a transient failure of a whole upload is retried from the start of the blob;
3. the config, then the manifest under the tag.

Bytes: an image whose manifest and layer blobs are all kept is pushed bit-identical
(the same manifest digest as where it was pulled from). Otherwise the manifest is
built anew (OCI, or Docker schema 2 for an image that came as Docker) with
:func:`~.formats.canonical_json`, keeping the stored manifest's other fields.

An exported layer whose tar differs from the one the image was made from (another
tool's tar header layout, ordering) has another DiffID; the config must then list
the new DiffIDs, which makes it another image, with another id. Docker and podman
keep each layer's original tar layout (tar-split) to avoid this; lamina does not, so
such a push warns, says the registry's image id, and records nothing locally: the
local image stays exactly what it was (recording the new image would mean storing
every changed layer again under its new ChainID). Keep ``images.keep_blobs`` on to
push pulled images unchanged. When the DiffIDs match, the image is the same: the
pushed manifest becomes the image's manifest, its recompressed blobs are kept if
``keep_blobs`` says so, and ``(repository, manifest digest)`` is recorded either way
(``images --digests``, ``inspect``'s RepoDigests).

The push holds the images lock shared (:func:`~.space.images_lock`): a ``prune``
cannot delete a kept blob while it is being sent. Nothing is recorded unless the
manifest was accepted.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from ..errors import ImageError, LaminaError, RegistryAuthError, RegistryError, RegistryUnavailable
from .events import NoEvents, PullEvents
from .formats import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    canonical_json,
    parse_config,
    parse_manifest,
    sha256_digest,
)
from .reference import Reference
from .store import ImageLayer, ImageStore, short_id

if TYPE_CHECKING:
    from .registry.client import Registry

#: blobs uploaded at once (Docker's default max-concurrent-uploads is 5)
MAX_UPLOADS = 4
#: blobs larger than this go up in PATCH chunks of :data:`CHUNK_SIZE`; smaller in one PUT
CHUNKED_ABOVE = 32 << 20
CHUNK_SIZE = 16 << 20
#: attempts of one blob's whole upload when the registry keeps failing (each request is
#: already retried by the transport)
UPLOAD_ATTEMPTS = 3
#: repositories tried for a cross-repository mount of one blob (Docker tries 3)
MAX_MOUNT_SOURCES = 3
_READ = 1 << 20


class PushResult(NamedTuple):
    name: str  # registry/repository:tag pushed to
    digest: str  # of the manifest the registry now has under the tag
    size: int  # of that manifest, in bytes
    image_id: str  # the pushed image's config digest (another than the local id: see module)
    recorded: bool  # whether the push was recorded on the local image


class _Blob(NamedTuple):
    """One blob to send: its descriptor, how to read it, the name progress shows."""

    descriptor: Descriptor
    open: Callable[[], IO[bytes]]
    short: str


class _Stopped(LaminaError):
    """Another upload failed or the push was interrupted: this one stops (never shown)."""


def push(
    images: ImageStore,
    registry: Registry,
    image_id: str,
    target: Reference,
    *,
    keep_blobs: bool = True,
    events: PullEvents | None = None,
    warn: Callable[[str], None] = lambda text: None,
    what: str | None = None,
) -> PushResult:
    """Push the stored image ``image_id`` to ``target`` (registry/repository:tag).

    ``what`` names the image in errors (the text the user gave). Any registry error
    comes back as the same class with the image and destination in front.
    """
    from .space import images_lock

    if target.tag is None or target.digest is not None:
        raise ImageError(f"cannot push to {target}: the destination needs a tag, not a digest",
                         hint="give the destination as NAME[:TAG]")
    label = what or short_id(image_id)
    try:
        with images_lock(images.store):
            return _Push(images, registry, image_id, target, keep_blobs,
                         events or NoEvents(), warn).run()
    except RegistryError as exc:
        hint = exc.hint
        if isinstance(exc, RegistryAuthError):
            hint = (f"`lamina login {registry.host}` as a user that may push to "
                    f"{target.repository}")
        raise type(exc)(f"pushing {label} to {target.name}: {exc.args[0]}", hint=hint,
                        host=exc.host, status=exc.status) from None


class _Push:
    def __init__(self, images: ImageStore, registry: Registry, image_id: str,
                 target: Reference, keep_blobs: bool, events: PullEvents,
                 warn: Callable[[str], None]) -> None:
        self.images = images
        self.store = images.store
        self.registry = registry
        self.image_id = image_id
        self.target = target
        self.repository = target.repository
        self.keep_blobs = keep_blobs
        self.events = events
        self.warn = warn
        self.stop = threading.Event()
        self.mount_sources = self._mount_sources()

    # -- the whole push ---------------------------------------------------------------

    def run(self) -> PushResult:
        image = self.images.image(self.image_id)
        layers = self.images.layers(self.image_id)
        with self.images.blobs.open(self.image_id) as f:
            config_bytes = f.read()
        stored, stored_body = self._stored_manifest(image.manifest, image.manifest_type, layers)
        docker = (stored.media_type if stored else image.manifest_type) == DOCKER_MANIFEST
        for layer in layers:
            self.events.layer(short_id(layer.diff_id), "Preparing")

        exported: dict[int, tuple[IO[bytes], str]] = {}  # position -> (temp file, diff id)
        descriptors: list[Descriptor] = []
        pool = ThreadPoolExecutor(MAX_UPLOADS, thread_name_prefix="push")
        futures: dict[str, Future[None]] = {}
        try:
            for n, layer in enumerate(layers):
                if self.stop.is_set():
                    break
                kept = self._kept(stored, layer, n)
                if kept is not None:
                    blob = _Blob(kept, _opener(self.images, kept.digest),
                                 short_id(layer.diff_id))
                else:
                    temp, diff_id, descriptor = self._export(layer, docker)
                    exported[n] = (temp, diff_id)
                    blob = _Blob(descriptor, _temp_opener(temp), short_id(layer.diff_id))
                descriptors.append(blob.descriptor)
                if blob.descriptor.digest in futures:  # the same blob twice: sent once
                    futures[blob.descriptor.digest].add_done_callback(
                        lambda _, s=blob.short: self.events.layer(s, "Layer already exists"))
                    continue
                futures[blob.descriptor.digest] = pool.submit(self._send, blob, True)
                self._fail_fast(futures.values())
            self._wait(futures.values())
        except BaseException:
            self.stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

        try:
            return self._finish(image.manifest_type, stored, stored_body, config_bytes, layers,
                                descriptors, exported, docker)
        finally:
            for temp, _ in exported.values():
                temp.close()

    def _finish(self, manifest_type: str | None, stored: Manifest | None,
                stored_body: bytes | None, config_bytes: bytes, layers: Sequence[ImageLayer],
                descriptors: list[Descriptor], exported: dict[int, tuple[IO[bytes], str]],
                docker: bool) -> PushResult:
        changed_diffs = {n: d for n, (_, d) in exported.items() if d != layers[n].diff_id}
        if changed_diffs:
            doc = json.loads(config_bytes)
            doc["rootfs"]["diff_ids"] = [changed_diffs.get(n, layer.diff_id)
                                         for n, layer in enumerate(layers)]
            config_bytes = canonical_json(doc)
        config_id = sha256_digest(config_bytes)
        config_type = DOCKER_CONFIG if docker else (stored.config.media_type if stored
                                                    else OCI_CONFIG)
        config_descriptor = Descriptor(config_type, config_id, len(config_bytes))
        self._send(_Blob(config_descriptor, lambda: io.BytesIO(config_bytes), "config"), False)

        if stored is not None and stored_body is not None and not exported:
            media_type, body = stored.media_type, stored_body  # bit-identical
        else:
            media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
            doc = json.loads(stored_body) if stored_body is not None else {}
            doc.update({"schemaVersion": 2, "mediaType": media_type,
                        "config": config_descriptor.to_json(),
                        "layers": [d.to_json() for d in descriptors]})
            body = canonical_json(doc)
        digest = self.registry.put_manifest(self.repository, self.target.tag or "latest",
                                            media_type, body)
        name = str(self.target)
        if changed_diffs:
            shown = ", ".join(str(n) for n in sorted(changed_diffs))
            self.warn(
                f"layer{'s' if len(changed_diffs) > 1 else ''} {shown} of image "
                f"{short_id(self.image_id)} had no kept blob and exported differently from "
                f"the tar it was made from: {name} is image {config_id} (same files, new "
                f"layer digests), not {self.image_id}; nothing was recorded locally "
                "(keep images.keep_blobs = true to push pulled images unchanged)")
            return PushResult(name, digest, len(body), config_id, recorded=False)
        self._record(digest, media_type, body, config_bytes, layers, descriptors, exported,
                     manifest_type)
        return PushResult(name, digest, len(body), self.image_id, recorded=True)

    def _record(self, digest: str, media_type: str, body: bytes, config_bytes: bytes,
                layers: Sequence[ImageLayer], descriptors: Sequence[Descriptor],
                exported: dict[int, tuple[IO[bytes], str]], manifest_type: str | None) -> None:
        """The pushed manifest (and kept recompressed blobs) on the image; the digest pair."""
        blobs = self.images.blobs
        if self.keep_blobs:
            for n, (temp, _) in exported.items():
                d = descriptors[n]
                if not blobs.has(d.digest):
                    temp.seek(0)
                    blobs.ingest(temp, digest=d.digest, size=d.size)
        if not blobs.has(digest):
            blobs.ingest(io.BytesIO(body), digest=digest, size=len(body))
        new_layers = [layer._replace(blob=d.digest, media_type=d.media_type, blob_size=d.size)
                      for layer, d in zip(layers, descriptors, strict=True)]
        self.images.register(self.image_id, parse_config(config_bytes), new_layers,
                             manifest=digest, manifest_type=media_type,
                             digests=[(self.target.name, digest)])
        del manifest_type

    # -- where the bytes come from ----------------------------------------------------

    def _stored_manifest(self, digest: str | None, media_type: str | None,
                         layers: Sequence[ImageLayer]) -> tuple[Manifest | None, bytes | None]:
        """The manifest the image came with, if it is kept and describes this image."""
        if not digest or not self.images.blobs.has(digest):
            return None, None
        with self.images.blobs.open(digest) as f:
            body = f.read()
        try:
            parsed = parse_manifest(body, media_type)
        except LaminaError:
            return None, None
        if not isinstance(parsed, Manifest) or parsed.config.digest != self.image_id or \
                len(parsed.layers) != len(layers):
            return None, None
        return parsed, body

    def _kept(self, stored: Manifest | None, layer: ImageLayer, n: int) -> Descriptor | None:
        """The layer's compressed blob as distributed, if the store still has it."""
        if stored is not None:
            found: Descriptor | None = stored.layers[n]
        elif layer.blob and layer.media_type and layer.blob_size is not None:
            found = Descriptor(layer.media_type, layer.blob, layer.blob_size)
        else:
            found = None
        if found is None or self.images.blobs.size(found.digest) is None:
            return None
        if self.images.blobs.intact(found.digest, found.size):
            return found
        self.warn(f"the kept blob {found.digest} of layer {n} was damaged on disk (its "
                  "bytes no longer match its digest): removed, the layer is exported again")
        return None

    def _export(self, layer: ImageLayer, docker: bool) -> tuple[IO[bytes], str, Descriptor]:
        """The layer as a gzip'ed tar in an anonymous temp file (gone when closed, or
        when the process dies); its DiffID and descriptor."""
        tmp = self.store.root / "tmp"
        tmp.mkdir(mode=0o700, exist_ok=True)
        temp = tempfile.TemporaryFile(dir=tmp, prefix="push-")  # noqa: SIM115 (returned open)
        try:
            writer = _GzipWriter(temp)
            self.store.diff(layer.layer_id, writer)  # type: ignore[arg-type]
            writer.close()
        except BaseException:
            temp.close()
            raise
        media_type = DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP
        return temp, writer.diff_id, Descriptor(media_type, writer.digest, writer.size)

    # -- sending ----------------------------------------------------------------------

    def _send(self, blob: _Blob, shown: bool) -> None:
        """HEAD, else mount, else upload one blob (retrying a failed upload whole)."""
        d = blob.descriptor
        if self.registry.blob_size(self.repository, d.digest) is not None:
            if shown:
                self.events.layer(blob.short, "Layer already exists")
            return
        for source in self.mount_sources:
            if self.stop.is_set():
                raise _Stopped("stopped")
            if self.registry.mount_blob(self.repository, d.digest, source):
                if shown:
                    self.events.layer(blob.short, f"Mounted from {source}")
                return
        chunk = CHUNK_SIZE if d.size > CHUNKED_ABOVE else None
        for attempt in range(UPLOAD_ATTEMPTS):
            try:
                with contextlib.closing(blob.open()) as f:
                    reader = _Progress(f, blob.short if shown else None, d.size, self.events,
                                       self.stop)
                    self.registry.upload_blob(self.repository, d.digest, d.size, reader,
                                              chunk_size=chunk)
                break
            except RegistryUnavailable:
                if attempt == UPLOAD_ATTEMPTS - 1 or self.stop.is_set():
                    raise
                time.sleep(0.5 * 2 ** attempt)
        if shown:
            self.events.layer(blob.short, "Pushed")

    def _mount_sources(self) -> list[str]:
        """Other repositories of this registry the image is known in: where it was pulled
        from or pushed to, and its names' repositories."""
        from .reference import parse_reference
        from .registry.credentials import normalize_host

        found: list[str] = []
        known = [repo for repo, _ in self.images.digests(self.image_id)]
        with contextlib.suppress(LaminaError):
            known += [parse_reference(n).name for n in self.images.image(self.image_id).names]
        for name in known:
            host, _, repository = name.partition("/")
            if normalize_host(host) == self.registry.host and repository != self.repository \
                    and repository not in found:
                found.append(repository)
        return found[:MAX_MOUNT_SOURCES]

    def _fail_fast(self, futures: Any) -> None:
        for future in futures:
            if future.done() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]

    def _wait(self, futures: Any) -> None:
        pending = list(futures)
        while pending:
            done, not_done = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            pending = list(not_done)


def _opener(images: ImageStore, digest: str) -> Callable[[], IO[bytes]]:
    return lambda: images.blobs.open(digest)


def _temp_opener(temp: IO[bytes]) -> Callable[[], IO[bytes]]:
    """Reads of the temp file from its start; closing the reader leaves the file open."""
    def open_() -> IO[bytes]:
        temp.seek(0)
        return _Unclosed(temp)  # type: ignore[return-value]

    return open_


class _Unclosed:
    def __init__(self, f: IO[bytes]) -> None:
        self._f = f

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def close(self) -> None:
        pass


class _Progress:
    """A blob being read by an upload: reports progress, stops when the push stops."""

    def __init__(self, f: IO[bytes], short: str | None, total: int, events: PullEvents,
                 stop: threading.Event) -> None:
        self._f = f
        self._short = short
        self._total = total
        self._events = events
        self._stop = stop
        self._done = 0

    def read(self, n: int = -1) -> bytes:
        if self._stop.is_set():
            raise _Stopped("stopped")
        data = self._f.read(n)
        self._done += len(data)
        if self._short is not None:
            self._events.progress(self._short, self._done, self._total)
        return data


class _GzipWriter:
    """What a layer export writes to: hashes the tar, gzips it into ``out``, hashes that.

    gzip with no name and mtime 0, so the same layer gives the same blob each time
    on one machine (ISA-L's deflate where installed: several times zlib's speed).
    """

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._tar = hashlib.sha256()
        self._blob = hashlib.sha256()
        self.size = 0
        try:
            from isal import isal_zlib

            self._compressor: Any = isal_zlib.compressobj(
                isal_zlib.ISAL_DEFAULT_COMPRESSION, isal_zlib.DEFLATED, 31)
        except ImportError:
            import zlib

            self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31)

    def write(self, data: bytes | memoryview) -> int:
        self._tar.update(data)
        self._emit(self._compressor.compress(data))
        return len(data)

    def flush(self) -> None:
        pass

    def _emit(self, data: bytes) -> None:
        if data:
            self._blob.update(data)
            self._out.write(data)
            self.size += len(data)

    def close(self) -> None:
        self._emit(self._compressor.flush())
        self._out.flush()

    @property
    def diff_id(self) -> str:
        return "sha256:" + self._tar.hexdigest()

    @property
    def digest(self) -> str:
        return "sha256:" + self._blob.hexdigest()
