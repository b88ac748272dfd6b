"""Where a tar's bytes come from, and their sha256 on the second core.

The parser (:mod:`.reader`) asks for bytes; these classes get them as cheaply as
the source allows and hash every byte off the parser's thread, so the diff id
costs the apply no time of its own:

- :class:`MappedFile`: a regular file is mapped whole and hashed from the mapping
  on a thread of its own (no read copies, no buffer hand-over);
- :class:`ReadAhead`: any other stream (a pipe, a decompressor) is read a few
  buffers ahead of the parser on a thread of its own, and hashed on another;
- :class:`Hasher`: plain reads hand each chunk to one process-wide hashing thread,
  and get the buffer back from it once hashed (a pool: no allocation per read).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import mmap
import os
import stat
import threading
from collections.abc import Callable
from queue import SimpleQueue

#: bytes asked from the stream per plain read; also the largest content view handed
#: out then (the reader's CHUNK)
CHUNK = 1 << 20

#: chunks read but not hashed yet, at most (memory stays bounded by this many buffers)
_HASH_IN_FLIGHT = 8
#: size of the pooled read buffers: a CHUNK and what is left of the previous one
#: (the part of a header that straddles two reads); a bigger leftover gets its own
_BUFFER_SIZE = CHUNK + (16 << 10)
#: buffers a read-ahead thread may fill before the parser takes them (made on
#: demand). Deep, because the two sides' speeds change along a layer: through
#: small files the applier is the slower one and the reader gets ahead, through
#: big files the applier catches up; with 3 buffers the applier waited ~0.08 s
#: of a 0.3 s minbase apply (docs/performance.md). 16 x 2 MiB: 32 MiB at most.
_AHEAD = 16
#: bytes per read of the read-ahead thread: big, as each read and hash costs
#: that thread a wait for the GIL while the applier runs Python code
_AHEAD_CHUNK = 2 << 20
#: room in front of a read-ahead buffer for the unparsed end of the previous one
RESERVE = 16 << 10

#: read-ahead buffers a finished stream left, for the next one: a pull applies its
#: layers one after another, and new buffers cost the read-ahead thread a page fault
#: per 4 KiB (16 x 2 MiB for each layer of a six-layer pull: ~40,000 faults)
_SPARES: list[bytearray] = []

#: bytes hashed per step from a mapped file (the hash checks for a stop between steps)
_MAP_HASH_STEP = 8 << 20


class Hasher:
    """sha256 of a stream, computed on the process-wide hashing thread, and the
    pool of read buffers that the hash hands back.

    hashlib drops the GIL while it hashes a big buffer, so the hash runs on the
    second core while the applier parses and writes. The hand-off is one queue
    put per CHUNK and the reader never waits for the hash, except when
    :data:`_HASH_IN_FLIGHT` chunks are still queued (memory stays bounded) or
    when it asks for the digest. One worker thread serves every reader in FIFO
    order, so each reader's chunks are hashed in stream order.
    """

    __slots__ = ("_error", "_free", "_made", "_sha", "_slots")

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._slots = threading.Semaphore(_HASH_IN_FLIGHT)
        self._error: BaseException | None = None
        #: pooled buffers the hash is done with
        self._free: SimpleQueue[bytearray] = SimpleQueue()
        self._made = 0

    def spare(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes that nobody uses; the caller must
        have let go of the buffer it parsed before (a spare may be that one)."""
        if size > _BUFFER_SIZE:
            return bytearray(size)  # a huge leftover (a pax header): not pooled
        free = self._free
        if not free.empty() or self._made > _HASH_IN_FLIGHT:
            return free.get()  # waits for the hash only when all are in flight
        self._made += 1
        return bytearray(_BUFFER_SIZE)

    def give_back(self, buffer: bytearray) -> None:
        """A spare that was not used after all."""
        if len(buffer) == _BUFFER_SIZE:
            self._free.put(buffer)

    def update(self, data: memoryview, buffer: bytearray) -> None:
        """Hash ``data`` (a view of ``buffer``), then put ``buffer`` back in the pool."""
        self._slots.acquire()
        _hash_queue().put((self, data, buffer))

    def _work(self, data: memoryview, buffer: bytearray) -> None:
        """On the worker thread."""
        try:
            self._sha.update(data)
        except BaseException as exc:  # re-raised by hexdigest
            self._error = exc
        finally:
            data.release()
            self.give_back(buffer)
            self._slots.release()

    def hexdigest(self) -> str:
        """Waits until every queued chunk is hashed."""
        for _ in range(_HASH_IN_FLIGHT):
            self._slots.acquire()
        self._slots.release(_HASH_IN_FLIGHT)
        if self._error is not None:
            raise self._error
        return self._sha.hexdigest()


class ReadAhead:
    """Reads a stream on a thread of its own, a few buffers ahead of the parser, and
    hashes what it read on the process-wide hashing thread: the read (a copy, or a
    decompression), the hash and the applier's writes run at once, and the parser
    gets bytes that are read already.

    The hash has a thread of its own because a decompressing read is as slow as the
    applier (minbase's gzip layer: ~0.3 s of inflate, ~0.13 s of sha256, ~0.3 s of
    applying): on one thread, inflate and hash were the whole apply's critical path.

    Memory is bounded: :data:`_AHEAD` buffers circulate between the thread, the
    hash and the parser. A buffer is read into again only once the parser gave it
    back *and* its hash is done; both hand buffers back in the order they were
    read, so one semaphore counts the finished hashes. A stream error is raised to
    the parser where it would have met it. :meth:`close` returns only once the
    thread touches the stream no more.
    """

    def __init__(self, read_into: Callable[[memoryview], int], limit: int = _AHEAD, *,
                 abort: Callable[[], None] | None = None) -> None:
        """``abort``: the stream's way to make a read blocked on the thread raise
        (a download that stalls), called by :meth:`close` when the parser stops early;
        without one, such a close waits for the read to return."""
        self._abort = abort
        self._sha = hashlib.sha256()
        self._free: SimpleQueue[bytearray | None] = SimpleQueue()
        self._ready: SimpleQueue[tuple[bytearray | None, int, BaseException | None]] = SimpleQueue()
        #: released once per finished hash; acquired once per buffer read into again
        self._hashed = threading.Semaphore(0)
        #: hashes queued and not yet waited for (the read-ahead thread's count, final
        #: once the thread has ended)
        self._pending = 0
        self._digest: str | None = None
        #: buffers made so far, and how many may circulate (made on demand by the
        #: thread: a small stream never pays for zeroing them all)
        self._made = 0
        self.limit = limit
        self._current: bytearray | None = None
        self._end: BaseException | bool | None = False
        self._stop = False
        self._thread = threading.Thread(
            target=self._run, args=(read_into,), name="lamina-read", daemon=True
        )
        self._thread.start()

    def _run(self, read_into: Callable[[memoryview], int]) -> None:
        free, ready, hash_queue = self._free, self._ready, _hash_queue()
        while True:
            if free.empty() and self._made < self.limit:
                self._made += 1
                try:
                    buffer: bytearray | None = _SPARES.pop()
                except IndexError:
                    buffer = bytearray(RESERVE + _AHEAD_CHUNK)
            else:
                buffer = free.get()
                if buffer is not None:
                    self._hashed.acquire()  # its hash is done (FIFO: see the class)
                    self._pending -= 1
            if buffer is None or self._stop:
                return
            view = memoryview(buffer)[RESERVE:]
            try:
                n = read_into(view)
            except BaseException as exc:  # the parser raises it
                view.release()
                ready.put((None, 0, exc))
                return
            if not n:
                view.release()
                ready.put((None, 0, None))
                return
            self._pending += 1
            hash_queue.put((self, view[:n], buffer))
            view.release()
            ready.put((buffer, n, None))

    def _work(self, data: memoryview, buffer: bytearray) -> None:
        """On the hashing thread (the same entry point as :meth:`Hasher._work`)."""
        try:
            self._sha.update(data)
        finally:
            data.release()
            self._hashed.release()

    def hexdigest(self) -> str:
        """The sha256 of the whole stream; call it once the parser met the end."""
        if self._digest is None:
            self._thread.join()  # the count of queued hashes is final
            for _ in range(self._pending):
                self._hashed.acquire()
            self._pending = 0
            self._digest = self._sha.hexdigest()
        return self._digest

    def take(self) -> tuple[bytearray, int] | None:
        """The next buffer and how many bytes it holds after the reserve; None at
        the end. The previous buffer goes back to the thread: let go of it first."""
        if self._current is not None:
            self._free.put(self._current)
            self._current = None
        if self._end is not False:
            if isinstance(self._end, BaseException):
                raise self._end
            return None
        buffer, n, exc = self._ready.get()
        if buffer is None:
            self._end = exc
            if exc is not None:
                raise exc
            return None
        self._current = buffer
        return buffer, n

    def close(self) -> None:
        self._stop = True
        self._free.put(None)
        if self._end is False and self._abort is not None:  # the parser stopped early
            self._abort()
        self._thread.join()
        if self._digest is not None:  # every hash done: no buffer is still being read
            self._keep_spares()

    def _keep_spares(self) -> None:
        """Leave the buffers the parser gave back to the next stream (up to one
        stream's worth)."""
        while not self._free.empty():
            buffer = self._free.get()
            if buffer is not None and len(_SPARES) < _AHEAD:
                _SPARES.append(buffer)


class MappedFile:
    """A regular file mapped read-only, hashed from the mapping on a thread of its own.

    Mapping saves the read copies (~0.04 s of a 211 MB layer) and the hand-over
    of buffers between threads: the parser sees the whole stream as one buffer
    and file content is written straight from the page cache. The hash runs
    ahead of the parser, independently, and stops early when the reader is
    closed (a corrupt layer found at its start costs no hash of its rest).

    A file that shrinks while it is mapped kills the process with SIGBUS (the
    kernel's rule for mappings); the store then recovers as after any kill (the
    incomplete layer is removed on the next start). Appending is harmless.
    """

    def __init__(self, mapping: mmap.mmap, start: int) -> None:
        self._map = mapping
        self.view = memoryview(mapping)[start:]
        #: bytes of the stream (the file from where the caller stood)
        self.length = len(self.view)
        self._sha = hashlib.sha256()
        self._stop = False
        self._error: BaseException | None = None
        #: bytes hashed so far
        self.hashed = 0
        self._thread = threading.Thread(
            target=self._run, args=(memoryview(mapping)[start:],), name="lamina-hash-map",
            daemon=True,
        )
        self._thread.start()

    @classmethod
    def of(cls, stream: object) -> MappedFile | None:
        """The mapping of ``stream`` from its current position, when it is a
        regular file with something left to read; else None (read it instead)."""
        fileno = getattr(stream, "fileno", None)
        tell = getattr(stream, "tell", None)
        if fileno is None or tell is None:
            return None
        try:
            fd = fileno()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            start = tell()
            if not 0 <= start < st.st_size:
                return None
            mapping = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        except (OSError, ValueError, io.UnsupportedOperation):
            return None  # not mappable here (a pipe, a /proc file, an odd filesystem)
        return cls(mapping, start)

    def _run(self, view: memoryview) -> None:
        update = self._sha.update
        try:
            for start in range(0, len(view), _MAP_HASH_STEP):
                if self._stop:
                    return
                update(view[start : start + _MAP_HASH_STEP])
                self.hashed = min(len(view), start + _MAP_HASH_STEP)
        except BaseException as exc:  # re-raised by hexdigest
            self._error = exc
        finally:
            view.release()

    def hexdigest(self) -> str:
        """Waits for the hash of the whole file."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self.hashed < self.length:  # closed first: never a digest of a part
            raise RuntimeError("the tar reader was closed before its diff id was asked")
        return self._sha.hexdigest()

    def close(self) -> None:
        """Stop hashing and unmap, once nobody views the mapping any more."""
        self._stop = True
        self._thread.join()
        self.view.release()
        # a caller may still hold a content view: the mapping then goes with it
        with contextlib.suppress(BufferError):
            self._map.close()


_QUEUE: SimpleQueue[tuple[Hasher | ReadAhead, memoryview, bytearray]] | None = None


def _hash_queue() -> SimpleQueue[tuple[Hasher | ReadAhead, memoryview, bytearray]]:
    """The queue of the process-wide hashing thread, started on first use."""
    global _QUEUE
    if _QUEUE is None:
        queue: SimpleQueue[tuple[Hasher | ReadAhead, memoryview, bytearray]] = SimpleQueue()
        threading.Thread(target=_hash_loop, args=(queue,), name="lamina-hash", daemon=True).start()
        _QUEUE = queue
    return _QUEUE


def _hash_loop(queue: SimpleQueue[tuple[Hasher | ReadAhead, memoryview, bytearray]]) -> None:
    get = queue.get
    while True:
        hasher, data, buffer = get()
        hasher._work(data, buffer)
        del hasher, data, buffer  # hold no buffer while waiting


def _forget_worker() -> None:
    """A forked child has no hashing thread: it must start its own, not queue forever."""
    global _QUEUE
    _QUEUE = None


os.register_at_fork(after_in_child=_forget_worker)
