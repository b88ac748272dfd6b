"""Helper processes that must not outlive the process that forked them."""

from __future__ import annotations

import ctypes
import os
import signal

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
