"""Keep-alive HTTP/1.1 connections to registries, pooled per origin, on the standard library.

Why not urllib3: what a registry client needs from HTTP is small (pooled keep-alive
connections shared by parallel downloads, connect and read timeouts, TLS checked or
not, streamed bodies, chunked uploads), and :mod:`http.client` has all of it; redirects
and retries are :mod:`.transport`'s own anyway, so that credentials never follow a
redirect to another origin. urllib3's import costs ~40 ms on top of http.client's
(~15 ms), which is a third of all a one-layer pull may add to applying its layer
(docs/performance.md, "Pull").

Thread safety: a :class:`Pool` is shared by every thread; a connection and its
:class:`Response` belong to one thread until the response is released.
"""

from __future__ import annotations

import http.client
import select
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

#: what a broken connection, a timeout or a malformed answer raises while talking HTTP
HTTP_ERRORS: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException)
#: idle connections kept per origin (more are closed when released)
MAX_IDLE = 16
#: a body left unread up to this many bytes is read to keep its connection; a longer one
#: closes it
DRAIN_LIMIT = 1 << 20

#: errors of a reused connection the server had closed before the request reached it
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)

#: methods whose request may be sent twice with the same effect (RFC 9110, 9.2.2)
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})

Origin = tuple[str, str, int]


class Headers(dict[str, str]):
    """Response headers, looked up case-insensitively; repeated ones joined with ", "."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        super().__init__()
        for name, value in items:
            key = name.lower()
            found = dict.get(self, key)
            dict.__setitem__(self, key, value if found is None else f"{found}, {value}")

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)


class Response:
    """A status, its headers and a body read as a stream (or preloaded).

    :meth:`release_conn` hands the connection back to the pool once the body was
    read to its end; :meth:`close` drops it.
    """

    def __init__(self, pool: Pool, key: Origin, connection: http.client.HTTPConnection,
                 raw: http.client.HTTPResponse) -> None:
        self._pool = pool
        self._key = key
        self._connection: http.client.HTTPConnection | None = connection
        self._raw = raw
        self.status = raw.status
        self.reason = raw.reason
        self.headers = Headers(raw.getheaders())
        self._data: bytes | None = None
        self._offset = 0

    def read(self, amt: int | None = None) -> bytes:
        """Up to ``amt`` bytes of the body (all that is left with None); b"" at its end.

        Bodies are never decoded: registries send blobs as they are stored.
        """
        if self._data is not None:  # preloaded: served from memory
            end = len(self._data) if amt is None else min(self._offset + amt, len(self._data))
            data = self._data[self._offset:end]
            self._offset = end
            return data
        return self._raw.read(amt)

    @property
    def data(self) -> bytes:
        """The whole body (what is left of it), read once and kept."""
        if self._data is None:
            self._data = self._raw.read()
            self.release_conn()
        return self._data

    def preload(self) -> Response:
        """Read the body now and free the connection (small answers)."""
        _ = self.data
        return self

    def drain_conn(self) -> None:
        """Read what is left of a short body so that the connection can be reused."""
        if self._connection is None or self._raw.isclosed():
            return
        left = self._raw.length
        if left is not None and left > DRAIN_LIMIT:
            self.close()
            return
        while self._raw.read(1 << 16):
            pass

    def release_conn(self) -> None:
        """Back to the pool if the body is read to its end and the server keeps it open."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._raw.isclosed() and not self._raw.will_close:
            self._pool._put(self._key, connection)
        else:
            self._raw.close()
            connection.close()

    def close(self) -> None:
        connection, self._connection = self._connection, None
        self._raw.close()
        if connection is not None:
            connection.close()


class Pool:
    """Connections to every origin a process talks to, with one TLS policy."""

    def __init__(self, *, verify: bool = True) -> None:
        self.verify = verify
        self._idle: dict[Origin, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._context: Any = None

    def request(self, method: str, url: str, *, headers: Mapping[str, str],
                body: bytes | Iterable[bytes] | None = None, preload: bool = True,
                connect_timeout: float, read_timeout: float) -> Response:
        """Send ``method url``; the response with its headers read (and its body, with
        ``preload``). Raises one of :data:`HTTP_ERRORS` when the exchange fails.

        A pooled connection the server has closed meanwhile is replaced by a new one,
        and an idempotent request (GET, HEAD, PUT, DELETE) it failed on before any
        answer is sent again on a new one when its body can be sent again (bytes or
        none): a POST or PATCH the server may have carried out is not repeated.
        """
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("http", "https"):
            raise http.client.InvalidURL(f"unsupported URL scheme in {url!r}")
        host = parts.hostname or ""
        key = (scheme, host, parts.port or (443 if scheme == "https" else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        replayable = method in _IDEMPOTENT and (body is None or isinstance(body, bytes))
        while True:
            connection, reused = self._get(key, connect_timeout, read_timeout)
            try:
                connection.request(method, target, body=body, headers=dict(headers))
                raw = connection.getresponse()
            except _STALE:
                connection.close()
                if reused and replayable:
                    continue  # the server closed it while idle: once more on a new one
                raise
            except BaseException:
                connection.close()
                raise
            response = Response(self, key, connection, raw)
            return response.preload() if preload else response

    def _get(self, key: Origin, connect_timeout: float,
             read_timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                connection = idle.pop()
                if _usable(connection):
                    connection.sock.settimeout(read_timeout)  # type: ignore[union-attr]
                    return connection, True
                connection.close()
        scheme, host, port = key
        connection: http.client.HTTPConnection
        if scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=connect_timeout,
                                                     context=self._tls())
        else:
            connection = http.client.HTTPConnection(host, port, timeout=connect_timeout)
        try:
            connection.connect()
        except BaseException:
            connection.close()
            raise
        connection.sock.settimeout(read_timeout)  # type: ignore[union-attr]
        return connection, False

    def _put(self, key: Origin, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < MAX_IDLE:
                idle.append(connection)
                return
        connection.close()

    def _tls(self) -> Any:
        if self._context is None:
            import ssl

            context = ssl.create_default_context()
            if not self.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._context = context
        return self._context


def _usable(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle connection is still open: readable now means closed (or junk)."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
