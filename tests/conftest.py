"""Shared fixtures: real directories, real mounts, real rootfs tarballs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lamina.core.host import mounts

REPO = Path(__file__).resolve().parent.parent
LAMINA = [sys.executable, "-m", "lamina.core.cli"]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, chown, mknod)")


def run_lamina(*args: str, root: Path | None = None, env: dict[str, str] | None = None,
               check: bool = True, input: bytes | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real CLI in a child process, as a user would."""
    cmd = [*LAMINA]
    if root is not None:
        cmd += ["--root", str(root)]
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("LAMINA_") or k.startswith("LAMINA_PROPERTY_")}
    full_env.update(env or {})
    proc = subprocess.run(cmd + list(args), capture_output=True, env=full_env, input=input,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"lamina {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stderr.decode(errors='replace')}"
        )
    return proc


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """No test reads the machine's own lamina configuration or environment.

    Case 44 draws the same examples in every run of this suite (a red run can be
    replayed); random exploration is `lamina conformance` run by hand.
    """
    for key in list(os.environ):
        if key.startswith("LAMINA_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
    # nor the machine's Docker credentials (read by lamina for hosts it has no login for)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path_factory.mktemp("docker-config")))
    monkeypatch.setenv("LAMINA_PROPERTY_DERANDOMIZE", "1")


@pytest.fixture
def store_root(tmp_path: Path) -> Iterator[Path]:
    """A store root on the machine's disk; any mount left below it fails the test."""
    root = tmp_path / "store"
    yield root
    leftover = mounts.mounts_under(tmp_path)
    for point in leftover:
        mounts.detach(Path(point))
    assert not leftover, f"mounts leaked under the store: {leftover}"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A fresh tmpfs mounted for this test only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    point = tmp_path / "tmpfs"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        for p in mounts.mounts_under(point, include_self=True):
            mounts.detach(Path(p))


def pip_install_target(src: Path, target: Path) -> None:
    """Install a package the way pip installs any driver package, offline, into ``target``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(src)],
        check=True, capture_output=True,
    )


def process_state(pid: int) -> str | None:
    """A process's state letter (Z: a zombie, dead), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return None


def child_pids(pid: int) -> list[int]:
    """The processes ``pid``'s main thread forked that still run or are unreaped."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def until(check: object, timeout: float = 10) -> None:
    """Wait for ``check()`` to hold (polled every 50 ms); fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def host_netns() -> Iterator[list[str]]:
    """The command prefix that runs something in a fresh network namespace (lo up).

    lamina run under it (nsenter into a sleeping holder) sets up its bridge, veths and
    nftables table there, never in the host's.
    """
    if not shutil.which("nsenter") or not shutil.which("unshare"):
        pytest.skip("util-linux's unshare and nsenter are needed")
    holder = subprocess.Popen(["unshare", "--net", "sh", "-c",
                               "ip link set lo up; exec sleep 600"])
    try:
        prefix = ["nsenter", f"--net=/proc/{holder.pid}/ns/net"]
        until(lambda: subprocess.run([*prefix, "ip", "link", "show", "lo"], capture_output=True,
                                     text=True).stdout.count("UP") > 0)
        yield prefix
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture(scope="session")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fuse-overlayfs example driver installed (put it on PYTHONPATH to use it)."""
    target = tmp_path_factory.mktemp("example-site")
    pip_install_target(REPO / "examples" / "lamina-fuse-overlayfs", target)
    return target


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real root filesystem tarball built from Debian's static busybox."""
    if not shutil.which("busybox") and not Path("/bin/busybox").exists():
        pytest.skip("busybox-static is not installed (.ci/setup installs it)")
    out = tmp_path_factory.mktemp("busybox") / "rootfs.tar"
    subprocess.run(["bash", str(REPO / "examples" / "busybox-rootfs.sh"), str(out)], check=True)
    return out


@pytest.fixture
def btrfs_root(tmp_path: Path) -> Iterator[Path]:
    """A fresh 256 MB btrfs on a loop device (skips with the reason where none can be made)."""
    from lamina.conformance.backing import BackingUnavailable, backing_filesystem

    pytest.importorskip("btrfsutil", reason="pip install 'lamina[btrfs]'")
    try:
        with backing_filesystem("btrfs", tmp_path / "fs", size_mb=256) as fs:
            yield fs.path
    except BackingUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=["ext4", "xfs", "btrfs", "tmpfs"])
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A fresh real filesystem of each kind, mounted for this test (skips with the reason)."""
    from lamina.conformance.backing import BackingUnavailable, backing_filesystem

    try:
        with backing_filesystem(request.param, tmp_path / "backing") as fs:
            yield fs.path
    except BackingUnavailable as exc:
        pytest.skip(str(exc))


# --- registries: real docker-registry processes on 127.0.0.1 (tests/registries.py) ------


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """An open ``docker-registry`` (no auth) on 127.0.0.1:PORT, for the whole session."""
    from registries import start_registry

    running = start_registry(tmp_path_factory.mktemp("registry-open"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """``docker-registry`` with htpasswd Basic auth; ``.username``/``.password`` log in."""
    from registries import start_registry

    running = start_registry(tmp_path_factory.mktemp("registry-basic"), auth="basic")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """``docker-registry`` with Bearer-token auth from a token server the test runs
    (``.token_server.requests`` records each token request)."""
    from registries import start_registry

    running = start_registry(tmp_path_factory.mktemp("registry-token"), auth="token")
    yield running
    running.stop()


@pytest.fixture
def faulty(registry: object) -> Iterator[object]:
    """A fault-injecting proxy (tests/faultyregistry.py) in front of the open registry."""
    from faultyregistry import FaultyRegistry

    proxy = FaultyRegistry(registry.host, registry.storage)  # type: ignore[attr-defined]
    yield proxy
    proxy.stop()


@pytest.fixture
def faulty_basic(basic_registry: object) -> Iterator[object]:
    """The fault-injecting proxy in front of the Basic-auth registry."""
    from faultyregistry import FaultyRegistry

    proxy = FaultyRegistry(basic_registry.host,  # type: ignore[attr-defined]
                           basic_registry.storage)  # type: ignore[attr-defined]
    yield proxy
    proxy.stop()


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Callable[..., subprocess.CompletedProcess]]:
    """podman with a store of its own under ``tmp_path`` (runc: crun refuses these hosts'
    cgroups)."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (.ci/setup installs it)")
    conf = Path("/etc/containers/containers.conf")
    if not conf.exists():  # what podman needs on these hosts (docs: this-machine)
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text('[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n')
    root = tmp_path / "podman-root"
    runroot = Path(tempfile.mkdtemp(prefix="lamina-podman-"))  # podman: at most 50 characters

    def run(*args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}  # the tests' empty one
        return subprocess.run(["podman", "--root", str(root), "--runroot", str(runroot), *args],
                              capture_output=True, text=True, timeout=300, check=False, env=env)

    yield run
    run("rmi", "-af")
    subprocess.run(["umount", "-R", str(root / "overlay")], capture_output=True, check=False)
    shutil.rmtree(runroot, ignore_errors=True)


@pytest.fixture
def secret_device(tmp_path: Path) -> Iterator[str]:
    """A loop device (its /dev path) whose first bytes are ``SECRET``: what a container
    must not read unless it was given the device; detached afterwards."""
    disk = tmp_path / "secret-disk.img"
    disk.write_bytes(b"SECRET" + bytes(1 << 20))
    loop = subprocess.run(["losetup", "-f", "--show", str(disk)], capture_output=True,
                          text=True, check=False)
    if loop.returncode != 0:
        pytest.skip(f"no loop device: {loop.stderr.strip()}")
    device = loop.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
