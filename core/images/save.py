"""``lamina save``: images from the store as a ``docker save`` archive or an OCI layout.

Formats:

- ``docker-archive``: Docker 25's ``docker save``: an OCI layout (``oci-layout``,
  ``index.json``, ``blobs/sha256/``) plus ``manifest.json`` (``[{Config, RepoTags,
  Layers}]``) and ``repositories``, in a tar;
- ``oci-archive``: the OCI layout in a tar; ``oci-dir``: the layout as a directory.
  Each name is an ``index.json`` entry annotated with the tag
  (``org.opencontainers.image.ref.name``) and the full name
  (``io.containerd.image.name``), as Docker and containerd write them.

A layer's bytes are its kept blob (``images.keep_blobs``) when the store has it:
the very bytes its DiffID and the manifest's digest were computed over.
Otherwise the layer is exported again (``Store.diff``) into the store's
``tmp/``; if that tar's sha256 is not the recorded DiffID (an original blob was
pruned, and the driver's export differs from it in some byte), the image is
written with a new config (the new diff ids: a new image id) and a warning
says so. The manifest written is the stored one when every blob it names is
kept and unchanged (a pulled image carries the registry's exact manifest);
otherwise an OCI manifest is made.

The tar is written as a stream: every size is known before its header is
written (blobs first prepared, exports first written), data is copied file to
file (``sendfile``), and nothing is held in memory. Metadata comes first, so a
reader of a pipe knows the images before their layers. Written to a file, the
archive appears under its name only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ContentError, ImageError, LaminaError, host_error
from .formats import (
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    MAX_MANIFEST_SIZE,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Manifest,
    canonical_json,
    parse_manifest,
    sha256_digest,
)
from .store import ImageStore

FORMATS = ("docker-archive", "oci-archive", "oci-dir")
BLOCK = 512
CHUNK = 1 << 20
#: Docker's layer media types in an OCI manifest lamina makes
_AS_OCI = {DOCKER_LAYER: OCI_LAYER, DOCKER_LAYER_GZIP: OCI_LAYER_GZIP}
REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"


@dataclass
class Blob:
    """One file of the layout: bytes in memory (small documents) or a file on disk."""

    digest: str
    size: int
    data: bytes | None = None
    path: Path | None = None


@dataclass
class SavedImage:
    image_id: str  # as written: a new id when a layer had to be exported differently
    names: list[str]  # full references
    config: Blob
    manifest: Blob
    manifest_type: str
    layers: list[Blob]
    notes: list[str] = field(default_factory=list)


def prepare(images: ImageStore, image_id: str, names: Sequence[str], tmp: Path,
            temps: list[Path], warn: Callable[[str], None]) -> SavedImage:
    """Everything of one image that the archive holds, with every digest and size known."""
    store = images.store
    stored = images.image(image_id)
    layers = images.layers(image_id)
    blobs: list[Blob] = []
    media_types: list[str] = []
    diff_ids: list[str] = []
    all_kept = True
    changed = []
    for n, layer in enumerate(layers):
        size = images.blobs.size(layer.blob) if layer.blob else None
        if layer.blob and size is not None and not images.blobs.intact(layer.blob, size):
            warn(f"{_shown(names, image_id)}: the kept blob {layer.blob} of layer {n} was "
                 "damaged on disk (its bytes no longer match its digest): removed, the "
                 "layer is exported again")
            size = None
        if layer.blob and size is not None:
            blobs.append(Blob(layer.blob, size, path=images.blobs.path(layer.blob)))
            media_types.append(layer.media_type or OCI_LAYER)
            diff_ids.append(layer.diff_id)
            continue
        all_kept = False
        blob = _export(store, layer.layer_id, tmp, temps)
        blobs.append(blob)
        media_types.append(OCI_LAYER)
        diff_ids.append(blob.digest)  # an uncompressed tar: its digest is its DiffID
        if blob.digest != layer.diff_id:
            changed.append(n)
    config_doc = images.config_json(image_id)
    with images.blobs.open(image_id) as f:
        config_bytes = f.read()
    if changed:
        config_doc["rootfs"] = {**config_doc.get("rootfs", {}), "diff_ids": diff_ids}
        config_bytes = canonical_json(config_doc)
        new_id = sha256_digest(config_bytes)
        warn(f"{_shown(names, image_id)}: layer{'s' if len(changed) > 1 else ''} "
             f"{', '.join(map(str, changed))} had to be exported again (the original blob "
             f"was pruned) and differ{'' if len(changed) > 1 else 's'} from the recorded "
             f"DiffID; the archive holds the image with a new config, id {new_id}")
        image_id = new_id
    config = Blob(image_id, len(config_bytes), data=config_bytes)
    manifest = _stored_manifest(images, stored.manifest, image_id, blobs) if all_kept else None
    if manifest is not None:
        manifest_type = stored.manifest_type or OCI_MANIFEST
    else:
        body = canonical_json({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
            "layers": [{"mediaType": _AS_OCI.get(t, t), "digest": b.digest, "size": b.size}
                       for t, b in zip(media_types, blobs, strict=True)],
        })
        manifest = Blob(sha256_digest(body), len(body), data=body)
        manifest_type = OCI_MANIFEST
    return SavedImage(image_id, list(names), config, manifest, manifest_type, blobs)


def _shown(names: Sequence[str], image_id: str) -> str:
    if names:
        from .reference import parse_reference

        return parse_reference(names[0]).familiar
    return image_id


def _stored_manifest(images: ImageStore, digest: str | None, image_id: str,
                     layers: Sequence[Blob]) -> Blob | None:
    """The manifest the image came with, if it names exactly these blobs."""
    if not digest or not images.blobs.has(digest):
        return None
    with images.blobs.open(digest) as f:
        body = f.read(MAX_MANIFEST_SIZE + 1)
    try:
        manifest = parse_manifest(body)
    except LaminaError:
        return None
    if (not isinstance(manifest, Manifest) or manifest.config.digest != image_id
            or [(d.digest, d.size) for d in manifest.layers]
            != [(b.digest, b.size) for b in layers]):
        return None
    return Blob(digest, len(body), data=body)


class HashingFile:
    """An export's temp file, hashed as the driver writes it (``save``, ``commit``)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        self.size += done
        return done

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        raise OSError("not a plain file")  # drivers must write, not splice behind the hash


def _export(store: Any, layer_id: str, tmp: Path, temps: list[Path]) -> Blob:
    tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="ingest-save-", dir=tmp)
    path = Path(name)
    temps.append(path)
    try:
        out = HashingFile(fd)
        store.diff(layer_id, out)
    finally:
        os.close(fd)
    return Blob("sha256:" + out.sha.hexdigest(), out.size, path=path)


# -- writing ------------------------------------------------------------------------------


def layout_files(saved: Sequence[SavedImage], fmt: str) -> list[tuple[str, Blob]]:
    """The archive's files in the order they are written: metadata first, then blobs."""
    import json

    from .reference import parse_reference

    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    docker: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    for image in saved:
        entry = {"mediaType": image.manifest_type, "digest": image.manifest.digest,
                 "size": image.manifest.size}
        familiar = []
        for name in image.names or [None]:
            if name is None:
                index["manifests"].append(entry)
                continue
            ref = parse_reference(name)
            familiar.append(ref.familiar)
            index["manifests"].append({**entry, "annotations": {
                IMAGE_NAME: name, REF_NAME: ref.tag or "latest"}})
            top = image.layers[-1].digest.removeprefix("sha256:") if image.layers else ""
            repositories.setdefault(ref.familiar_name, {})[ref.tag or "latest"] = top
        docker.append({"Config": _blob_path(image.config.digest), "RepoTags": familiar or None,
                       "Layers": [_blob_path(b.digest) for b in image.layers]})

    def document(value: Any) -> Blob:
        data = json.dumps(value, separators=(",", ":")).encode()
        return Blob(sha256_digest(data), len(data), data=data)

    files: list[tuple[str, Blob]] = [
        ("oci-layout", document({"imageLayoutVersion": "1.0.0"})),
        ("index.json", document(index)),
    ]
    if fmt == "docker-archive":
        files.append(("manifest.json", document(docker)))
        files.append(("repositories", document(repositories)))
    seen: set[str] = set()
    for image in saved:
        for blob in (image.manifest, image.config, *image.layers):
            if blob.digest not in seen:
                seen.add(blob.digest)
                files.append((_blob_path(blob.digest), blob))
    return files


def _blob_path(digest: str) -> str:
    return f"blobs/sha256/{digest.removeprefix('sha256:')}"


def write_tar(files: Sequence[tuple[str, Blob]], fd: int) -> None:
    """The files as a tar on ``fd``, streamed (module docstring)."""
    import tarfile

    now = int(time.time())
    written_dirs: set[str] = set()
    for name, blob in files:
        parent = name.rpartition("/")[0]
        parts = parent.split("/") if parent else []
        for n in range(len(parts)):
            directory = "/".join(parts[: n + 1]) + "/"
            if directory not in written_dirs:
                written_dirs.add(directory)
                info = tarfile.TarInfo(directory)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
                _write_all(fd, info.tobuf(format=tarfile.PAX_FORMAT))
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = blob.size, 0o644, now
        _write_all(fd, info.tobuf(format=tarfile.PAX_FORMAT))
        _write_data(fd, blob)
        if blob.size % BLOCK:
            _write_all(fd, b"\0" * (BLOCK - blob.size % BLOCK))
    _write_all(fd, b"\0" * (2 * BLOCK))


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_data(fd: int, blob: Blob) -> None:
    if blob.data is not None:
        _write_all(fd, blob.data)
        return
    assert blob.path is not None
    src = os.open(blob.path, os.O_RDONLY)
    try:
        done = 0
        while done < blob.size:
            try:
                n = os.sendfile(fd, src, done, min(blob.size - done, 1 << 30))
            except OSError as exc:
                if exc.errno not in (22, 38):  # EINVAL, ENOSYS: an fd sendfile cannot write
                    raise
                data = os.pread(src, min(CHUNK, blob.size - done), done)
                n = len(data)
                _write_all(fd, data)
            if n == 0:
                raise ContentError(f"blob {blob.digest} is shorter than its {blob.size} bytes",
                                   hint="the store was changed during the save; run it again")
            done += n
    finally:
        os.close(src)


def write_dir(files: Sequence[tuple[str, Blob]], target: Path) -> None:
    """The files as an OCI layout directory ``target`` (absent or empty), complete or absent."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ImageError(f"{target} exists and is not an empty directory",
                         hint="give a new directory for the OCI layout")
    parent = target.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    try:
        for name, blob in files:
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _write_data(fd, blob)
            finally:
                os.close(fd)
        if target.exists():
            target.rmdir()
        os.rename(tmp, target)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save(images: ImageStore, wanted: Sequence[tuple[str, Sequence[str]]], fmt: str, *,
         fd: int | None = None, directory: Path | None = None,
         warn: Callable[[str], None] = lambda text: None) -> list[SavedImage]:
    """Write the images ``wanted`` (``(image id, full names)``) as ``fmt``: a tar on
    ``fd``, or the layout directory ``directory`` (``oci-dir``)."""
    tmp = images.store.root / "tmp"
    temps: list[Path] = []
    try:
        merged: dict[str, list[str]] = {}
        for image_id, names in wanted:  # one entry per image, its names in order
            merged.setdefault(image_id, [])
            merged[image_id].extend(n for n in names if n not in merged[image_id])
        saved = [prepare(images, image_id, names, tmp, temps, warn)
                 for image_id, names in merged.items()]
        files = layout_files(saved, fmt)
        if fmt == "oci-dir":
            assert directory is not None
            try:
                write_dir(files, directory)
            except OSError as exc:
                raise host_error(exc, "write the layout", directory) from None
        else:
            assert fd is not None
            write_tar(files, fd)
        return saved
    finally:
        for path in temps:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
