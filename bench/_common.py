"""What the benchmark scripts share: the Debian minbase fixture, timing, the result table,
and podman side by side (namespaces of the script's own, an isolated store and config).

The fixture is a real Debian rootfs made by debootstrap once and cached under
/var/tmp/lamina-fixtures (override with LAMINA_FIXTURES), so every benchmark
measures the same tree on the machine's real disk.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

FIXTURES = Path(os.environ.get("LAMINA_FIXTURES", "/var/tmp/lamina-fixtures"))
REPO = Path(__file__).resolve().parent.parent
#: lamina's packages, as folders of the repository (pyproject.toml's package-dir)
PACKAGE_DIRS = ("core", "drivers", "conformance")
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"


def ensure_minbase() -> tuple[Path, Path]:
    """The minbase rootfs directory and its tar, made with debootstrap when missing.

    A lock file makes concurrent benchmark runs wait for one debootstrap
    instead of starting several; both are built under temporary names and
    renamed, so a killed run never leaves a half fixture in place.
    """
    FIXTURES.mkdir(parents=True, exist_ok=True)
    rootfs, tar = FIXTURES / "minbase", FIXTURES / "minbase.tar"
    with open(FIXTURES / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not rootfs.is_dir():
            if shutil.which("debootstrap") is None:
                sys.exit("debootstrap is missing: apt-get install -y debootstrap")
            tmp = FIXTURES / f"minbase.tmp-{os.getpid()}"
            print(f"making the fixture: debootstrap --variant=minbase {SUITE} {rootfs} (~2 min)",
                  file=sys.stderr)
            subprocess.run(
                ["debootstrap", "--variant=minbase", SUITE, str(tmp), MIRROR],
                check=True, stdout=subprocess.DEVNULL,
            )
            os.rename(tmp, rootfs)
        if not tar.is_file():
            tmp_tar = FIXTURES / f"minbase.tar.tmp-{os.getpid()}"
            subprocess.run(
                ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*",
                 "-C", str(rootfs), "-cf", str(tmp_tar), "."],
                check=True,
            )
            os.rename(tmp_tar, tar)
    return rootfs, tar


def ensure_minbase_gz() -> Path:
    """The minbase tar gzip'ed (level 6, as registries' layers usually are), made once."""
    _, tar = ensure_minbase()
    gz = FIXTURES / "minbase.tar.gz"
    with open(FIXTURES / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not gz.is_file():
            tmp = FIXTURES / f"minbase.tar.gz.tmp-{os.getpid()}"
            with open(tmp, "wb") as out:
                subprocess.run(["gzip", "-6", "-c", str(tar)], stdout=out, check=True)
            os.rename(tmp, gz)
    return gz


def precompile() -> None:
    """Byte-compile lamina's modules before a timed command starts.

    With PYTHONDONTWRITEBYTECODE set (as here and in CI) no import writes a
    ``.pyc``, so every timed ``lamina`` start would compile its sources again:
    tens of milliseconds that an installed lamina never pays.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", *PACKAGE_DIRS], cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL)


def tree_stats(path: Path) -> tuple[int, int]:
    """(entries, bytes of regular files) below ``path``, for the report."""
    entries = size = 0
    for dirpath, dirnames, filenames in os.walk(path):
        entries += len(dirnames) + len(filenames)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                size += st.st_size
    return entries, size


class FreshExt4:
    """A new, empty ext4 mounted at ``mountpoint`` on each :meth:`remake`.

    The image lives in /dev/shm, so every run meets the same fresh inode allocator
    and no writeback of earlier runs: the noise of a long-used disk (slower run
    after run as deleted inodes pile up) stays out of the comparison. Both
    contenders get the same treatment.
    """

    def __init__(self, mountpoint: Path, size_mb: int = 1500) -> None:
        self.mountpoint = mountpoint
        self.image = Path("/dev/shm") / f"lamina-bench-{os.getpid()}.ext4"
        self.size_mb = size_mb

    def remake(self) -> None:
        self.close()
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as image:
            image.truncate(self.size_mb << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mountpoint)],
                       check=True)

    def close(self) -> None:
        if os.path.ismount(self.mountpoint):
            subprocess.run(["umount", str(self.mountpoint)], check=True)
        self.image.unlink(missing_ok=True)


def fresh_first(fresh: FreshExt4, prepare: Callable[[int], object]) -> Callable[[int], object]:
    """``prepare`` on a new filesystem: a contender's untimed step, each run."""

    def run(i: int) -> None:
        fresh.remake()
        prepare(i)

    return run


@dataclass
class Contender:
    """One way of doing the benchmarked work; ``prepare`` runs untimed before each run."""

    name: str
    run: Callable[[int], object]
    prepare: Callable[[int], object] = lambda i: None
    times: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def race(contenders: list[Contender], runs: int) -> None:
    """Time each contender ``runs`` times, interleaved, so drift hits all alike.

    Dirty pages of the previous run are flushed (sync) before each timed run:
    otherwise one contender pays for the other's writeback. Each run writes
    to a fresh destination and nothing is deleted until the end: ext4 avoids
    reusing inodes freed in the last minutes and scans past them
    (``recently_deleted``), which made delete-then-copy loops slower run
    after run for both contenders alike.
    """
    for i in range(runs):
        order = contenders if i % 2 == 0 else list(reversed(contenders))
        for c in order:
            c.prepare(i)
            os.sync()
            start = time.perf_counter()
            c.run(i)
            c.times.append(time.perf_counter() - start)


def report(title: str, lamina: Contender, reference: Contender, target: float,
           facts: list[tuple[str, str]], others: tuple[Contender, ...] = ()) -> bool:
    """Print facts, the timings and the ratio of best times; True if within target.

    ``others`` are shown for information (a lower-level path, say) and do not
    count for the target.
    """
    ratio = lamina.best / reference.best
    ok = ratio <= target
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text keeps the script usable without rich
        print(title)
        for key, value in facts:
            print(f"  {key}: {value}")
        for c in (lamina, reference, *others):
            print(f"  {c.name:<40} best {c.best:.3f} s  median {c.median:.3f} s  "
                  f"runs {' '.join(f'{t:.3f}' for t in c.times)}")
        print(f"  ratio {ratio:.2f}x (target <= {target}x): {'OK' if ok else 'MISSED'}; "
              f"median / median: {lamina.median / reference.median:.2f}x")
        return ok
    console = Console()
    table = Table(title=title)
    for col in ("", "best (s)", "median (s)", "runs (s)"):
        table.add_column(col, justify="left" if not col else "right")
    for c in (lamina, reference, *others):
        table.add_row(c.name, f"{c.best:.3f}", f"{c.median:.3f}",
                      " ".join(f"{t:.2f}" for t in c.times))
    for key, value in facts:
        console.print(f"[bold]{key}:[/bold] {value}")
    console.print(table)
    verdict = "[green]OK[/green]" if ok else "[red]MISSED[/red]"
    console.print(f"ratio (best / best): [bold]{ratio:.2f}x[/bold], target <= {target}x: {verdict}"
                  f"; median / median: {lamina.median / reference.median:.2f}x")
    return ok


# -- podman side by side: namespaces, config, measured commands (bench_run, bench_build) --

#: set in the environment of the re-executed script (inside the namespaces) to the
#: network namespace it was started in
NS_MARK = "LAMINA_BENCH_RUN_IN_NETNS"
#: podman's host-wide state, mounted over with an empty tmpfs in the private mount namespace
PODMAN_HOST_STATE = ("/dev/shm", "/var/lib/containers", "/run/netns")


def isolate(tools: tuple[str, ...] = ()) -> None:
    """Check the tools; re-execute the script in namespaces of its own, then prepare them.

    The first call (in the host's namespaces) never returns: it runs the script again
    under ``unshare --net --mount``. In the re-executed script it brings the loopback up
    and hides podman's host-wide state (:data:`PODMAN_HOST_STATE`) behind empty tmpfs.
    """
    for tool in ("podman", "runc", "unshare", "ip", *tools):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install -y podman runc util-linux "
                     "iproute2 nftables")
    if not os.environ.get(NS_MARK):
        reexec_in_namespaces()
    prepare_namespaces()


def reexec_in_namespaces() -> None:
    """Run this script again in a new network and mount namespace (never returns)."""
    env = {**os.environ, NS_MARK: os.readlink("/proc/self/ns/net")}
    argv = ["unshare", "--net", "--mount", "--propagation", "private", "--",
            sys.executable, *sys.argv]
    os.execvpe(argv[0], argv, env)


def prepare_namespaces() -> None:
    """Loopback up; podman's host-wide state paths hidden behind empty tmpfs."""
    if os.readlink("/proc/self/ns/net") == os.environ[NS_MARK]:
        sys.exit("refusing to run: still in the network namespace the script started in")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for path in PODMAN_HOST_STATE:
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", path], check=True)


def busybox_tar(out: Path) -> Path:
    """``out``: a busybox rootfs tar made by examples/busybox-rootfs.sh (busybox-static)."""
    busybox = Path(os.environ.get("BUSYBOX", "/bin/busybox"))
    if not busybox.is_file():
        sys.exit("no static busybox: apt-get install -y busybox-static")
    subprocess.run(["bash", str(REPO / "examples" / "busybox-rootfs.sh"), str(out)],
                   check=True, env={**os.environ, "BUSYBOX": str(busybox)})
    return out


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``argv`` (stdout discarded, stderr kept for errors); its peak RSS in bytes."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err.decode(errors='replace')}")
    return usage.ru_maxrss * 1024


class Podman:
    """podman with a store, runroot and configuration of its own (overlay, runc).

    The graph root is ``workdir/podman``; the runroot a short directory under /tmp
    (podman refuses a runroot path longer than 50 characters). ``containers.conf`` and
    ``storage.conf`` are the script's (``CONTAINERS_CONF``, ``CONTAINERS_STORAGE_CONF``:
    runc, no default ulimits, its tmp_dir and network config in the scratch directory),
    so the host's ``/etc/containers`` is not read.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.runroot = Path(tempfile.mkdtemp(prefix="lbr-", dir="/tmp"))
        conf = workdir / "podman-conf"
        conf.mkdir()
        (conf / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = []\n\n'
            f'[engine]\nruntime = "runc"\ntmp_dir = "{self.runroot / "libpod"}"\n\n'
            f'[network]\nnetwork_config_dir = "{workdir / "podman-networks"}"\n')
        (conf / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{workdir / "podman"}"\n'
            f'runroot = "{self.runroot / "storage"}"\n')
        env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}
        env["CONTAINERS_CONF"] = str(conf / "containers.conf")
        env["CONTAINERS_STORAGE_CONF"] = str(conf / "storage.conf")
        self.env = env
        self.argv = ["podman", "--root", str(workdir / "podman"), "--runroot",
                     str(self.runroot / "storage"), "--storage-driver", "overlay"]

    def run(self, *args: str) -> int:
        """``podman ARGS`` measured (:func:`run_measured`)."""
        return run_measured([*self.argv, *args], env=self.env)

    @staticmethod
    def version() -> str:
        return subprocess.run(["podman", "--version"], capture_output=True, text=True,
                              check=False).stdout.strip()


def lamina_argv(root: Path) -> list[str]:
    """The ``lamina`` command on the overlay driver and the store at ``root``."""
    return [sys.executable, "-m", "lamina.core.cli", "--driver", "overlay", "--root", str(root)]


def fresh_workdir(workdir: Path) -> None:
    """``workdir`` empty: mounts under it detached, its contents removed."""
    from lamina.core.host.treecopy import remove_tree

    subprocess.run(["umount", "-R", str(workdir)], capture_output=True, check=False)
    remove_tree(workdir)
    workdir.mkdir(parents=True)


def cleanup(*paths: Path) -> None:
    """Detach every mount under ``paths`` (deepest first) and remove them."""
    from lamina.core.host.treecopy import remove_tree

    for path in paths:
        subprocess.run(["umount", "-R", str(path)], capture_output=True, check=False)
    for point in sorted(mounts_under(*paths), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    for path in paths:
        remove_tree(path)


def mounts_under(*paths: Path) -> list[str]:
    prefixes = tuple(str(p) for p in paths)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefixes)]


def spread(c: Contender, unit: float = 1e3, suffix: str = "ms") -> str:
    """Median, interquartile range and min-max of ``c``'s times, in ``suffix``."""
    q = statistics.quantiles(c.times, n=4) if len(c.times) > 1 else [c.median] * 3
    return (f"{c.median * unit:7.1f} {suffix} median, IQR {q[0] * unit:.1f}-{q[2] * unit:.1f}, "
            f"min-max {min(c.times) * unit:.1f}-{max(c.times) * unit:.1f}")
