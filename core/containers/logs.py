"""A container's log: its output line by line, each line with its stream and its time.

The file has the shape of Docker's json-file log, one JSON object per line::

    {"log": "tick 1\\n", "stream": "stdout", "time": "2026-12-07T10:15:30.123456789Z"}

so that ``logs`` can send each line back to the stream it came from, cut the log by
time (``--since``, ``--until``) or from its end (``--tail``) and print the times
(``-t``). The container's monitor (core/launcher/monitor.py) reads the container's
stdout and stderr from two pipes (a pty is one stream: stdout) and appends the
records; ``logs`` reads them, also while they grow (``-f``).

With ``--log-opt max-size=10m --log-opt max-file=3`` (:class:`Rotation`) the file is
rotated as Docker's is: once the next write would take it past ``max-size`` it becomes
``container-json.log.1`` (the older ones moving up to ``.2`` ...; the oldest beyond
``max-file`` dropped) and a new file begins; ``logs`` reads them oldest first, and a
follower moves on to the new file. Without ``max-size`` the log grows (Docker's default).

A line is a record once its ``\\n`` comes, or when it reaches 16 KiB (Docker's cut),
or when its stream ends. Bytes that are not UTF-8 survive: they are written as the
lone surrogates of Python's ``surrogateescape`` (``\\udcff``), which JSON carries.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from json.encoder import encode_basestring_ascii as _escape
from pathlib import Path
from typing import BinaryIO, NamedTuple

from ..gotime import parse_rfc3339_nano, rfc3339_nano
from .spec import parse_size

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


class Rotation(NamedTuple):
    """When the log file is rotated (``--log-opt max-size``, ``max-file``)."""

    #: the most bytes a file may hold (a single longer batch of records still goes into
    #: one file); None: no rotation
    max_size: int | None = None
    #: the files kept, the one written included
    max_files: int = 1

    @classmethod
    def of(cls, options: Mapping[str, str]) -> Rotation:
        """From the options :func:`~.spec.parse_log_config` checked."""
        size = options.get("max-size", "-1")
        return cls(None if size == "-1" else parse_size(size, "max-size"),
                   int(options.get("max-file", "1")))


class LogWriter:
    """Cuts a container's streams into records and appends them to its log.

    Complete lines are written as they come, in one ``write`` per :meth:`feed` (a
    reader following the file sees whole records, or waits for the rest of one); a
    line's start waits for its end, up to :data:`MAX_LINE` bytes. The file is opened
    here (``OSError`` if it cannot be) and rotated as ``rotation`` says.
    """

    def __init__(self, file: Path, rotation: Rotation | None = None) -> None:
        self.file = file
        self.rotation = rotation or Rotation()
        self.fd = self._open()
        self._size = os.fstat(self.fd).st_size
        self._pending = {stream: b"" for stream in STREAMS}

    def _open(self) -> int:
        return os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                       0o600)

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
            self._records(pieces, stream, time.time_ns())

    def end(self, stream: str) -> None:
        """The stream has ended: its unfinished line becomes a record."""
        rest, self._pending[stream] = self._pending[stream], b""
        if rest:
            self._records([rest.decode("utf-8", "surrogateescape")], stream, time.time_ns())

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _records(self, lines: list[str], stream: str, nanos: int) -> None:
        limit = self.rotation.max_size
        data = _records(lines, stream, nanos)
        if limit is None or self._size + len(data) <= limit:
            self._write(data)
            return
        # the batch crosses the limit: written record by record, rotating between them
        for line in lines:
            record = _records([line], stream, nanos)
            if self._size and self._size + len(record) > limit:
                self._rotate()
            self._write(record)

    def _rotate(self) -> None:
        """The file becomes ``.1`` (``.1`` becomes ``.2``, ...), or is dropped when only
        one file is kept; a new one begins. A file that cannot be moved is lost, never
        the container: logging stops if no new file can be made."""
        self.close()
        with contextlib.suppress(OSError):
            if self.rotation.max_files > 1:
                for n in range(self.rotation.max_files - 1, 1, -1):
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(f"{self.file}.{n - 1}", f"{self.file}.{n}")
                os.rename(self.file, f"{self.file}.1")
            else:
                os.unlink(self.file)
        self._size = 0
        with contextlib.suppress(OSError):
            self.fd = self._open()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self.fd >= 0:
            try:
                n = os.write(self.fd, view)
            except InterruptedError:
                continue
            except OSError:
                return  # a full disk loses log lines, never the container
            view = view[n:]
            self._size += n


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


def files(directory: Path) -> list[Path]:
    """The container's log files, oldest first: the rotated ones, then the current one."""
    current = path(directory)
    rotated = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            number = name.removeprefix(FILE + ".")
            if name.startswith(FILE + ".") and number.isdigit():
                rotated.append((int(number), directory / name))
    return [p for _, p in sorted(rotated, reverse=True)] + [current]


def read(directory: Path, window: Window = EVERYTHING, *,
         running: Callable[[], bool] | None = None,
         poll: float = 0.1) -> Iterator[Record]:
    """The records of the container's log in ``window``, oldest first.

    With ``running`` the log is followed: records written later come too, through the
    rotations that happen meanwhile, until ``running()`` says the container has stopped
    (and what it wrote last was read) or a record comes after ``window.until``. A log
    of raw output (:data:`RAW_FILE`) is one stdout record without a time (0), shown
    unless ``since`` or ``until`` is given.
    """
    handles = []
    for file in files(directory):  # all opened at once: a rotation cannot slip between
        with contextlib.suppress(FileNotFoundError):
            handles.append(open(file, "rb"))  # noqa: SIM115 - closed below
    if not handles:
        yield from _raw(directory, window)
        return
    try:
        first, offset = 0, 0
        if window.tail is not None:
            first, offset = _tail_start(handles, window.tail)
        for n in range(first, len(handles)):
            handles[n].seek(offset if n == first else 0)
            last = n == len(handles) - 1
            follow = (directory, running, poll) if last and running else None
            for record in _file_records(handles[n], follow):
                if window.until is not None and record.nanos > window.until:
                    return
                if window.admits(record):
                    yield record
    finally:
        for f in handles:
            f.close()


def _file_records(f: BinaryIO,
                  follow: tuple[Path, Callable[[], bool], float] | None) -> Iterator[Record]:
    """The records from ``f``'s position on; with ``follow`` (the log's directory,
    ``running``, the poll interval) those written later too, moving to the next file
    when this one is rotated away."""
    opened: BinaryIO | None = None  # a file this generator opened (after a rotation)
    try:
        partial = b""
        while True:
            chunk = f.read(1 << 16)
            if chunk:
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                yield from decode(lines)
                continue
            if follow is None:
                return
            directory, running, poll = follow
            newer = _replacement(f, directory)
            if newer is not None:
                # rotated: what was written before the rotation was read (the empty
                # read came after it); on with the new file
                if opened is not None:
                    opened.close()
                f = opened = newer
                partial = b""
                continue
            if not running():
                follow = None  # one more read: what it wrote before it stopped
                continue
            time.sleep(poll)
    finally:
        if opened is not None:
            opened.close()


def _replacement(f: BinaryIO, directory: Path) -> BinaryIO | None:
    """The file that came after ``f`` if ``f`` was rotated, else None.

    Found by inode among the files as they are now, so a follower that slept through
    two rotations reads the file between them too; a file dropped meanwhile (the
    oldest beyond ``max-file``, or the only one with ``max-file=1``) is followed by the
    oldest still there.
    """
    mine = os.fstat(f.fileno()).st_ino
    chain = []
    for file in files(directory):
        with contextlib.suppress(FileNotFoundError):
            chain.append((file.stat().st_ino, file))
    inodes = [inode for inode, _ in chain]
    if mine in inodes:
        after = inodes.index(mine) + 1
        if after == len(chain):
            return None  # still the current file
    elif chain:
        after = 0
    else:
        return None  # between the rename and the new file
    # the old file may have got its last records after our empty read: read them
    # first (the writer finishes a file before it moves it)
    rest = f.read()
    if rest:
        f.seek(-len(rest), os.SEEK_CUR)
        return None
    try:
        return open(chain[after][1], "rb")
    except FileNotFoundError:
        return None


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


def _tail_start(handles: list[BinaryIO], count: int) -> tuple[int, int]:
    """Which file and where in it the last ``count`` lines of all of them begin."""
    for n in range(len(handles) - 1, -1, -1):
        offset, found = _tail_offset(handles[n], count)
        if found >= count:
            return n, offset
        count -= found
    return 0, 0


def _tail_offset(f: BinaryIO, count: int) -> tuple[int, int]:
    """Where the last ``count`` lines of ``f`` begin, reading it backwards in blocks, and
    how many lines that is (fewer when the file has fewer)."""
    end = f.seek(0, os.SEEK_END)
    if count <= 0:
        return end, 0
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
                return start + index + 1, count
        position = start
    return 0, newlines + 1


def text(directory: Path) -> str:
    """The whole log as text, both streams as they came (a failed build step's output)."""
    return b"".join(r.data for r in read(directory)).decode("utf-8", "replace")
