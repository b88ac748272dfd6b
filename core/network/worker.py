"""A forked process that does this one's netlink calls, so that pyroute2's import overlaps
the rest of a start.

Importing pyroute2 costs ~75 ms (core/network/links.py); a bridged ``lamina run`` needs
it only when the container's process exists, ~40 ms of other work (opening the store,
the writable layer, the mount, the clone) later. :func:`start` forks a worker right
when the command knows it will need a bridge: the worker imports pyroute2 on the other
CPU meanwhile, then answers calls over a pipe until this process closes it or exits.

Protocol: one JSON line per request (``[name, args]``) and per answer (``{"ok": value}``
or ``{"error": message, "hint": hint}``, re-raised here as :class:`NetworkError`). The
worker never touches what it inherited (the store's database, stdio buffers): it leaves
with ``os._exit`` and dies with its parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import LaminaError, NetworkError
from ..host.processes import die_with_parent

#: the request that ends the worker
QUIT = "quit"


class Worker:
    """A forked process serving ``handlers`` (name -> function of JSON-able args)."""

    def __init__(self, prepare: Callable[[], object],
                 handlers: Mapping[str, Callable[..., Any]]) -> None:
        req_r, req_w = os.pipe2(os.O_CLOEXEC)
        ans_r, ans_w = os.pipe2(os.O_CLOEXEC)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                os.close(req_w)
                os.close(ans_r)
                _serve(prepare, handlers, req_r, ans_w, parent)
                status = 0
            finally:
                os._exit(status)
        os.close(req_r)
        os.close(ans_w)
        self.pid = pid
        self._requests = os.fdopen(req_w, "w", buffering=1)
        self._answers = os.fdopen(ans_r, "r")

    def call(self, name: str, *args: Any) -> Any:
        """Run ``name(*args)`` in the worker; its result, or its error raised here."""
        try:
            self._requests.write(json.dumps([name, args]) + "\n")
            line = self._answers.readline()
        except OSError as exc:
            line = ""
            reason = exc.strerror
        else:
            reason = "it ended"
        if not line:
            raise NetworkError(f"the netlink worker (process {self.pid}) did not answer "
                               f"{name}: {reason}", hint="rerun with --debug; "
                               "this is a bug in lamina if it happens again")
        answer = json.loads(line)
        if "error" in answer:
            raise NetworkError(answer["error"], hint=answer.get("hint"))
        return answer["ok"]

    def close(self) -> None:
        """Tell the worker to end and reap it. Idempotent.

        An explicit request, not just the end of its input: a process forked meanwhile
        (the container's, before it execs) may hold the pipe's other end.
        """
        if self._requests.closed:
            return
        with contextlib.suppress(OSError):
            self._requests.write(json.dumps([QUIT, []]) + "\n")
        for stream in (self._requests, self._answers):
            with contextlib.suppress(OSError):
                stream.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _serve(prepare: Callable[[], object], handlers: Mapping[str, Callable[..., Any]],
           requests_fd: int, answers_fd: int, parent: int) -> None:
    die_with_parent(parent)
    # the terminal's Ctrl-C is for the container (the parent forwards it), not for us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    prepare()
    with os.fdopen(requests_fd, "r") as requests, os.fdopen(answers_fd, "w", buffering=1) as out:
        for line in requests:
            name, args = json.loads(line)
            if name == QUIT:
                return
            try:
                answer: dict[str, Any] = {"ok": handlers[name](*args)}
            except LaminaError as exc:
                answer = {"error": str(exc), "hint": exc.hint}
            except Exception as exc:  # reported to the caller, who raises it
                answer = {"error": f"{name} failed: {type(exc).__name__}: {exc}",
                          "hint": "rerun with --debug; this is a bug in lamina"}
            out.write(json.dumps(answer) + "\n")
