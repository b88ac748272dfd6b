"""The fetcher's work (:mod:`.fetcher`): resolve the image, download the layer blobs the pull
wants into spools, and report every step to the pull, until it says stop.

A forked fetcher downloads in the background (``SCHED_IDLE``) once the image is
resolved: when the pull's own threads keep every CPU busy, its applier, the critical
path, gets them, and the downloads, far ahead of it, take what is left
(docs/performance.md, "Pull"). The first time the applier waits for a blob's bytes, the
pull says so (``starved``) and the fetcher runs at the normal priority from then on: the
machine is busy with other work, which must not starve the pull through its fetcher.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ImageError, LaminaError
from ..host.processes import can_leave_background, run_in_background
from ..layers import records
from .channel import Channel, FetchRequest, portable
from .formats import chain_ids, layer_id
from .resolve import Resolved, resolve
from .spool import Cancelled, Spool, stale_parts

if TYPE_CHECKING:
    from .registry.client import Registry


class _ReportingSpool(Spool):
    """The writing side of a spool in the fetcher: every change is sent to the pull."""

    def __init__(self, tmp: Path, digest: str, size: int, *, owner: str,
                 channel: Channel) -> None:
        super().__init__(tmp, digest, size, owner=owner)
        self._channel = channel

    def advance(self, written: int) -> None:
        super().advance(written)
        self._channel.send(("written", self.digest, written))

    def started(self) -> None:
        self._channel.send(("started", self.digest))

    def settle(self, error: BaseException | None) -> None:
        super().settle(error)
        self._channel.send(("ended", self.digest, None if error is None else portable(error)))


class Downloads:
    """The layer blobs of one pull, downloading in threads into spools (in the fetcher)."""

    def __init__(self, request: FetchRequest, registry: Registry, resolved: Resolved,
                 channel: Channel) -> None:
        self.request = request
        self.registry = registry
        self.resolved = resolved
        self.channel = channel
        self.tmp = request.root / "tmp"
        #: by digest: a blob twice in one image (an empty layer repeated) downloads once
        self.spools: dict[str, _ReportingSpool] = {}
        self._slots = threading.Semaphore(request.max_downloads)
        self._threads: list[threading.Thread] = []
        #: answered once the last download started got its answer (the next one waits)
        self._previous: threading.Event | None = None
        #: the first layer's blob, asked for while the config was fetched
        self._first = resolved.first_blob
        #: whether the downloads run in the background; the lock orders a starting
        #: download's move there against :meth:`starved`'s move back
        self.background = False
        self._priority = threading.Lock()

    def go_background(self) -> None:
        """Download in the background, where the fetcher can come back from it (the
        thread that hears the pull stays in the foreground: it hears ``starved``)."""
        self.background = can_leave_background()

    def starved(self) -> None:
        """The pull waits for a blob's bytes: the normal priority, for good."""
        with self._priority:
            if self.background:
                self.background = False
                run_in_background(False, [t.native_id for t in self._threads
                                          if t.native_id is not None and t.is_alive()])

    def want(self, positions: Sequence[int]) -> None:
        """Download the blobs of these layers (in their order); cancel any other."""
        layers = self.resolved.manifest.layers
        wanted = {layers[n].digest for n in positions}
        for digest, spool in self.spools.items():
            if digest not in wanted:
                spool.cancel()
        for n in positions:
            descriptor = layers[n]
            if descriptor.digest not in self.spools:
                spool = _ReportingSpool(self.tmp, descriptor.digest, descriptor.size,
                                        owner=self.request.owner, channel=self.channel)
                self.spools[descriptor.digest] = spool
                self._start(spool)

    def cancel(self, digest: str) -> None:
        spool = self.spools.get(digest)
        if spool is not None:
            spool.cancel()

    def _start(self, spool: _ReportingSpool) -> None:
        """Start a download once the one before it was answered.

        The first layer's bytes are what the applier waits for: its request goes
        alone, as a registry answers slower with several requests at once (the first
        layer of six reached the applier ~45 ms later when all six were asked for at
        once). The others follow one round trip apart, so they still download in
        parallel.
        """
        try:
            spool.open_for_writing()
        except LaminaError as exc:  # the disk refused the part file: the pull says so
            spool.settle(exc)
            return
        if spool.written == spool.size:
            spool.finish()  # a complete part file from a dead pull: verify only
            return
        answered = threading.Event()
        thread = threading.Thread(target=self._run, args=(spool, self._previous, answered),
                                  daemon=True, name=f"download-{spool.hex[:12]}")
        self._threads.append(thread)
        thread.start()
        self._previous = answered

    def _run(self, spool: Spool, after: threading.Event | None,
             answered: threading.Event) -> None:
        try:
            with self._priority:
                if self.background:
                    run_in_background(True)
            if after is not None:
                after.wait()
            with self._slots:
                if spool.cancelled:
                    raise Cancelled("not needed")
                spool.started()
                self._download(spool, answered)
            spool.finish()
        except BaseException as exc:  # the pull reports it; the thread just ends
            if not isinstance(exc, LaminaError):
                exc = ImageError(f"{self.request.ref.familiar}: downloading {spool.digest} "
                                 f"failed: {exc}",
                                 hint="pull again: the download resumes where it stopped")
            spool.settle(exc)
        finally:
            answered.set()

    def _download(self, spool: Spool, answered: threading.Event) -> None:
        first, layers = self._first, self.resolved.manifest.layers
        if first is not None and layers[0].digest == spool.digest and not spool.written:
            self._first = None
            opened = first.result()  # asked for while the config was fetched
        else:
            opened = self.registry.open_blob(self.request.ref.repository, spool.digest,
                                             offset=spool.written)
        with opened as stream:
            answered.set()
            if stream.offset != spool.written:
                spool.restart()  # the registry ignored the Range: from the start
            while spool.written < spool.size:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                spool.write(chunk)

    def stop(self, wait: float) -> None:
        """Cancel what still runs and give the threads ``wait`` seconds to end."""
        for spool in self.spools.values():
            spool.cancel()
        deadline = time.monotonic() + wait
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for spool in self.spools.values():
            spool.close()  # what becomes of the file is the pull's to say


def _likely_missing(root: Path, resolved: Resolved) -> list[int]:
    """The layers whose record is not in the store: a hint, read without the store."""
    ids = [layer_id(c) for c in chain_ids(resolved.config.diff_ids)]
    return [n for n, one in enumerate(ids) if not records.record_path(root, one).exists()]


def serve(channel: Channel, request: FetchRequest, *, stop_wait: float,
          background: bool) -> None:
    """The fetcher: resolve, download what the pull wants, until it says stop; once the
    pull first says what it wants (its store is open), also store the manifests and config.

    ``background``: the fetcher is a process of its own, whose priority it may lower.
    """
    from .registry.client import Registry

    try:
        registry = Registry.from_config(request.ref.registry, request.config)
        resolved = resolve(registry, request.ref, platform=request.platform,
                           explicit_platform=request.explicit_platform,
                           ask_first=lambda digest: not stale_parts(request.root / "tmp",
                                                                    digest))
    except BaseException as exc:
        channel.send(("failed", portable(exc)))
        return
    downloads = Downloads(request, registry, resolved, channel)
    documents: threading.Thread | None = None
    try:
        channel.send(("resolved", resolved._replace(first_blob=None)))
        if background:
            downloads.go_background()
        downloads.want(_likely_missing(request.root, resolved))
        while (message := channel.receive()) is not None:
            if message[0] == "want":
                downloads.want(message[1])
                if documents is None:  # the store is open, and the pull holds its lock
                    documents = threading.Thread(target=_store_documents,
                                                 args=(request.root, resolved), daemon=True,
                                                 name="documents")
                    documents.start()
            elif message[0] == "cancel":
                downloads.cancel(message[1])
            elif message[0] == "starved":
                downloads.starved()
            else:
                break
    finally:
        resolved.close()
        downloads.stop(stop_wait)
        if documents is not None:
            documents.join()  # a document the pull finds in the store is durable
        channel.send(("stopped",))


def _store_documents(root: Path, resolved: Resolved) -> None:
    """The manifests and the config into the blob store, fsynced, while the pull applies.

    The pull stores whatever is not there before it registers the image; done here,
    early, the fsyncs commit a filesystem journal that holds little yet, off the
    applier's path (at the end of a pull they committed all it had applied: ~5 ms).
    A failure is left to the pull, which tries again and says what went wrong.
    """
    from ..blobs.store import BlobStore

    with contextlib.suppress(LaminaError, OSError):
        resolved.store_documents(BlobStore(root))
