"""The network side of a pull, in a process of its own: manifest, config and layer blobs.

A pull's applier (:mod:`.pull`, the main thread) runs Python for much of a layer's
apply and holds the GIL meanwhile; downloads in threads beside it take the GIL from it
between their chunks, and their start (the registry client's imports, the requests)
used to sit on the pull's critical path. So the fetcher is forked right when the pull
begins, before the store is opened: the manifest, the config and the first blob are on
their way while the pull imports its modules and opens the store, and the downloads'
work is the other core's (docs/performance.md, "Pull").

The fetcher's work is :mod:`.resolve` and :mod:`.downloads`; this module starts it and
is the pull's side of it. Protocol, pickled frames on two pipes (:mod:`.channel`):

- fetcher -> pull: ``("resolved", Resolved)`` or ``("failed", error)`` first; then per
  blob ``("started", digest)``, ``("written", digest, size_so_far)`` and ``("ended",
  digest, error_or_None)``; ``("stopped",)`` last;
- pull -> fetcher: ``("want", positions)``: the layers the store lacks (any other
  download is cancelled); ``("cancel", digest)``; ``("starved", digest)``: the applier
  waits for that blob's bytes (:mod:`.downloads` on the fetcher's priority);
  ``("stop",)``.

Before the pull's ``want``, the fetcher starts the layers whose record is not in the
store (``layerdb/<id>.json``, :mod:`..layers.records`): a hint, so that a layer the store
has costs no download in the common case; the pull's ``want`` decides.

Each blob downloads into a :class:`~.spool.Spool` file named after the pull (its
``owner``), and the pull reads it through a :class:`~.spool.Spool` of its own that the
fetcher's frames advance. The fetcher dies with the pull (``PR_SET_PDEATHSIG``): a
killed pull's part files belong to a dead owner, and the next pull resumes them. Where
forking is not safe (other threads run, and a fork copies the locks they hold), the
same fetcher runs in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ImageError
from ..host.locks import process_identity
from ..host.processes import die_with_parent
from .channel import Channel, FetchRequest
from .spool import Spool

if TYPE_CHECKING:
    from ..blobs.store import BlobStore
    from ..config import Config
    from .events import PullEvents
    from .platform import Platform
    from .reference import Reference
    from .resolve import Resolved

#: how long the pull waits for a stopped fetcher to end before killing it (its downloads
#: may sit in a read from a stalled registry; their part files stay resumable)
STOP_WAIT = 2.0
#: the fetcher's pipe to the pull: the resolved manifest and config go through it before
#: the pull reads them (once its store is open), and the downloads wait behind them
PIPE_SIZE = 1 << 20


class _FetchedSpool(Spool):
    """The reading side of a spool in the pull: the fetcher's frames advance it."""

    def __init__(self, tmp: Path, digest: str, size: int, *, owner: str,
                 channel: Channel) -> None:
        super().__init__(tmp, digest, size, owner=owner)
        self._channel = channel
        self._starved = False

    def cancel(self) -> None:
        super().cancel()
        self._channel.send(("cancel", self.digest))

    def starving(self, position: int) -> None:
        if not self._starved:  # once is enough: the fetcher stops running in the background
            self._starved = True
            self._channel.send(("starved", self.digest))


class Fetcher:
    """A pull's fetcher, started at once (:meth:`start`); :meth:`close` ends it."""

    def __init__(self, request: FetchRequest) -> None:
        self.request = request
        down_r, down_w = os.pipe2(os.O_CLOEXEC)  # pull -> fetcher
        up_r, up_w = os.pipe2(os.O_CLOEXEC)  # fetcher -> pull
        with contextlib.suppress(OSError):  # room for a big config before the pull reads
            fcntl.fcntl(up_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.pid: int | None = None
        self._thread: threading.Thread | None = None
        if threading.active_count() == 1:
            parent = os.getpid()
            try:
                self.pid = os.fork()
            except OSError:  # no process to be had (EAGAIN, ENOMEM): a thread does it
                self.pid = None
            if self.pid == 0:
                os.close(down_w)
                os.close(up_r)
                _fetcher_process(Channel(down_r, up_w), request, parent)
        if self.pid is not None:
            os.close(down_r)
            os.close(up_w)
        else:
            self._thread = threading.Thread(target=_fetcher_thread,
                                            args=(Channel(down_r, up_w), request),
                                            daemon=True, name="fetcher")
            self._thread.start()
        self._channel = Channel(up_r, down_w)
        self._resolved: Resolved | None = None
        #: every blob the fetcher reported on, by digest
        self.spools: dict[str, _FetchedSpool] = {}
        self._events: PullEvents | None = None
        self._listener: threading.Thread | None = None
        self._closed = False

    @classmethod
    def start(cls, config: Config, root: Path, ref: Reference, *, platform: Platform,
              explicit_platform: bool = False, max_downloads: int = 8) -> Fetcher:
        return cls(FetchRequest(config, root, ref, platform, explicit_platform, max_downloads,
                            process_identity()))

    def resolved(self) -> Resolved:
        """The manifest and config, checked; raises what the registry or the checks said."""
        if self._resolved is None:
            message = self._channel.receive()
            if message is None:
                raise ImageError(f"{self.request.ref.familiar}: the pull's fetcher ended "
                                 f"without an answer",
                                 hint="rerun with --debug; this is a bug in lamina")
            if message[0] == "failed":
                raise message[1]
            self._resolved = message[1]
        return self._resolved

    def fetch(self, positions: Sequence[int], events: PullEvents) -> dict[int, Spool]:
        """The spools of these layers' blobs, downloading; any other download is cancelled."""
        layers = self.resolved().manifest.layers
        spools: dict[int, Spool] = {n: self._spool(layers[n].digest) for n in positions}
        self._events = events
        self._listen()
        self._channel.send(("want", list(positions)))
        return spools

    def _spool(self, digest: str) -> _FetchedSpool:
        spool = self.spools.get(digest)
        if spool is None:
            size = next(d.size for d in self.resolved().manifest.layers if d.digest == digest)
            spool = _FetchedSpool(self.request.root / "tmp", digest, size,
                                  owner=self.request.owner, channel=self._channel)
            self.spools[digest] = spool
        return spool

    def _listen(self) -> None:
        if self._listener is None:
            self._listener = threading.Thread(target=self._receive, daemon=True,
                                              name="fetcher-reports")
            self._listener.start()

    def _receive(self) -> None:
        """Apply the fetcher's reports to the spools until it stops."""
        from .store import short_id  # not before the fork: the fetcher starts sooner
        wanted = set(self.spools)
        try:
            while (message := self._channel.receive()) is not None:
                if message[0] == "stopped":
                    break
                if message[0] == "resolved":  # never asked for: the pull stopped early
                    self._resolved = self._resolved or message[1]
                    continue
                if message[0] == "failed":
                    continue
                spool = self._spool(message[1])
                if spool.digest not in wanted:
                    spool.cancelled = True  # begun on the hint; not needed after all
                short = short_id(spool.digest)
                events = self._events
                if message[0] == "written":
                    spool.advance(message[2])
                    if events is not None:
                        events.progress(short, message[2], spool.size)
                elif message[0] == "started":
                    if events is not None:
                        events.layer(short, "Downloading", spool.size)
                elif message[0] == "ended":
                    if message[2] is None and events is not None:
                        events.layer(short, "Download complete")
                    spool.settle(message[2])
        finally:
            for spool in self.spools.values():
                if not spool.done:
                    spool.settle(ImageError(
                        f"{self.request.ref.familiar}: the download of {spool.digest} "
                        f"stopped with the pull's fetcher",
                        hint="pull again: the download resumes where it stopped"))

    def finish(self, blobs: BlobStore | None, *, stored: Collection[str] = (),
               keep: bool = False, resumable: bool = True) -> None:
        """Stop the fetcher, then settle each blob's file. Idempotent.

        ``stored``: the blobs whose layers are in the store now: moved into the blob
        store with ``keep`` (verified ones), deleted otherwise. Any other file stays
        for the next pull (resumed, or only verified when complete) unless its layer
        turned out not to be needed or ``resumable`` is false (a full disk).
        """
        if self._closed:
            return
        self._closed = True
        self._channel.send(("stop",))
        self._listen()  # the reports still to come, up to "stopped"
        assert self._listener is not None
        self._listener.join(STOP_WAIT)
        self._end()
        for spool in self.spools.values():
            if spool.digest not in stored:
                spool.discard(resumable=resumable and not spool.cancelled)
            elif keep and blobs is not None and spool.done and spool.error is None:
                spool.keep(blobs)
            else:
                spool.discard()

    def close(self) -> None:
        """Stop the fetcher, keeping nothing; part files stay resumable."""
        self.finish(None)

    def _end(self) -> None:
        """Wait for the fetcher to end (killing a process that does not); the part files
        are then the pull's alone."""
        if self.pid is not None:
            if not _exited_within(self.pid, STOP_WAIT):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        elif self._thread is not None:
            self._thread.join(5.0)
        if self._listener is not None:
            self._listener.join(STOP_WAIT)
        self._channel.close()


def _exited_within(pid: int, timeout: float) -> bool:
    """Whether our child ``pid`` ended within ``timeout`` seconds (it is not reaped).

    Through a pidfd, which turns readable the moment the child ends (it ends right
    after its last report: the pull waits for it at the end of every pull); a poll
    of ``waitpid`` where pidfds are missing (Linux before 5.3).
    """
    import select

    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        try:
            return bool(select.select([fd], [], [], timeout)[0])
        finally:
            os.close(fd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # reaped already
            return True
        time.sleep(0.002)
    return False


def _fetcher_thread(channel: Channel, request: FetchRequest) -> None:
    from .downloads import serve

    try:
        serve(channel, request, stop_wait=5.0, background=False)
    finally:
        channel.close()  # the pull's end sees the end of the reports


def _fetcher_process(channel: Channel, request: FetchRequest, parent: int) -> None:
    """The forked fetcher's life; never returns."""
    status = 1
    try:
        die_with_parent(parent)
        # the terminal's Ctrl-C is for the pull, which stops us; nothing of ours is printed
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        from .downloads import serve

        serve(channel, request, stop_wait=0.2, background=True)
        status = 0
    finally:
        os._exit(status)
