"""Health checks: the image's ``HEALTHCHECK`` (or ``--health-cmd``) run while a container runs.

Docker's rules: the check's command runs in the container (as ``exec`` does) every
``interval`` (``start_interval`` during ``start_period``); exit 0 is a success, anything
else, or running past ``timeout``, a failure. The state is ``starting`` until the first
success, ``healthy`` after a success, ``unhealthy`` after ``retries`` failures in a row
(failures during the start period do not count). The last five results are kept with
their output (4 KiB each).

The monitor starts a watcher process (:mod:`.healthwatch`) once
the container runs and stops it when the container ends: a process of its own, so that
the monitor's relay of the output never waits on a check, and forking a check from a
fresh single-threaded process is safe. The watcher writes the state to ``health.json``
in the container's directory (atomically); ``ps`` and ``inspect`` read it. It ends by
itself when the container's process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

from ..containers.store import Container

FILE = "health.json"
#: Docker's defaults, in nanoseconds
DEFAULTS = {"Interval": 30_000_000_000, "Timeout": 30_000_000_000, "StartPeriod": 0,
            "StartInterval": 5_000_000_000, "Retries": 3}
#: results kept, and the output kept of each (Docker's)
KEEP, OUTPUT = 5, 4096


class Check(NamedTuple):
    """A container's health check, durations in seconds."""

    argv: tuple[str, ...]
    interval: float
    timeout: float
    start_period: float
    start_interval: float
    retries: int

    @classmethod
    def of(cls, config: dict[str, Any] | None) -> Check | None:
        """From Docker's ``Healthcheck`` shape (``Test``, durations in ns, ``Retries``);
        None when there is none or it is ``NONE``."""
        if not config or not config.get("Test"):
            return None
        test = list(config["Test"])
        if test[0] == "NONE":
            return None
        if test[0] == "CMD-SHELL" and len(test) == 2:
            argv = ("/bin/sh", "-c", test[1])
        elif test[0] == "CMD" and len(test) > 1:
            argv = tuple(test[1:])
        else:
            return None
        value = {k: config.get(k) or v for k, v in DEFAULTS.items()}
        return cls(argv, value["Interval"] / 1e9, value["Timeout"] / 1e9,
                   value["StartPeriod"] / 1e9, value["StartInterval"] / 1e9,
                   int(value["Retries"]))


def path(directory: Path) -> Path:
    return directory / FILE


def state(directory: Path) -> dict[str, Any] | None:
    """The container's health as ``inspect`` shows it (``Status``, ``FailingStreak``,
    ``Log``); None when it has no check or it never ran."""
    try:
        return json.loads(path(directory).read_text())
    except (OSError, ValueError):
        return None


def start(container: Container, directory: Path) -> subprocess.Popen[bytes] | None:
    """Start the watcher of the running ``container`` if it has a check; None if not."""
    if Check.of(container.spec.healthcheck) is None:
        return None
    write(directory, {"Status": "starting", "FailingStreak": 0, "Log": []})
    record = {"container": container._asdict() | {"spec": container.spec.to_json()},
              "directory": str(directory)}
    watcher = subprocess.Popen(
        # the id in its argv: `ps` shows whose watcher it is
        [sys.executable, "-m", "lamina.core.launcher.healthwatch", container.id],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
        start_new_session=True)
    assert watcher.stdin is not None
    with contextlib.suppress(OSError):
        watcher.stdin.write(json.dumps(record).encode())
        watcher.stdin.close()
    return watcher


def stop(watcher: subprocess.Popen[bytes] | None) -> None:
    """End the watcher (the container has ended); its last state stays for ``inspect``."""
    if watcher is None:
        return
    with contextlib.suppress(OSError):
        os.killpg(watcher.pid, signal.SIGKILL)  # a check under way goes with it
    with contextlib.suppress(OSError):
        watcher.wait(timeout=5)


def write(directory: Path, data: dict[str, Any]) -> None:
    target = path(directory)
    tmp = target.with_name(f".{FILE}.{os.getpid()}")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(data))
        os.replace(tmp, target)
