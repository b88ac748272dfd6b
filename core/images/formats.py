"""OCI and Docker image formats: media types, and parsing manifests, indexes and configs.

Everything read here comes from a registry or an archive: untrusted. Each parser
checks sizes (:data:`MAX_MANIFEST_SIZE`, :data:`MAX_CONFIG_SIZE`), JSON shape,
digest syntax and media types, and raises one :class:`ImageFormatError` that says
what is wrong, before anything is stored. Unknown fields are ignored, as the OCI
spec asks; an unknown *layer* media type is an error (we would not know how to
apply it), except the non-distributable ones, which are refused by name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ..blobs.store import DIGEST_RE
from ..errors import ImageFormatError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
#: what a pull asks a registry for, in order of preference
ACCEPTED_MANIFESTS = (*MANIFEST_TYPES, *INDEX_TYPES)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
#: layer media types we apply, and the compression each names
LAYER_TYPES = {
    OCI_LAYER: None,
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    DOCKER_LAYER: None,
    DOCKER_LAYER_GZIP: "gzip",
}
#: layers a registry must not redistribute; their URLs point elsewhere
FOREIGN_LAYER_TYPES = (
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)

#: a manifest or index larger than this is refused unread (registries cap at 4 MiB too)
MAX_MANIFEST_SIZE = 4 << 20
#: an image config larger than this is refused (real ones are kilobytes)
MAX_CONFIG_SIZE = 8 << 20
#: more layers than this is refused: no driver stacks them (overlay stops at 500)
MAX_LAYERS = 1000


class Descriptor(NamedTuple):
    """A pointer to a blob: what it is, its digest and its size."""

    media_type: str
    digest: str
    size: int
    platform: Mapping[str, Any] | None = None
    annotations: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}
        if self.platform:
            out["platform"] = dict(self.platform)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


class Manifest(NamedTuple):
    """An image manifest: one config and the layers, base first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str]


class Index(NamedTuple):
    """An image index or Docker manifest list: manifests per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]


class ImageConfig(NamedTuple):
    """The parts of an image config lamina uses; ``raw`` is all of it."""

    diff_ids: tuple[str, ...]
    os: str
    architecture: str
    variant: str | None
    created: str | None
    history: tuple[Mapping[str, Any], ...]
    raw: Mapping[str, Any]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def load_json(data: bytes, what: str, limit: int) -> dict[str, Any]:
    """Parse a JSON object of at most ``limit`` bytes; anything else is an error."""
    if len(data) > limit:
        raise ImageFormatError(f"the {what} is {len(data)} bytes, more than the {limit} allowed")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageFormatError(f"the {what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ImageFormatError(f"the {what} is not a JSON object")
    return value


def media_type_of(doc: Mapping[str, Any], declared: str | None) -> str:
    """The manifest's media type: the document's own field, else what the server said.

    An OCI manifest may omit ``mediaType``; then it is told by its fields.
    """
    inner = doc.get("mediaType")
    if inner is not None and not isinstance(inner, str):
        raise ImageFormatError("the manifest's mediaType is not a string")
    if inner:
        return inner
    if declared and declared.split(";")[0].strip() in (*MANIFEST_TYPES, *INDEX_TYPES):
        return declared.split(";")[0].strip()
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    raise ImageFormatError(
        f"unknown manifest media type {declared or '(none)'}",
        hint="lamina reads OCI image manifests and indexes and Docker schema 2 manifests "
        "and manifest lists",
    )


def parse_descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ImageFormatError(f"{where} is not a descriptor object")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ImageFormatError(f"{where} has no mediaType")
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise ImageFormatError(
            f"{where} has an invalid or unsupported digest {digest!r}",
            hint="lamina verifies sha256 digests ('sha256:' and 64 lowercase hex digits)",
        )
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ImageFormatError(f"{where} has an invalid size {size!r}")
    platform = value.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise ImageFormatError(f"{where} has an invalid platform")
    annotations = value.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())
    ):
        raise ImageFormatError(f"{where} has invalid annotations")
    return Descriptor(media_type, digest, size, platform, annotations)


def parse_manifest(data: bytes, declared: str | None = None) -> Manifest | Index:
    """Parse a manifest or an index (which one is told by its media type)."""
    doc = load_json(data, "manifest", MAX_MANIFEST_SIZE)
    media_type = media_type_of(doc, declared)
    if media_type in INDEX_TYPES:
        items = doc.get("manifests")
        if not isinstance(items, list):
            raise ImageFormatError("the image index has no manifests list")
        return Index(media_type, tuple(
            parse_descriptor(item, f"manifest {n} of the index") for n, item in enumerate(items)
        ))
    if media_type not in MANIFEST_TYPES:
        raise ImageFormatError(
            f"unknown manifest media type {media_type}",
            hint="lamina reads OCI image manifests and indexes and Docker schema 2 manifests "
            "and manifest lists (schema 1 is deprecated: push the image again with a "
            "current tool)",
        )
    if doc.get("schemaVersion") != 2:
        raise ImageFormatError(f"unsupported manifest schemaVersion {doc.get('schemaVersion')!r}")
    config = parse_descriptor(doc.get("config"), "the manifest's config")
    if config.media_type not in CONFIG_TYPES:
        raise ImageFormatError(
            f"the manifest's config has media type {config.media_type}, not an image config",
            hint="this is an artifact, not a container image",
        )
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ImageFormatError("the manifest has no layers list")
    if len(layers) > MAX_LAYERS:
        raise ImageFormatError(f"the manifest has {len(layers)} layers, more than {MAX_LAYERS}")
    parsed = tuple(parse_descriptor(item, f"layer {n}") for n, item in enumerate(layers))
    for n, layer in enumerate(parsed):
        if layer.media_type in FOREIGN_LAYER_TYPES:
            raise ImageFormatError(
                f"layer {n} is a non-distributable layer ({layer.media_type})",
                hint="lamina does not fetch layers from outside the registry",
            )
        if layer.media_type not in LAYER_TYPES:
            raise ImageFormatError(
                f"layer {n} has unknown media type {layer.media_type}",
                hint="lamina applies OCI tar, tar+gzip and tar+zstd layers and Docker's "
                "tar.gzip layers",
            )
    annotations = doc.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ImageFormatError("the manifest's annotations are not an object")
    return Manifest(media_type, config, parsed, annotations)


def parse_config(data: bytes) -> ImageConfig:
    doc = load_json(data, "image config", MAX_CONFIG_SIZE)
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ImageFormatError("the image config has no rootfs of type 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and DIGEST_RE.match(d) for d in diff_ids
    ):
        raise ImageFormatError("the image config's rootfs.diff_ids are not a list of digests")
    history = doc.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ImageFormatError("the image config's history is not a list of objects")
    os_name = doc.get("os")
    arch = doc.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        raise ImageFormatError("the image config names no os and architecture")
    variant = doc.get("variant")
    created = doc.get("created")
    return ImageConfig(
        tuple(diff_ids), os_name, arch, variant if isinstance(variant, str) else None,
        created if isinstance(created, str) else None, tuple(history), doc,
    )


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """ChainIDs of a layer stack, base first (OCI image spec, "Layer ChainID").

    ChainID(L0) = DiffID(L0); ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln)).
    Two images whose stacks begin alike share these ids, so a layer is stored once.
    """
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            chain.append(sha256_digest(f"{chain[-1]} {diff_id}".encode()))
    return chain


def layer_id(chain_id: str) -> str:
    """The store's id of the layer with this ChainID (its hex: store ids have no colon)."""
    return chain_id.removeprefix("sha256:")


def canonical_json(value: Any) -> bytes:
    """JSON as lamina writes manifests and configs: compact, keys sorted (stable digests)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
