"""``lamina pull``: an image from a registry into the store, downloading and applying at once.

The pipeline (docs/architecture.md, "Pulling"):

1. the manifest (an index picks the platform's), then the config blob, on a
   thread while the caller opens the store (:func:`resolve_meanwhile`); every check on
   them (size caps, media types, the config's diff ids against the layers) runs
   before any layer is stored. The first layer's blob is asked for meanwhile
   (:attr:`Resolved.first_blob`);
2. the missing layers' blobs download in parallel threads, started in layer order,
   each into a :class:`~.spool.Spool` file (resumed from a dead pull's part with a
   Range request);
3. the main thread applies the layers base first, each reading its spool as it
   grows: the first layer is decompressed and applied while it downloads, and
   the others have downloaded meanwhile. A layer becomes ready only once its
   blob's digest and size and its DiffID check out (:mod:`.unpack`);
4. the image is registered in one transaction once every layer is ready.

Drivers whose layers can be applied before their parent is complete could apply
in parallel too; none of the built-in drivers can (each reads the layers below
while applying: overlay's copy-up rules, vfs and btrfs start from a copy of the
parent), so layers are applied in order.

Interrupted anywhere (error, Ctrl-C, SIGKILL), nothing is registered; layers
already applied are complete and shared, the next pull skips them; a
half-downloaded blob stays as a part file for the next pull to resume.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, NamedTuple, Protocol, TypeVar

from ..errors import DigestMismatch, ImageError, ImageFormatError, LaminaError, NoSpace
from .formats import (
    ACCEPTED_MANIFESTS,
    MAX_CONFIG_SIZE,
    ImageConfig,
    Index,
    Manifest,
    chain_ids,
    layer_id,
    parse_config,
    parse_manifest,
    sha256_digest,
)
from .platform import Platform, best_match, format_platform
from .reference import Reference
from .spool import Cancelled, Spool
from .store import ImageLayer, ImageStore, short_id
from .unpack import ensure_layer, layer_ready

if TYPE_CHECKING:
    from .registry.client import BlobStream, Registry

T = TypeVar("T")


class PullEvents(Protocol):
    """What a pull reports as it goes (the CLI draws it: bars, plain lines, or nothing)."""

    def status(self, text: str) -> None: ...

    def layer(self, layer: str, status: str, total: int | None = None) -> None: ...

    def progress(self, layer: str, done: int, total: int) -> None: ...


class NoEvents:
    def status(self, text: str) -> None:
        pass

    def layer(self, layer: str, status: str, total: int | None = None) -> None:
        pass

    def progress(self, layer: str, done: int, total: int) -> None:
        pass


class PullResult(NamedTuple):
    image_id: str
    name: str  # the reference pulled, in full
    digest: str  # of the manifest (or index) the reference named
    new: bool  # whether anything was stored (False: the image was up to date)


def resolve_manifest(
    registry: Registry, ref: Reference, platform: Platform, *, explicit_platform: bool
) -> tuple[Manifest, str, bytes, str, list[tuple[str, bytes]]]:
    """The image manifest for ``platform``.

    Returns the manifest, its digest, its bytes, the digest the reference names
    (the index's, for a multi-platform image: what Docker records as RepoDigest)
    and every manifest document fetched (to keep as blobs).
    """
    fetched = registry.get_manifest(ref.repository, ref.digest or ref.tag or "latest",
                                    accept=ACCEPTED_MANIFESTS)
    top_digest = fetched.digest
    documents = [(fetched.digest, fetched.body)]
    parsed = _parse(fetched.body, fetched.media_type, ref)
    if isinstance(parsed, Index):
        chosen = best_match(platform, [d.to_json() for d in parsed.manifests])
        if chosen is None:
            entries = [dict(d.platform or {}) for d in parsed.manifests]
            offered = sorted({
                format_platform(Platform(e.get("os", "?"), e.get("architecture", "?"),
                                         e.get("variant")))
                for e in entries if e.get("os") and e.get("os") != "unknown"
            })
            raise ImageError(
                f"{ref.familiar}: no image for platform {format_platform(platform)}; "
                f"the index offers {', '.join(offered) or 'none'}",
                hint="choose one of those with --platform",
            )
        descriptor = parsed.manifests[chosen]
        fetched = registry.get_manifest(ref.repository, descriptor.digest,
                                        accept=ACCEPTED_MANIFESTS)
        if fetched.digest != descriptor.digest or len(fetched.body) != descriptor.size:
            raise DigestMismatch(
                f"{ref.familiar}: the manifest for {format_platform(platform)} does not match "
                f"the index's digest and size",
                hint="the registry serves inconsistent content; nothing was stored",
            )
        documents.append((fetched.digest, fetched.body))
        parsed = _parse(fetched.body, fetched.media_type, ref)
        if isinstance(parsed, Index):
            raise ImageFormatError(f"{ref.familiar}: an index names another index")
    return parsed, fetched.digest, fetched.body, top_digest, documents


def _parse(body: bytes, media_type: str, ref: Reference) -> Manifest | Index:
    try:
        return parse_manifest(body, media_type)
    except ImageFormatError as exc:
        raise ImageFormatError(f"{ref.familiar}: {exc.args[0]}", hint=exc.hint) from None


def fetch_config(registry: Registry, ref: Reference,
                 manifest: Manifest) -> tuple[ImageConfig, bytes]:
    """The config blob, fetched and verified (kilobytes: cheaper than opening the store first)."""
    descriptor = manifest.config
    if descriptor.size > MAX_CONFIG_SIZE:
        raise ImageFormatError(
            f"{ref.familiar}: the image config is {descriptor.size} bytes, more than the "
            f"{MAX_CONFIG_SIZE} allowed"
        )
    with registry.open_blob(ref.repository, descriptor.digest) as stream:
        parts, got = [], 0
        while got <= descriptor.size:
            chunk = stream.read(min(1 << 20, descriptor.size + 1 - got))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        data = b"".join(parts)
    if len(data) != descriptor.size or sha256_digest(data) != descriptor.digest:
        raise DigestMismatch(
            f"{ref.familiar}: the config blob does not match its digest {descriptor.digest} "
            f"and size {descriptor.size}",
            hint="the registry serves corrupt content; nothing was stored",
        )
    try:
        config = parse_config(data)
    except ImageFormatError as exc:
        raise ImageFormatError(f"{ref.familiar}: {exc.args[0]}", hint=exc.hint) from None
    if len(config.diff_ids) != len(manifest.layers):
        raise ImageFormatError(
            f"{ref.familiar}: the config lists {len(config.diff_ids)} layer diff ids but the "
            f"manifest has {len(manifest.layers)} layers"
        )
    return config, data


class Background(Generic[T]):
    """``call()`` on a thread of its own, started at once, for a result needed a little
    later: what waits on the registry while the caller does something else.

    :meth:`result` waits for the call and returns what it returned (once) or raises
    what it raised. :meth:`close` lets go without waiting: ``release`` is applied to a
    result nobody took, now or when the call ends.
    """

    def __init__(self, call: Callable[[], T], release: Callable[[T], None], *,
                 name: str) -> None:
        self._release = release
        self._lock = threading.Lock()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True, name=name)
        self._thread.start()

    def _run(self, call: Callable[[], T]) -> None:
        try:
            value = call()
        except BaseException as exc:  # raised by result()
            self._error = exc
            return
        with self._lock:
            if not self._closed:
                self._value = value
                return
        self._release(value)

    def result(self) -> T:
        self._thread.join()
        with self._lock:
            value, self._value = self._value, None
            self._closed = True
        if self._error is not None:
            raise self._error
        assert value is not None, "a result is taken once"
        return value

    def close(self) -> None:
        with self._lock:
            value, self._value = self._value, None
            self._closed = True
        if value is not None:
            self._release(value)


class Resolved(NamedTuple):
    """What the registry says the image is, fetched and checked before the store is touched."""

    ref: Reference
    manifest: Manifest
    manifest_digest: str
    #: the digest the reference names: the index's for a multi-platform image
    top_digest: str
    #: every manifest (and index) document fetched, to keep as blobs
    documents: list[tuple[str, bytes]]
    config: ImageConfig
    config_bytes: bytes
    #: the first layer's blob, asked for as soon as the manifest named it: docker-registry
    #: takes ~10 ms to answer a blob request, which came before the first byte could be
    #: applied when it was asked for only once the store was open. Left unread for that
    #: layer's download; closed unread if the layer is in the store already.
    first_blob: Background[BlobStream] | None = None

    def close(self) -> None:
        """Let go of what :func:`resolve` asked for and :func:`pull` did not use."""
        if self.first_blob is not None:
            self.first_blob.close()


def resolve(registry: Registry, ref: Reference, *, platform: Platform,
            explicit_platform: bool = False) -> Resolved:
    """Manifest and config from the registry, every check on them done; nothing stored.

    Needs no store: a registry that is down or an image that is wrong fails the
    pull before anything is stored. The first layer's blob is asked for meanwhile
    (:attr:`Resolved.first_blob`); :meth:`Resolved.close` lets go of it when the
    result is not pulled.
    """
    manifest, manifest_digest, _, top_digest, documents = resolve_manifest(
        registry, ref, platform, explicit_platform=explicit_platform
    )
    first = None
    if manifest.layers:
        digest = manifest.layers[0].digest
        first = Background(lambda: registry.open_blob(ref.repository, digest),
                           lambda stream: stream.close(), name=f"first-blob-{digest[7:19]}")
    try:
        config, config_bytes = fetch_config(registry, ref, manifest)
        if explicit_platform and (config.os, config.architecture) != (platform.os,
                                                                       platform.architecture):
            raise ImageError(
                f"{ref.familiar}: the image is for {config.os}/{config.architecture}, not "
                f"{format_platform(platform)}",
                hint="drop --platform, or pull a tag built for that platform",
            )
    except BaseException:
        if first is not None:
            first.close()
        raise
    return Resolved(ref, manifest, manifest_digest, top_digest, documents, config, config_bytes,
                    first)


def resolve_meanwhile(registry: Registry, ref: Reference, *, platform: Platform,
                      explicit_platform: bool = False) -> Background[Resolved]:
    """:func:`resolve` on a thread of its own: the registry answers while the caller
    opens the store (~20 ms of a pull's start: both mostly wait, on the registry and
    on the disk). ``close()`` the result's holder when done with it."""
    return Background(lambda: resolve(registry, ref, platform=platform,
                                      explicit_platform=explicit_platform),
                      Resolved.close, name="resolve")


def pull(
    images: ImageStore,
    registry: Registry,
    resolved: Resolved,
    *,
    keep_blobs: bool = True,
    max_downloads: int = 8,
    events: PullEvents | None = None,
) -> PullResult:
    """Store the image :func:`resolve` found; see the module docstring for the steps."""
    from .space import images_lock

    try:
        with images_lock(images.store):
            return _pull(images, registry, resolved, keep_blobs=keep_blobs,
                         max_downloads=max_downloads, events=events or NoEvents())
    finally:
        resolved.close()


def _pull(
    images: ImageStore,
    registry: Registry,
    resolved: Resolved,
    *,
    keep_blobs: bool,
    max_downloads: int,
    events: PullEvents,
) -> PullResult:
    ref, manifest, config = resolved.ref, resolved.manifest, resolved.config
    manifest_digest, top_digest = resolved.manifest_digest, resolved.top_digest
    documents, config_bytes = resolved.documents, resolved.config_bytes
    name = str(ref)
    image_id = manifest.config.digest
    chains = [layer_id(c) for c in chain_ids(config.diff_ids)]
    layers = [
        ImageLayer(chains[n], config.diff_ids[n], d.digest, d.media_type, d.size)
        for n, d in enumerate(manifest.layers)
    ]
    repository = f"{ref.registry}/{ref.repository}"
    names = [name] if ref.tag else []
    up_to_date = images.exists(image_id) and all(layer_ready(images.store, c) for c in chains)
    if up_to_date:
        # new when the name did not name this image yet (Docker's "Downloaded newer image")
        renamed = bool(names) and images.by_name(name) != image_id
        if images.by_digest(repository, top_digest) != image_id:
            # another manifest of layers stored already; the same one: no layer lines (Docker)
            for descriptor in manifest.layers:
                events.layer(short_id(descriptor.digest), "Already exists")
        _store_documents(images, documents, config_bytes, image_id)
        images.register(image_id, config, layers, manifest=manifest_digest,
                        manifest_type=manifest.media_type, names=names,
                        digests=[(repository, top_digest)])
        return PullResult(image_id, name, top_digest, new=renamed)

    missing = [n for n, c in enumerate(chains) if not layer_ready(images.store, c)]
    if all(manifest.layers[n].digest != manifest.layers[0].digest for n in missing):
        resolved.close()  # the first layer is here: its blob is not needed
    for n, descriptor in enumerate(manifest.layers):
        if n not in missing:
            events.layer(short_id(descriptor.digest), "Already exists")
    _import_tar_path()
    first = resolved.first_blob
    downloads = Downloads(images, registry, ref, manifest, missing, max_downloads, events,
                          first=(manifest.layers[0].digest, first) if first else None)
    ok = False
    full = False
    try:
        downloads.start()
        for n in missing:
            spool = downloads.spools[n]
            short = short_id(manifest.layers[n].digest)
            applied = ensure_layer(
                images.store, chains[n], chains[n - 1] if n else None, config.diff_ids[n],
                spool.reader, check=spool.wait,
                what=f"{ref.familiar}: layer {n} ({manifest.layers[n].digest})",
            )
            if applied:
                events.layer(short, "Pull complete")
            else:
                spool.cancel()
                events.layer(short, "Already exists")
        ok = True
    except NoSpace:
        full = True  # a part file would hold on to the space the user must free
        raise
    finally:
        downloads.stop(keep=keep_blobs and ok, resumable=not full)
    _store_documents(images, documents, config_bytes, image_id)
    images.register(image_id, config, layers, manifest=manifest_digest,
                    manifest_type=manifest.media_type, names=names,
                    digests=[(repository, top_digest)])
    return PullResult(image_id, name, top_digest, new=True)


def _import_tar_path() -> None:
    """Import what applying a layer needs before the download threads start.

    With downloads running, an import waits for the GIL between their chunks: the
    first layer's apply started up to 50 ms later with six of them (measured).
    """
    from ..layertar import apply, compression  # noqa: F401

    compression.inflater()


def _store_documents(images: ImageStore, documents: Sequence[tuple[str, bytes]],
                     config_bytes: bytes, image_id: str) -> None:
    """Keep the manifests (and index) and the config as blobs: push and save need them."""
    import io

    for digest, body in [*documents, (image_id, config_bytes)]:
        if not images.blobs.has(digest):
            images.blobs.ingest(io.BytesIO(body), digest=digest, size=len(body))


class Downloads:
    """The layer blobs of one pull, downloading in threads into spools."""

    def __init__(self, images: ImageStore, registry: Registry, ref: Reference,
                 manifest: Manifest, positions: Sequence[int], limit: int,
                 events: PullEvents, *,
                 first: tuple[str, Background[BlobStream]] | None = None) -> None:
        self.images = images
        self.registry = registry
        self.ref = ref
        self.events = events
        self.first = first
        tmp = images.store.root / "tmp"
        self.spools: dict[int, Spool] = {}
        for n in positions:
            d = manifest.layers[n]
            # a blob twice in one image (an empty layer repeated) downloads once
            same = next((s for s in self.spools.values() if s.digest == d.digest), None)
            self.spools[n] = same or Spool(tmp, d.digest, d.size)
        self._slots = threading.Semaphore(limit)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the downloads in layer order, each once the one before it was answered.

        The first layer's bytes are what the applier waits for: its request goes
        alone, as a registry answers slower with several requests at once (the first
        layer of six reached the applier ~45 ms later when all six were asked for at
        once). The others follow one round trip apart, so they still download in
        parallel.
        """
        seen: set[int] = set()
        previous: threading.Event | None = None
        for spool in self.spools.values():
            if id(spool) in seen:
                continue
            seen.add(id(spool))
            spool.open_for_writing()
            if spool.written == spool.size:
                spool.finish()  # a complete part file from a dead pull: verify only
                continue
            answered = threading.Event()
            thread = threading.Thread(target=self._run, args=(spool, previous, answered),
                                      daemon=True, name=f"download-{spool.hex[:12]}")
            self._threads.append(thread)
            thread.start()
            previous = answered

    def _run(self, spool: Spool, after: threading.Event | None,
             answered: threading.Event) -> None:
        short = spool.hex[:12]
        try:
            if after is not None:
                after.wait()
            with self._slots:
                if spool.cancelled:
                    raise Cancelled("not needed")
                self.events.layer(short, "Downloading", spool.size)
                self._download(spool, short, answered)
            spool.finish()
            self.events.layer(short, "Download complete")
        except BaseException as exc:  # the reader reports it; the thread just ends
            if not isinstance(exc, LaminaError):
                exc = ImageError(f"{self.ref.familiar}: downloading {spool.digest} failed: {exc}",
                                 hint="pull again: the download resumes where it stopped")
            spool.fail(exc)
        finally:
            answered.set()

    def _download(self, spool: Spool, short: str, answered: threading.Event) -> None:
        if self.first is not None and self.first[0] == spool.digest and not spool.written:
            opened = self.first[1].result()  # asked for while the store opened
        else:
            opened = self.registry.open_blob(self.ref.repository, spool.digest,
                                             offset=spool.written)
        with opened as stream:
            answered.set()
            if stream.offset != spool.written:
                spool.restart()  # the registry ignored the Range: from the start
            while spool.written < spool.size:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                spool.write(chunk)
                self.events.progress(short, spool.written, spool.size)

    def stop(self, *, keep: bool, resumable: bool = True) -> None:
        """Stop what still runs; keep verified blobs (or delete them); leave resumable parts.

        A part file stays for the next pull unless its layer turned out not to be
        needed or ``resumable`` is false (a full disk).
        """
        unneeded = {id(s) for s in self.spools.values() if s.cancelled}
        for spool in set(self.spools.values()):
            spool.cancel()
        for thread in self._threads:
            thread.join(timeout=5)
        for spool in set(self.spools.values()):
            finished = spool.done and spool.error is None
            if keep and finished:
                spool.keep(self.images.blobs)
            else:
                spool.discard(resumable=resumable and id(spool) not in unneeded)
