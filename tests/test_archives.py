"""``lamina save``, ``load`` and ``import`` with skopeo, umoci and podman as the referees.

Images are made here (busybox-static plus layers with whiteouts, an opaque directory,
hardlinks, odd modes and owners, as in test_pull), written by skopeo as docker and
OCI archives, loaded with the real CLI and the merged tree compared with umoci's
unpack; lamina's own archives are read by skopeo, pushed by it to the test
registry and pulled back, loaded by podman and run.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import subprocess
import tarfile
import time
from datetime import datetime
from hashlib import sha256
from pathlib import Path

import pytest
from conftest import needs_root, run_lamina
from images import skopeo, skopeo_copy, write_oci_layout
from test_pull import image_layers, lamina, tar_bytes, top_layer

from lamina.conformance.trees import Tree, compare, snapshot

pytestmark = [needs_root]

REPO_ROOT = Path(__file__).resolve().parent.parent
DRIVERS = ["vfs", "overlay"]


@pytest.fixture(scope="module")
def busybox_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    if not Path("/bin/busybox").exists():
        pytest.skip("busybox-static is not installed (.ci/setup installs it)")
    out = tmp_path_factory.mktemp("busybox") / "rootfs.tar"
    subprocess.run(["bash", str(REPO_ROOT / "examples/busybox-rootfs.sh"), str(out)], check=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def layout(busybox_bytes: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout with the three-layer image, gzip layers, tagged ``img``."""
    path = tmp_path_factory.mktemp("layout") / "oci"
    write_oci_layout(path, image_layers(busybox_bytes), compression="gzip", tag="img")
    return path


@pytest.fixture(scope="module")
def umoci_rootfs(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed (.ci/setup installs it)")
    bundle = tmp_path_factory.mktemp("umoci") / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:img", str(bundle)], check=True,
                   capture_output=True)
    return bundle / "rootfs"


def mounted_tree(root: Path, name: str, driver: str | None = None) -> Tree:
    top = top_layer(root, name)
    path = Path(lamina(root, "layer", "mount", top, driver=driver).stdout.strip())
    try:
        return snapshot(path, subsecond=False)
    finally:
        lamina(root, "layer", "unmount", top, driver=driver)


def same_tree(reference: Tree, tree: Tree) -> list[str]:
    problems = compare(reference, tree, mtime_kinds={"file", "symlink"})
    # the root directory's own metadata is the unpacker's choice, not the image's
    return [p for p in problems if not p.startswith("/:") and not p.startswith(":")]


def image_id(root: Path, name: str) -> str:
    return json.loads(lamina(root, "inspect", name).stdout)[0]["Id"]


def load(root: Path, *args: str, driver: str | None = None, stdin: bytes | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    extra = ["--driver", driver] if driver else []
    return run_lamina(*extra, "load", *args, root=root, input=stdin, check=check)


# -- skopeo's archives, loaded ---------------------------------------------------------


@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive"])
def test_load_of_skopeos_archive_equals_umocis_unpack(layout: Path, umoci_rootfs: Path,
                                                      store_root: Path, tmp_path: Path,
                                                      transport: str) -> None:
    archive = tmp_path / "image.tar"
    skopeo_copy(f"oci:{layout}:img", f"{transport}:{archive}:test/archive:1")
    out = load(store_root, "-i", str(archive)).stdout.decode()
    assert out == "Loaded image: test/archive:1\n"
    problems = same_tree(snapshot(umoci_rootfs, subsecond=False),
                         mounted_tree(store_root, "test/archive:1"))
    assert problems == []
    # the config is the layout's: the same image id
    manifest = json.loads(skopeo("inspect", "--raw", f"oci:{layout}:img"))
    assert image_id(store_root, "test/archive:1") == manifest["config"]["digest"]


def test_load_from_a_pipe_and_gzip_compressed(layout: Path, store_root: Path,
                                              tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    skopeo_copy(f"oci:{layout}:img", f"docker-archive:{archive}:test/pipe:1")
    out = load(store_root, stdin=gzip.compress(archive.read_bytes(), 1)).stdout.decode()
    assert out == "Loaded image: test/pipe:1\n"
    assert list((store_root / "tmp").glob("ingest-*")) == []  # the spool is gone
    # a plain archive through a real pipe: `cat archive | lamina load`
    cat = subprocess.Popen(["cat", str(archive)], stdout=subprocess.PIPE)
    proc = subprocess.run([*run_lamina_cmd(store_root), "load", "-q"], stdin=cat.stdout,
                          capture_output=True, check=False)
    cat.wait()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b""
    layers = json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout)
    assert len(layers) == 3


def run_lamina_cmd(root: Path) -> list[str]:
    from conftest import LAMINA

    return [*LAMINA, "--root", str(root)]


# -- lamina's archives, read by the others ---------------------------------------------


@pytest.fixture
def loaded(layout: Path, store_root: Path, tmp_path: Path) -> str:
    """The test image loaded into ``store_root`` from skopeo's OCI archive (blobs kept)."""
    archive = tmp_path / "skopeo.tar"
    skopeo_copy(f"oci:{layout}:img", f"oci-archive:{archive}:test/saved:1")
    load(store_root, "-i", str(archive))
    return "test/saved:1"


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_saved_archive_is_read_by_skopeo_and_pulled_back(loaded: str, store_root: Path,
                                                         tmp_path: Path, registry,
                                                         fmt: str) -> None:
    archive = tmp_path / "saved.tar"
    lamina(store_root, "save", "--format", fmt, "-o", str(archive), loaded)
    info = json.loads(skopeo("inspect", f"{fmt}:{archive}"))
    config = json.loads(lamina(store_root, "inspect", loaded).stdout)[0]
    assert info["Layers"] != [] and len(info["Layers"]) == 3
    if fmt == "docker-archive":  # Docker's manifest.json names it as Docker does
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == ["test/saved:1"]
    # skopeo copies it into the registry; lamina pulls it back into a new store
    target = f"{registry.host}/archives/{fmt}:1"
    skopeo_copy(f"{fmt}:{archive}", f"docker://{target}")
    fresh = tmp_path / "fresh"
    lamina(fresh, "pull", target)
    assert image_id(fresh, target) == config["Id"]
    assert same_tree(mounted_tree(store_root, loaded), mounted_tree(fresh, target)) == []


def test_saved_manifest_is_the_stored_one(loaded: str, store_root: Path, tmp_path: Path) -> None:
    """A save of an image whose blobs are all kept carries its exact manifest bytes."""
    out = tmp_path / "layout"
    lamina(store_root, "save", "--format", "oci-dir", "-o", str(out), loaded)
    stored = json.loads(lamina(store_root, "inspect", loaded).stdout)[0]["Manifest"]["Digest"]
    index = json.loads((out / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [stored]
    assert index["manifests"][0]["annotations"] == {
        "io.containerd.image.name": "docker.io/test/saved:1",
        "org.opencontainers.image.ref.name": "1"}
    skopeo("inspect", f"oci:{out}")  # a valid layout for skopeo too


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive", "oci-dir"])
def test_round_trip_gives_the_same_image_and_tree(layout: Path, tmp_path: Path, driver: str,
                                                  fmt: str) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    archive = tmp_path / "skopeo.tar"
    skopeo_copy(f"oci:{layout}:img", f"docker-archive:{archive}:test/round:1")
    load(first, "-i", str(archive), driver=driver)
    saved = tmp_path / ("saved" if fmt == "oci-dir" else "saved.tar")
    lamina(first, "save", "--format", fmt, "-o", str(saved), "test/round:1", driver=driver)
    out = load(second, "-i", str(saved), driver=driver).stdout.decode()
    assert out == "Loaded image: test/round:1\n"
    assert image_id(second, "test/round:1") == image_id(first, "test/round:1")
    assert same_tree(mounted_tree(first, "test/round:1", driver),
                     mounted_tree(second, "test/round:1", driver)) == []


def test_save_to_stdout_and_by_id(loaded: str, store_root: Path, tmp_path: Path) -> None:
    ident = image_id(store_root, loaded)
    proc = run_lamina("save", ident[7:19], root=store_root)
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest[0]["RepoTags"] is None  # saved by id: no name, as Docker
    assert manifest[0]["Config"] == f"blobs/sha256/{ident[7:]}"
    fresh = tmp_path / "fresh"
    out = load(fresh, stdin=proc.stdout).stdout.decode()
    assert out == f"Loaded image ID: {ident}\n"


@pytest.mark.parametrize("blob", ["pruned", "damaged"])
def test_save_without_the_kept_blob_exports_the_layers(blob: str, busybox_tar: Path,
                                                       store_root: Path,
                                                       tmp_path: Path) -> None:
    """The original blob is gone, or its bytes changed on disk: the layer is exported again;
    if its bytes differ from the DiffID, the archive holds the image under a new config,
    with a warning."""
    ident = run_lamina("import", str(busybox_tar), "bb:1", root=store_root).stdout.decode()
    if blob == "pruned":
        lamina(store_root, "prune", "--blobs")
    else:
        kept = store_root / "blobs" / "sha256" / sha256(busybox_tar.read_bytes()).hexdigest()
        with open(kept, "r+b") as f:  # as a power loss can leave a file: same size
            f.seek(kept.stat().st_size // 2)
            f.write(b"\xff" * 64)
    archive = tmp_path / "saved.tar"
    proc = lamina(store_root, "save", "-o", str(archive), "bb:1")
    if blob == "damaged":
        assert "was damaged on disk" in proc.stderr
        assert not kept.exists()
    fresh = tmp_path / "fresh"
    load(fresh, "-i", str(archive))
    new_id = image_id(fresh, "bb:1")
    exported = tmp_path / "layer.tar"
    lamina(store_root, "layer", "diff", top_layer(store_root, "bb:1"), "-o", str(exported))
    if exported.read_bytes() == busybox_tar.read_bytes():
        assert new_id == ident.strip() and "exported again" not in proc.stderr
    else:
        assert new_id != ident.strip()
        assert "lamina: warning: bb:1: layer 0 had to be exported again" in proc.stderr
        assert f"new config, id {new_id}" in proc.stderr
    assert same_tree(mounted_tree(store_root, "bb:1"), mounted_tree(fresh, "bb:1")) == []


def test_save_refuses_a_terminal_and_an_unknown_image(loaded: str, store_root: Path,
                                                      tmp_path: Path) -> None:
    proc = run_lamina("save", "-o", str(tmp_path / "x.tar"), "nobody/none:1", root=store_root,
                      check=False)
    assert proc.returncode == 1
    assert b"no such image: nobody/none:1" in proc.stderr
    assert not (tmp_path / "x.tar").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".x.tar")] == []
    command = [*run_lamina_cmd(store_root), "save", loaded]
    script = f"import pty, sys; sys.exit(pty.spawn({command!r}) >> 8)"
    proc = subprocess.run([*run_lamina_cmd(store_root)[:1], "-c", script], capture_output=True,
                          check=False)
    assert proc.returncode == 1
    assert b"refusing to write an image archive to a terminal" in proc.stdout


# -- podman ------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["loaded", "imported"])
def test_podman_loads_lamina_archive_and_runs_it(loaded: str, busybox_tar: Path,
                                                 store_root: Path, tmp_path: Path, podman,
                                                 source: str) -> None:
    name = loaded
    if source == "imported":  # an uncompressed layer blob, kept from the import
        run_lamina("import", "-c", 'CMD ["/bin/sh"]', str(busybox_tar), "test/imported:1",
                   root=store_root)
        name = "test/imported:1"
    archive = tmp_path / "saved.tar"
    lamina(store_root, "save", "-o", str(archive), name)
    proc = podman("load", "-i", str(archive))
    assert proc.returncode == 0, proc.stderr
    proc = podman("run", "--rm", "--pull", "never", "--net", "none", f"docker.io/{name}",
                  "/bin/busybox", "echo", "hi")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi\n"


# -- import ----------------------------------------------------------------------------


def test_import_with_changes(busybox_tar: Path, store_root: Path, tmp_path: Path) -> None:
    gz = tmp_path / "rootfs.tar.gz"
    gz.write_bytes(gzip.compress(busybox_tar.read_bytes(), 1))
    changes = ['CMD ["sh", "-c", "echo hi"]', "ENTRYPOINT /bin/busybox", "ENV A=1 B=\"x y\"",
               "ENV OLD form value", "WORKDIR /srv", "WORKDIR app", "USER 1000:1000",
               "LABEL org.example=yes", "EXPOSE 80 53/udp", "STOPSIGNAL SIGTERM",
               'CMD ["sh"]']
    args = [a for change in changes for a in ("--change", change)]
    ident = run_lamina("import", "-m", "made here", *args, str(gz), "local/app:v1",
                       root=store_root).stdout.decode().strip()
    info = json.loads(lamina(store_root, "inspect", "local/app:v1").stdout)[0]
    assert info["Id"] == ident
    assert info["Config"] == {
        "Cmd": ["sh"], "Entrypoint": ["/bin/sh", "-c", "/bin/busybox"],
        "Env": ["A=1", "B=x y", "OLD=form value"], "WorkingDir": "/srv/app",
        "User": "1000:1000", "Labels": {"org.example": "yes"},
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}}, "StopSignal": "SIGTERM"}
    history = json.loads(lamina(store_root, "history", "--format", "json", ident).stdout)
    assert history[0]["Comment"] == "made here"
    # Go's RFC3339Nano, as Docker's: a fraction of a second (trailing zeros cut)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{0,5}[1-9]Z", info["Created"])
    assert abs(datetime.fromisoformat(info["Created"]).timestamp() - time.time()) < 60
    # the gzip file is the layer's blob, as given: a save sends those bytes
    layers = json.loads(lamina(store_root, "inspect", ident).stdout)[0]["RootFS"]["Layers"]
    import hashlib

    blob = "sha256:" + hashlib.sha256(gz.read_bytes()).hexdigest()
    assert (store_root / "blobs/sha256" / blob[7:]).read_bytes() == gz.read_bytes()
    assert layers == ["sha256:" + hashlib.sha256(busybox_tar.read_bytes()).hexdigest()]
    out = tmp_path / "layout"
    lamina(store_root, "save", "--format", "oci-dir", "-o", str(out), "local/app:v1")
    assert (out / "blobs/sha256" / blob[7:]).read_bytes() == gz.read_bytes()
    assert list((store_root / "tmp").glob("ingest-*")) == []


def test_import_from_stdin(busybox_tar: Path, store_root: Path) -> None:
    ident = run_lamina("import", "-", root=store_root,
                       input=busybox_tar.read_bytes()).stdout.decode().strip()
    assert ident.startswith("sha256:")
    images = json.loads(lamina(store_root, "images", "--format", "json").stdout)
    assert [(r["ID"], r["Repository"]) for r in images] == [(ident, "<none>")]


@pytest.mark.parametrize("change, message", [
    ("RUN echo hi", "RUN cannot be applied by import"),
    ("CMD [1, 2]", "the JSON form is a list of strings"),
    ("EXPOSE 99999", "is not PORT"),
    ("ENV =x", "is not KEY=VALUE"),
    ("LABEL novalue", "is not KEY=VALUE"),
    ("USER", "USER needs an argument"),
    ("HEALTHCHECK --every=1s CMD true", "unknown HEALTHCHECK option"),
    ("HEALTHCHECK --interval=1us CMD true", "at least 1ms"),
    ("HEALTHCHECK --retries=0 CMD true", "--retries must be at least 1"),
    ("HEALTHCHECK CMD", "write HEALTHCHECK"),
])
def test_import_refuses_a_bad_change(busybox_tar: Path, store_root: Path, change: str,
                                     message: str) -> None:
    proc = run_lamina("import", "--change", change, str(busybox_tar), root=store_root,
                      check=False)
    assert proc.returncode == 1
    lines = proc.stderr.decode().splitlines()
    assert message in lines[0] and lines[1].startswith("hint: ")
    assert not (store_root / "blobs").exists() or not list((store_root / "blobs").rglob("*?"))


# -- hostile archives ------------------------------------------------------------------------


def tar_of(members: list[tuple[str, bytes | str]]) -> bytes:
    """A tar of (name, data) files; data as str is a symlink's target."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def docker_archive(layers: list[bytes], *, diff_ids: list[str] | None = None,
                   config_path: str = "config.json", layer_paths: list[str] | None = None,
                   extra: list[tuple[str, bytes | str]] | None = None,
                   manifest: bytes | None = None) -> bytes:
    import hashlib

    diff_ids = diff_ids or ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    paths = layer_paths or [f"l{n}/layer.tar" for n in range(len(layers))]
    members: list[tuple[str, bytes | str]] = [("config.json", config)]
    members += [(f"l{n}/layer.tar", t) for n, t in enumerate(layers)]
    members += extra or []
    members.append(("manifest.json", manifest or json.dumps(
        [{"Config": config_path, "RepoTags": ["evil/img:1"], "Layers": paths}]).encode()))
    return tar_of(members)


def hostile_cases() -> dict[str, tuple[object, str]]:
    one = tar_bytes([("file", "a.txt", b"a")])
    two = tar_bytes([("file", "b.txt", b"b")])
    return {
        "dotdot-layer": (lambda: docker_archive([one], layer_paths=["../x/layer.tar"]),
                         "a path outside the archive"),
        "absolute-config": (lambda: docker_archive([one], config_path="/etc/passwd"),
                            "an absolute path"),
        "missing-layer": (lambda: docker_archive([one], layer_paths=["nope/layer.tar"]),
                          "has no 'nope/layer.tar'"),
        "missing-config": (lambda: docker_archive([one], config_path="nope.json"),
                           "has no 'nope.json'"),
        "symlink-layer": (lambda: docker_archive(
            [one], layer_paths=["link.tar"], extra=[("link.tar", "/etc/passwd")]),
            "'link.tar' is a symlink"),
        "repeated-member": (lambda: docker_archive([one], extra=[("l0/layer.tar", two)]),
                            "more than once"),
        "diff-ids-count": (lambda: docker_archive([one, two], diff_ids=[
            "sha256:" + "0" * 64]), "lists 1 layer diff ids but the image has 2"),
        # the second layer's content is not the diff id the config names: the first,
        # applied already, is removed again
        "wrong-diff-id": (lambda: docker_archive([one, two], diff_ids=[
            "sha256:" + __import__("hashlib").sha256(one).hexdigest(), "sha256:" + "1" * 64]),
            "but the image config says"),
        "huge-manifest": (lambda: docker_archive([one], manifest=b"[" + b" " * (5 << 20) + b"]"),
                          "more than the 4194304 allowed"),
        "manifest-not-list": (lambda: docker_archive([one], manifest=b'{"a": 1}'),
                              "manifest.json is not a list of objects"),
        "not-an-archive": (lambda: b"hello, this is not a tar archive" * 100,
                           "not a readable tar archive"),
        "neither-manifest": (lambda: tar_of([("x", b"y")]), "neither manifest.json nor"),
    }


@pytest.mark.parametrize("case", list(hostile_cases()))
def test_hostile_archive_is_refused_and_leaves_nothing(case: str, store_root: Path) -> None:
    make, message = hostile_cases()[case]
    proc = load(store_root, stdin=make(), check=False)  # type: ignore[operator]
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("lamina: error: ") and \
        lines[1].startswith("hint: "), err
    assert message in lines[0]
    assert "--debug" not in err
    if store_root.exists():
        assert json.loads(lamina(store_root, "images", "--format", "json").stdout) == []
        assert json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout) == []
        assert list((store_root / "tmp").glob("ingest-*")) == []


def test_oci_layout_blob_of_the_wrong_size_or_digest(busybox_bytes: bytes, store_root: Path,
                                                     tmp_path: Path) -> None:
    layout = tmp_path / "oci"
    write_oci_layout(layout, [tar_bytes([("file", "a", b"a")]), tar_bytes([("file", "b", b"b")])],
                     compression="gzip", tag="evil/img:1")
    index = json.loads((layout / "index.json").read_text())
    manifest_path = layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]
    manifest = json.loads(manifest_path.read_text())
    top = layout / "blobs/sha256" / manifest["layers"][1]["digest"][7:]
    blob = bytearray(top.read_bytes())
    blob[4] ^= 1  # the gzip header's mtime: the same size and content, another digest
    top.write_bytes(bytes(blob))
    proc = load(store_root, "-i", str(layout), check=False)
    assert proc.returncode == 1
    assert b"does not match its digest" in proc.stderr
    assert json.loads(lamina(store_root, "layer", "ls", "--format", "json").stdout) == []
    top.write_bytes(b"x")
    proc = load(store_root, "-i", str(layout), check=False)
    assert proc.returncode == 1
    assert b"is 1 bytes, but the manifest says" in proc.stderr
    # a symlink in the layout directory is refused, not followed
    top.unlink()
    top.symlink_to("/etc/passwd")
    proc = load(store_root, "-i", str(layout), check=False)
    assert proc.returncode == 1
    assert b"is a symlink" in proc.stderr


def test_gzip_of_a_docker_archive_with_old_layout_loads(busybox_bytes: bytes,
                                                        store_root: Path) -> None:
    """The old ``<id>/layer.tar`` form, checked by DiffID only; the blob is kept."""
    layers = [busybox_bytes, tar_bytes([("file", "etc/motd", b"old form\n")])]
    data = gzip.compress(docker_archive(layers), 1)
    assert load(store_root, stdin=data).stdout == b"Loaded image: evil/img:1\n"
    tree = mounted_tree(store_root, "evil/img:1")
    assert "etc/motd" in tree.entries and "bin/busybox" in tree.entries
    for layer in layers:
        import hashlib

        assert (store_root / "blobs/sha256" / hashlib.sha256(layer).hexdigest()).exists()


def test_images_filters_as_dockers(busybox_tar: Path, store_root: Path) -> None:
    def make(name: str | None, *labels: str) -> str:
        args = [a for label in labels for a in ("--change", f"LABEL {label}")]
        return run_lamina("import", *args, str(busybox_tar), *([name] if name else []),
                          root=store_root).stdout.decode().strip()

    # an image's creation time has whole seconds: one second apart, before and since
    # have an order to go by
    a = make("local/a:1", "tier=web")
    time.sleep(1.05)
    b = make("local/b:1", "tier=db")
    time.sleep(1.05)
    c = make("other/c:2")
    dangling = make(None, "tier=web", "other=1")

    def ids(*filters: str) -> set[str]:
        args = [a for f in filters for a in ("--filter", f)]
        return {r["ID"] for r in json.loads(
            lamina(store_root, "images", "--format", "json", *args).stdout)}

    assert ids("dangling=true") == {dangling}
    assert ids("dangling=false") == {a, b, c}
    assert ids("reference=local/*") == {a, b}
    assert ids("reference=local/*:1", "reference=other/c") == {a, b, c}  # alternatives
    assert ids("reference=*") == set()  # * stays within one path component
    assert ids("label=tier") == {a, b, dangling}
    assert ids("label=tier=web") == {a, dangling}
    assert ids("label=tier=web", "dangling=false") == {a}  # different keys: both hold
    assert ids("before=local/b:1") == {a}
    assert ids("since=local/b:1") == {c, dangling}
    quiet = lamina(store_root, "image", "ls", "-q", "-f", "dangling=true").stdout.split()
    assert quiet == [dangling[7:19]]
    for bad, message in (("nope=1", "invalid filter 'nope=1'"), ("dangling", "invalid filter"),
                         ("dangling=maybe", "invalid value for the dangling filter"),
                         ("since=local/nosuch:1", "no such image")):
        proc = lamina(store_root, "images", "-f", bad, check=False)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr


def test_format_templates_of_images_and_inspect(busybox_tar: Path, store_root: Path) -> None:
    ident = run_lamina("import", "--change", "LABEL tier=web", str(busybox_tar), "local/t:1",
                       root=store_root).stdout.decode().strip()
    lamina(store_root, "tag", "local/t:1", "local/t:2")
    out = lamina(store_root, "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
    assert out.splitlines() == [f"local/t:1 {ident[7:19]}", f"local/t:2 {ident[7:19]}"]
    table = lamina(store_root, "image", "ls", "--format", r"table {{.Tag}}\t{{.Size}}").stdout
    assert [line.split() for line in table.splitlines()] == [
        ["TAG", "SIZE"], ["1", *table.splitlines()[1].split()[1:]],
        ["2", *table.splitlines()[2].split()[1:]]]
    out = lamina(store_root, "inspect", "-f",
                 "{{.Id}}|{{range .RepoTags}}{{.}},{{end}}|{{.Config.Labels.tier}}|"
                 "{{json .RootFS.Type}}", "local/t:1").stdout
    assert out == f"{ident}|local/t:1,local/t:2,|web|\"layers\"\n"
    history = lamina(store_root, "history", "--format", "{{.ID}} {{.CreatedBy}} {{.Size}}",
                     "local/t:1").stdout
    assert history.split(" ", 2)[:2] == [ident[7:19], "lamina"] and history.endswith("B\n")
    bad = lamina(store_root, "inspect", "--format", "{{.Id", "local/t:1", check=False)
    assert bad.returncode == 1 and bad.stdout == ""
    assert "bad --format template" in bad.stderr and "Traceback" not in bad.stderr


def test_healthcheck_changes_take_dockers_shape() -> None:
    from lamina.core.images.instructions import apply_changes

    assert apply_changes({}, ['HEALTHCHECK --interval=1m30s --retries=2 CMD ["test", "-e", '
                              '"/ok"]'])["Healthcheck"] == {
        "Test": ["CMD", "test", "-e", "/ok"], "Interval": 90_000_000_000, "Retries": 2}
    assert apply_changes({}, ["HEALTHCHECK --timeout=3s CMD curl -f http://localhost/"])[
        "Healthcheck"] == {"Test": ["CMD-SHELL", "curl -f http://localhost/"],
                           "Timeout": 3_000_000_000}
    assert apply_changes({"Healthcheck": {"Test": ["CMD", "x"]}}, ["HEALTHCHECK NONE"])[
        "Healthcheck"] == {"Test": ["NONE"]}
