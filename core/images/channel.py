"""What a pull and its fetcher (:mod:`.fetcher`) say to each other: the request, and
pickled frames on a pair of pipes.

Both ends are this program (the fetcher is a fork of the pull, or a thread of it), so
the frames are pickles: the resolved manifest and config, and errors, cross as they are.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import ImageError

if TYPE_CHECKING:
    from ..config import Config
    from .platform import Platform
    from .reference import Reference


class FetchRequest(NamedTuple):
    """What the fetcher is asked for (a fork inherits it: never pickled)."""

    config: Config
    root: Path
    ref: Reference
    platform: Platform
    explicit_platform: bool
    max_downloads: int
    #: the pull's :func:`process_identity`: its part files are named after it
    owner: str


class Channel:
    """Length-prefixed pickles over a pipe pair. Sending is thread-safe; once the other
    side is gone, sends are dropped (its end is seen as the end of :meth:`receive`)."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._lock = threading.Lock()
        self._broken = False

    def send(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(len(data).to_bytes(4, "big") + data)
        with self._lock:
            if self._broken:
                return
            try:
                while view:
                    view = view[os.write(self._write_fd, view):]
            except OSError:  # the other side ended (EPIPE) or we closed: nobody listens
                self._broken = True

    def receive(self) -> tuple[Any, ...] | None:
        """The next message; None once the other side closed its end."""
        head = self._read(4)
        if head is None:
            return None
        data = self._read(int.from_bytes(head, "big"))
        return None if data is None else pickle.loads(data)

    def _read(self, size: int) -> bytes | None:
        parts, left = [], size
        while left:
            try:
                chunk = os.read(self._read_fd, left)
            except OSError:
                return None
            if not chunk:
                return None
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        with self._lock:
            self._broken = True
            for fd in (self._read_fd, self._write_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)


def portable(error: BaseException) -> BaseException:
    """``error`` as it can cross to the pull: picklable, with the fetcher's traceback
    as a note (``--debug`` prints it)."""
    import traceback

    with contextlib.suppress(Exception):
        error.add_note("in the pull's fetcher:\n" + "".join(
            traceback.format_exception(type(error), error, error.__traceback__)).rstrip())
    try:
        pickle.dumps(error)
    except Exception:
        return ImageError(f"the pull's fetcher failed: {type(error).__name__}: {error}",
                          hint="rerun with --debug; this is a bug in lamina")
    return error
