"""What the registry says an image is: the manifest for a platform and the config, checked.

Runs in a pull's fetcher (:mod:`.fetcher`): nothing here touches the store, so a
registry that refuses the image, or an image that is wrong, fails the pull before
anything is stored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from ..errors import DigestMismatch, ImageError, ImageFormatError
from .formats import (
    ACCEPTED_MANIFESTS,
    MAX_CONFIG_SIZE,
    ImageConfig,
    Index,
    Manifest,
    parse_config,
    parse_manifest,
    sha256_digest,
)
from .platform import Platform, best_match, format_platform
from .reference import Reference

if TYPE_CHECKING:
    from ..blobs.store import BlobStore
    from .registry.client import BlobStream, Registry

T = TypeVar("T")


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

    def store_documents(self, blobs: BlobStore) -> None:
        """Keep the manifests (and index) and the config as blobs, those not there yet:
        push and save need them. Each is fsynced (:meth:`BlobStore.ingest`)."""
        import io

        for digest, body in [*self.documents, (self.manifest.config.digest,
                                               self.config_bytes)]:
            if not blobs.has(digest):
                blobs.ingest(io.BytesIO(body), digest=digest, size=len(body))


def resolve(registry: Registry, ref: Reference, *, platform: Platform,
            explicit_platform: bool = False,
            ask_first: Callable[[str], bool] = lambda digest: True) -> Resolved:
    """Manifest and config from the registry, every check on them done; nothing stored.

    Needs no store: a registry that is down or an image that is wrong fails the
    pull before anything is stored. The first layer's blob is asked for meanwhile
    (:attr:`Resolved.first_blob`) if ``ask_first(digest)`` says so (not when a dead
    pull left part of it: that is asked for from where it stopped);
    :meth:`Resolved.close` lets go of it when the result is not pulled.
    """
    manifest, manifest_digest, _, top_digest, documents = resolve_manifest(
        registry, ref, platform, explicit_platform=explicit_platform
    )
    first = None
    if manifest.layers and ask_first(manifest.layers[0].digest):
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
