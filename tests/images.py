"""Images made locally for the tests: OCI image layouts, and skopeo to move them.

:func:`write_oci_layout` writes a real OCI image layout (``oci-layout``, ``index.json``,
``blobs/sha256/``) from layer tars: each layer compressed as asked, a config with
``rootfs.diff_ids``, ``history`` and this host's architecture and os. :func:`skopeo_copy`
copies between any two transports skopeo knows (``oci:DIR:TAG``,
``docker://HOST/REPO:TAG``, ``docker-archive:...``), without TLS checks, so that
tests can put such an image into the test registry. skopeo gzips uncompressed layers on
the way to a registry: :func:`push_layout` pushes a layout's blobs as they are, with
lamina's own client.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    None: "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
#: Python's machine names -> Go's GOARCH, as OCI configs and indexes name them
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
          "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}

Compression = Literal["gzip", "zstd"] | None


def host_architecture() -> str:
    machine = platform.machine()
    return GOARCH.get(machine, machine)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(data: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    return data


def _put_blob(layout: Path, data: bytes) -> str:
    digest = sha256(data)
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def write_oci_layout(path: Path, layers: list[bytes], *, compression: Compression = "gzip",
                     config_extra: dict[str, Any] | None = None, tag: str = "latest") -> str:
    """Write (or add to) the OCI layout at ``path``: an image of ``layers`` (tars, base
    first) tagged ``tag``; returns its manifest's digest."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    descriptors = []
    for tar in layers:
        blob = compress(tar, compression)
        descriptors.append({"mediaType": LAYER_TYPES[compression], "digest": _put_blob(path, blob),
                            "size": len(blob)})
    config: dict[str, Any] = {
        "created": "2026-01-01T00:00:00Z",
        "architecture": host_architecture(),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in layers]},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": f"lamina test layer {n}"}
                    for n in range(len(layers))],
    }
    config.update(config_extra or {})
    config_body = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": _put_blob(path, config_body),
                   "size": len(config_body)},
        "layers": descriptors,
    }
    manifest_body = json.dumps(manifest, sort_keys=True).encode()
    digest = _put_blob(path, manifest_body)
    index_path = path / "index.json"
    index = (json.loads(index_path.read_text()) if index_path.exists()
             else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    index["manifests"] = [m for m in index["manifests"]
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name")
                          != tag]
    index["manifests"].append({
        "mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest_body),
        "platform": {"architecture": host_architecture(), "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": tag}})
    index_path.write_text(json.dumps(index, sort_keys=True))
    return digest


def skopeo(*args: str, creds: str | None = None, timeout: float = 300) -> str:
    """Run skopeo (skipping the test where it is not installed); its stdout."""
    if shutil.which("skopeo") is None:
        import pytest

        pytest.skip("skopeo is not installed (.ci/setup installs it)")
    cmd = ["skopeo", "--insecure-policy", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {proc.stderr}")
    return proc.stdout


def skopeo_copy(src: str, dst: str, *, creds: str | None = None,
                extra: tuple[str, ...] = ()) -> None:
    """``skopeo copy src dst`` without TLS checks; ``creds`` (``user:password``) go to
    whichever side is a registry (``docker://``)."""
    args = ["copy", "--src-tls-verify=false", "--dest-tls-verify=false", *extra]
    if creds and src.startswith("docker://"):
        args += ["--src-creds", creds]
    if creds and dst.startswith("docker://"):
        args += ["--dest-creds", creds]
    skopeo(*args, src, dst)


def skopeo_inspect(ref: str, *, creds: str | None = None, raw: bool = False) -> Any:
    """``skopeo inspect`` of a ``docker://`` reference: its JSON (the raw manifest with ``raw``)."""
    args = ["inspect", "--tls-verify=false"]
    if creds:
        args += ["--creds", creds]
    if raw:
        args.append("--raw")
    return json.loads(skopeo(*args, ref))


def push_layout(layout: Path, host: str, repository: str, tag: str = "latest", *,
                credentials: Any = None) -> str:
    """Push the image tagged ``tag`` in ``layout`` with lamina's own client, every blob as
    it is (skopeo 1.9 gzips uncompressed layers on the way to a registry); returns the
    manifest digest."""
    from lamina.core.images.registry import Registry

    layout = Path(layout)
    index = json.loads((layout / "index.json").read_text())
    entry = next(m for m in index["manifests"]
                 if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    blobs = layout / "blobs" / "sha256"
    body = (blobs / entry["digest"].split(":", 1)[1]).read_bytes()
    manifest = json.loads(body)
    client = Registry(host, credentials=credentials)
    for desc in [manifest["config"], *manifest["layers"]]:
        if client.blob_size(repository, desc["digest"]) is None:
            with open(blobs / desc["digest"].split(":", 1)[1], "rb") as f:
                client.upload_blob(repository, desc["digest"], desc["size"], f)
    return client.put_manifest(repository, tag, entry["mediaType"], body)
