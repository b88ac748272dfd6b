"""Benchmark: cold `lamina pull` from a local registry vs `podman pull`, `layer apply`, skopeo.

Two images, made here and pushed with skopeo to a ``docker-registry`` this script
starts on 127.0.0.1 (storage in the workdir, on the machine's disk):

- **minbase**: the Debian minbase fixture as one gzip layer, the way Debian's
  container images ship it: without the downloaded packages debootstrap leaves in
  ``/var/cache/apt/archives`` (the ``apt-get clean`` every base image does). 61 MB
  gzip (level 6), the issue's "one 63 MB gzip layer"; 179 MB of tar. Made once and
  cached next to the fixture (``pull-minbase/``);
- **minbase-debs** (only when asked for; no target of its own): the fixture as
  debootstrap leaves it, .debs included (``minbase.tar.gz``: 93 MB gzip, 211 MB of
  tar): a third more to download for about the same apply;
- **layers**: six gzip layers, 256 MB of tar (110 MB gzip) in all: the minbase
  tar cut into five parts of about equal size (members in their order, a file
  going where its middle byte falls; a hard link whose target went into an
  earlier part becomes a copy), then a layer of 45 MB of generated files of
  mixed sizes (1,500 of 0.5-16 KiB, 50 of 100-600 KiB, 3 of 4 MiB; cut from the
  minbase tar at random offsets, so they compress like real files). Made once
  and cached next to the fixture (``pull-layers/``).

Per image, interleaved, each timed run on a new ext4 (a loop image in
/dev/shm mounted at WORKDIR/mnt, as in bench_apply.py) with an empty store:

- ``lamina pull -q`` (the whole command; the driver chosen automatically:
  overlay), its peak RSS taken from ``wait4``;
- ``podman pull`` (containers/storage overlay; runc);
- ``lamina layer apply`` of the same ``.tar.gz`` files from local disk (for
  *layers*: the six one after another, each on the previous, as six commands);
- ``skopeo copy`` to an OCI directory: download and verify only, the floor.

Targets (issue 11): minbase pull <= 0.35x podman and <= 1.15x the apply of
the same ``.tar.gz``; layers pull <= 0.35x podman and faster than the six
applies; peak RSS of every pull < 100 MB (minbase-debs is held to minbase's
targets in the report, not in the exit status). Ratios are best / best, as in the
other benchmarks (medians printed too). Exit 1 when a target is missed.
podman needs /etc/containers/containers.conf with no default ulimits and runc
here: written when absent. When other work loads the machine, run it under
``nice -n -10`` (every contender inherits it).

    .venv/bin/python bench/bench_pull.py [--runs 5] [--image minbase|minbase-debs|layers|both]
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from _common import (
    FIXTURES,
    Contender,
    FreshExt4,
    ensure_minbase,
    ensure_minbase_gz,
    fresh_first,
    precompile,
    race,
    run_measured,
)

from lamina.core.host.treecopy import remove_tree

PODMAN_RATIO = 0.35
APPLY_RATIO = 1.15
MAX_RSS_MB = 100
LAYER_PARTS = 5  # of the minbase tar; a sixth layer of generated files follows
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
CONTAINERS_CONF = Path("/etc/containers/containers.conf")


# -- the images ----------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def gzip_file(src: Path, dst: Path) -> None:
    with open(dst, "wb") as out:
        subprocess.run(["gzip", "-6", "-n", "-c", str(src)], stdout=out, check=True)


def split_minbase(tar: Path, outdir: Path, parts: int) -> list[Path]:
    """The minbase tar's members in order, cut into ``parts`` tars of ~equal data size."""
    with tarfile.open(tar) as src:
        members = src.getmembers()
        total = sum(m.size for m in members if m.isfile())
        part_of, n, done = {}, 0, 0  # member name -> the part it goes into
        for m in members:
            size = m.size if m.isfile() else 0
            # the part its middle byte falls in, never skipping one (a big file)
            n = max(n, min(n + 1, parts - 1, int((done + size / 2) * parts / total)))
            part_of[m.name] = n
            done += size
        paths = [outdir / f"part{n + 1}.tar" for n in range(parts)]
        for n, path in enumerate(paths):
            with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as out:
                for m in (m for m in members if part_of[m.name] == n):
                    if m.islnk() and part_of.get(m.linkname) != n:
                        # its target is in an earlier part: a copy instead
                        target = src.getmember(m.linkname)
                        copy = tarfile.TarInfo(m.name)
                        for attr in ("mode", "uid", "gid", "uname", "gname", "mtime",
                                     "pax_headers"):
                            setattr(copy, attr, getattr(m, attr))
                        copy.size = target.size
                        with src.extractfile(target) as data:
                            out.addfile(copy, data)
                    elif m.isfile():
                        with src.extractfile(m) as data:
                            out.addfile(m, data)
                    else:
                        out.addfile(m)
    return paths


def generated_layer(tar: Path, out_path: Path) -> None:
    """Files of mixed sizes under opt/generated, cut from the minbase tar at random offsets."""
    rng = random.Random(6)
    size = tar.stat().st_size
    sizes = ([rng.randint(512, 16 << 10) for _ in range(1500)]
             + [rng.randint(100 << 10, 600 << 10) for _ in range(50)] + [4 << 20] * 3)
    with open(tar, "rb") as src, tarfile.open(out_path, "w", format=tarfile.PAX_FORMAT) as out:
        for name in ("opt", "opt/generated"):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1767225600
            out.addfile(info)
        for n, length in enumerate(sizes):
            if n % 100 == 0:
                info = tarfile.TarInfo(f"opt/generated/d{n // 100:02d}")
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1767225600
                out.addfile(info)
            src.seek(rng.randrange(0, size - length))
            data = src.read(length)
            info = tarfile.TarInfo(f"opt/generated/d{n // 100:02d}/f{n:04d}.bin")
            info.size, info.mode, info.mtime = length, 0o644, 1767225600
            out.addfile(info, io.BytesIO(data))


def cached_layers(name: str, make_tars: Callable[[Path], list[Path]],
                  note: str | None = None) -> list[tuple[Path, str, int]]:
    """An image's gzip layers, made once under ``FIXTURES/name``: their ``.tar.gz`` files,
    diff ids and tar sizes.

    ``make_tars(tmp)`` writes the plain tars into ``tmp``; each is gzip'ed and listed in
    ``layers.json``. Built under a temporary name and renamed, under the fixtures' lock, so
    that a killed run never leaves half an image and two runs never build it twice.
    """
    home = FIXTURES / name
    index = home / "layers.json"
    with open(FIXTURES / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not index.is_file():
            if note:
                print(note, file=sys.stderr)
            tmp = FIXTURES / f"{name}.tmp-{os.getpid()}"
            remove_tree(tmp)
            tmp.mkdir()
            entries = []
            for t in make_tars(tmp):
                gz = t.with_name(t.name + ".gz")
                gzip_file(t, gz)
                entries.append({"file": gz.name, "diff_id": sha256_file(t),
                                "tar_size": t.stat().st_size})
                t.unlink()
            (tmp / "layers.json").write_text(json.dumps(entries, indent=1))
            remove_tree(home)
            os.rename(tmp, home)
    return [(home / e["file"], e["diff_id"], e["tar_size"]) for e in json.loads(index.read_text())]


def ensure_minbase_image() -> list[tuple[Path, str, int]]:
    """The minbase image's one layer (the module docstring), made once."""
    rootfs, _ = ensure_minbase()

    def make(tmp: Path) -> list[Path]:
        tar = tmp / "minbase.tar"
        subprocess.run(
            ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*",
             "--exclude=./var/cache/apt/archives/*.deb", "-C", str(rootfs),
             "-cf", str(tar), "."],
            check=True,
        )
        return [tar]

    return cached_layers("pull-minbase", make)


def ensure_layers() -> list[tuple[Path, str, int]]:
    """The six-layer image's layers (the module docstring), made once."""
    _, tar = ensure_minbase()

    def make(tmp: Path) -> list[Path]:
        tars = split_minbase(tar, tmp, LAYER_PARTS)
        tars.append(tmp / f"part{LAYER_PARTS + 1}.tar")
        generated_layer(tar, tars[-1])
        return tars

    return cached_layers("pull-layers", make, note="making the six-layer image (~1 min)")


def write_layout(layout: Path, tag: str, layers: list[tuple[Path, str, int]]) -> None:
    """Add an image of gzip ``layers`` (file, diff id) to the OCI layout at ``layout``."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def put(data: bytes | None = None, path: Path | None = None) -> tuple[str, int]:
        digest = sha256_file(path) if path else "sha256:" + hashlib.sha256(data).hexdigest()
        target = blobs / digest.removeprefix("sha256:")
        if not target.exists():
            if path:
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copyfile(path, target)
            else:
                target.write_bytes(data)
        return digest, target.stat().st_size

    descriptors = []
    for path, _, _ in layers:
        digest, size = put(path=path)
        descriptors.append({"mediaType": OCI_GZIP, "digest": digest, "size": size})
    from lamina.core.images.platform import host_platform

    host = host_platform()
    config = json.dumps({
        "created": "2026-12-05T00:00:00Z", "architecture": host.architecture, "os": host.os,
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [d for _, d, _ in layers]},
        "history": [{"created": "2026-12-05T00:00:00Z", "created_by": f"bench layer {n}"}
                    for n in range(len(layers))],
    }, sort_keys=True).encode()
    config_digest, config_size = put(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": descriptors,
    }, sort_keys=True).encode()
    digest, size = put(manifest)
    index_path = layout / "index.json"
    index = (json.loads(index_path.read_text()) if index_path.exists()
             else {"schemaVersion": 2, "manifests": []})
    index["manifests"].append({"mediaType": OCI_MANIFEST, "digest": digest, "size": size,
                               "annotations": {"org.opencontainers.image.ref.name": tag}})
    index_path.write_text(json.dumps(index))


# -- the registry (as tests/registries.py's start_registry, open, no auth) ------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(workdir: Path) -> tuple[subprocess.Popen, str]:
    """``docker-registry serve`` on 127.0.0.1:PORT, storage in ``workdir``; (process, host)."""
    binary = shutil.which("docker-registry")
    if binary is None:
        sys.exit("docker-registry is missing: apt-get install -y docker-registry")
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "config.yml"
    config.write_text("\n".join([
        "version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true",
        "storage:", "  filesystem:", f"    rootdirectory: {storage}",
        "http:", f"  addr: 127.0.0.1:{port}", "  secret: lamina-bench-secret", ""]))
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115 (the process keeps it)
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log,
                               start_new_session=True)
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            sys.exit(f"docker-registry exited: {(workdir / 'registry.log').read_text()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).close()
            return process, f"127.0.0.1:{port}"
        except urllib.error.HTTPError:
            return process, f"127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                stop_registry(process)
                sys.exit("docker-registry did not answer")
            time.sleep(0.05)


def stop_registry(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- running the contenders ----------------------------------------------------------------


def ensure_podman_conf() -> None:
    """podman needs these on this machine kind (no ulimits, runc); written only when absent."""
    if CONTAINERS_CONF.exists():
        return
    CONTAINERS_CONF.parent.mkdir(parents=True, exist_ok=True)
    CONTAINERS_CONF.write_text('[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n')


def contenders_for(name: str, reference: str, layers: list[Path], mnt: Path,
                   rss: list[int]) -> list[Contender]:
    lamina = [sys.executable, "-m", "lamina.core.cli"]

    def pull(i: int) -> None:
        rss.append(run_measured([*lamina, "--root", str(mnt / "lamina"), "pull", "-q",
                                 reference]))

    def podman(i: int) -> None:
        run_measured(["podman", "--root", str(mnt / "podman"), "--runroot",
                      str(mnt / "podman-run"), "pull", "-q", "--tls-verify=false", reference])

    def apply(i: int) -> None:
        parent = None
        for layer in layers:
            out = subprocess.run(
                [*lamina, "--root", str(mnt / "apply"), "layer", "apply", str(layer),
                 *(["--parent", parent] if parent else [])],
                check=True, stdout=subprocess.PIPE, text=True)
            parent = out.stdout.strip().splitlines()[-1]

    def skopeo(i: int) -> None:
        run_measured(["skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false",
                      f"docker://{reference}", f"oci:{mnt / 'oci'}:x"])

    n = len(layers)
    return [
        Contender("lamina pull", pull),
        Contender("podman pull", podman),
        Contender(f"lamina layer apply ({n} .tar.gz{', in order' if n > 1 else ''})", apply),
        Contender("skopeo copy to oci: (download+verify)", skopeo),
    ]


def spread(c: Contender) -> str:
    return f"{c.median:6.3f} s median  ({min(c.times):.3f}-{max(c.times):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each (default 5)")
    parser.add_argument("--workdir", type=Path, default=FIXTURES / "bench-pull",
                        help="scratch directory (registry storage, OCI layout; the fresh "
                             "filesystems are mounted at WORKDIR/mnt)")
    parser.add_argument("--image", choices=("minbase", "minbase-debs", "layers", "both"),
                        default="both", help="both: minbase and layers (default)")
    args = parser.parse_args()
    for tool in ("podman", "skopeo", "docker-registry"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install -y {tool}")
    images: dict[str, list[tuple[Path, str, int]]] = {}
    if args.image in ("minbase", "both"):
        images["minbase"] = ensure_minbase_image()
    if args.image == "minbase-debs":
        _, tar = ensure_minbase()
        gz = ensure_minbase_gz()
        images["minbase-debs"] = [(gz, sha256_file(tar), tar.stat().st_size)]
    if args.image in ("layers", "both"):
        images["layers"] = ensure_layers()
    ensure_podman_conf()
    precompile()
    remove_tree(args.workdir)
    args.workdir.mkdir(parents=True)
    layout, mnt = args.workdir / "oci", args.workdir / "mnt"
    registry, host = start_registry(args.workdir / "registry")
    fresh = FreshExt4(mnt, size_mb=3000)
    ok = True
    try:
        results = {}
        for name, layers in images.items():
            write_layout(layout, name, layers)
            subprocess.run(["skopeo", "--insecure-policy", "copy", "-q",
                            "--dest-tls-verify=false", f"oci:{layout}:{name}",
                            f"docker://{host}/bench/{name}:latest"], check=True)
            rss: list[int] = []
            contenders = contenders_for(name, f"{host}/bench/{name}:latest",
                                        [p for p, _, _ in layers], mnt, rss)
            for c in contenders:
                c.prepare = fresh_first(fresh, c.prepare)
            load_before = os.getloadavg()
            race(contenders, args.runs)
            results[name] = (layers, contenders, rss, load_before, os.getloadavg())
        print(f"\ncold pulls from docker-registry on {host}, each run on a new ext4 "
              f"(/dev/shm loop) with an empty store; {args.runs} runs each, interleaved; "
              f"{os.cpu_count()} cpus")
        for name, (layers, (pull, podman, apply, skopeo), rss, before, after) in results.items():
            gz = sum(p.stat().st_size for p, _, _ in layers)
            plain = sum(size for _, _, size in layers)
            print(f"\n{name}: {len(layers)} gzip layer(s), {gz / 1e6:.0f} MB compressed, "
                  f"{plain / 1e6:.0f} MB of tar; "
                  f"load average {before[0]:.2f} before, {after[0]:.2f} after")
            for c in (pull, podman, apply, skopeo):
                print(f"  {c.name:<42} {spread(c)}  runs "
                      + " ".join(f"{t:.2f}" for t in c.times))
            peak = max(rss) / 1e6
            checks = [
                ("pull / podman pull", pull.best / podman.best, pull.median / podman.median,
                 PODMAN_RATIO),
                (f"pull / {apply.name}", pull.best / apply.best, pull.median / apply.median,
                 APPLY_RATIO if len(layers) == 1 else 1.0),
            ]
            for label, best, median, target in checks:
                good = best <= target if target != 1.0 else best < target
                ok &= good or name == "minbase-debs"  # for information
                print(f"  {label:<54} {best:.2f}x (medians {median:.2f}x), target "
                      f"{'<=' if target != 1.0 else '<'} {target}x: {'OK' if good else 'MISSED'}")
            print(f"  {'pull / skopeo copy (for information)':<54} "
                  f"{pull.best / skopeo.best:.2f}x (medians {pull.median / skopeo.median:.2f}x)")
            ok &= peak < MAX_RSS_MB
            print(f"  peak RSS of lamina pull: {peak:.0f} MB (runs "
                  + " ".join(f"{r / 1e6:.0f}" for r in rss)
                  + f"), target < {MAX_RSS_MB} MB: {'OK' if peak < MAX_RSS_MB else 'MISSED'}")
    finally:
        fresh.close()
        stop_registry(registry)
        remove_tree(args.workdir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
