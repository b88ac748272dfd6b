"""``lamina push`` against a real ``docker-registry``, with skopeo and umoci as the referees.

Images are made here (busybox-static plus layers with whiteouts, hardlinks, odd modes),
put into the registry with skopeo, pulled with the real CLI, then pushed back with it.
skopeo reads what lamina pushed: the bytes of manifests, configs and blobs are compared
with the originals, trees with umoci's unpack. The fault-injecting proxy
(tests/faultyregistry.py) records every request, so "uploads nothing" is checked on the
wire.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import needs_root, run_lamina
from images import skopeo_copy, skopeo_inspect, write_oci_layout
from test_pull import image_layers

from lamina.conformance.trees import compare, snapshot

pytestmark = [needs_root]


def lamina(root: Path, *args: str, env: dict[str, str] | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    proc = run_lamina(*args, root=root, env=env, check=check)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode())


@pytest.fixture(scope="module")
def layout(busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout with the three-layer test image as ``oci`` (OCI, gzip)."""
    path = tmp_path_factory.mktemp("push-layout") / "oci"
    write_oci_layout(path, image_layers(busybox_tar.read_bytes()), tag="oci")
    return path


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def copied_out(tmp_path: Path, reference: str, creds: str | None = None
               ) -> tuple[Path, str, bytes]:
    """skopeo's copy of ``reference`` to an OCI layout: (layout, manifest digest, manifest)."""
    out = tmp_path / f"out-{hashlib.sha256(reference.encode()).hexdigest()[:8]}"
    skopeo_copy(f"docker://{reference}", f"oci:{out}:x", creds=creds)
    index = json.loads((out / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    return out, digest, blob(out, digest)


def raw_manifest(host: str, repository: str, tag: str) -> tuple[bytes, str]:
    """The registry's own bytes of a manifest (skopeo's copy converts Docker's to OCI) and
    the digest it says they have."""
    import urllib.request

    accept = ", ".join(["application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json"])
    req = urllib.request.Request(f"http://{host}/v2/{repository}/manifests/{tag}",
                                 headers={"Accept": accept})
    with urllib.request.urlopen(req) as answer:
        return answer.read(), answer.headers["Docker-Content-Digest"]


def raw_blob(host: str, repository: str, digest: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://{host}/v2/{repository}/blobs/{digest}") as answer:
        return answer.read()


def umoci_tree(tmp_path: Path, oci: Path) -> Path:
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed (.ci/setup installs it)")
    bundle = tmp_path / f"bundle-{oci.name}"
    subprocess.run(["umoci", "unpack", "--image", f"{oci}:x", str(bundle)], check=True,
                   capture_output=True)
    return bundle / "rootfs"


def pushed_lines(out: str) -> dict[str, str]:
    """``<short>: <final status>`` lines of a push (Preparing left out)."""
    found = {}
    for line in out.splitlines():
        short, sep, status = line.partition(": ")
        if sep and len(short) == 12 and status != "Preparing":
            found[short] = status
    return found


def blob_uploads(requests: list) -> list[tuple[str, str]]:
    """The blob-writing requests the proxy saw: POST (start or mount), PATCH, PUT."""
    return [(m, p) for m, p, _ in requests
            if "/blobs/uploads/" in p and m in ("POST", "PATCH", "PUT")]


# --- bytes -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["oci", "v2s2"])
def test_pulled_image_pushes_back_bit_identical(form: str, layout: Path, registry,
                                                store_root: Path, tmp_path: Path) -> None:
    """Another repository gets the very manifest, config and blobs; skopeo agrees."""
    src = f"{registry.host}/push/{form}-src:1"
    extra = ("--format", "v2s2") if form == "v2s2" else ()
    skopeo_copy(f"oci:{layout}:oci", f"docker://{src}", extra=extra)
    original = skopeo_inspect(f"docker://{src}", raw=True)
    lamina(store_root, "pull", src)
    dst = f"{registry.host}/push/{form}-dst:7"
    out = lamina(store_root, "push", src, dst).stdout
    assert out.splitlines()[0] == f"The push refers to repository [{registry.host}/push/{form}-dst]"
    statuses = pushed_lines(out)
    assert len(statuses) == 3
    assert set(statuses.values()) == {f"Mounted from push/{form}-src"}

    body, digest = raw_manifest(registry.host, f"push/{form}-dst", "7")
    src_body, src_digest = raw_manifest(registry.host, f"push/{form}-src", "1")
    assert body == src_body and digest == src_digest
    assert hashlib.sha256(body).hexdigest() == digest[7:]
    assert out.splitlines()[-1] == f"7: digest: {digest} size: {len(body)}"
    manifest = json.loads(body)
    assert manifest["mediaType"] == original["mediaType"]
    for d in [manifest["config"], *manifest["layers"]]:
        data = raw_blob(registry.host, f"push/{form}-dst", d["digest"])
        assert data == raw_blob(registry.host, f"push/{form}-src", d["digest"])
        assert hashlib.sha256(data).hexdigest() == d["digest"][7:] and len(data) == d["size"]
    # skopeo copies it out whole (it checks every digest on the way)
    oci, _, _ = copied_out(tmp_path, dst)
    assert len(json.loads((oci / "index.json").read_text())["manifests"]) == 1
    seen = skopeo_inspect(f"docker://{dst}")
    assert seen["Digest"] == digest and len(seen["Layers"]) == 3
    # recorded: the image now also has the destination's digest
    info = json.loads(lamina(store_root, "inspect", src).stdout)[0]
    assert f"{registry.host}/push/{form}-dst@{digest}" in info["RepoDigests"]


def test_quiet_push_by_name_and_images_digests(layout: Path, registry, store_root: Path,
                                               tmp_path: Path) -> None:
    """``push NAME:TAG`` pushes the image of that name (Docker's form); -q prints the digest;
    ``images --digests`` shows it."""
    src = f"{registry.host}/push/named-src:1"
    skopeo_copy(f"oci:{layout}:oci", f"docker://{src}")
    lamina(store_root, "pull", src)
    name = f"{registry.host}/push/named:v2"
    lamina(store_root, "tag", src, name)
    digest = lamina(store_root, "push", "-q", name).stdout.strip()
    assert digest == skopeo_inspect(f"docker://{name}")["Digest"]
    rows = json.loads(lamina(store_root, "images", "--digests", "--format", "json").stdout)
    row = next(r for r in rows if r["Tag"] == "v2")
    assert row["Digest"] == digest
    table = lamina(store_root, "images", "--digests").stdout
    assert digest in table
    missing = lamina(store_root, "push", f"{registry.host}/push/nothing:1", check=False)
    assert missing.returncode == 1 and "no image named" in missing.stderr
    assert "Traceback" not in missing.stderr
    by_digest = lamina(store_root, "push", src, f"{registry.host}/push/x@{digest}", check=False)
    assert by_digest.returncode == 1 and "digest" in by_digest.stderr


# --- what is sent ----------------------------------------------------------------------


def test_second_push_uploads_nothing(faulty, layout: Path, registry, store_root: Path) -> None:
    src = f"{registry.host}/twice/src:1"
    skopeo_copy(f"oci:{layout}:oci", f"docker://{src}")
    lamina(store_root, "pull", f"{faulty.host}/twice/src:1")
    dst = f"{faulty.host}/twice/dst:1"
    lamina(store_root, "push", f"{faulty.host}/twice/src:1", dst)
    faulty.reset()
    out = lamina(store_root, "push", f"{faulty.host}/twice/src:1", dst).stdout
    assert set(pushed_lines(out).values()) == {"Layer already exists"}
    assert blob_uploads(faulty.requests) == []
    heads = [p for m, p, _ in faulty.requests if m == "HEAD" and "/blobs/" in p]
    assert len(heads) == 4  # three layers and the config
    assert [m for m, p, _ in faulty.requests if "/manifests/" in p] == ["PUT"]


def test_cross_repository_mount_instead_of_upload(faulty, layout: Path, registry,
                                                  store_root: Path) -> None:
    skopeo_copy(f"oci:{layout}:oci", f"docker://{registry.host}/mount/src:1")
    lamina(store_root, "pull", f"{faulty.host}/mount/src:1")
    faulty.reset()
    out = lamina(store_root, "push", f"{faulty.host}/mount/src:1",
                 f"{faulty.host}/mount/dst:1").stdout
    assert set(pushed_lines(out).values()) == {"Mounted from mount/src"}
    writes = blob_uploads(faulty.requests)
    assert writes and all(m == "POST" and "mount=sha256" in p and "from=mount%2Fsrc" in p
                          for m, p in writes), writes


def test_another_registry_gets_an_upload(faulty, layout: Path, registry,
                                         store_root: Path, tmp_path: Path) -> None:
    """No shared repository: every blob is uploaded (and skopeo reads it back)."""
    skopeo_copy(f"oci:{layout}:oci", f"docker://{registry.host}/up/src:1")
    lamina(store_root, "pull", f"{registry.host}/up/src:1")
    out = lamina(store_root, "push", f"{registry.host}/up/src:1",
                 f"{faulty.host}/up/elsewhere:1").stdout
    assert set(pushed_lines(out).values()) == {"Pushed"}
    puts = [p for m, p, _ in faulty.requests if m == "PUT" and "/blobs/uploads/" in p]
    assert len(puts) == 4  # three layers and the config
    # skopeo reads it from the registry itself (the proxy merges repeated Accept headers)
    _, digest, _ = copied_out(tmp_path, f"{registry.host}/up/elsewhere:1")
    assert digest == skopeo_inspect(f"docker://{registry.host}/up/src:1")["Digest"]


# --- layers without kept blobs -------------------------------------------------------------


@pytest.mark.parametrize("how", ["prune", "config"])
def test_layers_without_kept_blobs_are_recompressed(how: str, layout: Path, registry,
                                                    store_root: Path, tmp_path: Path) -> None:
    """``prune --blobs``, or ``keep_blobs = false``: the layers are exported and gzip'ed;
    skopeo copies the result and umoci unpacks the same tree as the original's."""
    src = f"{registry.host}/recompress/{how}:1"
    skopeo_copy(f"oci:{layout}:oci", f"docker://{src}")
    args: list[str] = []
    if how == "config":
        config = tmp_path / "lamina.toml"
        config.write_text("[images]\nkeep_blobs = false\n")
        args = ["--config", str(config)]
    lamina(store_root, *args, "pull", src)
    if how == "prune":
        assert "Deleted blob" in lamina(store_root, "prune", "--blobs").stdout
    before = json.loads(lamina(store_root, "inspect", src).stdout)[0]
    dst = f"{registry.host}/recompress/{how}-dst:1"
    pushed = lamina(store_root, *args, "push", src, dst)
    assert set(pushed_lines(pushed.stdout).values()) == {"Pushed"}
    oci, digest, body = copied_out(tmp_path, dst)
    manifest = json.loads(body)
    assert {d["mediaType"] for d in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"}
    problems = compare(snapshot(umoci_tree(tmp_path, copied_out(tmp_path, src)[0]),
                                subsecond=False),
                       snapshot(umoci_tree(tmp_path, oci), subsecond=False),
                       mtime_kinds={"file", "symlink"})
    assert [p for p in problems if not p.startswith("/:") and not p.startswith(":")] == []
    # the tars lamina exports are laid out otherwise than these (Python's tarfile, PAX):
    # new DiffIDs, so another image on the registry; said so, nothing recorded here
    assert manifest["config"]["digest"] != before["Id"]
    assert "warning:" in pushed.stderr and manifest["config"]["digest"] in pushed.stderr
    assert json.loads(lamina(store_root, "inspect", src).stdout)[0] == before
    # the export is deterministic: pushed again, the registry has every blob already
    again = lamina(store_root, *args, "push", src, dst)
    assert set(pushed_lines(again.stdout).values()) == {"Layer already exists"}
    assert again.stdout.splitlines()[-1] == f"1: digest: {digest} size: {len(body)}"
    # that image pulled back has lamina's own tars: exported again they have the same
    # DiffIDs, so it pushes unchanged (the same manifest) and the push is recorded
    lamina(store_root, *args, "pull", dst)
    if how == "prune":
        lamina(store_root, "prune", "--blobs")
    third = lamina(store_root, *args, "push", dst, f"{registry.host}/recompress/{how}-again:1")
    assert "warning" not in third.stderr
    assert third.stdout.splitlines()[-1] == f"1: digest: {digest} size: {len(body)}"
    info = json.loads(lamina(store_root, "inspect", dst).stdout)[0]
    assert info["Id"] == manifest["config"]["digest"]
    assert f"{registry.host}/recompress/{how}-again@{digest}" in info["RepoDigests"]


def test_a_damaged_kept_blob_is_not_sent(layout: Path, registry, store_root: Path,
                                         tmp_path: Path) -> None:
    """A kept blob whose bytes changed on disk (a power loss before they were written) is
    found before it is sent: removed with a warning, the layer exported and pushed."""
    src = f"{registry.host}/damaged/src:1"
    skopeo_copy(f"oci:{layout}:oci", f"docker://{src}")
    lamina(store_root, "pull", src)
    manifest = json.loads(raw_manifest(registry.host, "damaged/src", "1")[0])
    first = manifest["layers"][0]["digest"]
    kept = store_root / "blobs" / "sha256" / first.removeprefix("sha256:")
    size = kept.stat().st_size
    with open(kept, "r+b") as f:  # same size, other bytes
        f.seek(size // 2)
        f.write(b"\0" * 32)
    dst = f"{registry.host}/damaged/dst:1"
    pushed = lamina(store_root, "push", src, dst)
    assert f"the kept blob {first} of layer 0 was damaged on disk" in pushed.stderr
    assert not kept.exists()
    sent = json.loads(raw_manifest(registry.host, "damaged/dst", "1")[0])
    assert sent["layers"][0]["digest"] != first
    assert [d["digest"] for d in sent["layers"][1:]] == [
        d["digest"] for d in manifest["layers"][1:]]  # the intact ones as they were
    lamina(tmp_path / "fresh", "pull", dst)  # every blob and DiffID checks out


def test_image_made_here_pushes(busybox_tar: Path, registry, store_root: Path,
                                tmp_path: Path) -> None:
    """An image with no manifest (a rootfs tarball imported) gets an OCI manifest built."""
    from lamina.core.config import load_config
    from lamina.core.engine import Engine
    from lamina.core.images.rootfs import import_rootfs
    from lamina.core.images.store import ImageStore

    engine = Engine(load_config(None, root=str(store_root)))
    with engine.open_store() as store:
        name = f"{registry.host}/made/here:1"
        import_rootfs(ImageStore(store), str(busybox_tar), names=[name])
    pushed = lamina(store_root, "push", name)
    assert set(pushed_lines(pushed.stdout).values()) == {"Pushed"}
    oci, _, body = copied_out(tmp_path, name)
    assert json.loads(body)["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    tree = umoci_tree(tmp_path, oci)
    expected = tmp_path / "expected"
    expected.mkdir()
    subprocess.run(["tar", "-xpf", str(busybox_tar), "-C", str(expected)], check=True)
    problems = compare(snapshot(expected, subsecond=False), snapshot(tree, subsecond=False),
                       mtime_kinds={"file", "symlink"})
    assert [p for p in problems if not p.startswith("/:") and not p.startswith(":")] == []


def test_all_tags_push_and_pull(busybox_tar: Path, registry, store_root: Path,
                                tmp_path: Path) -> None:
    repo = f"{registry.host}/every/tag"
    lamina(store_root, "import", str(busybox_tar), f"{repo}:1")
    lamina(store_root, "tag", f"{repo}:1", f"{repo}:2")
    lamina(store_root, "import", "-c", 'CMD ["sh"]', str(busybox_tar), f"{repo}:3")
    lamina(store_root, "tag", f"{repo}:1", f"{registry.host}/elsewhere:1")  # not this repo
    pushed = lamina(store_root, "push", "-a", repo).stdout
    assert [line.split(":")[0] for line in pushed.splitlines() if ": digest: " in line] == \
        ["1", "2", "3"]
    assert "elsewhere" not in pushed
    # another store pulls every tag; the one layer the three share is stored once
    other = tmp_path / "other"
    pulled = lamina(other, "pull", "-a", repo).stdout
    assert [line for line in pulled.splitlines() if line.startswith("Status:")] == [
        f"Status: Downloaded newer image for {repo}:{tag}" for tag in ("1", "2", "3")]
    names = lamina(other, "images", "--format", "{{.Tag}} {{.ID}}").stdout.split("\n")
    ids = dict(line.split() for line in names if line)
    assert sorted(ids) == ["1", "2", "3"] and ids["1"] == ids["2"] != ids["3"]
    assert len(json.loads(lamina(other, "layer", "ls", "--format", "json").stdout)) == 1
    for command in (["pull", "-a", f"{repo}:1"], ["push", "-a", f"{repo}:1"],
                    ["push", "-a", repo, f"{registry.host}/to/there"]):
        refused = lamina(other, *command, check=False)
        assert refused.returncode != 0 and "--all-tags" in refused.stderr, refused.stderr
    missing = lamina(other, "push", "-a", f"{registry.host}/no/such", check=False)
    assert missing.returncode != 0 and "has a tag" in missing.stderr


# --- auth ---------------------------------------------------------------------------------


def auth_file(tmp_path: Path, host: str, user: str, password: str) -> dict[str, str]:
    path = tmp_path / f"auth-{hashlib.sha256(password.encode()).hexdigest()[:6]}.json"
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    path.chmod(0o600)
    return {"LAMINA_AUTH_FILE": str(path)}


@pytest.mark.parametrize("kind", ["basic_registry", "token_registry"])
def test_push_with_credentials(kind: str, request: pytest.FixtureRequest, layout: Path,
                               store_root: Path, tmp_path: Path) -> None:
    reg = request.getfixturevalue(kind)
    src = f"{reg.host}/private/src:1"
    skopeo_copy(f"oci:{layout}:oci", f"docker://{src}", creds=reg.creds)
    good = auth_file(tmp_path, reg.host, reg.username, reg.password)
    lamina(store_root, "pull", src, env=good)
    dst = f"{reg.host}/private/dst:1"
    for env in (None, auth_file(tmp_path, reg.host, reg.username, "wrong")):
        refused = lamina(store_root, "push", src, dst, env=env, check=False)
        assert refused.returncode == 1, refused.stdout
        assert f"pushing {src} to {reg.host}/private/dst" in refused.stderr
        assert f"lamina login {reg.host}" in refused.stderr
        assert "Traceback" not in refused.stderr
    out = lamina(store_root, "push", src, dst, env=good).stdout
    assert set(pushed_lines(out).values()) == {"Mounted from private/src"}
    seen = skopeo_inspect(f"docker://{dst}", creds=reg.creds)
    assert seen["Digest"] == skopeo_inspect(f"docker://{src}", creds=reg.creds)["Digest"]


def test_read_only_credentials_are_refused_with_the_image_named(
        token_registry, layout: Path, store_root: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The token server grants pull only: the push ends in one error naming the image."""
    reg = token_registry
    src = f"{reg.host}/readonly/src:1"
    skopeo_copy(f"oci:{layout}:oci", f"docker://{src}", creds=reg.creds)
    env = auth_file(tmp_path, reg.host, reg.username, reg.password)
    lamina(store_root, "pull", src, env=env)
    server = reg.token_server
    grant = server.token

    def pull_only(subject: str, audience: str, access: list[dict]) -> str:
        return grant(subject, audience, [{**a, "actions": [x for x in a["actions"]
                                                          if x == "pull"]} for a in access])

    monkeypatch.setattr(server, "token", pull_only)
    refused = lamina(store_root, "push", src, f"{reg.host}/readonly/dst:1", env=env,
                     check=False)
    assert refused.returncode == 1
    assert f"pushing {src}" in refused.stderr and f"lamina login {reg.host}" in refused.stderr
    assert "Traceback" not in refused.stderr
    info = json.loads(lamina(store_root, "inspect", src).stdout)[0]
    assert not any("readonly/dst" in d for d in info["RepoDigests"])


# --- faults --------------------------------------------------------------------------------


def test_upload_500s_are_retried_then_one_clear_error(faulty, layout: Path, registry,
                                                      store_root: Path) -> None:
    skopeo_copy(f"oci:{layout}:oci", f"docker://{registry.host}/flaky/src:1")
    src = f"{registry.host}/flaky/src:1"
    lamina(store_root, "pull", src)
    # the PUT that carries a blob's bytes cannot be resent by the transport (it streams):
    # the push starts that blob's upload again
    faulty.fail_status, faulty.fail_path, faulty.fail_times = 500, "digest=sha256", 2
    out = lamina(store_root, "push", src, f"{faulty.host}/flaky/dst:1").stdout
    assert set(pushed_lines(out).values()) == {"Pushed"}
    assert faulty.fail_times == 0  # the failures did happen
    # the POSTs that start an upload (here: mounts from flaky/dst) are resent as they are
    faulty.reset()
    faulty.fail_status, faulty.fail_path, faulty.fail_times = 500, "/blobs/uploads/", 3
    out = lamina(store_root, "push", src, f"{faulty.host}/flaky/again:1").stdout
    assert set(pushed_lines(out).values()) == {"Mounted from flaky/dst"}
    assert faulty.fail_times == 0
    faulty.reset()
    faulty.fail_status, faulty.fail_path, faulty.fail_times = 500, "/blobs/uploads/", 10_000
    failed = lamina(store_root, "push", src, f"{faulty.host}/flaky/never:1", check=False)
    assert failed.returncode == 1
    assert "500" in failed.stderr and f"pushing {src}" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) <= 2  # the error and its hint
    assert not any(m == "PUT" and "/manifests/" in p for m, p, _ in faulty.requests)
    info = json.loads(lamina(store_root, "inspect", src).stdout)[0]
    assert not any("flaky/never" in d for d in info["RepoDigests"])


def test_large_blob_goes_up_in_chunks(faulty, busybox_tar: Path, registry, store_root: Path,
                                      tmp_path: Path) -> None:
    """A blob over the monolithic limit is sent as PATCHes with Content-Range, then a PUT."""
    import os

    from test_pull import tar_bytes

    from lamina.core.images.push import CHUNK_SIZE, CHUNKED_ABOVE

    big = tar_bytes([("file", "big/random", os.urandom(CHUNKED_ABOVE + (1 << 20)))])
    oci = tmp_path / "big"
    manifest = json.loads(blob(oci, write_oci_layout(oci, [busybox_tar.read_bytes(), big])))
    size = manifest["layers"][1]["size"]
    assert size > CHUNKED_ABOVE
    src = f"{registry.host}/chunks/src:1"
    skopeo_copy(f"oci:{oci}:latest", f"docker://{src}")
    lamina(store_root, "pull", src)
    out = lamina(store_root, "push", src, f"{faulty.host}/chunks/dst:1").stdout
    assert set(pushed_lines(out).values()) == {"Pushed"}
    patches = [h for m, p, h in faulty.requests if m == "PATCH"]
    assert len(patches) == -(-size // CHUNK_SIZE)  # the big blob's, and no other's
    assert patches[0]["Content-Range"].startswith("0-")
    assert skopeo_inspect(f"docker://{registry.host}/chunks/dst:1")["Digest"] == \
        skopeo_inspect(f"docker://{src}")["Digest"]
