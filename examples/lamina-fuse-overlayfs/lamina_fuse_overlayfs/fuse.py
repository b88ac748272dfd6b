"""Running fuse-overlayfs: mount a layer stack, find its daemon, unmount and wait for it.

fuse-overlayfs is a user-space program: every mount is served by a daemon
process that outlives the command which started it (``lamina layer mount``
returns, the mount stays). Unmounting only asks the kernel to drop the
mount; the daemon then exits on its own, still holding files of the
backing filesystem until it does. :func:`unmount` waits for it, so a caller
that unmounts a backing filesystem right after finds it idle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from lamina.core.errors import DriverError
from lamina.core.host import mounts

PROGRAM = "fuse-overlayfs"
#: how long an unmount waits for the daemon to exit (a 500-layer daemon needs ~1.5 s)
DAEMON_EXIT_TIMEOUT = 10.0
#: options of every mount. ``static_nlink`` (directories report st_nlink 1, as on btrfs):
#: fuse-overlayfs 1.10 re-reads a directory from all layers to count its subdirectories,
#: and a re-read resets a child directory made where a lower one was deleted (``rm -r a;
#: mkdir a``) so that lookups in it find the deleted lower entries again (``ls a`` is
#: empty, yet ``a/f`` exists; ``mv`` copying into ``a`` then fails with EEXIST: case 44).
#: This removes the common trigger, not every one: the re-read after a rename in the
#: parent still does it. ``timeout=0`` avoids other triggers but not the one case 44
#: found, and makes every lookup a round trip to the daemon
OPTIONS = ("static_nlink",)


def program() -> str | None:
    """The fuse-overlayfs binary on PATH, or None."""
    return shutil.which(PROGRAM)


def version() -> str:
    """``fuse-overlayfs --version``'s first line, or ``unknown``."""
    exe = program()
    if exe is None:
        return "not installed"
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("fuse-overlayfs"):
            return line.split("version", 1)[-1].strip(" :")
    return "unknown"


def mount(target: Path, lower: list[str], *, upper: str | None = None,
          work: str | None = None, cwd: Path | None = None) -> None:
    """Mount the stack on ``target``: ``lower`` top-most first; without ``upper`` read-only.

    ``lower``, ``upper`` and ``work`` may be relative to ``cwd``: relative
    paths keep a 500-layer option string short and free of the ``:`` and
    ``,`` that a store root may contain.
    """
    exe = program()
    if exe is None:
        raise DriverError("fuse-overlayfs is not installed",
                          hint="install it: apt-get install fuse-overlayfs")
    if not lower:
        raise DriverError("fuse-overlayfs needs at least one lower directory")
    options = [*OPTIONS, "lowerdir=" + ":".join(lower)]
    if upper is None:
        options.insert(0, "ro")  # the kernel refuses writes too, not only the daemon
    else:
        options += [f"upperdir={upper}", f"workdir={work}"]
    proc = subprocess.run([exe, "-o", ",".join(options), os.fspath(target)],
                          cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        said = "; ".join(
            line for line in proc.stderr.splitlines() if "unknown argument ignored" not in line
        )
        raise DriverError(
            f"fuse-overlayfs could not mount {target}: {said or f'exit status {proc.returncode}'}",
            hint="check that /dev/fuse exists and that `lamina drivers` lists fuse-overlayfs "
            "as supported here",
        )


def daemons(target: Path) -> list[int]:
    """Pids of the fuse-overlayfs processes serving ``target`` (its last argument)."""
    want = os.fsencode(os.path.realpath(target))
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if len(args) >= 2 and os.path.basename(args[0]) == PROGRAM.encode() and (
            args[-2] == want or args[-1] == want
        ):
            found.append(int(name))
    return found


def unmount(target: Path) -> None:
    """Unmount ``target`` if mounted and wait (bounded) until its daemon has exited.

    Not mounted is fine. Raises DriverError when the mount stays, so that
    callers keep the data below it.
    """
    pids = daemons(target)
    mounts.detach(target)
    if mounts.is_mountpoint(target):
        raise DriverError(f"{target} is still mounted after unmounting it",
                          hint="find users with `fuser -m` and retry")
    deadline = time.monotonic() + DAEMON_EXIT_TIMEOUT
    for pid in pids:
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.002)


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")
