"""``lamina pull`` against a real ``docker-registry``, with skopeo and umoci as the referees.

Images are made here (busybox-static plus layers with whiteouts, an opaque directory,
hardlinks, odd modes and owners), put into the registry with skopeo, pulled with the
real CLI, and the merged tree compared with umoci's unpack of the same image.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import LAMINA, child_pids, needs_root, process_state, run_lamina
from images import push_layout, skopeo, skopeo_copy, skopeo_inspect, write_oci_layout

from lamina.conformance.trees import compare, snapshot

pytestmark = [needs_root]

REPO_ROOT = Path(__file__).resolve().parent.parent


def tar_bytes(entries: list[tuple[str, str, object]]) -> bytes:
    """A layer tar from (kind, name, payload) entries; kinds: file dir link hard wh opq."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, payload in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "file":
                data, mode, owner = payload if isinstance(payload, tuple) else (payload, 0o644, 0)
                info.size, info.mode, info.uid, info.gid = len(data), mode, owner, owner
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, payload or 0o755
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, payload
            elif kind in ("wh", "opq"):
                info.size = 0
            tar.addfile(info)
    return buf.getvalue()


@pytest.fixture(scope="module")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    if not Path("/bin/busybox").exists():
        pytest.skip("busybox-static is not installed (.ci/setup installs it)")
    out = tmp_path_factory.mktemp("busybox") / "rootfs.tar"
    subprocess.run(["bash", str(REPO_ROOT / "examples/busybox-rootfs.sh"), str(out)], check=True)
    return out.read_bytes()


def image_layers(busybox_tar: bytes) -> list[bytes]:
    second = tar_bytes([
        ("dir", "etc/", 0o755),
        ("file", "etc/motd", b"hello from layer 2\n"),
        ("wh", "etc/.wh.hostname", None),
        ("dir", "opt/", 0o755),
        ("dir", "opt/app/", 0o750),
        ("file", "opt/app/tool", (b"#!/bin/sh\necho tool\n", 0o4755, 1000)),
        ("hard", "opt/app/tool-again", "opt/app/tool"),
        ("link", "opt/current", "app"),
        ("file", "opt/app/data/keep", b"kept\n"),
        ("file", "opt/app/data/drop", b"dropped later\n"),
    ])
    third = tar_bytes([
        ("dir", "opt/app/data/", 0o700),
        ("opq", "opt/app/data/.wh..wh..opq", None),
        ("file", "opt/app/data/new", b"only this survives\n"),
        ("wh", "bin/.wh.vi", None),
        ("file", "etc/motd", b"replaced in layer 3\n"),
    ])
    return [busybox_tar, second, third]


@pytest.fixture(scope="module")
def layout(busybox_tar: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("layout") / "oci"
    layers = image_layers(busybox_tar)
    write_oci_layout(path, layers, compression="gzip", tag="gzip")
    write_oci_layout(path, layers, compression="zstd", tag="zstd")
    write_oci_layout(path, layers, compression=None, tag="plain")
    return path


@pytest.fixture(scope="module")
def pushed(layout: Path, registry) -> str:
    """The images in the open registry as ``HOST/test/pull:{gzip,zstd,plain}``, each
    layer blob as written (skopeo 1.9 would gzip the plain ones on the way)."""
    for tag in ("gzip", "zstd", "plain"):
        push_layout(layout, registry.host, "test/pull", tag)
    media = {tag: json.loads(skopeo("inspect", "--raw", "--tls-verify=false",
                                    f"docker://{registry.host}/test/pull:{tag}"))
             ["layers"][0]["mediaType"] for tag in ("gzip", "zstd", "plain")}
    assert media["zstd"].endswith("+zstd") and media["plain"].endswith(".tar"), media
    return f"{registry.host}/test/pull"


def lamina(root: Path, *args: str, env: dict[str, str] | None = None, check: bool = True,
           driver: str | None = None) -> subprocess.CompletedProcess:
    extra = ["--driver", driver] if driver else []
    proc = run_lamina(*extra, *args, root=root, env=env, check=check)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode())


def top_layer(root: Path, name: str) -> str:
    info = json.loads(lamina(root, "inspect", name).stdout)
    return info[0]["GraphDriver"]["Data"]["Layers"][-1]


def umoci_tree(tmp_path: Path, reference: str) -> Path:
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed (.ci/setup installs it)")
    oci = tmp_path / "skopeo-oci"
    skopeo_copy(f"docker://{reference}", f"oci:{oci}:x")
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{oci}:x", str(bundle)], check=True,
                   capture_output=True)
    return bundle / "rootfs"


def drivers_here() -> list[str]:
    return ["vfs", "overlay"]


@pytest.mark.parametrize("driver", drivers_here())
@pytest.mark.parametrize("tag", ["gzip", "zstd", "plain"])
def test_pulled_tree_equals_umocis_unpack(pushed: str, store_root: Path, tmp_path: Path,
                                          driver: str, tag: str) -> None:
    name = f"{pushed}:{tag}"
    out = lamina(store_root, "pull", name, driver=driver).stdout
    assert f"Status: Downloaded newer image for {name}" in out
    # umoci 0.4 cannot unpack zstd layers: its tree of the gzip image (the same layer
    # tars) is the reference for all three
    reference = umoci_tree(tmp_path, f"{pushed}:gzip")
    top = top_layer(store_root, name)
    path = Path(lamina(store_root, "layer", "mount", top, driver=driver).stdout.strip())
    try:
        problems = compare(snapshot(reference, subsecond=False), snapshot(path, subsecond=False),
                           mtime_kinds={"file", "symlink"})
    finally:
        lamina(store_root, "layer", "unmount", top, driver=driver)
    # the root directory's own metadata is umoci's choice, not the image's
    assert [p for p in problems if not p.startswith("/:") and not p.startswith(":")] == []


def test_pull_twice_is_up_to_date_and_stores_each_layer_once(pushed: str,
                                                              store_root: Path) -> None:
    lamina(store_root, "pull", f"{pushed}:gzip")
    out = lamina(store_root, "pull", f"{pushed}:gzip").stdout
    # Docker's lines for a manifest pulled before: no layer lines, no default-tag line
    assert out.splitlines() == [
        "gzip: Pulling from test/pull",
        f"Digest: {manifest_digest(pushed, 'gzip')}",
        f"Status: Image is up to date for {pushed}:gzip",
        f"{pushed}:gzip",
    ]
    # the same layers compressed another way are the same layers: nothing new is applied
    out = lamina(store_root, "pull", f"{pushed}:zstd").stdout
    assert out.count("Already exists") == 3
    layers = json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout)
    assert len(layers) == 3
    # the first layer's blob is asked for before the pull knows it is stored: nothing of
    # it is left behind
    assert not list((store_root / "tmp").glob("pull-*"))
    images = json.loads(lamina(store_root, "images", "--format", "json").stdout)
    assert {r["Tag"] for r in images} == {"gzip", "zstd"}
    assert len({r["ID"] for r in images}) == 1  # one config: one image, two names


def manifest_digest(pushed: str, tag: str) -> str:
    return skopeo_inspect(f"docker://{pushed}:{tag}")["Digest"]


def test_a_pull_without_tag_says_it_takes_latest(pushed: str, store_root: Path) -> None:
    skopeo_copy(f"docker://{pushed}:gzip", f"docker://{pushed}:latest",
                extra=("--preserve-digests",))
    out = lamina(store_root, "pull", pushed).stdout.splitlines()
    assert out[:2] == ["Using default tag: latest", "latest: Pulling from test/pull"]
    assert out[-2:] == [f"Status: Downloaded newer image for {pushed}:latest",
                        f"{pushed}:latest"]
    # a tag or a digest given: no such line
    out = lamina(store_root, "pull", f"{pushed}:latest").stdout.splitlines()
    assert out[0] == "latest: Pulling from test/pull"
    digest = manifest_digest(pushed, "latest")
    out = lamina(store_root, "pull", f"{pushed}@{digest}").stdout.splitlines()
    assert out[0] == f"{digest}: Pulling from test/pull"


def test_quiet_pull_prints_the_image_id(pushed: str, store_root: Path, layout: Path) -> None:
    out = lamina(store_root, "pull", "-q", f"{pushed}:gzip").stdout.strip()
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = next(m["digest"] for m in index["manifests"]
                           if m["annotations"]["org.opencontainers.image.ref.name"] == "gzip")
    manifest = json.loads((layout / "blobs/sha256" / manifest_digest[7:]).read_text())
    assert out == manifest["config"]["digest"]


def on_busybox(busybox_tar: bytes, registry, tmp_path: Path, name: str,
               file: str, data: bytes) -> str:
    """An image of busybox and one more file, pushed to the registry as ``name``; its
    reference there."""
    layout = tmp_path / name.replace("/", "_").replace(":", "_")
    write_oci_layout(layout, [busybox_tar, tar_bytes([("file", file, data)])])
    reference = f"{registry.host}/{name}"
    skopeo_copy(f"oci:{layout}:latest", f"docker://{reference}")
    return reference


def test_shared_base_is_stored_once_and_df_shows_it(busybox_tar: bytes, registry,
                                                    store_root: Path, tmp_path: Path) -> None:
    a = on_busybox(busybox_tar, registry, tmp_path, "share/a:1", "a.txt", b"a" * 5000)
    b = on_busybox(busybox_tar, registry, tmp_path, "share/b:1", "b.txt", b"b" * 7000)
    lamina(store_root, "pull", a)
    out = lamina(store_root, "pull", b).stdout
    assert "Already exists" in out
    layers = json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout)
    assert len(layers) == 3  # the base once, one top layer each
    df = json.loads(lamina(store_root, "system", "df", "--format", "json").stdout)
    base = len(busybox_tar)
    for image in df["images"]:
        assert image["shared"] == base
        assert image["unique"] == image["size"] - base
    assert df["image_layers_size"] == sum(layer["size"] for layer in layers)
    text = lamina(store_root, "system", "df", "-v").stdout
    assert "SHARED SIZE" in text and "UNIQUE SIZE" in text


def test_df_does_not_count_an_image_a_container_uses_as_reclaimable(
        busybox_tar: bytes, registry, store_root: Path, tmp_path: Path) -> None:
    a = on_busybox(busybox_tar, registry, tmp_path, "dfc/a:1", "a.txt", b"a" * 5000)
    b = on_busybox(busybox_tar, registry, tmp_path, "dfc/b:1", "b.txt", b"b" * 7000)
    lamina(store_root, "pull", a)
    lamina(store_root, "pull", b)
    df = json.loads(lamina(store_root, "system", "df", "--format", "json").stdout)
    assert df["reclaimable_images_size"] == df["image_layers_size"]  # nothing uses them
    lamina(store_root, "create", "--name", "user", a, "true")
    df = json.loads(lamina(store_root, "system", "df", "--format", "json").stdout)
    by_name = {i["names"][0].rsplit("/", 1)[1]: i for i in df["images"]}
    assert by_name["a:1"]["containers"] == 1 and by_name["b:1"]["containers"] == 0
    # the base and a's own layer stay with the container: only b's own layer is reclaimable
    assert df["reclaimable_images_size"] == by_name["b:1"]["unique"]
    text = lamina(store_root, "system", "df").stdout.splitlines()
    assert text[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert text[1].split()[:3] == ["Images", "2", "1"]


def test_image_prune_removes_untagged_images_and_with_all_every_unused_one(
        busybox_tar: bytes, registry, store_root: Path, tmp_path: Path) -> None:
    images = {}
    for name in ("a", "b", "c"):
        on_busybox(busybox_tar, registry, tmp_path, f"ip/{name}:1", f"{name}.txt", b"x")
        lamina(store_root, "pull", f"{registry.host}/ip/{name}:1")
        images[name] = json.loads(lamina(store_root, "inspect", f"{registry.host}/ip/{name}:1")
                                  .stdout)[0]["Id"]
    # a's only name moves to b: a is left untagged (Docker's dangling image)
    lamina(store_root, "tag", f"{registry.host}/ip/b:1", f"{registry.host}/ip/a:1")
    lamina(store_root, "create", f"{registry.host}/ip/c:1", "true")

    def ids() -> set[str]:
        return {i["ID"] for i in json.loads(
            lamina(store_root, "image", "ls", "--format", "json").stdout)}

    out = lamina(store_root, "image", "prune").stdout
    assert f"deleted: {images['a']}" in out and "Total reclaimed space: " in out
    assert ids() == {images["b"], images["c"]}
    out = lamina(store_root, "image", "prune", "-a", "-f").stdout
    assert f"untagged: {registry.host}/ip/b:1" in out and f"deleted: {images['b']}" in out
    assert ids() == {images["c"]}  # a container stands on it
    # the base layer stays with c; the layers only a and b used are gone
    assert len(json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout)) == 4


def test_rmi_keeps_what_another_image_uses(busybox_tar: bytes, registry,
                                           store_root: Path, tmp_path: Path) -> None:
    a = on_busybox(busybox_tar, registry, tmp_path, "rmi/a:1", "a.txt", b"a")
    b = on_busybox(busybox_tar, registry, tmp_path, "rmi/b:1", "b.txt", b"b")
    lamina(store_root, "pull", a)
    lamina(store_root, "pull", b)
    out = lamina(store_root, "rmi", a).stdout
    assert out.count("Deleted: sha256:") == 2  # the image and its own top layer
    layers = json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout)
    assert len(layers) == 2
    lamina(store_root, "rmi", b)
    assert json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout) == []
    assert list((store_root / "blobs/sha256").iterdir()) == []


def test_pull_by_digest_and_platform_choice(layout: Path, registry, store_root: Path,
                                            tmp_path: Path, busybox_tar: bytes) -> None:
    """An index with two platforms: the host's by default, --platform for the other."""
    from images import host_architecture

    other = "arm64" if host_architecture() != "arm64" else "amd64"
    oci = tmp_path / "multi"
    write_oci_layout(oci, [busybox_tar], tag="native")
    write_oci_layout(oci, [tar_bytes([("file", "foreign", b"x")])], tag="foreign",
                     config_extra={"architecture": other})
    index = json.loads((oci / "index.json").read_text())
    entries = []
    for m in index["manifests"]:
        if m["annotations"]["org.opencontainers.image.ref.name"] == "foreign":
            m["platform"] = {"architecture": other, "os": "linux"}
        m.pop("annotations")
        entries.append(m)
    multi = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": entries}
    body = json.dumps(multi).encode()
    import hashlib

    digest = hashlib.sha256(body).hexdigest()
    (oci / "blobs/sha256" / digest).write_bytes(body)
    index["manifests"] = [{"mediaType": multi["mediaType"], "digest": f"sha256:{digest}",
                           "size": len(body),
                           "annotations": {"org.opencontainers.image.ref.name": "multi"}}]
    (oci / "index.json").write_text(json.dumps(index))
    skopeo_copy(f"oci:{oci}:multi", f"docker://{registry.host}/test/multi:1",
                extra=("--all",))
    lamina(store_root, "pull", f"{registry.host}/test/multi:1")
    info = json.loads(lamina(store_root, "inspect", f"{registry.host}/test/multi:1").stdout)[0]
    assert info["Architecture"] == host_architecture()
    assert info["RepoDigests"] == [f"{registry.host}/test/multi@sha256:{digest}"]
    lamina(store_root, "pull", "--platform", f"linux/{other}",
           f"{registry.host}/test/multi@sha256:{digest}")
    images = json.loads(lamina(store_root, "images", "--format", "json").stdout)
    assert len({r["ID"] for r in images}) == 2
    failed = lamina(store_root, "pull", "--platform", "linux/s390x",
                    f"{registry.host}/test/multi:1", check=False)
    assert failed.returncode == 1
    assert "no image for platform linux/s390x" in failed.stderr
    assert f"linux/{other}" in failed.stderr


# --- auth -------------------------------------------------------------------------------


def auth_file(tmp_path: Path, host: str, user: str, password: str) -> dict[str, str]:
    import base64

    path = tmp_path / "auth.json"
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    path.chmod(0o600)
    return {"LAMINA_AUTH_FILE": str(path)}


@pytest.mark.parametrize("kind", ["basic_registry", "token_registry"])
def test_pull_with_credentials(kind: str, request: pytest.FixtureRequest, layout: Path,
                               store_root: Path, tmp_path: Path) -> None:
    reg = request.getfixturevalue(kind)
    skopeo_copy(f"oci:{layout}:gzip", f"docker://{reg.host}/private/img:1", creds=reg.creds)
    name = f"{reg.host}/private/img:1"
    refused = lamina(store_root, "pull", name, check=False)
    assert refused.returncode == 1
    assert "lamina login" in refused.stderr
    assert "Traceback" not in refused.stderr
    wrong = lamina(store_root, "pull", name, env=auth_file(tmp_path, reg.host, reg.username,
                                                           "wrong"), check=False)
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    env = auth_file(tmp_path, reg.host, reg.username, reg.password)
    assert "Downloaded newer image" in lamina(store_root, "pull", name, env=env).stdout
    assert json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout)


# --- faults -------------------------------------------------------------------------------


def test_corrupt_blob_is_refused_and_nothing_registered(faulty, pushed: str,
                                                        store_root: Path) -> None:
    faulty.corrupt_blobs = True
    name = f"{faulty.host}/test/pull:gzip"
    failed = lamina(store_root, "pull", name, check=False)
    assert failed.returncode == 1
    assert "digest" in failed.stderr and "Traceback" not in failed.stderr
    assert json.loads(lamina(store_root, "images", "--format", "json").stdout) == []
    assert json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout) == []
    assert not list((store_root / "tmp").glob("pull-*.part"))  # bad bytes are not resumed
    faulty.reset()
    assert "Downloaded newer image" in lamina(store_root, "pull", name).stdout


def test_cut_download_resumes_with_range(faulty, pushed: str, store_root: Path) -> None:
    """The connection drops mid-blob: the client resumes with Range on its own."""
    faulty.cut_blob_at = 1_000_000  # the 2 MB busybox layer: cut twice
    faulty.fault_times = -1
    name = f"{faulty.host}/test/pull:plain"
    assert "Downloaded newer image" in lamina(store_root, "pull", name).stdout
    ranges = [h.get("Range") or h.get("range") for _, p, h in faulty.requests if "/blobs/" in p]
    assert any(r and r.startswith("bytes=") and not r.startswith("bytes=0-") for r in ranges)


def test_killed_pull_resumes_and_leaves_nothing(faulty, pushed: str, store_root: Path) -> None:
    """SIGKILL mid-blob; the next pull resumes the part file with Range and completes."""
    faulty.stall_blob_at = 500_000
    faulty.stall_seconds = 30
    faulty.fault_times = -1
    name = f"{faulty.host}/test/pull:plain"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    proc = subprocess.Popen([*LAMINA, "--root", str(store_root), "pull", name], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = list((store_root / "tmp").glob("pull-*.part")) if (
            store_root / "tmp").is_dir() else []
        if any(p.stat().st_size >= 500_000 for p in parts):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the pull never got half way")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    faulty.reset()
    assert "Downloaded newer image" in lamina(store_root, "pull", name).stdout
    ranges = [h.get("Range") for _, p, h in faulty.requests if "/blobs/" in p]
    assert any(r and not r.startswith("bytes=0-") for r in ranges), ranges
    assert not list((store_root / "tmp").glob("pull-*.part"))
    layers = json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout)
    assert len(layers) == 3


@pytest.mark.parametrize("tag", ["plain", "gzip", "zstd"])
def test_an_interrupted_pull_leaves_whole_blobs_for_the_next(faulty, pushed: str,
                                                             store_root: Path, tag: str) -> None:
    """Ctrl-C while the base layer's blob stalls, the two small ones downloaded and
    verified: the pull ends at once (with the plain layer's first MiB there, its
    applier's reading thread is what waits for the stalled bytes; test_tarstream has
    the decompressors); the small ones' files stay (whole parts), and the next pull
    only hashes them again instead of downloading them, and resumes the base layer's
    blob where it stopped."""
    layers = json.loads(skopeo("inspect", "--raw", "--tls-verify=false",
                               f"docker://{pushed}:{tag}"))["layers"]
    faulty.stall_blob_at = layers[0]["size"] // 2
    faulty.stall_seconds = 30
    faulty.fault_times = -1
    name = f"{faulty.host}/test/pull:{tag}"
    assert layers[0]["size"] // 2 > max(d["size"] for d in layers[1:])

    def parts() -> dict[str, int]:
        tmp = store_root / "tmp"
        found = tmp.glob("pull-*.part") if tmp.is_dir() else []
        return {p.name.split("~")[0].removeprefix("pull-"): p.stat().st_size for p in found}

    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    proc = subprocess.Popen([*LAMINA, "--root", str(store_root), "pull", name], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wanted = {d["digest"].removeprefix("sha256:"): d["size"] for d in layers[1:]}
    base = layers[0]["digest"].removeprefix("sha256:")
    deadline = time.monotonic() + 60
    while not (all(parts().get(h) == size for h, size in wanted.items()) and base in parts()):
        assert time.monotonic() < deadline, f"the downloads never got there: {parts()}"
        time.sleep(0.05)
    time.sleep(0.5)  # the verdicts reach the pull; its applier waits for the stalled bytes
    assert proc.poll() is None and parts()[base] < layers[0]["size"], parts()
    proc.send_signal(signal.SIGINT)
    # within the fetcher's stop wait: the applier's reading thread must not wait for
    # the stalled download's bytes
    assert proc.wait(timeout=10) == 130, proc.stderr.read() if proc.stderr else ""
    assert all(parts().get(h) == size for h, size in wanted.items()), parts()
    had = parts().get(base, 0)  # what came of the base blob before the stall (maybe none)
    faulty.reset()
    assert "Downloaded newer image" in lamina(store_root, "pull", name).stdout
    asked = [(p, h.get("Range")) for m, p, h in faulty.requests
             if m == "GET" and "/blobs/" in p]
    assert not [p for p, _ in asked if any(h in p for h in wanted)], asked
    # a part file is resumed where it stopped, and not asked for whole first
    resumed = [r for p, r in asked if base in p]
    assert resumed == [f"bytes={had}-" if had else None], (had, asked)
    assert not parts()
    assert len(json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout)) == 3


def test_a_killed_pulls_fetcher_dies_with_it(faulty, pushed: str, store_root: Path) -> None:
    """The fetcher process writing the part file must not outlive the pull: the next
    pull adopts the file, and a writer still at it would corrupt the resumed blob."""
    faulty.stall_blob_at = 500_000
    faulty.stall_seconds = 30
    faulty.fault_times = -1
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    proc = subprocess.Popen([*LAMINA, "--root", str(store_root), "pull",
                             f"{faulty.host}/test/pull:plain"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list((store_root / "tmp").glob("pull-*.part")):
        assert time.monotonic() < deadline, "the pull never began a download"
        time.sleep(0.02)
    fetchers = child_pids(proc.pid)
    assert len(fetchers) == 1, fetchers  # the download runs in a process of its own
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while process_state(fetchers[0]) not in ("Z", None):
        assert time.monotonic() < deadline, "the fetcher outlived its pull"
        time.sleep(0.02)


def _policies(pid: int) -> dict[int, int]:
    """Scheduling policy (0 normal, 5 SCHED_IDLE) of each thread of ``pid``."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                found[int(tid)] = int(f.read().rsplit(")", 1)[1].split()[38])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return found


def test_the_fetcher_downloads_in_the_background_until_the_applier_waits(
        faulty, pushed: str, store_root: Path) -> None:
    """While it is ahead, the fetcher's download runs in SCHED_IDLE (the applier gets the
    CPUs); once the applier waits for bytes, the fetcher runs at the normal priority.
    The test holds the images lock so that the pull cannot apply yet, and the registry
    stalls the blob so that the applier then waits."""
    import fcntl

    faulty.stall_blob_at = 1_500_000  # the 2 MB busybox layer: one 1 MiB read gets through
    faulty.stall_seconds = 5
    faulty.fault_times = -1  # the config and the small layers end before it
    (store_root / "tmp").mkdir(parents=True)
    lock = os.open(store_root / "tmp" / "images.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    proc = subprocess.Popen([*LAMINA, "--root", str(store_root), "pull",
                             f"{faulty.host}/test/pull:plain"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:  # the fetcher's download thread, blocked in the stall
            assert time.monotonic() < deadline, "the fetcher never began its download"
            parts = list((store_root / "tmp").glob("pull-*.part"))
            children = child_pids(proc.pid)
            if any(p.stat().st_size >= 1 << 20 for p in parts) and children:
                policies = _policies(children[0])
                if 5 in policies.values():
                    break
            time.sleep(0.01)
        fetcher = children[0]
        assert sorted(set(policies.values())) == [0, 5], policies  # its pipe's reader: normal
        os.close(lock)  # the pull applies the MiB there is, then waits for more
        while 5 in _policies(fetcher).values():
            assert time.monotonic() < deadline, "the fetcher stayed in the background"
            time.sleep(0.01)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b"Downloaded newer image" in out


def test_a_stored_layer_is_not_downloaded(faulty, pushed: str, store_root: Path) -> None:
    """The fetcher begins downloads before the store is open, on a hint (the layer
    records): layers stored already, here from the same image in other blobs, are not
    asked for; the first layer's blob is asked for before the config says what it is,
    and left unread."""
    lamina(store_root, "pull", f"{faulty.host}/test/pull:plain")
    faulty.reset()
    out = lamina(store_root, "pull", f"{faulty.host}/test/pull:gzip").stdout
    assert out.count("Already exists") == 3, out
    manifest = json.loads(skopeo("inspect", "--raw", "--tls-verify=false",
                                 f"docker://{pushed}:gzip"))
    later = [d["digest"] for d in manifest["layers"][1:]]
    asked = [p for m, p, _ in faulty.requests if m == "GET" and "/blobs/" in p]
    assert not [p for p in asked if any(d in p for d in later)], asked
    assert not list((store_root / "tmp").glob("pull-*.part"))


def test_downloads_begun_on_a_wrong_hint_are_cancelled(faulty, pushed: str,
                                                       store_root: Path) -> None:
    """Layer records gone (a repair brings them back): the fetcher takes the layers for
    missing and starts them; the open store says they are there, the downloads stop and
    leave no part file."""
    lamina(store_root, "pull", f"{faulty.host}/test/pull:plain")
    for record in (store_root / "layerdb").glob("*.json"):
        record.unlink()
    faulty.reset()
    out = lamina(store_root, "pull", f"{faulty.host}/test/pull:gzip").stdout
    assert out.count("Already exists") == 3 and "Pull complete" not in out, out
    assert not list((store_root / "tmp").glob("pull-*.part"))
    assert len(json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout)) == 3


def test_an_up_to_date_pull_leaves_no_download_begun_on_a_wrong_hint(
        faulty, pushed: str, store_root: Path) -> None:
    """The same image again with its layer records gone: the fetcher starts every layer
    on its hint, the store says the image is up to date (the pull never says what it
    wants), and those downloads, not wanted, leave no part file behind."""
    name = f"{faulty.host}/test/pull:plain"
    lamina(store_root, "pull", name)
    for record in (store_root / "layerdb").glob("*.json"):
        record.unlink()
    faulty.reset()
    assert "Image is up to date" in lamina(store_root, "pull", name).stdout
    assert [p for m, p, _ in faulty.requests if m == "GET" and "/blobs/" in p]  # the hint's
    assert not list((store_root / "tmp").glob("pull-*.part"))


def test_a_store_that_cannot_open_ends_the_fetcher_cleanly(pushed: str, tmp_path: Path) -> None:
    """The fetcher resolves and downloads before the pull opens the store; a store that
    then cannot be opened is the one error said, and the fetcher's reports end quietly."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "lamina.db").write_bytes(b"not a database " * 4096)
    failed = lamina(root, "pull", f"{pushed}:gzip", check=False)
    assert failed.returncode != 0
    assert "lamina: error:" in failed.stderr and "database" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr and "Exception in thread" not in failed.stderr


def test_a_pull_beside_other_threads_fetches_in_a_thread(pushed: str, store_root: Path) -> None:
    """Forking while another thread runs would copy the locks it holds: the fetcher runs
    as a thread instead, and leaves no pipe or process behind (the process's pool of
    keep-alive registry connections stays, as for any request)."""
    script = f"""
import json, os, threading, time
from lamina.core.cli.app import main
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
def no_fork():
    raise AssertionError("forked while another thread ran")
os.fork = no_fork
def pipes():
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += [fd] if os.readlink(f"/proc/self/fd/{{fd}}").startswith("pipe:") else []
        except OSError:
            pass  # the listing's own descriptor
    return sorted(found)
before = pipes()
status = main(["--root", {str(store_root)!r}, "pull", "-q", {pushed + ":gzip"!r}])
children = open(f"/proc/self/task/{{os.getpid()}}/children").read().split()
print(json.dumps([status, before, pipes(), children, threading.active_count()]))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    out = subprocess.run([LAMINA[0], "-c", script], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    status, before, after, children, threads = json.loads(out.stdout.strip().splitlines()[-1])
    assert status == 0 and children == [] and after == before, out.stdout
    assert threads <= 3, out.stdout  # ours, the sleeper and the process-wide hashing thread
    assert len(json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout)) == 3


def test_retries_429_and_500_then_gives_up(faulty, pushed: str, store_root: Path) -> None:
    faulty.fail_status, faulty.fail_times, faulty.retry_after = 429, 2, "0"
    name = f"{faulty.host}/test/pull:gzip"
    assert "Downloaded newer image" in lamina(store_root, "pull", name).stdout
    faulty.reset()
    faulty.fail_status, faulty.fail_times = 500, 1000
    lamina(store_root, "rmi", name)
    failed = lamina(store_root, "pull", name, check=False)
    assert failed.returncode == 1
    assert "500" in failed.stderr and "Traceback" not in failed.stderr
    assert json.loads(lamina(store_root, "images", "--format", "json").stdout) == []


def test_redirect_to_another_host_gets_no_credentials(faulty_basic, basic_registry,
                                                      layout: Path, store_root: Path,
                                                      tmp_path: Path) -> None:
    skopeo_copy(f"oci:{layout}:gzip", f"docker://{basic_registry.host}/redir/img:1",
                creds=basic_registry.creds)
    faulty_basic.redirect_blobs = True
    env = auth_file(tmp_path, faulty_basic.host, basic_registry.username,
                    basic_registry.password)
    out = lamina(store_root, "pull", f"{faulty_basic.host}/redir/img:1", env=env).stdout
    assert "Downloaded newer image" in out
    assert faulty_basic.side.requests, "the blobs were not fetched from the redirect target"
    assert all(auth is None for _, auth in faulty_basic.side.requests)


def test_malformed_challenge_is_one_clear_error(faulty_basic, basic_registry, layout: Path,
                                                store_root: Path) -> None:
    faulty_basic.challenge = 'Bearer realm="unterminated'
    failed = lamina(store_root, "pull", f"{faulty_basic.host}/any/img:1", check=False)
    assert failed.returncode == 1
    assert "WWW-Authenticate" in failed.stderr and "Traceback" not in failed.stderr


def put_manifest(registry, repo: str, tag: str, manifest: dict) -> None:
    body = json.dumps(manifest).encode()
    req = urllib.request.Request(
        f"http://{registry.host}/v2/{repo}/manifests/{tag}", data=body, method="PUT",
        headers={"Content-Type": manifest["mediaType"]})
    urllib.request.urlopen(req).close()


def test_config_disagreeing_with_the_layers_is_refused(busybox_tar: bytes, registry,
                                                       store_root: Path, tmp_path: Path) -> None:
    oci = tmp_path / "liar"
    write_oci_layout(oci, [busybox_tar], config_extra={
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "ab" * 32]}})
    skopeo_copy(f"oci:{oci}:latest", f"docker://{registry.host}/bad/diffids:1")
    failed = lamina(store_root, "pull", f"{registry.host}/bad/diffids:1", check=False)
    assert failed.returncode == 1
    assert "diff id" in failed.stderr and "Traceback" not in failed.stderr
    assert json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout) == []
    assert json.loads(lamina(store_root, "images", "--format", "json").stdout) == []


def test_unknown_layer_media_type_and_missing_blob(registry, layout: Path, store_root: Path,
                                                   tmp_path: Path) -> None:
    skopeo_copy(f"oci:{layout}:gzip", f"docker://{registry.host}/bad/base:1")
    manifest = json.loads(skopeo("inspect", "--raw", "--tls-verify=false",
                                 f"docker://{registry.host}/bad/base:1"))
    odd = json.loads(json.dumps(manifest))
    odd["layers"][0]["mediaType"] = "application/vnd.example.unknown"
    put_manifest(registry, "bad/base", "odd", odd)
    failed = lamina(store_root, "pull", f"{registry.host}/bad/base:odd", check=False)
    assert failed.returncode == 1
    assert "unknown media type" in failed.stderr
    # the registry refuses a manifest naming a blob it lacks, so the blob goes after the
    # manifest: deleted from this repository only (other repositories keep their link)
    skopeo_copy(f"oci:{layout}:gzip", f"docker://{registry.host}/bad/gone:1")
    layer = manifest["layers"][0]["digest"]
    urllib.request.urlopen(urllib.request.Request(
        f"http://{registry.host}/v2/bad/gone/blobs/{layer}", method="DELETE")).close()
    failed = lamina(store_root, "pull", f"{registry.host}/bad/gone:1", check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert layer.removeprefix("sha256:")[:12] in failed.stderr, failed.stderr
    assert json.loads(lamina(store_root, "images", "--format", "json").stdout) == []
    assert json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout) == []


def test_two_pulls_at_once_store_one_copy(pushed: str, store_root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    procs = [subprocess.Popen([*LAMINA, "--root", str(store_root), "pull", f"{pushed}:gzip"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    layers = json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout)
    assert len(layers) == 3
    assert not list((store_root / "tmp").glob("pull-*.part"))


def test_full_disk_mid_pull_is_a_clear_error_and_a_clean_store(busybox_tar: bytes, registry,
                                                               tmp_path: Path) -> None:
    from lamina.conformance.backing import BackingUnavailable, backing_filesystem

    big = tar_bytes([("file", f"big/{n}", os.urandom(1 << 20)) for n in range(40)])
    oci = tmp_path / "big"
    write_oci_layout(oci, [busybox_tar, big], compression=None)
    skopeo_copy(f"oci:{oci}:latest", f"docker://{registry.host}/big/img:1")
    try:
        with backing_filesystem("ext4", tmp_path / "fs", size_mb=48) as fs:
            root = fs.path / "root"
            failed = lamina(root, "pull", f"{registry.host}/big/img:1", check=False,
                            driver="vfs")
            assert failed.returncode == 1
            assert "space" in failed.stderr.lower() and "Traceback" not in failed.stderr
            assert json.loads(lamina(root, "images", "--format", "json").stdout) == []
            layers = json.loads(lamina(root, "layer", "ls", "--format", "json").stdout)
            assert len(layers) <= 1  # the base may be complete; the big layer is gone
            assert not list((root / "tmp").glob("pull-*.part"))
    except BackingUnavailable as exc:
        pytest.skip(str(exc))


def test_repair_after_a_lost_database_brings_the_images_back(pushed: str,
                                                             store_root: Path) -> None:
    """Layers come back from their records, images from theirs; prune then keeps them."""
    lamina(store_root, "pull", f"{pushed}:gzip")
    lamina(store_root, "tag", f"{pushed}:gzip", "kept/name:1")
    lamina(store_root, "pull", f"{pushed}:zstd")
    lamina(store_root, "rmi", f"{pushed}:zstd")  # one name of two: untagged only
    before = json.loads(lamina(store_root, "images", "--format", "json").stdout)
    for name in ("lamina.db", "lamina.db-wal", "lamina.db-shm"):
        (store_root / name).unlink(missing_ok=True)
    out = lamina(store_root, "system", "repair").stdout
    assert "recovered image" in out and "imagedb" not in out
    after = json.loads(lamina(store_root, "images", "--format", "json").stdout)
    assert sorted((r["ID"], r["Name"]) for r in after) == sorted(
        (r["ID"], r["Name"]) for r in before)
    assert len(after) == 2
    assert "Deleted layer" not in lamina(store_root, "prune").stdout
    assert "up to date" in lamina(store_root, "pull", f"{pushed}:gzip").stdout
