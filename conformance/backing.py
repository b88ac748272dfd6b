"""Backing filesystems for tests: real ext4, xfs, btrfs on loop devices, and tmpfs.

A driver is only as correct as the filesystem under it lets it be, so the
suite runs on several. Each filesystem lives in a sparse image file under a
work directory, is attached to a loop device and mounted below that same
directory. Everything made here is found again from the work directory, so a
run killed half-way is cleaned up by the next (:func:`cleanup_leftovers`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lamina.core.errors import LaminaError
from lamina.core.host import mounts

#: name -> (mkfs command, tools it needs); tmpfs needs none
FILESYSTEMS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "ext4": (["mkfs.ext4", "-q", "-F"], ("mkfs.ext4",)),
    # ext4 without the filetype feature: readdir reports no d_type (overlay refuses it)
    "ext4-nodtype": (["mkfs.ext4", "-q", "-F", "-O", "^filetype"], ("mkfs.ext4",)),
    "xfs": (["mkfs.xfs", "-q", "-f", "-n", "ftype=1"], ("mkfs.xfs",)),
    # ftype=0 needs the V4 on-disk format (crc=0), which newer kernels cannot mount
    "xfs-noftype": (["mkfs.xfs", "-q", "-f", "-m", "crc=0", "-n", "ftype=0"], ("mkfs.xfs",)),
    "btrfs": (["mkfs.btrfs", "-q", "-f"], ("mkfs.btrfs",)),
    "tmpfs": ([], ()),
}
DEFAULT_SIZE_MB = {kind: 1024 for kind in FILESYSTEMS}
IMAGE_SUFFIX = ".lamina-fs.img"


class BackingUnavailable(LaminaError):
    """This machine cannot make that filesystem (missing tool, kernel, loop devices)."""


@dataclass(frozen=True)
class Backing:
    """A mounted backing filesystem."""

    kind: str
    path: Path
    image: Path | None = None
    device: str | None = None


def unavailable_reason(kind: str) -> str | None:
    """Why ``kind`` cannot be made here, or None when it can (cheap checks only)."""
    if kind not in FILESYSTEMS:
        return f"unknown filesystem {kind!r}; choose from {', '.join(FILESYSTEMS)}"
    if os.geteuid() != 0:
        return "making and mounting filesystems needs root"
    _, tools = FILESYSTEMS[kind]
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/setup installs it)"
    fstype = kind.partition("-")[0]
    with open("/proc/filesystems") as f:
        known = {line.split()[-1] for line in f if line.strip()}
    if fstype not in known and not Path(f"/lib/modules/{os.uname().release}").exists():
        return f"the kernel has no {fstype} support"
    if tools and not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control is missing)"
    return None


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackingUnavailable(
            f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout.strip()


@contextlib.contextmanager
def backing_filesystem(
    kind: str, workdir: Path, *, size_mb: int | None = None, name: str | None = None
) -> Iterator[Backing]:
    """Make, mount and yield a fresh ``kind`` filesystem below ``workdir``; undo it after.

    Raises :class:`BackingUnavailable` with the reason when it cannot be made
    or mounted here (``xfs-noftype`` on a kernel without XFS V4, say).
    """
    reason = unavailable_reason(kind)
    if reason:
        raise BackingUnavailable(reason)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    name = name or kind
    point = workdir / name
    point.mkdir(exist_ok=True)
    size = size_mb or DEFAULT_SIZE_MB[kind]
    if kind == "tmpfs":
        _run(["mount", "-t", "tmpfs", "-o", f"size={size}m,mode=0755", "tmpfs", str(point)])
        try:
            yield Backing(kind, point)
        finally:
            _teardown(point, None, None)
        return
    image = workdir / f"{name}{IMAGE_SUFFIX}"
    with open(image, "wb") as f:
        f.truncate(size * 1024 * 1024)
    device = None
    try:
        mkfs, _ = FILESYSTEMS[kind]
        _run([*mkfs, str(image)])
        device = _run(["losetup", "--find", "--show", str(image)])
        fstype = kind.partition("-")[0]
        proc = subprocess.run(["mount", "-t", fstype, device, str(point)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            detail = _kernel_says(device) or proc.stderr.strip()
            raise BackingUnavailable(f"cannot mount {kind} here: {detail}")
        yield Backing(kind, point, image, device)
    finally:
        _teardown(point, device, image)


def _kernel_says(device: str) -> str | None:
    """The kernel's last message about ``device`` (why a mount was refused)."""
    proc = subprocess.run(["dmesg"], capture_output=True, text=True)
    short = os.path.basename(device)
    lines = [line for line in proc.stdout.splitlines() if f"({short})" in line]
    return lines[-1].split("]", 1)[-1].strip() if lines else None


def _teardown(point: Path, device: str | None, image: Path | None) -> None:
    for mounted in mounts.mounts_under(point, include_self=True):
        mounts.detach(Path(mounted))
    if device:
        subprocess.run(["losetup", "-d", device], capture_output=True)
    if image is not None:
        image.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        point.rmdir()


def cleanup_leftovers(workdir: Path) -> list[str]:
    """Unmount and detach what an interrupted run left below ``workdir``."""
    workdir = Path(workdir)
    done: list[str] = []
    if not workdir.exists():
        return done
    for mounted in mounts.mounts_under(workdir):
        mounts.detach(Path(mounted))
        done.append(f"unmounted {mounted}")
    listing = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                             capture_output=True, text=True).stdout
    base = str(workdir.resolve())
    for line in listing.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().startswith(base + "/"):
            subprocess.run(["losetup", "-d", parts[0]], capture_output=True)
            done.append(f"detached {parts[0]}")
    for image in workdir.glob(f"*{IMAGE_SUFFIX}"):
        image.unlink(missing_ok=True)
        done.append(f"removed {image}")
    return done
