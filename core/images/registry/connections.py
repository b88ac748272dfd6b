"""Keep-alive HTTP/1.1 connections to registries, pooled per origin, on plain sockets.

Why not a library: what a registry client needs from HTTP is small (pooled keep-alive
connections shared by parallel downloads, connect and read timeouts, TLS checked or
not, streamed bodies and uploads), and redirects and retries are :mod:`.transport`'s
own anyway, so that credentials never follow a redirect to another origin. urllib3
costs ~40 ms of import; :mod:`http.client` ~14 ms, nearly all of it the :mod:`email`
package it parses headers with. Either is a large part of all a one-layer pull may
add to applying its layer (docs/performance.md, "Pull"), so this module speaks the
protocol itself: a request head out, a response head in, and the body framed as
RFC 9112 says (``Content-Length``, chunked, or up to the close). :mod:`ssl` is
imported only for an ``https`` origin.

Thread safety: a :class:`Pool` is shared by every thread; a connection and its
:class:`Response` belong to one thread until the response is released.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

#: idle connections kept per origin (more are closed when released)
MAX_IDLE = 16
#: a body left unread up to this many bytes is read to keep its connection; a longer one
#: closes it
DRAIN_LIMIT = 1 << 20
#: longest status, header or chunk-size line accepted, and most header lines
MAX_LINE = 1 << 16
MAX_HEADERS = 100

#: methods whose request may be sent twice with the same effect (RFC 9110, 9.2.2)
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: methods that carry a body: sent with ``Content-Length: 0`` when they have none
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})

Origin = tuple[str, str, int]


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 this client can read (or the request was not
    one it can send): a malformed head, a body that ends early, a bad chunk."""


class UnsendableRequest(ProtocolError):
    """The request cannot be written as HTTP/1.1 (a header value with a line break, a
    target with a space): sending it again cannot help."""


class Disconnected(ConnectionResetError):
    """The server closed the connection without answering (an idle keep-alive
    connection it had closed, or a request it dropped)."""


#: what a broken connection, a timeout or a malformed answer raises while talking HTTP
HTTP_ERRORS: tuple[type[BaseException], ...] = (OSError, ProtocolError)

#: errors of a reused connection the server had closed before the request reached it
_STALE = (BrokenPipeError, ConnectionResetError)


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


class Connection:
    """One socket to an origin, sending requests and reading the heads of answers."""

    def __init__(self, sock: socket.socket, host_header: str) -> None:
        self.sock = sock
        self.host_header = host_header
        self.file = sock.makefile("rb")

    def send(self, method: str, target: str, headers: Mapping[str, str],
             body: bytes | Iterable[bytes] | None) -> None:
        lines = [f"{method} {target} HTTP/1.1"]
        names = {name.lower() for name in headers}
        if "host" not in names:
            lines.append(f"Host: {self.host_header}")
        if "accept-encoding" not in names:
            lines.append("Accept-Encoding: identity")  # blobs are taken as they are stored
        chunked = False
        if "content-length" not in names and "transfer-encoding" not in names:
            if isinstance(body, bytes | bytearray | memoryview):
                lines.append(f"Content-Length: {len(body)}")
            elif body is not None:
                lines.append("Transfer-Encoding: chunked")
                chunked = True
            elif method in _WITH_BODY:
                lines.append("Content-Length: 0")
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        if " " in target or not target.isascii() or \
                any(c in line for line in lines for c in "\r\n\0"):
            raise UnsendableRequest(f"refusing to send a request with a control character or "
                                    f"a space in its target or headers: {method} {target!r}")
        try:
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise UnsendableRequest(f"a header of {method} {target} is not Latin-1 text") from None
        if body is None or isinstance(body, bytes | bytearray | memoryview):
            if body and len(body) < 1 << 16:
                self.sock.sendall(head + bytes(body))  # one segment: no delayed-ACK wait
            else:
                self.sock.sendall(head)
                if body:
                    self.sock.sendall(body)
            return
        self.sock.sendall(head)
        for piece in body:
            if not piece:
                continue
            if chunked:
                self.sock.sendall(b"%X\r\n" % len(piece))
                self.sock.sendall(piece)
                self.sock.sendall(b"\r\n")
            else:
                self.sock.sendall(piece)
        if chunked:
            self.sock.sendall(b"0\r\n\r\n")

    def read_head(self) -> tuple[str, int, str, list[tuple[str, str]]]:
        """The version, status, reason and header lines of the next final answer
        (informational 1xx answers are skipped, up to :data:`MAX_HEADERS` of them)."""
        for _ in range(MAX_HEADERS):
            line = self._line()
            if not line:
                raise Disconnected("the server closed the connection without answering")
            version, _, rest = line.decode("latin-1").strip().partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
                raise ProtocolError(f"not an HTTP/1.x answer: {line[:80]!r}")
            headers = self._headers()
            status = int(code)
            if status >= 200 or status == 101:
                return version, status, reason.strip(), headers
        raise ProtocolError(f"the server sent more than {MAX_HEADERS} informational answers")

    def _line(self) -> bytes:
        line = self.file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise ProtocolError(f"a line of the answer is longer than {MAX_LINE} bytes")
        return line

    def _headers(self) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        while True:
            line = self._line()
            if line in (b"\r\n", b"\n"):
                return headers
            if not line:
                raise ProtocolError("the connection ended inside the answer's headers")
            if len(headers) >= MAX_HEADERS:
                raise ProtocolError(f"the answer has more than {MAX_HEADERS} headers")
            text = line.decode("latin-1")
            if text[0] in " \t" and headers:  # an obsolete folded continuation
                name, value = headers[-1]
                headers[-1] = (name, f"{value} {text.strip()}")
                continue
            name, colon, value = text.partition(":")
            if not colon or not name.strip():
                raise ProtocolError(f"malformed header line in the answer: {line[:80]!r}")
            headers.append((name.strip(), value.strip()))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Response:
    """A status, its headers and a body read as a stream (or preloaded).

    :meth:`release_conn` hands the connection back to the pool once the body was
    read to its end; :meth:`close` drops it.
    """

    def __init__(self, pool: Pool, key: Origin, connection: Connection, method: str) -> None:
        self._pool = pool
        self._key = key
        self._connection: Connection | None = connection
        version, self.status, self.reason, items = connection.read_head()
        self.headers = Headers(items)
        tokens = {t.strip().lower() for t in self.headers.get("Connection", "").split(",")}
        #: whether the server ends the connection after this answer
        self.will_close = "close" in tokens or (version == "HTTP/1.0" and
                                                "keep-alive" not in tokens)
        #: body bytes still to come (None: up to the close, or chunked)
        self.length: int | None = None
        self._chunked = False
        self._chunk_left = 0  # of the current chunk; 0 before a chunk's size line
        self._done = False
        self._data: bytes | None = None
        self._offset = 0
        coding = self.headers.get("Transfer-Encoding")
        if method == "HEAD" or self.status in (101, 204, 304) or self.status < 200:
            self.length = 0
        elif coding is not None:
            if coding.rsplit(",", 1)[-1].strip().lower() != "chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {coding!r}")
            self._chunked = True
        elif "Content-Length" in self.headers:
            values = {v.strip() for v in self.headers["Content-Length"].split(",")}
            value = values.pop() if len(values) == 1 else ""
            if not value.isdigit():
                raise ProtocolError(f"malformed Content-Length "
                                    f"{self.headers['Content-Length']!r}")
            self.length = int(value)
        else:
            self.will_close = True  # the body ends with the connection
        self._done = self.length == 0

    def read(self, amt: int | None = None) -> bytes:
        """Up to ``amt`` bytes of the body (all that is left with None); b"" at its end.

        Bodies are never decoded: registries send blobs as they are stored. A body
        that ends before its declared length raises :class:`ProtocolError` once the
        bytes that did come were returned (a download resumes after them).
        """
        if self._data is not None:  # preloaded: served from memory
            end = len(self._data) if amt is None else min(self._offset + amt, len(self._data))
            data = self._data[self._offset:end]
            self._offset = end
            return data
        if self._done or amt == 0:
            return b""
        if self._connection is None:
            raise ProtocolError("the answer's connection is closed")
        if self._chunked:
            return self._read_chunked(amt)
        file = self._connection.file
        if self.length is None:  # up to the close
            data = file.read() if amt is None else file.read(amt)
            if not data or amt is None:
                self._done = True
            return data
        want = self.length if amt is None else min(amt, self.length)
        data = file.read(want)
        if not data or (amt is None and len(data) < want):
            raise ProtocolError(f"the connection ended {self.length - len(data)} bytes before "
                                f"the end of the body")
        self.length -= len(data)  # a short read ends in the error above at the next one
        self._done = self.length == 0
        return data

    def _read_chunked(self, amt: int | None) -> bytes:
        assert self._connection is not None
        connection = self._connection
        parts: list[bytes] = []
        got = 0
        while amt is None or got < amt:
            if not self._chunk_left:
                line = connection._line()
                size = line.split(b";", 1)[0].strip()
                try:
                    self._chunk_left = int(size, 16)
                except ValueError:
                    raise ProtocolError(f"malformed chunk size {line[:40]!r}") from None
                if self._chunk_left < 0:
                    raise ProtocolError(f"malformed chunk size {line[:40]!r}")
                if not self._chunk_left:
                    connection._headers()  # trailers, ignored
                    self._done = True
                    break
            want = self._chunk_left if amt is None else min(self._chunk_left, amt - got)
            data = connection.file.read(want)
            if len(data) < want:
                if amt is None or not (data or parts):
                    raise ProtocolError("the connection ended inside a chunk of the body")
                parts.append(data)  # returned; the next read ends in the error above
                self._chunk_left -= len(data)
                break
            parts.append(data)
            got += len(data)
            self._chunk_left -= len(data)
            if not self._chunk_left and connection._line() not in (b"\r\n", b"\n"):
                raise ProtocolError("a chunk of the body does not end where its size says")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @property
    def data(self) -> bytes:
        """The whole body (what is left of it), read once and kept."""
        if self._data is None:
            self._data = self.read()
            self.release_conn()
        return self._data

    def preload(self) -> Response:
        """Read the body now and free the connection (small answers)."""
        _ = self.data
        return self

    def drain_conn(self) -> None:
        """Read what is left of a short body so that the connection can be reused."""
        if self._connection is None or self._done:
            return
        if self.will_close or (self.length is not None and self.length > DRAIN_LIMIT):
            self.close()
            return
        read = 0
        try:
            while not self._done and read <= DRAIN_LIMIT:
                read += len(self.read(1 << 16))
        except HTTP_ERRORS:
            pass
        if not self._done:
            self.close()

    def release_conn(self) -> None:
        """Back to the pool if the body is read to its end and the server keeps it open."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._done and not self.will_close:
            self._pool._put(self._key, connection)
        else:
            connection.close()

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class Pool:
    """Connections to every origin a process talks to, with one TLS policy."""

    def __init__(self, *, verify: bool = True) -> None:
        self.verify = verify
        self._idle: dict[Origin, list[Connection]] = {}
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
            raise ProtocolError(f"unsupported URL scheme in {url!r}")
        host = parts.hostname or ""
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ProtocolError(f"malformed port in {url!r}") from None
        key = (scheme, host, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        replayable = method in _IDEMPOTENT and (body is None or isinstance(body, bytes))
        while True:
            connection, reused = self._get(key, connect_timeout, read_timeout)
            try:
                connection.send(method, target, headers, body)
                response = Response(self, key, connection, method)
            except _STALE:
                connection.close()
                if reused and replayable:
                    continue  # the server closed it while idle: once more on a new one
                raise
            except BaseException:
                connection.close()
                raise
            if not preload:
                return response
            try:
                return response.preload()
            except BaseException:
                response.close()  # a body cut short: the connection is no use
                raise

    def _get(self, key: Origin, connect_timeout: float,
             read_timeout: float) -> tuple[Connection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                connection = idle.pop()
                if _usable(connection):
                    connection.sock.settimeout(read_timeout)
                    return connection, True
                connection.close()
        scheme, host, port = key
        # bytes, not str: a str host makes the socket module import the idna codec
        address = host.encode("ascii") if host.isascii() else host.encode("idna")
        sock = socket.create_connection((address, port), timeout=connect_timeout)  # type: ignore[arg-type]
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self._tls().wrap_socket(sock, server_hostname=host)
            sock.settimeout(read_timeout)
        except BaseException:
            sock.close()
            raise
        default = 443 if scheme == "https" else 80
        name = f"[{host}]" if ":" in host else host
        return Connection(sock, name if port == default else f"{name}:{port}"), False

    def _put(self, key: Origin, connection: Connection) -> None:
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


def _usable(connection: Connection) -> bool:
    """Whether an idle connection is still open: readable now means closed (or junk)."""
    try:
        readable, _, _ = select.select([connection.sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
