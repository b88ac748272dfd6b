"""``lamina load``: images from a ``docker save`` archive or an OCI layout into the store.

Formats, told by what the archive holds (:mod:`.archive` reads it, in place):

- ``manifest.json`` (a ``docker save`` archive): a list of ``{Config, RepoTags,
  Layers}``; Docker 25 writes it beside an OCI layout (``blobs/sha256/``), older
  Dockers and skopeo as ``<id>/layer.tar`` or ``<hex>.tar`` files;
- ``index.json`` (an OCI layout, in a tar or a directory): each entry a manifest,
  or an index resolved for this host's platform.

Every check that needs no layer data runs first, for every image of the
archive: paths, sizes, the manifest and config (parsed and capped as a pull
does), the config's ``diff_ids`` against the layers, the names. Only then are
layers applied, base first, each through :func:`~.unpack.ensure_layer`, so a
layer already in the store is skipped and one applied becomes ready only when
its DiffID (and, where the archive names it, its blob digest and size) checks
out. A failure removes the layers this load applied that no image uses: a bad
archive leaves the store as it was. The image is registered last, with the
layer blobs kept (``images.keep_blobs``) so that ``save`` and ``push`` send the
very bytes again.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

from ..errors import ArchiveError, ImageFormatError, LaminaError, LayerError
from .archive import Archive, clean_name
from .formats import (
    INDEX_TYPES,
    LAYER_TYPES,
    MANIFEST_TYPES,
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    ImageConfig,
    Index,
    Manifest,
    chain_ids,
    layer_id,
    parse_config,
    parse_manifest,
    sha256_digest,
)
from .platform import Platform, best_match, entry_platform, format_platform, host_platform
from .store import ImageLayer, ImageStore
from .unpack import VerifiedStream, ensure_layer, layer_ready

#: annotations naming an image in an OCI layout's index
REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"
_BLOB_PATH = re.compile(r"^blobs/sha256/([a-f0-9]{64})$")


class LayerSource(NamedTuple):
    """Where one layer's blob is in the archive, and what is known of it."""

    member: str
    digest: str | None  # named by the archive (blobs/sha256/<hex>, an OCI descriptor)
    size: int
    media_type: str | None


class Plan(NamedTuple):
    """One image of the archive, checked, before any layer is applied."""

    image_id: str
    config: ImageConfig
    config_bytes: bytes
    layers: list[LayerSource]
    names: list[str]  # full references
    manifest: bytes | None  # the archive's manifest, when its blobs are all there
    manifest_type: str | None


class Loaded(NamedTuple):
    image_id: str
    names: list[str]


def load(
    images: ImageStore,
    archive: Archive,
    *,
    default_registry: str,
    keep_blobs: bool = True,
    platform: Platform | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Loaded]:
    """Load every image of ``archive``; see the module docstring."""
    from .space import images_lock

    plans = plan_archive(archive, default_registry=default_registry,
                         platform=platform or host_platform())
    loaded = []
    with images_lock(images.store):
        for plan in plans:
            _load_one(images, archive, plan, keep_blobs=keep_blobs, progress=progress)
            loaded.append(Loaded(plan.image_id, plan.names))
    return loaded


# -- reading the archive ------------------------------------------------------------------


def plan_archive(archive: Archive, *, default_registry: str, platform: Platform) -> list[Plan]:
    """Every image of the archive, checked (module docstring); nothing is stored."""
    if archive.has("manifest.json"):
        plans = _docker_plans(archive, default_registry)
    elif archive.has("index.json"):
        plans = _oci_plans(archive, default_registry, platform)
    else:
        raise ArchiveError(
            f"{archive.description} has neither manifest.json nor index.json",
            hint="lamina loads docker save archives and OCI image layouts (tar or directory)",
        )
    if not plans:
        raise ArchiveError(f"{archive.description} holds no image")
    return plans


def _json(archive: Archive, name: str, what: str) -> Any:
    import json

    data = archive.read(name, MAX_MANIFEST_SIZE, what)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"{archive.description}: {what} is not valid JSON ({exc})") from None


def _blob(archive: Archive, digest: str, size: int | None, limit: int, what: str) -> bytes:
    """A small blob of the layout, checked against its digest (and size, when declared)."""
    name = f"blobs/sha256/{digest.removeprefix('sha256:')}"
    data = archive.read(name, limit, what)
    if size is not None and len(data) != size:
        raise ArchiveError(f"{archive.description}: {what} is {len(data)} bytes, but its "
                           f"descriptor says {size}")
    if sha256_digest(data) != digest:
        raise ArchiveError(f"{archive.description}: {what} does not match its digest {digest}")
    return data


def _config(archive: Archive, data: bytes, layer_count: int, what: str) -> ImageConfig:
    try:
        config = parse_config(data)
    except ImageFormatError as exc:
        raise ArchiveError(f"{archive.description}: {what}: {exc.args[0]}") from None
    if len(config.diff_ids) != layer_count:
        raise ArchiveError(
            f"{archive.description}: {what} lists {len(config.diff_ids)} layer diff ids but "
            f"the image has {layer_count} layers"
        )
    return config


def _name(text: Any, default_registry: str, archive: Archive) -> str:
    from .reference import parse_reference

    if not isinstance(text, str):
        raise ArchiveError(f"{archive.description} names an image with {text!r}, not a string")
    try:
        ref = parse_reference(text, default_registry=default_registry)
    except LaminaError as exc:
        raise ArchiveError(f"{archive.description} names an image {text!r}: {exc}",
                           hint="the archive is malformed; nothing was stored") from None
    if ref.digest:
        raise ArchiveError(f"{archive.description} names an image {text!r} by digest",
                           hint="an archive's names are NAME:TAG; nothing was stored")
    return str(ref)


def _docker_plans(archive: Archive, default_registry: str) -> list[Plan]:
    entries = _json(archive, "manifest.json", "manifest.json")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ArchiveError(f"{archive.description}: manifest.json is not a list of objects")
    plans = []
    for n, entry in enumerate(entries):
        where = f"{archive.description}: manifest.json entry {n}"
        config_path = clean_name(entry.get("Config"), where=f"{where} (Config)")
        layer_paths = entry.get("Layers")
        if not isinstance(layer_paths, list):
            raise ArchiveError(f"{where} has no Layers list")
        paths = [clean_name(p, where=f"{where} (Layers)") for p in layer_paths]
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list):
            raise ArchiveError(f"{where}: RepoTags is not a list")
        data = archive.read(config_path, MAX_CONFIG_SIZE, "the image config")
        named = _BLOB_PATH.match(config_path)
        if named and sha256_digest(data) != f"sha256:{named[1]}":
            raise ArchiveError(f"{where}: the config {config_path} does not match its digest")
        config = _config(archive, data, len(paths), f"the config {config_path}")
        layers = []
        for path in paths:
            blob = _BLOB_PATH.match(path)
            layers.append(LayerSource(path, f"sha256:{blob[1]}" if blob else None,
                                      archive.size(path), None))
        image_id = sha256_digest(data)
        manifest, manifest_type = _docker_manifest(archive, image_id, layers)
        if manifest is not None:
            parsed = parse_manifest(manifest)
            assert isinstance(parsed, Manifest)
            layers = [s._replace(media_type=d.media_type)
                      for s, d in zip(layers, parsed.layers, strict=True)]
        plans.append(Plan(image_id, config, data, layers,
                          [_name(t, default_registry, archive) for t in tags],
                          manifest, manifest_type))
    return plans


def _docker_manifest(archive: Archive, image_id: str,
                     layers: Sequence[LayerSource]) -> tuple[bytes | None, str | None]:
    """The manifest a Docker 25 archive keeps for this image in its OCI layout, if any
    (so that a later save or push sends the same manifest)."""
    if not archive.has("index.json") or any(s.digest is None for s in layers):
        return None, None
    try:
        index = parse_manifest(archive.read("index.json", MAX_MANIFEST_SIZE, "index.json"),
                               INDEX_TYPES[0])
        if not isinstance(index, Index):
            return None, None
        for descriptor in index.manifests:
            if descriptor.media_type not in MANIFEST_TYPES:
                continue
            body = _blob(archive, descriptor.digest, descriptor.size, MAX_MANIFEST_SIZE,
                         "a manifest")
            manifest = parse_manifest(body, descriptor.media_type)
            if (isinstance(manifest, Manifest) and manifest.config.digest == image_id
                    and [d.digest for d in manifest.layers] == [s.digest for s in layers]):
                return body, manifest.media_type
    except LaminaError:
        return None, None  # manifest.json is what Docker's own load reads: it decides
    return None, None


def _oci_plans(archive: Archive, default_registry: str, platform: Platform) -> list[Plan]:
    data = archive.read("index.json", MAX_MANIFEST_SIZE, "index.json")
    try:
        index = parse_manifest(data, INDEX_TYPES[0])
    except ImageFormatError as exc:
        raise ArchiveError(f"{archive.description}: index.json: {exc.args[0]}") from None
    if not isinstance(index, Index):
        raise ArchiveError(f"{archive.description}: index.json is not an image index")
    by_manifest: dict[str, Plan] = {}
    skipped: list[str] = []
    for n, top in enumerate(index.manifests):
        where = f"{archive.description}: index.json entry {n}"
        descriptor = top
        if top.media_type in INDEX_TYPES:
            body = _blob(archive, top.digest, top.size, MAX_MANIFEST_SIZE, f"{where} (an index)")
            inner = _parse(archive, body, top.media_type, where)
            if not isinstance(inner, Index):
                raise ArchiveError(f"{where} is not the index its media type says")
            chosen = best_match(platform, [d.to_json() for d in inner.manifests])
            if chosen is None:
                skipped.append(where)
                continue
            descriptor = inner.manifests[chosen]
        elif top.media_type not in MANIFEST_TYPES:
            continue  # not an image (an artifact, an attestation): the spec says ignore it
        elif top.platform and best_match(platform, [top.to_json()]) is None:
            found = entry_platform(top.to_json())
            skipped.append(f"{where} ({format_platform(found) if found else 'unknown'})")
            continue
        names = []
        annotations = top.annotations or {}
        if IMAGE_NAME in annotations:
            names.append(_name(annotations[IMAGE_NAME], default_registry, archive))
        elif REF_NAME in annotations and re.search(r"[:/]", annotations[REF_NAME]):
            # a bare tag ("latest") names no repository: the image is loaded by id
            names.append(_name(annotations[REF_NAME], default_registry, archive))
        known = by_manifest.get(descriptor.digest)
        if known is not None:
            known.names.extend(n for n in names if n not in known.names)
            continue
        body = _blob(archive, descriptor.digest, descriptor.size, MAX_MANIFEST_SIZE,
                     f"{where} (its manifest)")
        manifest = _parse(archive, body, descriptor.media_type, where)
        if not isinstance(manifest, Manifest):
            raise ArchiveError(f"{where}: an index names another index")
        config_bytes = _blob(archive, manifest.config.digest, manifest.config.size,
                             MAX_CONFIG_SIZE, f"{where} (its config)")
        config = _config(archive, config_bytes, len(manifest.layers), f"{where} (its config)")
        layers = []
        for d in manifest.layers:
            member = f"blobs/sha256/{d.digest.removeprefix('sha256:')}"
            size = archive.size(member)
            if size != d.size:
                raise ArchiveError(f"{where}: layer blob {d.digest} is {size} bytes, but the "
                                   f"manifest says {d.size}")
            layers.append(LayerSource(member, d.digest, d.size, d.media_type))
        by_manifest[descriptor.digest] = Plan(
            manifest.config.digest, config, config_bytes, layers, names, body,
            manifest.media_type)
    if not by_manifest and skipped:
        raise ArchiveError(
            f"{archive.description} has no image for platform {format_platform(platform)}",
            hint=f"it holds images for other platforms only: {', '.join(skipped)}",
        )
    return list(by_manifest.values())


def _parse(archive: Archive, body: bytes, media_type: str, where: str) -> Manifest | Index:
    try:
        return parse_manifest(body, media_type)
    except ImageFormatError as exc:
        raise ArchiveError(f"{where}: {exc.args[0]}") from None


# -- storing ------------------------------------------------------------------------------


def _sniff(archive: Archive, member: str) -> str:
    """The media type of a layer blob without one, by its first bytes."""
    from ..layertar.compression import GZIP_MAGIC, ZSTD_MAGIC

    with archive.open(member) as f:
        head = f.read(4)
    if head.startswith(GZIP_MAGIC):
        return OCI_LAYER_GZIP
    if head.startswith(ZSTD_MAGIC):
        return OCI_LAYER_ZSTD
    return OCI_LAYER


class _Hashing:
    """A member's stream hashed as the layer is applied: the digest of a blob the
    archive does not name (``<id>/layer.tar``), without a second read."""

    def __init__(self, stream: IO[bytes]) -> None:
        import hashlib

        self._stream = stream
        self._sha = hashlib.sha256()
        self.digest: str | None = None

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._sha.update(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def finish(self) -> str:
        while self.read(1 << 20):
            pass
        return "sha256:" + self._sha.hexdigest()

    def close(self) -> None:
        self._stream.close()


class _LayerReader:
    """Opens one layer's member for :func:`~.unpack.ensure_layer` and checks it after.

    A blob the archive names by digest is verified (unless it is a plain tar whose
    digest is its DiffID: the DiffID check is the same check); an unnamed one is
    hashed as it is applied, for the blob store.
    """

    def __init__(self, archive: Archive, source: LayerSource, plain: bool, what: str) -> None:
        self.archive = archive
        self.source = source
        self.plain = plain
        self.what = what
        self._verified: VerifiedStream | None = None
        self._hashing: _Hashing | None = None
        self.digest: str | None = None

    def open(self) -> IO[bytes]:
        stream = self.archive.open(self.source.member)
        if self.plain:
            return stream
        if self.source.digest is not None:
            self._verified = VerifiedStream(stream, self.source.digest, self.source.size,
                                            what=self.what)
            return self._verified  # type: ignore[return-value]
        self._hashing = _Hashing(stream)
        return self._hashing  # type: ignore[return-value]

    def check(self) -> None:
        """Before the stream is closed and the layer becomes ready."""
        if self._verified is not None:
            self._verified.check()
        if self._hashing is not None:
            self.digest = self._hashing.finish()


def _load_one(images: ImageStore, archive: Archive, plan: Plan, *, keep_blobs: bool,
              progress: Callable[[str], None] | None) -> None:
    store = images.store
    chains = [layer_id(c) for c in chain_ids(plan.config.diff_ids)]
    applied: list[str] = []
    layers: list[ImageLayer] = []
    ok = False
    try:
        for n, source in enumerate(plan.layers):
            what = f"{archive.description}: layer {n} ({source.member})"
            digest = source.digest
            media_type = source.media_type or _sniff(archive, source.member)
            if media_type not in LAYER_TYPES:
                raise ArchiveError(f"{what} has unknown media type {media_type}")
            # a plain tar's blob digest is its DiffID, checked as it is applied; a
            # compressed blob the archive does not name is hashed as it is applied
            if digest is None and media_type == OCI_LAYER:
                digest = plan.config.diff_ids[n]
            reader = _LayerReader(archive, source, digest == plan.config.diff_ids[n], what)
            fresh = ensure_layer(store, chains[n], chains[n - 1] if n else None,
                                 plan.config.diff_ids[n], reader.open, check=reader.check,
                                 what=what)
            if fresh:
                applied.append(chains[n])
                if progress is not None:
                    progress(f"{chains[n][:12]}: Loading layer done")
            if digest is None:  # hashed while applied, or now when the layer was here
                if reader.digest is None:
                    with archive.open(source.member) as f:
                        reader.digest = _Hashing(f).finish()
                digest = reader.digest
            if keep_blobs and not images.blobs.has(digest):
                if fresh:  # read and verified just now: copied as it is
                    _keep(images, archive, source.member, digest)
                else:  # not read (the layer was here): verified as it is stored
                    with archive.open(source.member) as f:
                        images.blobs.ingest(f, digest=digest, size=source.size)
            layers.append(ImageLayer(chains[n], plan.config.diff_ids[n], digest, media_type,
                                     source.size))
        if not images.blobs.has(plan.image_id):
            images.blobs.ingest(io.BytesIO(plan.config_bytes), digest=plan.image_id,
                                size=len(plan.config_bytes))
        manifest_digest = None
        if plan.manifest is not None:
            manifest_digest = sha256_digest(plan.manifest)
            if not images.blobs.has(manifest_digest):
                images.blobs.ingest(io.BytesIO(plan.manifest), digest=manifest_digest,
                                    size=len(plan.manifest))
        images.register(plan.image_id, plan.config, layers, manifest=manifest_digest,
                        manifest_type=plan.manifest_type if manifest_digest else None,
                        names=plan.names)
        ok = True
    finally:
        if not ok:
            _undo(images, applied)


def _keep(images: ImageStore, archive: Archive, member: str, digest: str) -> None:
    """Copy a verified layer blob into the blob store, in the kernel (no rehash)."""
    blobs = images.blobs
    blobs.tmp.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="ingest-", dir=blobs.tmp)
    try:
        try:
            archive.copy_to(member, fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        blobs.adopt(Path(name), digest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _undo(images: ImageStore, applied: Sequence[str]) -> None:
    """Remove the layers a failed load applied, top first, unless something uses them."""
    from .unpack import layer_lock

    for chain in reversed(applied):
        with layer_lock(images.store, chain):
            if images.images_using_layer(chain) or not layer_ready(images.store, chain):
                break
            try:
                images.store.remove_layer(chain)
            except LayerError:
                break  # a child (another load's next layer) stands on it: it stays, shared
