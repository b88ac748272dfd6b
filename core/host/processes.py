"""Helper processes: dying with the process that forked them, and running in its background."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from collections.abc import Iterable

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a forked child: be killed when ``parent`` (the forking process's pid) ends.

    ``PR_SET_PDEATHSIG`` fires when the thread that forked ends, so fork from the main
    thread. A parent that died before the ``prctl`` is caught by the pid check.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def can_leave_background() -> bool:
    """Whether this process may return from ``SCHED_IDLE`` to ``SCHED_OTHER`` (it takes
    ``CAP_SYS_NICE``, or an ``RLIMIT_NICE`` that allows nice 0); tried on a thread of
    its own, which is all a failure strands."""
    result: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            result.append(False)
        else:
            result.append(True)

    thread = threading.Thread(target=probe, name="sched-probe")
    thread.start()
    thread.join()
    return result == [True]


def run_in_background(on: bool, threads: Iterable[int] = (0,)) -> None:
    """Move ``threads`` (native ids; 0: the calling one) to ``SCHED_IDLE`` (a CPU only when
    nothing else wants it) or back to ``SCHED_OTHER``; a thread made later takes the
    policy of its maker. Leaving needs :func:`can_leave_background`."""
    policy = os.SCHED_IDLE if on else os.SCHED_OTHER
    for tid in threads:
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setscheduler(tid, policy, os.sched_param(0))
