"""The health check's watcher: a process of its own that runs a container's check
(core/launcher/health.py has the rules and the state it writes).

    python -m lamina.core.launcher.healthwatch < {"container": ..., "directory": ...}
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..containers.store import Container
from .health import KEEP, OUTPUT, Check, write


def watch(container: Container, directory: Path) -> None:
    """The watcher's loop: check, record, sleep, until the container's process is gone."""
    check = Check.of(container.spec.healthcheck)
    assert check is not None and container.pid is not None
    began = time.monotonic()
    status, streak, log = "starting", 0, []
    while _alive(container.pid):
        starting = time.monotonic() - began < check.start_period
        result = _run(container, check)
        log = [*log, result][-KEEP:]
        if result["ExitCode"] == 0:
            status, streak = "healthy", 0
        elif not (starting and status == "starting"):
            streak += 1
            if streak >= check.retries:
                status = "unhealthy"
        if not _alive(container.pid):
            break  # a check cut short by the container's end says nothing
        write(directory, {"Status": status, "FailingStreak": streak, "Log": log})
        pause = check.start_interval if starting and status == "starting" else check.interval
        time.sleep(pause)


def _run(container: Container, check: Check) -> dict[str, Any]:
    """One run of the check in the container: Docker's log entry."""
    import tempfile

    from ..gotime import rfc3339_nano
    from . import execute

    began = time.time_ns()
    with tempfile.TemporaryFile() as output:
        try:
            code = execute.run_captured(container, check.argv, output.fileno(),
                                        timeout=check.timeout)
            text = _read(output)
        except TimeoutError:
            limit = f"{check.timeout * 1000:g}ms" if check.timeout < 1 else f"{check.timeout:g}s"
            code, text = -1, f"Health check exceeded timeout ({limit})"
        except Exception as exc:  # the check could not start: a failure, said so
            code, text = -1, str(exc)
    return {"Start": rfc3339_nano(began), "End": rfc3339_nano(time.time_ns()),
            "ExitCode": code, "Output": text}


def _read(output: Any) -> str:
    output.seek(0)
    return output.read(OUTPUT).decode("utf-8", "replace")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()[0] != b"Z"
    return False


def _main() -> None:
    from ..containers.spec import ContainerSpec

    record = json.loads(sys.stdin.read())
    fields = record["container"]
    fields["spec"] = ContainerSpec.from_json(fields["spec"])
    watch(Container(**fields), Path(record["directory"]))


if __name__ == "__main__":
    _main()
