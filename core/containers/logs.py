"""A container's log: its output line by line, each line with its stream and its time.

The file has the shape of Docker's json-file log, one JSON object per line::

    {"log": "tick 1\\n", "stream": "stdout", "time": "2026-12-07T10:15:30.123456789Z"}

so that ``logs`` can send each line back to the stream it came from, cut the log by
time (``--since``, ``--until``) or from its end (``--tail``) and print the times
(``-t``). The container's monitor (core/launcher/monitor.py) reads the container's
stdout and stderr from two pipes (a pty is one stream: stdout) and appends the
records; ``logs`` reads them, also while they grow (``-f``).

A line is a record once its ``\\n`` comes, or when it reaches 16 KiB (Docker's cut),
or when its stream ends. Bytes that are not UTF-8 survive: they are written as the
lone surrogates of Python's ``surrogateescape`` (``\\udcff``), which JSON carries.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring_ascii as _escape
from pathlib import Path
from typing import BinaryIO, NamedTuple

from ..gotime import parse_rfc3339_nano, rfc3339_nano

FILE = "container-json.log"
#: the raw output (both streams, no times) of containers run before logs had records
RAW_FILE = "container.log"
#: the longest record: a longer line is logged in pieces, as Docker's
MAX_LINE = 16 * 1024
STREAMS = ("stdout", "stderr")


class Record(NamedTuple):
    stream: str  #: "stdout" or "stderr"
    nanos: int  #: when the monitor read it, in nanoseconds since the epoch
    data: bytes  #: the line with its "\n" (the last piece of a line may have none)


def path(directory: Path) -> Path:
    """The log file of the container whose directory is ``directory``."""
    return directory / FILE


def encode(record: Record) -> bytes:
    return _records([record.data.decode("utf-8", "surrogateescape")], record.stream,
                    record.nanos)


def _records(lines: list[str], stream: str, nanos: int) -> bytes:
    """The file's lines for ``lines`` (each with its own "\\n", if it has one).

    Made by hand around the C escaper of the json module: ``json.dumps`` of a dict
    per line cost ~3 us, which a container printing a million lines felt.
    """
    tail = f',"stream":"{stream}","time":"{rfc3339_nano(nanos)}"}}\n'
    return "".join(['{"log":' + _escape(line) + tail for line in lines]).encode("ascii")


def decode(lines: list[bytes]) -> list[Record]:
    """The records of lines of the file. A line that is not a record (a torn write of a
    monitor that was killed) is left out.

    The lines are parsed as one JSON array, in one call of the json module's C
    scanner (a call per line made reading a million lines take 5 s, now ~1 s).
    """
    try:
        entries = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        entries = [_entry(line) for line in lines]
    records = []
    for entry in entries:
        try:
            records.append(Record(entry["stream"], _nanos(entry["time"]),
                                  entry["log"].encode("utf-8", "surrogateescape")))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return records


def _entry(line: bytes) -> object:
    try:
        return json.loads(line)
    except ValueError:
        return None


_last: list[tuple[str, int]] = [("", 0)]


def _nanos(stamp: str) -> int:
    """:func:`parse_rfc3339_nano`, remembering the last answer: the lines of one write
    share their time."""
    if stamp != _last[0][0]:
        _last[0] = (stamp, parse_rfc3339_nano(stamp))
    return _last[0][1]


class LogWriter:
    """Cuts a container's streams into records and appends them to its log.

    Complete lines are written as they come, in one ``write`` per :meth:`feed` (a
    reader following the file sees whole records, or waits for the rest of one); a
    line's start waits for its end, up to :data:`MAX_LINE` bytes.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pending = {stream: b"" for stream in STREAMS}

    def feed(self, stream: str, data: bytes) -> None:
        buffered = self._pending[stream] + data if self._pending[stream] else data
        cut = buffered.rfind(b"\n") + 1  # a "\n" is never inside a UTF-8 character
        lines = buffered[:cut].decode("utf-8", "surrogateescape").split("\n")
        lines.pop()  # "" after the last "\n"
        rest = buffered[cut:]
        pieces = []
        for line in lines:
            while len(line) > MAX_LINE:  # in characters: near enough to Docker's bytes
                pieces.append(line[:MAX_LINE])
                line = line[MAX_LINE:]
            pieces.append(line + "\n")
        while len(rest) >= MAX_LINE:
            pieces.append(rest[:MAX_LINE].decode("utf-8", "surrogateescape"))
            rest = rest[MAX_LINE:]
        self._pending[stream] = rest
        if pieces:
            self._write(_records(pieces, stream, time.time_ns()))

    def end(self, stream: str) -> None:
        """The stream has ended: its unfinished line becomes a record."""
        rest, self._pending[stream] = self._pending[stream], b""
        if rest:
            self._write(encode(Record(stream, time.time_ns(), rest)))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except InterruptedError:
                continue
            except OSError:
                return  # a full disk loses log lines, never the container


class Window(NamedTuple):
    """Which records ``logs`` shows: the last ``tail`` lines, then those in [since, until]."""

    tail: int | None = None
    since: int | None = None
    until: int | None = None

    def admits(self, record: Record) -> bool:
        return ((self.since is None or record.nanos >= self.since)
                and (self.until is None or record.nanos <= self.until))


#: the whole log
EVERYTHING = Window()


def read(directory: Path, window: Window = EVERYTHING, *,
         running: Callable[[], bool] | None = None,
         poll: float = 0.1) -> Iterator[Record]:
    """The records of the container's log in ``window``, oldest first.

    With ``running`` the log is followed: records written later come too, until
    ``running()`` says the container has stopped (and what it wrote last was read) or
    a record comes after ``window.until``. A log of raw output (:data:`RAW_FILE`) is one
    stdout record without a time (0), shown unless ``since`` or ``until`` is given.
    """
    try:
        f = open(path(directory), "rb")  # noqa: SIM115 - closed below, read while it grows
    except FileNotFoundError:
        yield from _raw(directory, window)
        return
    with f:
        if window.tail is not None:
            f.seek(_tail_offset(f, window.tail))
        partial = b""
        while True:
            chunk = f.read(1 << 16)
            if chunk:
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                for record in decode(lines):
                    if window.until is not None and record.nanos > window.until:
                        return
                    if window.admits(record):
                        yield record
                continue
            if running is None:
                return
            if not running():
                running = None  # one more read: what it wrote before it stopped
                continue
            time.sleep(poll)


def _raw(directory: Path, window: Window) -> Iterator[Record]:
    if window.since is not None or window.until is not None:
        return
    try:
        data = (directory / RAW_FILE).read_bytes()
    except FileNotFoundError:
        return
    if window.tail is not None:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-window.tail:]) if window.tail else b""
    if data:
        yield Record("stdout", 0, data)


def _tail_offset(f: BinaryIO, count: int) -> int:
    """Where the last ``count`` lines of ``f`` begin, reading it backwards in blocks."""
    end = f.seek(0, os.SEEK_END)
    if count <= 0:
        return end
    position = end
    # the first newline from the end closes the last line (a torn record after it,
    # from a monitor killed mid-write, is no line): the count starts after it
    newlines = -1
    block = 1 << 16
    while position > 0:
        start = max(0, position - block)
        f.seek(start)
        data = f.read(position - start)
        index = len(data)
        while (index := data.rfind(b"\n", 0, index)) >= 0:
            newlines += 1
            if newlines == count:
                return start + index + 1
        position = start
    return 0


def text(directory: Path) -> str:
    """The whole log as text, both streams as they came (a failed build step's output)."""
    return b"".join(r.data for r in read(directory)).decode("utf-8", "replace")
