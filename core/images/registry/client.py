"""The OCI distribution API of one registry: manifests, blobs, uploads, tags, login.

:class:`Registry` speaks to one host (and, for pulls, its mirrors first) through a
:class:`~.transport.Transport` and an :class:`~.auth.Authenticator`. Every error is a
:class:`~lamina.core.errors.RegistryError` naming the registry, the repository and
reference, and the reason. Manifests are checked against their digest here; blobs
are not (:class:`BlobStream` returns raw bytes; the caller hashes while applying),
but a blob read never returns more than its length and resumes with ``Range`` after
a dropped or stalled connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlencode

from ...errors import (
    RegistryAuthError,
    RegistryDigestMismatch,
    RegistryError,
    RegistryNotFound,
    RegistryProtocolError,
    RegistryUnavailable,
)
from .auth import Authenticator
from .credentials import Credentials
from .transport import Transport, _reason

if TYPE_CHECKING:
    from ...config import Config
    from .connections import Response

#: default cap of a manifest or index body
MAX_MANIFEST_SIZE = 4 << 20
#: times one blob stream is resumed after a dropped or stalled connection (in all)
BLOB_RESUMES = 5
#: pieces a monolithic upload streams its body in
UPLOAD_PIECE = 1 << 20
_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class Manifest(NamedTuple):
    """A manifest or index as the registry sent it; ``digest`` checked against ``body``."""

    media_type: str
    digest: str
    body: bytes  # b"" from head_manifest


def is_digest(reference: str) -> bool:
    return bool(_DIGEST.match(reference))


def digest_of(body: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"


class BlobStream:
    """The raw bytes of one blob, from ``offset``; resumes itself with ``Range``.

    ``offset`` is where the body starts (the asked offset if the server honoured the
    Range, else 0); ``length`` the blob's total size when the server said it. A read
    that fails mid-body (connection reset, read timeout) is re-requested from where it
    got to, up to :data:`BLOB_RESUMES` times in all with back-off, then raises
    :class:`RegistryUnavailable`. Never returns bytes beyond ``length``.
    """

    def __init__(self, opener: Callable[[int], Response], first: Any,
                 offset: int, length: int | None, what: str, host: str) -> None:
        self._open = opener
        self._response = first
        self.offset = offset
        self.length = length
        #: bytes handed out so far, counted from the blob's start
        self.position = offset
        self._what = what
        self._host = host
        self.resumes = 0

    def read(self, n: int = -1) -> bytes:
        if self.length is not None:
            left = self.length - self.position
            if left <= 0:
                return b""
            n = left if n < 0 else min(n, left)
        from .connections import HTTP_ERRORS

        while True:
            try:
                if self._response is None:
                    self._reopen()
                data = self._response.read(n if n >= 0 else None)
            except HTTP_ERRORS as exc:
                self._drop()
                if self.length is None or self.resumes >= BLOB_RESUMES:
                    raise RegistryUnavailable(
                        f"registry {self._host}: reading {self._what} failed at byte "
                        f"{self.position}" + (f" of {self.length}" if self.length else "")
                        + f": {_reason(exc)}",
                        hint="try again: the next pull resumes where this one stopped",
                        host=self._host) from None
                self.resumes += 1
                time.sleep(min(0.25 * 2 ** (self.resumes - 1), 4.0))
                continue
            if not data and self.length is not None and self.position < self.length:
                # the connection ended early (a body without Content-Length)
                self._drop()
                if self.resumes >= BLOB_RESUMES:
                    raise RegistryUnavailable(
                        f"registry {self._host}: {self._what} ended at byte {self.position} "
                        f"of {self.length}", hint="try again", host=self._host)
                self.resumes += 1
                continue
            self.position += len(data)
            return data

    def _reopen(self) -> None:
        response = self._open(self.position)
        if response.status == 206:
            start = _range_start(response)
            if start != self.position:
                response.close()
                raise RegistryProtocolError(
                    f"registry {self._host}: asked for {self._what} from byte {self.position}, "
                    f"it sent a range from {start}", hint="try again", host=self._host)
        else:  # the whole blob again: skip what was handed out already
            skip = self.position
            while skip:
                chunk = response.read(min(skip, 1 << 20))
                if not chunk:
                    raise OSError("connection ended while skipping to the resume point")
                skip -= len(chunk)
        self._response = response

    def _drop(self) -> None:
        if self._response is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                self._response.close()
            self._response = None

    def close(self) -> None:
        if self._response is not None:
            try:
                self._response.release_conn() if self.length == self.position else \
                    self._response.close()
            finally:
                self._response = None

    def __enter__(self) -> BlobStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _range_start(response: Any) -> int | None:
    found = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
    return int(found.group(1)) if found else None


def _total_size(response: Any) -> int | None:
    """The blob's whole size from a 200's Content-Length or a 206's Content-Range."""
    if response.status == 206:
        found = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
        return int(found.group(3)) if found and found.group(3) != "*" else None
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


class Registry:
    """One registry host (and its mirrors, for pulls); one connection pool per process,
    thread-safe.

    ``mirrors`` are hosts (or :class:`Registry` objects, with settings of their own)
    tried in order before this registry for manifest and blob reads; a mirror that
    fails is passed over. Pushes, tags and logins go to the registry itself.
    """

    def __init__(self, host: str, *, insecure: bool = False, mirrors: Sequence[str | Registry] = (),
                 credentials: Credentials | None = None, timeout: float = 30.0) -> None:
        from .credentials import normalize_host

        self.host = normalize_host(host)
        self.transport = Transport(self.host, insecure=insecure, timeout=timeout)
        self.auth = Authenticator(self.host, credentials)
        self.mirrors: list[Registry] = [
            m if isinstance(m, Registry) else Registry(m, timeout=timeout) for m in mirrors]

    @classmethod
    def from_config(cls, host: str, config: Config) -> Registry:
        """The registry ``host`` with its ``[registries."HOST"]`` settings and stored login."""
        from . import credentials

        host = credentials.normalize_host(host)
        settings = config.registry(host)
        mirrors = []
        for mirror in settings.get("mirrors", ()):
            own = config.registry(mirror)
            mirrors.append(cls(mirror, insecure=bool(own.get("insecure")),
                               credentials=credentials.lookup(mirror)))
        return cls(host, insecure=bool(settings.get("insecure")), mirrors=mirrors,
                   credentials=credentials.lookup(host))

    def __repr__(self) -> str:
        return f"Registry({self.host!r})"

    # --- requests --------------------------------------------------------------------

    def _request(self, method: str, path: str, *, scopes: tuple[str, ...], what: str,
                 headers: dict[str, str] | None = None, body: Any = None,
                 stream: bool = False, ok: tuple[int, ...] = (200,),
                 missing_ok: bool = False) -> Any:
        """``method path`` authenticated for ``scopes``; the response if its status is in ``ok``.

        A 401 is answered once (a token, or Basic); 404 raises :class:`RegistryNotFound`
        (or returns None with ``missing_ok``); any other status not in ``ok`` raises.
        """
        url = self.transport.url(path)
        hdrs = dict(headers or {})
        cached = self.auth.cached(scopes)
        if cached:
            hdrs["Authorization"] = cached
        response = self.transport.send(method, url, headers=hdrs, body=body, stream=stream,
                                       what=what)
        if response.status == 401 and _replayable(body):
            challenge = response.headers.get("WWW-Authenticate")
            _discard(response)
            hdrs["Authorization"] = self.auth.answer(challenge, scopes, self._fetch_token)
            response = self.transport.send(method, url, headers=hdrs, body=body, stream=stream,
                                           what=what)
        if response.status in ok:
            return response
        if response.status == 404 and missing_ok:
            _discard(response)
            return None
        raise self._status_error(response, what)

    def _fetch_token(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        response = self.transport.send("GET", url, headers=headers, what="token",
                                       auth_origin=url)
        return response.status, response.data

    def _status_error(self, response: Any, what: str) -> RegistryError:
        status = response.status
        detail = _error_detail(response)
        _discard(response)
        reason = f"{status} {response.reason or ''}".rstrip() + (f": {detail}" if detail else "")
        if status == 404:
            return RegistryNotFound(f"registry {self.host}: {what} not found ({reason})",
                                    hint="check the name, the tag or digest, and the registry",
                                    host=self.host, status=status)
        if status in (401, 403):
            who = "refused the credentials" if self.auth.credentials else "needs credentials"
            return RegistryAuthError(f"registry {self.host} {who} for {what} ({reason})",
                                     hint=f"`lamina login {self.host}` with a user that may "
                                     "access it", host=self.host, status=status)
        if status == 429 or status >= 500:
            return RegistryUnavailable(
                f"registry {self.host} keeps failing ({what}): it answered {reason}",
                hint="try again later", host=self.host, status=status)
        return RegistryError(f"registry {self.host} refused {what}: {reason}",
                             hint="see the registry's reason above", host=self.host,
                             status=status)

    # --- manifests -------------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str, *, accept: Sequence[str],
                     max_size: int = MAX_MANIFEST_SIZE) -> Manifest:
        """The manifest (or index) ``repository:reference``, its digest checked.

        For a digest reference the body must hash to it; for a tag the digest is the
        body's sha256, and a ``Docker-Content-Digest`` the registry sends must agree.
        A body over ``max_size`` is refused without being read whole.
        """
        return self._from_mirrors(lambda r: r._get_manifest(repository, reference, accept,
                                                            max_size))

    def _get_manifest(self, repository: str, reference: str, accept: Sequence[str],
                      max_size: int) -> Manifest:
        what = f"manifest {_ref(repository, reference)}"
        response = self._request("GET", f"/v2/{repository}/manifests/{reference}",
                                 scopes=(_pull(repository),), what=what,
                                 headers={"Accept": ", ".join(accept)}, stream=True)
        try:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_size:
                raise self._too_large(what, int(declared), max_size)
            body = _read_capped(response, max_size)
            if body is None:
                raise self._too_large(what, None, max_size)
        except RegistryError:
            response.close()
            raise
        except Exception as exc:
            response.close()
            raise RegistryUnavailable(f"registry {self.host}: reading {what} failed: "
                                      f"{_reason(exc)}", hint="try again",
                                      host=self.host) from None
        response.release_conn()
        digest = self._check_digest(what, reference, body, response.headers)
        return Manifest(_media_type(response.headers, body), digest, body)

    def _check_digest(self, what: str, reference: str, body: bytes, headers: Any) -> str:
        sent = (headers.get("Docker-Content-Digest") or "").strip()
        if is_digest(reference):
            actual = digest_of(body, reference.split(":", 1)[0])
            if actual != reference:
                raise RegistryDigestMismatch(
                    f"registry {self.host} sent {what} with digest {actual}",
                    hint="the registry's content is damaged or tampered with; nothing was "
                    "stored", host=self.host)
            return reference
        digest = digest_of(body)
        if sent and is_digest(sent):
            algorithm = sent.split(":", 1)[0]
            actual = digest if algorithm == "sha256" else digest_of(body, algorithm)
            if actual != sent:
                raise RegistryDigestMismatch(
                    f"registry {self.host} sent {what} with digest {actual}, but said "
                    f"{sent}", hint="the registry's content is damaged or tampered with; "
                    "nothing was stored", host=self.host)
        return digest

    def _too_large(self, what: str, size: int | None, cap: int) -> RegistryError:
        said = f"{size} bytes" if size is not None else "more"
        return RegistryProtocolError(
            f"registry {self.host}: {what} is too large ({said}, at most {cap} accepted)",
            hint="a manifest this large is malformed or hostile; nothing was stored",
            host=self.host)

    def head_manifest(self, repository: str, reference: str, *,
                      accept: Sequence[str]) -> Manifest | None:
        """The manifest's media type and digest (body ``b""``), or None if it is absent."""
        def head(r: Registry) -> Manifest | None:
            what = f"manifest {_ref(repository, reference)}"
            response = r._request("HEAD", f"/v2/{repository}/manifests/{reference}",
                                  scopes=(_pull(repository),), what=what, missing_ok=True,
                                  headers={"Accept": ", ".join(accept)})
            if response is None:
                return None
            digest = (response.headers.get("Docker-Content-Digest") or "").strip()
            if is_digest(reference):
                digest = reference
            elif not is_digest(digest):  # not every registry says: ask for the body
                found = r._get_manifest(repository, reference, accept, MAX_MANIFEST_SIZE)
                return found._replace(body=b"")
            return Manifest(_media_type(response.headers, b""), digest, b"")

        return self._from_mirrors(head, none_is_miss=True)

    def put_manifest(self, repository: str, reference: str, media_type: str,
                     body: bytes) -> str:
        """Upload a manifest under a tag or its digest; returns its digest."""
        what = f"manifest {_ref(repository, reference)}"
        digest = digest_of(body)
        if is_digest(reference) and reference != digest_of(body, reference.split(":")[0]):
            raise RegistryDigestMismatch(f"{what}: the body does not hash to {reference}",
                                         hint="this is a bug in the caller", host=self.host)
        response = self._request("PUT", f"/v2/{repository}/manifests/{reference}",
                                 scopes=(_push(repository),), what=what,
                                 headers={"Content-Type": media_type}, body=body,
                                 ok=(200, 201, 202))
        sent = (response.headers.get("Docker-Content-Digest") or "").strip()
        _discard(response)
        if sent.startswith("sha256:") and sent != digest:
            raise RegistryDigestMismatch(
                f"registry {self.host} stored {what} as {sent}, but its digest is {digest}",
                hint="the registry changed the manifest; push again", host=self.host)
        return digest

    # --- blobs -----------------------------------------------------------------------

    def open_blob(self, repository: str, digest: str, *, offset: int = 0) -> BlobStream:
        """A stream of the blob's raw bytes from ``offset`` (see :class:`BlobStream`)."""
        return self._from_mirrors(lambda r: r._open_blob(repository, digest, offset))

    def _open_blob(self, repository: str, digest: str, offset: int) -> BlobStream:
        what = f"blob {digest} of {repository}"

        def opener(start: int) -> Any:
            headers = {"Range": f"bytes={start}-"} if start else {}
            return self._request("GET", f"/v2/{repository}/blobs/{digest}",
                                 scopes=(_pull(repository),), what=what, headers=headers,
                                 stream=True, ok=(200, 206))

        response = opener(offset)
        start = 0
        if response.status == 206:
            start = _range_start(response) or 0
            if start != offset:
                response.close()
                raise RegistryProtocolError(
                    f"registry {self.host}: asked for {what} from byte {offset}, it sent a "
                    f"range from {start}", hint="try again", host=self.host)
        return BlobStream(opener, response, start, _total_size(response), what, self.host)

    def blob_size(self, repository: str, digest: str) -> int | None:
        """The blob's size (HEAD), or None if the repository lacks it."""
        what = f"blob {digest} of {repository}"
        response = self._request("HEAD", f"/v2/{repository}/blobs/{digest}",
                                 scopes=(_pull(repository),), what=what, missing_ok=True)
        if response is None:
            return None
        try:
            return int(response.headers["Content-Length"])
        except (KeyError, ValueError):
            raise RegistryProtocolError(f"registry {self.host}: HEAD of {what} gave no size",
                                        hint="the registry is misconfigured",
                                        host=self.host) from None

    def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        """Mount a blob of ``from_repository`` into ``repository`` without uploading it.

        False when the registry could not (it then starts a normal upload: cancelled here).
        """
        what = f"blob {digest} of {repository} (mounted from {from_repository})"
        query = urlencode({"mount": digest, "from": from_repository})
        response = self._request("POST", f"/v2/{repository}/blobs/uploads/?{query}",
                                 scopes=(_push(repository), _pull(from_repository)), what=what,
                                 body=b"", ok=(201, 202))
        location = response.headers.get("Location")
        status = response.status
        _discard(response)
        if status == 201:
            return True
        if location:
            self._cancel_upload(repository, location)
        return False

    def upload_blob(self, repository: str, digest: str, size: int, stream: IO[bytes], *,
                    chunk_size: int | None = None) -> None:
        """Upload ``size`` bytes of ``stream`` as blob ``digest``, streaming.

        Monolithic (POST, then one PUT of the whole body) without ``chunk_size``;
        otherwise PATCHes of ``chunk_size`` bytes with ``Content-Range``, then a PUT.
        The registry checks the digest; a failed upload is cancelled.
        """
        what = f"blob {digest} of {repository}"
        scopes = (_push(repository),)
        response = self._request("POST", f"/v2/{repository}/blobs/uploads/", scopes=scopes,
                                 what=what, body=b"", ok=(202,))
        location = self._location(response, what)
        _discard(response)
        try:
            if chunk_size:
                sent = 0
                while sent < size:
                    piece = _read_exactly(stream, min(chunk_size, size - sent), what)
                    response = self._request(
                        "PATCH", location, scopes=scopes, what=what, body=piece,
                        headers={"Content-Type": "application/octet-stream",
                                 "Content-Range": f"{sent}-{sent + len(piece) - 1}",
                                 "Content-Length": str(len(piece))}, ok=(202, 204))
                    location = self._location(response, what)
                    _discard(response)
                    sent += len(piece)
                body: Any = b""
                length = 0
            else:
                body, length = _pieces(stream, size, what), size
            response = self._request(
                "PUT", _with_query(location, {"digest": digest}), scopes=scopes, what=what,
                body=body, headers={"Content-Type": "application/octet-stream",
                                    "Content-Length": str(length)}, ok=(201, 204))
        except BaseException:
            self._cancel_upload(repository, location)
            raise
        sent_digest = (response.headers.get("Docker-Content-Digest") or "").strip()
        _discard(response)
        if sent_digest and sent_digest != digest:
            raise RegistryDigestMismatch(f"registry {self.host} stored {what} as {sent_digest}",
                                         hint="push again", host=self.host)

    def _location(self, response: Any, what: str) -> str:
        location = response.headers.get("Location")
        if not location:
            _discard(response)
            raise RegistryProtocolError(f"registry {self.host}: no upload Location for {what}",
                                        hint="the registry is misconfigured", host=self.host)
        return self.transport.url(location)

    def _cancel_upload(self, repository: str, location: str) -> None:
        try:
            response = self._request("DELETE", location, scopes=(_push(repository),),
                                     what="upload", ok=(200, 202, 204, 404))
            _discard(response)
        except RegistryError:
            pass  # an abandoned upload session expires on the registry by itself

    # --- the rest --------------------------------------------------------------------

    def tags(self, repository: str) -> list[str]:
        """Every tag of ``repository`` (all pages)."""
        what = f"tags of {repository}"
        path = f"/v2/{repository}/tags/list"
        found: list[str] = []
        for _ in range(10_000):
            response = self._request("GET", path, scopes=(_pull(repository),), what=what)
            try:
                found.extend(json.loads(response.data).get("tags") or [])
            except (ValueError, AttributeError, TypeError):
                raise RegistryProtocolError(f"registry {self.host}: {what} is not valid JSON",
                                            hint="the registry is misconfigured",
                                            host=self.host) from None
            following = _next_link(response.headers.get("Link", ""))
            if not following:
                break
            path = following
        return found

    def check_login(self) -> None:
        """Ask ``/v2/`` with the credentials; raises :class:`RegistryAuthError` when refused."""
        response = self._request("GET", "/v2/", scopes=(), what="login")
        _discard(response)

    def _from_mirrors(self, call: Callable[[Registry], Any], *, none_is_miss: bool = False
                      ) -> Any:
        """``call`` on each mirror in order, then on this registry: the first answer wins."""
        for mirror in self.mirrors:
            try:
                found = call(mirror)
            except RegistryError:
                continue  # a mirror failing is not fatal: the next source is tried
            if found is not None or not none_is_miss:
                return found
        return call(self)


# --- helpers ---------------------------------------------------------------------------


def _pull(repository: str) -> str:
    return f"repository:{repository}:pull"


def _push(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def _ref(repository: str, reference: str) -> str:
    return f"{repository}@{reference}" if is_digest(reference) else f"{repository}:{reference}"


def _replayable(body: Any) -> bool:
    return body is None or isinstance(body, bytes)


def _discard(response: Any) -> None:
    """Let the connection go back to the pool (small bodies) or close it."""
    try:
        response.drain_conn()
        response.release_conn()
    except Exception:  # a broken connection is simply not reused
        response.close()


def _read_capped(response: Any, cap: int) -> bytes | None:
    """The body, or None if it is longer than ``cap`` (reading at most ``cap + 1`` bytes)."""
    parts, total = [], 0
    while True:
        chunk = response.read(min(1 << 16, cap + 1 - total))
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        total += len(chunk)
        if total > cap:
            return None


def _error_detail(response: Any) -> str:
    """The registry's own reason from its ``{"errors": [...]}`` body, if it sent one."""
    try:
        body = response.data  # error bodies are small
        errors = json.loads(body).get("errors") or []
        return "; ".join(
            f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors[:3])
    except Exception:
        return ""


def _media_type(headers: Any, body: bytes) -> str:
    sent = (headers.get("Content-Type") or "").split(";", 1)[0].strip()
    if sent and sent not in ("application/json", "text/plain", "application/octet-stream"):
        return sent
    try:
        inner = json.loads(body).get("mediaType")
    except (ValueError, AttributeError):
        inner = None
    return inner if isinstance(inner, str) and inner else sent


def _read_exactly(stream: IO[bytes], n: int, what: str) -> bytes:
    parts, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise RegistryError(f"uploading {what}: the source ended {left} bytes early",
                                hint="the blob's size is wrong; nothing was pushed")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _pieces(stream: IO[bytes], size: int, what: str) -> Iterator[bytes]:
    left = size
    while left:
        chunk = stream.read(min(UPLOAD_PIECE, left))
        if not chunk:
            raise RegistryError(f"uploading {what}: the source ended {left} bytes early",
                                hint="the blob's size is wrong; nothing was pushed")
        left -= len(chunk)
        yield chunk


def _with_query(url: str, params: dict[str, str]) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params)


def _next_link(header: str) -> str | None:
    found = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', header)
    return found.group(1) if found else None
