"""What the benchmark scripts share: the Debian minbase fixture, timing, the result table.

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
