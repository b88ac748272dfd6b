"""The network side of a pull, in a process of its own: manifest, config and layer blobs.

A pull's applier (:mod:`.pull`, the main thread) runs Python for much of a layer's
apply and holds the GIL meanwhile; downloads in threads beside it take the GIL from it
between their chunks, and their start (the registry client's imports, the requests)
used to sit on the pull's critical path. So the fetcher is forked right when the pull
begins, before the store is opened: the manifest, the config and the first blob are on
their way while the pull imports its modules and opens the store, and the downloads'
work is the other core's (docs/performance.md, "Pull").

Protocol, pickled frames on two pipes (:class:`Channel`; both ends are this program):

- fetcher -> pull: ``("resolved", Resolved)`` or ``("failed", error)`` first; then per
  blob ``("started", digest)``, ``("written", digest, size_so_far)`` and ``("ended",
  digest, error_or_None)``; ``("stopped",)`` last;
- pull -> fetcher: ``("want", positions)``: the layers the store lacks (any other
  download is cancelled); ``("cancel", digest)``; ``("stop",)``.

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
import pickle
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from ..errors import DigestMismatch, ImageError, ImageFormatError, LaminaError
from ..host.locks import process_identity
from ..host.processes import die_with_parent
from ..layers import records
from .formats import (
    ACCEPTED_MANIFESTS,
    MAX_CONFIG_SIZE,
    ImageConfig,
    Index,
    Manifest,
    chain_ids,
    layer_id,
    parse_config,
    parse_manifest,
    sha256_digest,
)
from .platform import Platform, best_match, format_platform
from .reference import Reference
from .spool import Cancelled, Spool
from .store import short_id

if TYPE_CHECKING:
    from ..blobs.store import BlobStore
    from ..config import Config
    from .events import PullEvents
    from .registry.client import BlobStream, Registry

T = TypeVar("T")

#: how long the pull waits for a stopped fetcher to end before killing it (its downloads
#: may sit in a read from a stalled registry; their part files stay resumable)
STOP_WAIT = 2.0
#: the fetcher's pipe to the pull: the resolved manifest and config go through it before
#: the pull reads them (once its store is open), and the downloads wait behind them
PIPE_SIZE = 1 << 20


# -- what the registry says the image is ---------------------------------------------------


def resolve_manifest(
    registry: Registry, ref: Reference, platform: Platform, *, explicit_platform: bool
) -> tuple[Manifest, str, bytes, str, list[tuple[str, bytes]]]:
    """The image manifest for ``platform``.

    Returns the manifest, its digest, its bytes, the digest the reference names
    (the index's, for a multi-platform image: what Docker records as RepoDigest)
    and every manifest document fetched (to keep as blobs).
    """
    fetched = registry.get_manifest(ref.repository, ref.digest or ref.tag or "latest",
                                    accept=ACCEPTED_MANIFESTS)
    top_digest = fetched.digest
    documents = [(fetched.digest, fetched.body)]
    parsed = _parse(fetched.body, fetched.media_type, ref)
    if isinstance(parsed, Index):
        chosen = best_match(platform, [d.to_json() for d in parsed.manifests])
        if chosen is None:
            entries = [dict(d.platform or {}) for d in parsed.manifests]
            offered = sorted({
                format_platform(Platform(e.get("os", "?"), e.get("architecture", "?"),
                                         e.get("variant")))
                for e in entries if e.get("os") and e.get("os") != "unknown"
            })
            raise ImageError(
                f"{ref.familiar}: no image for platform {format_platform(platform)}; "
                f"the index offers {', '.join(offered) or 'none'}",
                hint="choose one of those with --platform",
            )
        descriptor = parsed.manifests[chosen]
        fetched = registry.get_manifest(ref.repository, descriptor.digest,
                                        accept=ACCEPTED_MANIFESTS)
        if fetched.digest != descriptor.digest or len(fetched.body) != descriptor.size:
            raise DigestMismatch(
                f"{ref.familiar}: the manifest for {format_platform(platform)} does not match "
                f"the index's digest and size",
                hint="the registry serves inconsistent content; nothing was stored",
            )
        documents.append((fetched.digest, fetched.body))
        parsed = _parse(fetched.body, fetched.media_type, ref)
        if isinstance(parsed, Index):
            raise ImageFormatError(f"{ref.familiar}: an index names another index")
    return parsed, fetched.digest, fetched.body, top_digest, documents


def _parse(body: bytes, media_type: str, ref: Reference) -> Manifest | Index:
    try:
        return parse_manifest(body, media_type)
    except ImageFormatError as exc:
        raise ImageFormatError(f"{ref.familiar}: {exc.args[0]}", hint=exc.hint) from None


def fetch_config(registry: Registry, ref: Reference,
                 manifest: Manifest) -> tuple[ImageConfig, bytes]:
    """The config blob, fetched and verified (kilobytes: cheaper than opening the store first)."""
    descriptor = manifest.config
    if descriptor.size > MAX_CONFIG_SIZE:
        raise ImageFormatError(
            f"{ref.familiar}: the image config is {descriptor.size} bytes, more than the "
            f"{MAX_CONFIG_SIZE} allowed"
        )
    with registry.open_blob(ref.repository, descriptor.digest) as stream:
        parts, got = [], 0
        while got <= descriptor.size:
            chunk = stream.read(min(1 << 20, descriptor.size + 1 - got))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        data = b"".join(parts)
    if len(data) != descriptor.size or sha256_digest(data) != descriptor.digest:
        raise DigestMismatch(
            f"{ref.familiar}: the config blob does not match its digest {descriptor.digest} "
            f"and size {descriptor.size}",
            hint="the registry serves corrupt content; nothing was stored",
        )
    try:
        config = parse_config(data)
    except ImageFormatError as exc:
        raise ImageFormatError(f"{ref.familiar}: {exc.args[0]}", hint=exc.hint) from None
    if len(config.diff_ids) != len(manifest.layers):
        raise ImageFormatError(
            f"{ref.familiar}: the config lists {len(config.diff_ids)} layer diff ids but the "
            f"manifest has {len(manifest.layers)} layers"
        )
    return config, data


class Background(Generic[T]):
    """``call()`` on a thread of its own, started at once, for a result needed a little
    later: what waits on the registry while the caller does something else.

    :meth:`result` waits for the call and returns what it returned (once) or raises
    what it raised. :meth:`close` lets go without waiting: ``release`` is applied to a
    result nobody took, now or when the call ends.
    """

    def __init__(self, call: Callable[[], T], release: Callable[[T], None], *,
                 name: str) -> None:
        self._release = release
        self._lock = threading.Lock()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True, name=name)
        self._thread.start()

    def _run(self, call: Callable[[], T]) -> None:
        try:
            value = call()
        except BaseException as exc:  # raised by result()
            self._error = exc
            return
        with self._lock:
            if not self._closed:
                self._value = value
                return
        self._release(value)

    def result(self) -> T:
        self._thread.join()
        with self._lock:
            value, self._value = self._value, None
            self._closed = True
        if self._error is not None:
            raise self._error
        assert value is not None, "a result is taken once"
        return value

    def close(self) -> None:
        with self._lock:
            value, self._value = self._value, None
            self._closed = True
        if value is not None:
            self._release(value)


class Resolved(NamedTuple):
    """What the registry says the image is, fetched and checked before the store is touched."""

    ref: Reference
    manifest: Manifest
    manifest_digest: str
    #: the digest the reference names: the index's for a multi-platform image
    top_digest: str
    #: every manifest (and index) document fetched, to keep as blobs
    documents: list[tuple[str, bytes]]
    config: ImageConfig
    config_bytes: bytes
    #: the first layer's blob, asked for as soon as the manifest named it: docker-registry
    #: takes ~10 ms to answer a blob request, which came before the first byte could be
    #: applied when it was asked for only once the store was open. Left unread for that
    #: layer's download; closed unread if the layer is in the store already.
    first_blob: Background[BlobStream] | None = None

    def close(self) -> None:
        """Let go of what :func:`resolve` asked for and :func:`pull` did not use."""
        if self.first_blob is not None:
            self.first_blob.close()


def resolve(registry: Registry, ref: Reference, *, platform: Platform,
            explicit_platform: bool = False) -> Resolved:
    """Manifest and config from the registry, every check on them done; nothing stored.

    Needs no store: a registry that is down or an image that is wrong fails the
    pull before anything is stored. The first layer's blob is asked for meanwhile
    (:attr:`Resolved.first_blob`); :meth:`Resolved.close` lets go of it when the
    result is not pulled.
    """
    manifest, manifest_digest, _, top_digest, documents = resolve_manifest(
        registry, ref, platform, explicit_platform=explicit_platform
    )
    first = None
    if manifest.layers:
        digest = manifest.layers[0].digest
        first = Background(lambda: registry.open_blob(ref.repository, digest),
                           lambda stream: stream.close(), name=f"first-blob-{digest[7:19]}")
    try:
        config, config_bytes = fetch_config(registry, ref, manifest)
        if explicit_platform and (config.os, config.architecture) != (platform.os,
                                                                       platform.architecture):
            raise ImageError(
                f"{ref.familiar}: the image is for {config.os}/{config.architecture}, not "
                f"{format_platform(platform)}",
                hint="drop --platform, or pull a tag built for that platform",
            )
    except BaseException:
        if first is not None:
            first.close()
        raise
    return Resolved(ref, manifest, manifest_digest, top_digest, documents, config, config_bytes,
                    first)


# -- the frames between the pull and its fetcher ---------------------------------------------


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


def _portable(error: BaseException) -> BaseException:
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


# -- the fetcher's side ----------------------------------------------------------------------


class _Request(NamedTuple):
    """What the fetcher is asked for (inherited by the fork: never pickled)."""

    config: Config
    root: Path
    ref: Reference
    platform: Platform
    explicit_platform: bool
    max_downloads: int
    #: the pull's :func:`process_identity`: its part files are named after it
    owner: str


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
        self._channel.send(("ended", self.digest, None if error is None else _portable(error)))


class Downloads:
    """The layer blobs of one pull, downloading in threads into spools (in the fetcher)."""

    def __init__(self, request: _Request, registry: Registry, resolved: Resolved,
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
            spool.fail(exc)
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
            spool.fail(exc)
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
    return [n for n, one in enumerate(ids)
            if not (records.record_dir(root) / f"{one}.json").exists()]


def _serve(channel: Channel, request: _Request, *, stop_wait: float) -> None:
    """The fetcher: resolve, download what the pull wants, until it says stop."""
    from .registry.client import Registry

    try:
        registry = Registry.from_config(request.ref.registry, request.config)
        resolved = resolve(registry, request.ref, platform=request.platform,
                           explicit_platform=request.explicit_platform)
    except BaseException as exc:
        channel.send(("failed", _portable(exc)))
        return
    downloads = Downloads(request, registry, resolved, channel)
    try:
        channel.send(("resolved", resolved._replace(first_blob=None)))
        downloads.want(_likely_missing(request.root, resolved))
        while (message := channel.receive()) is not None:
            if message[0] == "want":
                downloads.want(message[1])
            elif message[0] == "cancel":
                downloads.cancel(message[1])
            else:
                break
    finally:
        resolved.close()
        downloads.stop(stop_wait)
        channel.send(("stopped",))


# -- the pull's side -------------------------------------------------------------------------


class _FetchedSpool(Spool):
    """The reading side of a spool in the pull: the fetcher's frames advance it."""

    def __init__(self, tmp: Path, digest: str, size: int, *, owner: str,
                 channel: Channel) -> None:
        super().__init__(tmp, digest, size, owner=owner)
        self._channel = channel

    def cancel(self) -> None:
        super().cancel()
        self._channel.send(("cancel", self.digest))


class Fetcher:
    """A pull's fetcher, started at once (:meth:`start`); :meth:`close` ends it."""

    def __init__(self, request: _Request) -> None:
        self.request = request
        down_r, down_w = os.pipe2(os.O_CLOEXEC)  # pull -> fetcher
        up_r, up_w = os.pipe2(os.O_CLOEXEC)  # fetcher -> pull
        with contextlib.suppress(OSError):  # room for a big config before the pull reads
            fcntl.fcntl(up_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.pid: int | None = None
        self._thread: threading.Thread | None = None
        if threading.active_count() == 1:
            parent = os.getpid()
            self.pid = os.fork()
            if self.pid == 0:
                os.close(down_w)
                os.close(up_r)
                _fetcher_process(Channel(down_r, up_w), request, parent)
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
        return cls(_Request(config, root, ref, platform, explicit_platform, max_downloads,
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
        wanted = set(self.spools)
        try:
            while (message := self._channel.receive()) is not None:
                if message[0] == "stopped":
                    break
                if message[0] in ("resolved", "failed"):  # never asked for: stopped early
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

    def finish(self, blobs: BlobStore | None, *, keep: bool, resumable: bool = True) -> None:
        """Stop the fetcher; then keep the verified blobs (with ``keep``) or delete them.

        A part file stays for the next pull unless its layer turned out not to be
        needed or ``resumable`` is false (a full disk). Idempotent.
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
            if keep and blobs is not None and spool.done and spool.error is None:
                spool.keep(blobs)
            else:
                spool.discard(resumable=resumable and not spool.cancelled)

    def close(self) -> None:
        """Stop the fetcher, keeping nothing; part files stay resumable."""
        self.finish(None, keep=False)

    def _end(self) -> None:
        """Wait for the fetcher to end (killing a process that does not); the part files
        are then the pull's alone."""
        if self.pid is not None:
            deadline = time.monotonic() + STOP_WAIT
            while True:
                done, _ = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    break
                time.sleep(0.002)
        elif self._thread is not None:
            self._thread.join(5.0)
        if self._listener is not None:
            self._listener.join(STOP_WAIT)
        self._channel.close()


def _fetcher_thread(channel: Channel, request: _Request) -> None:
    try:
        _serve(channel, request, stop_wait=5.0)
    finally:
        channel.close()  # the pull's end sees the end of the reports


def _fetcher_process(channel: Channel, request: _Request, parent: int) -> None:
    """The forked fetcher's life; never returns."""
    status = 1
    try:
        die_with_parent(parent)
        # the terminal's Ctrl-C is for the pull, which stops us; nothing of ours is printed
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        _serve(channel, request, stop_wait=0.2)
        status = 0
    finally:
        os._exit(status)
