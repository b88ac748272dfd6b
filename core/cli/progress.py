"""How a pull or a push shows its progress: bars on a terminal, Docker's plain lines elsewhere.

On a terminal each layer gets a rich progress bar (bytes, speed) that turns into
its final status; in a pipe or a log every layer's status change is one line,
``<short digest>: <status>``, as ``docker pull`` prints when not on a terminal;
``-q`` prints nothing of it. Events arrive from the download threads: both
renderers only append or update under rich's own lock or a plain lock.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from ..images.events import NoEvents, PullEvents

#: statuses that end a layer's bar full (a pull's, then a push's)
FINAL = ("Pull complete", "Already exists", "Download complete", "Pushed",
         "Layer already exists")


class PlainLines(NoEvents):
    """One line per status change of a layer."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._lock = threading.Lock()
        self._out = out

    def status(self, text: str) -> None:
        with self._lock:
            print(text, file=self._out or sys.stdout, flush=True)

    def layer(self, layer: str, status: str, total: int | None = None) -> None:
        with self._lock:
            print(f"{layer}: {status}", file=self._out or sys.stdout, flush=True)


class Bars(NoEvents):
    """A rich progress bar per layer."""

    def __init__(self, out: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self.bars = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), transient=False,
            console=Console(file=out) if out is not None else None,
        )
        self._tasks: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _task(self, layer: str, total: int | None = None) -> Any:
        with self._lock:
            if layer not in self._tasks:
                self._tasks[layer] = self.bars.add_task(layer, total=total)
            return self._tasks[layer]

    def status(self, text: str) -> None:
        self.bars.console.print(text)

    def layer(self, layer: str, status: str, total: int | None = None) -> None:
        task = self._task(layer, total)
        fields: dict[str, Any] = {"description": f"{layer}: {status}"}
        if total is not None:
            fields["total"] = total
        if status in FINAL or status.startswith("Mounted from "):
            current = self.bars.tasks[task].total if task < len(self.bars.tasks) else None
            if current:
                fields["completed"] = current
        self.bars.update(task, **fields)

    def progress(self, layer: str, done: int, total: int) -> None:  # type: ignore[override]
        self.bars.update(self._task(layer, total), completed=done, total=total)


@contextlib.contextmanager
def pull_events(*, quiet: bool, out: TextIO | None = None) -> Iterator[PullEvents]:
    if quiet:
        yield NoEvents()
        return
    if not (out or sys.stdout).isatty():
        yield PlainLines(out)
        return
    bars = Bars(out)
    with bars.bars:
        yield bars
