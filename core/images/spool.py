"""A blob on its way in: written to a file by a download, read by the applier as it grows.

One pass over the network: the download writes each chunk to the spool file and
hashes it; the applier reads the same bytes back from the page cache as soon as
they are there, so a layer is decompressed and applied *while* it downloads, and a
layer whose parent is still being applied waits on disk, not in memory. The file is
also what makes a download resumable: a pull that dies leaves
``<root>/tmp/pull-<hex>~<owner>.part``; the next pull adopts the parts of dead owners
(by renaming: one process wins), hashes what they hold (a sha256 state cannot be
saved across processes) and asks the registry for the rest with a Range request.

The digest and size are checked by the writer; :meth:`Spool.wait` reports the
verdict, which the applier awaits before the layer may become ready. A verified
spool is moved into the blob store (:meth:`Spool.keep`) or deleted.

The writer and the reader may be two processes (a pull downloads in its fetcher
process, :mod:`.fetcher`): each side then has a ``Spool`` of the same file, and the
writer's progress reaches the reader's through :meth:`Spool.advance` and
:meth:`Spool.settle`, which the writing side calls on itself too. The file is named
after the pulling process (``owner``), which the fetcher dies with.

Thread safety: one writer thread, one reader thread; the condition variable is
the only shared state.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from ..blobs.store import BlobStore
from ..errors import DigestMismatch, LaminaError, host_error
from ..host.locks import is_alive, process_identity

PREFIX = "pull-"
SUFFIX = ".part"
CHUNK = 1 << 20


def _owner_tag(identity: str) -> str:
    return identity.replace(":", "_")


class Cancelled(LaminaError):
    """The spool's download was stopped because its blob is no longer needed."""


class Spool:
    """The file a blob is downloaded into, with a reader that follows the writer."""

    def __init__(self, tmp: Path, digest: str, size: int, *, owner: str | None = None) -> None:
        """``owner``: the :func:`process_identity` of the pull the file belongs to (this
        process by default): while it lives, no other pull adopts the file."""
        self.tmp = tmp
        self.digest = digest
        self.size = size
        self.hex = digest.removeprefix("sha256:")
        self.path = tmp / f"{PREFIX}{self.hex}~{_owner_tag(owner or process_identity())}{SUFFIX}"
        #: whether the file exists (made or adopted by the writer)
        self.opened = False
        self.written = 0
        self.done = False
        self.error: BaseException | None = None
        self.cancelled = False
        #: the reader gave up (:meth:`abandon`): its waits raise
        self._abandoned = False
        self._cond = threading.Condition()
        self._hasher = hashlib.sha256()
        self._fd = -1

    # -- writer side ------------------------------------------------------------------

    def open_for_writing(self) -> int:
        """Create the spool file, adopting a dead pull's part if one is there.

        Returns the offset to download from (the bytes already there, hashed).
        """
        self.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        adopted = self._adopt()
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise host_error(exc, "create the download file", self.path) from exc
        done = 0
        if adopted:
            have = min(os.fstat(self._fd).st_size, self.size)
            os.ftruncate(self._fd, have)
            while done < have:
                chunk = os.pread(self._fd, min(CHUNK, have - done), done)
                if not chunk:
                    break
                self._hasher.update(chunk)
                done += len(chunk)
        self.advance(done)
        return self.written

    def _adopt(self) -> bool:
        """Take over the part file of a pull that died with this blob half-downloaded."""
        try:
            entries = os.listdir(self.tmp)
        except FileNotFoundError:
            return False
        stem = f"{PREFIX}{self.hex}~"
        for name in entries:
            if not (name.startswith(stem) and name.endswith(SUFFIX)):
                continue
            owner = name[len(stem):-len(SUFFIX)].replace("_", ":")
            if is_alive(owner):
                continue
            try:
                os.rename(self.tmp / name, self.path)  # one adopter wins
            except FileNotFoundError:
                continue
            return True
        return False

    def restart(self) -> None:
        """The source ignored our Range request: start over from byte 0."""
        os.ftruncate(self._fd, 0)
        self._hasher = hashlib.sha256()
        self.advance(0)

    def write(self, data: bytes | memoryview) -> None:
        if self.cancelled:
            raise Cancelled(f"download of {self.digest} cancelled")
        if self.written + len(data) > self.size:
            raise DigestMismatch(
                f"blob {self.digest} is larger than the {self.size} bytes its manifest declares",
                hint="the registry serves different content than the manifest names; "
                "nothing was stored",
            )
        view = memoryview(data)
        offset = self.written
        while view:
            try:
                n = os.pwrite(self._fd, view, offset)
            except OSError as exc:
                raise host_error(exc, "write the download file", self.path) from exc
            view = view[n:]
            offset += n
        self._hasher.update(data)
        self.advance(offset)

    def started(self) -> None:
        """The download begins (its turn came): a hook for the fetcher's report."""

    def finish(self) -> None:
        """The source has no more bytes: check size and digest, and tell the reader."""
        error: LaminaError | None = None
        if self.written != self.size:
            error = DigestMismatch(
                f"blob {self.digest} ended after {self.written} of its {self.size} bytes",
                hint="the download was truncated; pull again to resume it",
            )
        elif "sha256:" + self._hasher.hexdigest() != self.digest:
            error = DigestMismatch(
                f"blob {self.digest} does not match its digest "
                f"(got sha256:{self._hasher.hexdigest()})",
                hint="the registry serves corrupt content; nothing was stored",
            )
            self._forget()  # never resume from bad bytes
        self.settle(error)

    # -- the state both sides see ------------------------------------------------------

    def advance(self, written: int) -> None:
        """The file holds ``written`` verified-as-they-come bytes (fewer after a restart)."""
        with self._cond:
            self.opened = True
            self.written = written
            self._cond.notify_all()

    def settle(self, error: BaseException | None) -> None:
        """The download ended: verified (``None``) or failed."""
        with self._cond:
            self.error = error
            self.done = True
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self.cancelled = True
            self._cond.notify_all()

    # -- reader side ------------------------------------------------------------------

    def reader(self) -> SpoolReader:
        return SpoolReader(self)

    def wait(self) -> None:
        """Block until the download ended; raise its error if it failed or did not verify."""
        with self._cond:
            while not self.done:
                self._cond.wait()
            if self.error is not None:
                raise self.error

    def wait_opened(self) -> None:
        """Block until the file exists; raise the download's error if it never will."""
        with self._cond:
            while not self.opened and not self.done:
                self._cond.wait()
            if not self.opened and self.error is not None:
                raise self.error

    def abandon(self) -> None:
        """The reader stops (its applier failed or was interrupted): a read waiting on
        another thread for bytes raises :class:`Cancelled`, so that thread ends. The
        download and its file are left as they are."""
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()

    def starving(self, position: int) -> None:
        """The reader waits for bytes past ``position``: a hook for the fetcher, which
        downloads at a low priority while it is ahead (:mod:`.downloads`)."""

    def _wait_for(self, position: int) -> int:
        """Block until bytes past ``position`` exist or the download ended; return the end."""
        with self._cond:
            waiting = self.written <= position and not self.done
        if waiting:
            self.starving(position)
        with self._cond:
            while self.written <= position and not self.done and not self._abandoned:
                self._cond.wait()
            if self.written <= position:
                if self.error is not None:
                    raise self.error
                if self._abandoned:
                    raise Cancelled(f"reading {self.digest} was abandoned")
            return self.written

    # -- afterwards -------------------------------------------------------------------

    def keep(self, blobs: BlobStore) -> None:
        """Move the verified file into the blob store (for pushing it again as it is)."""
        self.wait()
        self.close()
        blobs.adopt(self.path, self.digest)

    def discard(self, *, resumable: bool = False) -> None:
        """Delete the file; with ``resumable`` it stays for the next pull, which resumes
        it or, complete, only hashes it again (bytes that failed their digest are gone
        already: :meth:`finish`)."""
        self.close()
        if resumable and self.written:
            return
        self._forget()

    def _forget(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def close(self) -> None:
        """Let go of the writer's file descriptor (the file stays)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SpoolReader:
    """A read-only stream of a :class:`Spool`, blocking until the writer gets ahead.

    No ``fileno``: the tar reader must not map a file that is still growing.
    """

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._pos = 0
        spool.wait_opened()
        try:
            self._fd = os.open(spool.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise host_error(exc, "open the download file", spool.path) from exc

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = self._spool._wait_for(self._pos)
        want = min(len(view), end - self._pos)
        if want <= 0:
            return 0
        n = os.preadv(self._fd, [view[:want]], self._pos)
        self._pos += n
        return n

    def abort(self) -> None:
        """Make a read waiting on another thread raise (see :meth:`Spool.abandon`)."""
        self._spool.abandon()

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        # pread makes the bytes object itself: no zeroed buffer and no second copy
        # (the gzip decoder reads 1 MiB at a time this way)
        end = self._spool._wait_for(self._pos)
        want = min(size, end - self._pos)
        if want <= 0:
            return b""
        data = os.pread(self._fd, want, self._pos)
        self._pos += len(data)
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SpoolReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stale_parts(tmp: Path, digest: str | None = None) -> list[Path]:
    """Part files whose pull is gone (what ``prune`` may reclaim; of one blob with
    ``digest``, what the next pull of it adopts)."""
    found = []
    prefix = PREFIX + (f"{digest.removeprefix('sha256:')}~" if digest else "")
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(tmp):
            if name.startswith(prefix) and name.endswith(SUFFIX) and "~" in name:
                owner = name[name.index("~") + 1:-len(SUFFIX)].replace("_", ":")
                if not is_alive(owner):
                    found.append(tmp / name)
    return found
