"""The distribution API client against a real ``docker-registry`` (and skopeo).

Images are made here (:mod:`images`), copied into the registry by skopeo, and read
back by :class:`lamina.core.images.registry.Registry`; what the client pushes is
inspected by skopeo. The fault tests put :mod:`faultyregistry` between the two.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from images import OCI_MANIFEST, sha256, skopeo_copy, skopeo_inspect, write_oci_layout
from tarmaker import TarBuilder

from lamina.core.errors import (
    RegistryAuthError,
    RegistryDigestMismatch,
    RegistryError,
    RegistryNotFound,
    RegistryProtocolError,
    RegistryUnavailable,
)
from lamina.core.images.registry import Credentials, Registry
from lamina.core.images.registry.auth import forget_tokens
from lamina.core.images.registry.transport import Transport

ACCEPT = (OCI_MANIFEST, "application/vnd.oci.image.index.v1+json",
          "application/vnd.docker.distribution.manifest.v2+json",
          "application/vnd.docker.distribution.manifest.list.v2+json")
#: a layer of incompressible bytes: its gzip blob is ~3 MiB, big enough to cut in the middle
BIG = os.urandom(3 << 20)


@pytest.fixture(autouse=True)
def _fresh_tokens() -> None:
    forget_tokens()


def layers() -> list[bytes]:
    base = TarBuilder().dir("etc").file("etc/hostname", b"lamina\n").bytes()
    big = TarBuilder().dir("data").file("data/random", BIG).bytes()
    return [base, big]


class Pushed:
    """An image skopeo copied into a registry: its repository, manifest and blobs."""

    def __init__(self, layout: Path, repository: str, manifest_digest: str) -> None:
        self.repository = repository
        self.manifest_digest = manifest_digest
        blobs = layout / "blobs" / "sha256"
        self.manifest = json.loads((blobs / manifest_digest.split(":")[1]).read_bytes())
        self.blob = {d["digest"]: (blobs / d["digest"].split(":")[1]).read_bytes()
                     for d in [self.manifest["config"], *self.manifest["layers"]]}
        self.big = self.manifest["layers"][1]["digest"]


def push_image(tmp: Path, registry: Any, repository: str) -> Pushed:
    layout = tmp / "layout"
    digest = write_oci_layout(layout, layers(), compression="gzip", tag="v1")
    skopeo_copy(f"oci:{layout}:v1", f"docker://{registry.host}/{repository}:v1",
                creds=registry.creds)
    return Pushed(layout, repository, digest)


@pytest.fixture(scope="module")
def image(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    return push_image(tmp_path_factory.mktemp("image"), registry, "test/app")


@pytest.fixture(scope="module")
def basic_image(basic_registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    return push_image(tmp_path_factory.mktemp("basic-image"), basic_registry, "private/app")


@pytest.fixture(scope="module")
def token_image(token_registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    return push_image(tmp_path_factory.mktemp("token-image"), token_registry, "tok/app")


def creds(registry: Any, password: str | None = None) -> Credentials:
    return Credentials(registry.username, password or registry.password)


# --- manifests -------------------------------------------------------------------------


def test_manifest_by_tag_and_by_digest(registry: Any, image: Pushed) -> None:
    client = Registry(registry.host)
    by_tag = client.get_manifest(image.repository, "v1", accept=ACCEPT)
    assert by_tag.media_type == OCI_MANIFEST
    assert by_tag.digest == image.manifest_digest == sha256(by_tag.body)
    assert json.loads(by_tag.body) == image.manifest
    by_digest = client.get_manifest(image.repository, image.manifest_digest, accept=ACCEPT)
    assert by_digest == by_tag


def test_head_manifest(registry: Any, image: Pushed) -> None:
    client = Registry(registry.host)
    head = client.head_manifest(image.repository, "v1", accept=ACCEPT)
    assert head is not None
    assert (head.media_type, head.digest, head.body) == (OCI_MANIFEST, image.manifest_digest, b"")
    assert client.head_manifest(image.repository, "nosuchtag", accept=ACCEPT) is None


def test_missing_manifest_names_repository_and_reference(registry: Any, image: Pushed) -> None:
    client = Registry(registry.host)
    with pytest.raises(RegistryNotFound) as err:
        client.get_manifest(image.repository, "nosuchtag", accept=ACCEPT)
    assert f"{image.repository}:nosuchtag" in str(err.value)
    assert registry.host in str(err.value) and err.value.hint
    with pytest.raises(RegistryNotFound, match="no/such"):
        client.get_manifest("no/such", "latest", accept=ACCEPT)


def test_manifest_over_the_cap_is_refused(registry: Any, image: Pushed) -> None:
    with pytest.raises(RegistryProtocolError, match="too large"):
        Registry(registry.host).get_manifest(image.repository, "v1", accept=ACCEPT, max_size=100)


def test_manifest_that_does_not_hash_to_its_digest(faulty: Any, image: Pushed) -> None:
    faulty.corrupt_manifests = True
    client = Registry(faulty.host)
    with pytest.raises(RegistryDigestMismatch) as err:
        client.get_manifest(image.repository, image.manifest_digest, accept=ACCEPT)
    assert image.manifest_digest in str(err.value) and faulty.host in str(err.value)
    # by tag: the registry's Docker-Content-Digest disagrees with the body
    with pytest.raises(RegistryDigestMismatch, match="said"):
        client.get_manifest(image.repository, "v1", accept=ACCEPT)


# --- blobs -------------------------------------------------------------------------------


def read_all(stream: Any, n: int = 1 << 16) -> bytes:
    parts = []
    while chunk := stream.read(n):
        parts.append(chunk)
    return b"".join(parts)


def test_blob_read_whole_and_resumed_at_an_offset(registry: Any, image: Pushed) -> None:
    client = Registry(registry.host)
    expected = image.blob[image.big]
    with client.open_blob(image.repository, image.big) as blob:
        assert (blob.offset, blob.length) == (0, len(expected))
        first = blob.read(100_000)
    assert first == expected[:100_000]
    with client.open_blob(image.repository, image.big, offset=len(first)) as rest:
        assert (rest.offset, rest.length) == (len(first), len(expected))
        assert first + read_all(rest) == expected
    assert client.blob_size(image.repository, image.big) == len(expected)
    assert client.blob_size(image.repository, "sha256:" + "0" * 64) is None
    with pytest.raises(RegistryNotFound, match="sha256:0000"):
        client.open_blob(image.repository, "sha256:" + "0" * 64)


def blob_of(size: int) -> tuple[bytes, str]:
    data = os.urandom(size)
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("chunk_size", [None, 300_000], ids=["monolithic", "chunked"])
def test_upload_then_read_back(registry: Any, chunk_size: int | None) -> None:
    client = Registry(registry.host)
    data, digest = blob_of(1_000_000)

    class OneWay(io.RawIOBase):
        """A source that can only be read forward, and records the largest read."""

        def __init__(self) -> None:
            self.inner, self.largest = io.BytesIO(data), 0

        def read(self, n: int = -1) -> bytes:
            assert n > 0, "the uploader read the whole source at once"
            self.largest = max(self.largest, n)
            return self.inner.read(n)

    source = OneWay()
    client.upload_blob("up/load", digest, len(data), source, chunk_size=chunk_size)
    assert source.largest <= (chunk_size or (1 << 20))
    assert client.blob_size("up/load", digest) == len(data)
    with client.open_blob("up/load", digest) as blob:
        assert read_all(blob) == data


def test_upload_with_a_wrong_digest_is_refused(registry: Any) -> None:
    client = Registry(registry.host)
    data, _ = blob_of(1000)
    with pytest.raises(RegistryError, match="up/bad") as err:
        client.upload_blob("up/bad", "sha256:" + "1" * 64, len(data), io.BytesIO(data))
    assert "DIGEST_INVALID" in str(err.value) or "digest" in str(err.value)
    assert client.blob_size("up/bad", "sha256:" + "1" * 64) is None


def test_cross_repository_mount(registry: Any, image: Pushed) -> None:
    client = Registry(registry.host)
    assert client.mount_blob("mounted/app", image.big, image.repository) is True
    assert client.blob_size("mounted/app", image.big) == len(image.blob[image.big])
    # a repository that lacks the blob: the registry starts an upload instead (cancelled)
    _, absent = blob_of(10)
    assert client.mount_blob("mounted/app", absent, image.repository) is False
    assert client.blob_size("mounted/app", absent) is None


def test_put_manifest_is_seen_by_skopeo(registry: Any, image: Pushed) -> None:
    client = Registry(registry.host)
    config_digest = image.manifest["config"]["digest"]
    for desc in [image.manifest["config"], *image.manifest["layers"]]:
        if not client.mount_blob("pushed/app", desc["digest"], image.repository):
            data = image.blob[desc["digest"]]
            client.upload_blob("pushed/app", desc["digest"], len(data), io.BytesIO(data))
    body = json.dumps(image.manifest, indent=1).encode()  # other bytes, so another digest
    digest = client.put_manifest("pushed/app", "v2", OCI_MANIFEST, body)
    assert digest == sha256(body)
    seen = skopeo_inspect(f"docker://{registry.host}/pushed/app:v2")
    assert seen["Digest"] == digest
    assert json.loads(json.dumps(seen["Layers"])) == [d["digest"] for d in image.manifest["layers"]]
    assert skopeo_inspect(f"docker://{registry.host}/pushed/app:v2", raw=True) == image.manifest
    assert client.get_manifest("pushed/app", digest, accept=ACCEPT).body == body
    assert "v2" in client.tags("pushed/app")
    assert config_digest in image.blob


def test_tags(registry: Any, image: Pushed) -> None:
    client = Registry(registry.host)
    for tag in ("v3", "latest"):
        client.put_manifest(image.repository, tag, OCI_MANIFEST,
                            json.dumps(image.manifest, sort_keys=True).encode())
    assert {"v1", "v3", "latest"} <= set(client.tags(image.repository))
    with pytest.raises(RegistryNotFound, match="tags of no/such"):
        client.tags("no/such")


# --- authentication ------------------------------------------------------------------------


def test_basic_auth(basic_registry: Any, basic_image: Pushed) -> None:
    client = Registry(basic_registry.host, credentials=creds(basic_registry))
    client.check_login()
    assert client.get_manifest(basic_image.repository, "v1", accept=ACCEPT).digest == \
        basic_image.manifest_digest
    with pytest.raises(RegistryAuthError) as err:
        Registry(basic_registry.host).get_manifest(basic_image.repository, "v1", accept=ACCEPT)
    assert "needs credentials" in str(err.value)
    assert f"lamina login {basic_registry.host}" in err.value.hint
    wrong = Registry(basic_registry.host, credentials=creds(basic_registry, "wrong"))
    with pytest.raises(RegistryAuthError, match="refused the credentials") as err:
        wrong.check_login()
    assert basic_registry.host in str(err.value)


def test_bearer_auth_and_token_cache(token_registry: Any, token_image: Pushed) -> None:
    server = token_registry.token_server
    client = Registry(token_registry.host, credentials=creds(token_registry))
    client.check_login()
    before = len(server.requests)
    for _ in range(3):
        assert client.get_manifest(token_image.repository, "v1", accept=ACCEPT).digest == \
            token_image.manifest_digest
    with client.open_blob(token_image.repository, token_image.big) as blob:
        assert read_all(blob) == token_image.blob[token_image.big]
    # one token for repository:tok/app:pull, reused by every request and by a new client
    again = Registry(token_registry.host, credentials=creds(token_registry))
    again.head_manifest(token_image.repository, "v1", accept=ACCEPT)
    asked = server.requests[before:]
    assert len(asked) == 1, asked
    assert asked[0]["scope"] == [f"repository:{token_image.repository}:pull"]
    assert asked[0]["service"] == ["lamina-test-registry"]


def test_bearer_token_expiry_and_access_token_key(token_registry: Any,
                                                  token_image: Pushed) -> None:
    server = token_registry.token_server
    server.expires_in, server.access_token_key = 6, True  # lives 1 s after the margin
    try:
        client = Registry(token_registry.host, credentials=creds(token_registry))
        before = len(server.requests)
        client.head_manifest(token_image.repository, "v1", accept=ACCEPT)
        client.head_manifest(token_image.repository, "v1", accept=ACCEPT)
        assert len(server.requests) - before == 1
        time.sleep(1.2)
        client.head_manifest(token_image.repository, "v1", accept=ACCEPT)
        assert len(server.requests) - before == 2
    finally:
        server.expires_in, server.access_token_key = 300, False


def test_bearer_wrong_password_and_anonymous(token_registry: Any, token_image: Pushed) -> None:
    wrong = Registry(token_registry.host, credentials=creds(token_registry, "wrong"))
    with pytest.raises(RegistryAuthError, match=r"token server .* refused the credentials") as err:
        wrong.get_manifest(token_image.repository, "v1", accept=ACCEPT)
    assert token_registry.host in str(err.value) and "lamina login" in err.value.hint
    # anonymous: the token server grants nothing, the registry refuses
    with pytest.raises(RegistryAuthError, match="needs credentials"):
        Registry(token_registry.host).get_manifest(token_image.repository, "v1", accept=ACCEPT)


def test_bearer_push(token_registry: Any, token_image: Pushed) -> None:
    client = Registry(token_registry.host, credentials=creds(token_registry))
    assert client.mount_blob("tok/other", token_image.big, token_image.repository)
    data, digest = blob_of(5000)
    client.upload_blob("tok/other", digest, len(data), io.BytesIO(data), chunk_size=2000)
    assert client.blob_size("tok/other", digest) == 5000
    assert client.tags(token_image.repository) == ["v1"]


# --- faults ----------------------------------------------------------------------------------


def test_stall_mid_blob_resumes(faulty: Any, image: Pushed) -> None:
    faulty.stall_blob_at, faulty.stall_seconds = 500_000, 3
    client = Registry(faulty.host, timeout=0.5)
    with client.open_blob(image.repository, image.big) as blob:
        assert read_all(blob) == image.blob[image.big]
        assert blob.resumes == 1
    ranges = [h.get("Range") for m, p, h in faulty.requests if "/blobs/" in p and m == "GET"]
    # resumed from the last byte handed out: the read that stalled handed out nothing
    assert ranges == [None, f"bytes={500_000 // (1 << 16) * (1 << 16)}-"]


def test_registry_that_keeps_stalling_is_an_error_not_a_hang(faulty: Any, image: Pushed) -> None:
    faulty.stall_blob_at, faulty.stall_seconds, faulty.fault_times = 200_000, 2, -1
    client = Registry(faulty.host, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable) as err, \
            client.open_blob(image.repository, image.big) as blob:
        read_all(blob)
    assert time.monotonic() - started < 20
    # each answer stalls after 200,000 bytes: progress, but the resumes run out
    assert "timed out" in str(err.value) and image.big in str(err.value)
    assert faulty.host in str(err.value) and "failed at byte" in str(err.value)


def test_connection_closed_mid_blob_resumes(faulty: Any, image: Pushed) -> None:
    faulty.cut_blob_at, faulty.fault_times = 1_000_000, 2
    with Registry(faulty.host).open_blob(image.repository, image.big) as blob:
        assert read_all(blob, 1 << 20) == image.blob[image.big]
        assert blob.resumes == 2


def test_wrong_bytes_are_passed_on_never_more_than_the_length(faulty: Any,
                                                              image: Pushed) -> None:
    faulty.corrupt_blobs = True
    with Registry(faulty.host).open_blob(image.repository, image.big) as blob:
        got = read_all(blob, 1 << 22)
    assert len(got) == len(image.blob[image.big]) and got != image.blob[image.big]


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_status_is_retried(faulty: Any, image: Pushed, status: int) -> None:
    faulty.fail_status, faulty.fail_times, faulty.retry_after = status, 2, "0"
    manifest = Registry(faulty.host).get_manifest(image.repository, "v1", accept=ACCEPT)
    assert manifest.digest == image.manifest_digest
    assert sum("/manifests/" in p for _, p, _ in faulty.requests) == 3


def test_retry_after_is_honoured(faulty: Any, image: Pushed) -> None:
    faulty.fail_status, faulty.fail_times, faulty.retry_after = 429, 1, "1"
    started = time.monotonic()
    Registry(faulty.host).head_manifest(image.repository, "v1", accept=ACCEPT)
    assert time.monotonic() - started >= 1.0


@pytest.mark.parametrize("status", [429, 500])
def test_status_that_persists_is_one_clear_error(faulty: Any, image: Pushed, status: int) -> None:
    faulty.fail_status, faulty.fail_times, faulty.retry_after = status, 100, "0"
    with pytest.raises(RegistryUnavailable) as err:
        Registry(faulty.host).get_manifest(image.repository, "v1", accept=ACCEPT)
    assert str(status) in str(err.value) and faulty.host in str(err.value)
    assert f"{image.repository}:v1" in str(err.value) and err.value.hint
    assert sum("/manifests/" in p for _, p, _ in faulty.requests) == 4


def test_blob_redirect_to_another_host_gets_no_credentials(faulty_basic: Any,
                                                           basic_registry: Any,
                                                           basic_image: Pushed) -> None:
    faulty_basic.redirect_blobs = True
    client = Registry(faulty_basic.host, credentials=creds(basic_registry))
    with client.open_blob(basic_image.repository, basic_image.big) as blob:
        first = blob.read(1000)
    with client.open_blob(basic_image.repository, basic_image.big, offset=1000) as blob:
        assert first + read_all(blob) == basic_image.blob[basic_image.big]
    assert len(faulty_basic.side.requests) == 2
    assert [auth for _, auth in faulty_basic.side.requests] == [None, None]
    assert faulty_basic.side.host.split(":")[0] in ("127.0.0.2", "127.0.0.1")
    # the registry itself did get them
    assert any(h.get("Authorization", "").startswith("Basic ")
               for _, p, h in faulty_basic.requests if "/blobs/" in p)


@pytest.mark.parametrize("header", [
    'Bearer realm="http://127.0.0.1:1/token',  # unclosed quote
    'Bearer realm="a" service="b"',  # no comma
    "Bearer service=x",  # no realm
    'Bearer realm="ftp://x/token"',  # realm not http(s)
    "",  # empty
])
def test_malformed_challenge_is_one_clear_error(faulty_basic: Any, basic_image: Pushed,
                                                header: str) -> None:
    faulty_basic.challenge = header
    with pytest.raises(RegistryProtocolError) as err:
        Registry(faulty_basic.host).get_manifest(basic_image.repository, "v1", accept=ACCEPT)
    text = str(err.value)
    assert faulty_basic.host in text, text
    assert "WWW-Authenticate" in text or "realm" in text, text
    assert err.value.hint


# --- schemes, mirrors, headers ------------------------------------------------------------------


@pytest.mark.parametrize(("host", "scheme"), [
    ("localhost:5000", "http"), ("127.0.0.1:5000", "http"), ("127.1.2.3", "http"),
    ("[::1]:5000", "http"), ("registry.example:5000", "https"), ("10.0.0.1:5000", "https"),
])
def test_plain_http_only_for_this_machine(host: str, scheme: str) -> None:
    assert Transport(host).base.startswith(f"{scheme}://")
    assert Transport("docker.io").base == "https://registry-1.docker.io"


def test_https_unless_insecure(registry: Any, image: Pushed) -> None:
    """The machine's own name is no "localhost": https, and certificate errors are clear;
    marked insecure, the plain-http registry is used."""
    name = socket.gethostname()
    try:
        socket.getaddrinfo(name, None)
    except OSError:
        pytest.skip(f"this host's name {name!r} does not resolve")
    host = f"{name}:{registry.host.rsplit(':', 1)[1]}"
    with pytest.raises(RegistryError) as err:
        Registry(host).get_manifest(image.repository, "v1", accept=ACCEPT)
    assert "TLS" in str(err.value) and "insecure = true" in err.value.hint
    manifest = Registry(host, insecure=True).get_manifest(image.repository, "v1", accept=ACCEPT)
    assert manifest.digest == image.manifest_digest


def test_mirrors_are_tried_first_and_may_fail(registry: Any, image: Pushed,
                                              faulty: Any) -> None:
    down = f"127.0.0.1:{_closed_port()}"
    via_mirror = Registry(down, mirrors=[faulty.host])
    assert via_mirror.get_manifest(image.repository, "v1", accept=ACCEPT).digest == \
        image.manifest_digest
    with via_mirror.open_blob(image.repository, image.big) as blob:
        assert read_all(blob) == image.blob[image.big]
    assert any("/blobs/" in p for _, p, _ in faulty.requests)
    # a mirror that is down, then one that lacks the image: the registry answers
    faulty.requests.clear()
    client = Registry(registry.host, mirrors=[down, f"{faulty.host}"])
    faulty.fail_status, faulty.fail_times, faulty.fail_path = 404, 100, "/v2/"
    assert client.get_manifest(image.repository, "v1", accept=ACCEPT).digest == \
        image.manifest_digest


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_user_agent(faulty: Any, image: Pushed) -> None:
    Registry(faulty.host).head_manifest(image.repository, "v1", accept=ACCEPT)
    agents = {h.get("User-Agent") for _, _, h in faulty.requests}
    assert len(agents) == 1 and agents.pop().startswith("lamina/")


def test_unreachable_registry_is_one_clear_error() -> None:
    host = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(RegistryUnavailable) as err:
        Registry(host).get_manifest("a/b", "latest", accept=ACCEPT)
    assert host in str(err.value) and "a/b:latest" in str(err.value)
    assert "4 attempts" in str(err.value) and err.value.hint


@pytest.mark.parametrize("compression", ["zstd", None])
def test_layouts_of_every_compression_reach_the_registry(registry: Any, tmp_path: Path,
                                                         compression: Any) -> None:
    """tests/images.py's layouts in the registry, layers as they are: copied by skopeo
    (which gzips uncompressed layers), or pushed by images.push_layout."""
    from images import LAYER_TYPES, push_layout

    layout = tmp_path / "layout"
    tars = layers()
    digest = write_oci_layout(layout, tars, compression=compression,
                              config_extra={"author": "lamina"}, tag="c")
    repository = f"comp/{compression or 'plain'}"
    if compression is None:
        assert push_layout(layout, registry.host, repository, "c") == digest
        assert skopeo_inspect(f"docker://{registry.host}/{repository}:c")["Digest"] == digest
    else:
        skopeo_copy(f"oci:{layout}:c", f"docker://{registry.host}/{repository}:c")
    client = Registry(registry.host)
    manifest = client.get_manifest(repository, "c", accept=ACCEPT)
    assert manifest.digest == digest
    body = json.loads(manifest.body)
    assert [d["mediaType"] for d in body["layers"]] == [LAYER_TYPES[compression]] * 2
    with client.open_blob(repository, body["config"]["digest"]) as blob:
        config = json.loads(read_all(blob))
    assert config["rootfs"]["diff_ids"] == [sha256(t) for t in tars]
    assert config["author"] == "lamina" and config["os"] == "linux"
