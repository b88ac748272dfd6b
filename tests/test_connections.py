"""The registry client's HTTP connections (core/images/registry/connections.py), against
small servers on 127.0.0.1 that do what registries and their proxies do to idle
keep-alive connections: close them, or drop a request that arrives on one."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lamina.core.images.registry.connections import HTTP_ERRORS, Pool


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class Recorder:
    """An HTTP/1.1 server whose connections end as ``mode`` says:

    - ``keep``: open until the client closes them;
    - ``close-after``: closed right after each answer (keep-alive promised all the same);
    - ``drop-second``: a second request on one connection is read and left unanswered
      (the connection closed), as by a server whose idle timeout hit just then.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests: list[tuple[int, str, bytes]] = []  # (connection number, path, body)
        self.connections = 0
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                recorder.connections += 1
                self.number = recorder.connections
                self.served = 0

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                self.served += 1
                if recorder.mode == "drop-second" and self.served == 2:
                    self.close_connection = True
                    return
                recorder.requests.append((self.number, self.path, body))
                payload = f"{self.path} {len(body)}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                if recorder.mode == "close-after":
                    self.close_connection = True

            do_GET = do_PUT = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[Recorder]:
    recorder = Recorder(request.param)
    yield recorder
    recorder.stop()


def _get(pool: Pool, url: str, body: bytes | None = None) -> bytes:
    response = pool.request("PUT" if body is not None else "GET", url, headers={}, body=body,
                            connect_timeout=5, read_timeout=5)
    assert response.status == 200
    return response.data


@pytest.mark.parametrize("server", ["keep"], indirect=True)
def test_connections_are_kept_alive_and_reused(server: Recorder) -> None:
    pool = Pool()
    for n in range(3):
        assert _get(pool, f"{server.url}/v2/{n}") == f"/v2/{n} 0".encode()
    assert [c for c, _, _ in server.requests] == [1, 1, 1]


@pytest.mark.parametrize("server", ["close-after"], indirect=True)
def test_a_pooled_connection_the_server_closed_is_replaced_at_once(server: Recorder) -> None:
    pool = Pool()
    assert _get(pool, f"{server.url}/a") == b"/a 0"
    time.sleep(0.1)  # the server has closed it by now; the pool still holds it
    started = time.monotonic()
    assert _get(pool, f"{server.url}/b") == b"/b 0"
    assert time.monotonic() - started < 0.5
    assert [c for c, _, _ in server.requests] == [1, 2]


@pytest.mark.parametrize("server", ["drop-second"], indirect=True)
def test_a_request_dropped_on_a_reused_connection_is_sent_again(server: Recorder) -> None:
    pool = Pool()
    assert _get(pool, f"{server.url}/a") == b"/a 0"
    assert _get(pool, f"{server.url}/b", body=b"abc") == b"/b 3"
    assert server.requests == [(1, "/a", b""), (2, "/b", b"abc")]


@pytest.mark.parametrize("server", ["drop-second"], indirect=True)
def test_a_dropped_post_is_not_sent_again(server: Recorder) -> None:
    """The server may have carried out a POST (an upload session) before dropping it."""
    pool = Pool()
    assert _get(pool, f"{server.url}/a") == b"/a 0"
    with pytest.raises(HTTP_ERRORS):
        pool.request("POST", f"{server.url}/b", headers={}, body=b"x", connect_timeout=5,
                     read_timeout=5)
    assert server.requests == [(1, "/a", b"")]


@pytest.mark.parametrize("server", ["drop-second"], indirect=True)
def test_a_streamed_body_is_never_sent_twice(server: Recorder) -> None:
    """A body that is an iterator can be sent once: a dropped request is an error."""
    pool = Pool()
    assert _get(pool, f"{server.url}/a") == b"/a 0"
    with pytest.raises(HTTP_ERRORS):
        pool.request("PUT", f"{server.url}/b", headers={"Content-Length": "3"},
                     body=iter([b"a", b"bc"]), connect_timeout=5, read_timeout=5)
    assert server.requests == [(1, "/a", b"")]


@pytest.mark.parametrize("server", ["keep"], indirect=True)
def test_a_body_left_unread_closes_its_connection(server: Recorder) -> None:
    pool = Pool()
    response = pool.request("GET", f"{server.url}/a", headers={}, preload=False,
                            connect_timeout=5, read_timeout=5)
    assert response.read(2) == b"/a"
    response.release_conn()  # the rest unread: the connection cannot serve another request
    assert _get(pool, f"{server.url}/b") == b"/b 0"
    assert [c for c, _, _ in server.requests] == [1, 2]


def test_headers_are_case_insensitive_and_repeats_joined() -> None:
    from lamina.core.images.registry.connections import Headers

    headers = Headers([("WWW-Authenticate", 'Bearer realm="a"'), ("www-authenticate", "Basic"),
                       ("Content-Length", "3")])
    assert headers["content-length"] == "3" and "CONTENT-LENGTH" in headers
    assert headers.get("Www-Authenticate") == 'Bearer realm="a", Basic'
    assert headers.get("Location") is None
    with pytest.raises(KeyError):
        headers["Location"]


def test_a_read_that_stalls_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        accepted: list[socket.socket] = []

        def answer_headers_only() -> None:
            conn, _ = listener.accept()
            accepted.append(conn)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

        threading.Thread(target=answer_headers_only, daemon=True).start()
        response = Pool().request("GET", f"http://127.0.0.1:{port}/", headers={},
                                  preload=False, connect_timeout=5, read_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(HTTP_ERRORS):
            response.read(10)
        assert time.monotonic() - started < 2
        for conn in accepted:
            conn.close()


class Scripted:
    """A server on 127.0.0.1 that answers each request with the next canned answer, as
    bytes on the wire, and records each request as it came (head and body)."""

    def __init__(self, answers: list[bytes], *, close_after: bool = False) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        self.close_after = close_after
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            with contextlib.suppress(OSError):
                self._answer_all(conn)

    def _answer_all(self, conn: socket.socket) -> None:
        data = b""
        while self.answers:
            while b"\r\n\r\n" not in data:
                more = conn.recv(65536)
                if not more:
                    return
                data += more
            head, _, data = data.partition(b"\r\n\r\n")
            body_end = 0
            if b"transfer-encoding: chunked" in head.lower():
                while b"0\r\n\r\n" not in data:
                    data += conn.recv(65536)
                body_end = data.index(b"0\r\n\r\n") + 5
            else:
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        body_end = int(line.split(b":")[1])
                while len(data) < body_end:
                    data += conn.recv(65536)
            self.requests.append(head + b"\r\n\r\n" + data[:body_end])
            data = data[body_end:]
            conn.sendall(self.answers.pop(0))
            if self.close_after:
                conn.close()
                return

    def stop(self) -> None:
        self._listener.close()
        for conn in self._open:
            conn.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    made: list[Scripted] = []

    def make(answers: list[bytes], **kwargs: bool) -> Scripted:
        made.append(Scripted(answers, **kwargs))
        return made[-1]

    yield make
    for server in made:
        server.stop()


def _request(pool: Pool, url: str, method: str = "GET", **kwargs: Any) -> Any:
    return pool.request(method, url, headers=kwargs.pop("headers", {}), connect_timeout=5,
                        read_timeout=5, **kwargs)


def test_a_chunked_body_is_read_whole_and_its_connection_reused(scripted) -> None:
    server = scripted([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"3\r\nabc\r\n2;name=value\r\nde\r\n0\r\nTrailer: x\r\n\r\n",
                       b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    pool = Pool()
    assert _request(pool, f"{server.url}/a").data == b"abcde"
    assert _request(pool, f"{server.url}/b").data == b"ok"
    assert server.connections == 1


def test_a_chunked_body_read_in_pieces_crosses_chunks(scripted) -> None:
    server = scripted([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"])
    response = _request(Pool(), f"{server.url}/a", preload=False)
    assert [response.read(2), response.read(4), response.read(5), response.read(5)] == \
        [b"ab", b"cdef", b"g", b""]


def test_an_http10_body_ends_with_its_connection(scripted) -> None:
    server = scripted([b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello"],
                      close_after=True)
    response = _request(Pool(), f"{server.url}/a")
    assert (response.status, response.data) == (200, b"hello")
    assert response.will_close


def test_informational_answers_are_skipped(scripted) -> None:
    server = scripted([b"HTTP/1.1 100 Continue\r\n\r\n"
                       b"HTTP/1.1 201 Created\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n"])
    response = _request(Pool(), f"{server.url}/a", "PUT", body=b"data")
    assert (response.status, response.headers["location"], response.data) == (201, "/x", b"")
    assert server.requests[0].endswith(b"Content-Length: 4\r\n\r\ndata")


def test_the_answer_to_head_has_no_body_and_keeps_its_connection(scripted) -> None:
    server = scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
                       b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    pool = Pool()
    head = _request(pool, f"{server.url}/a", "HEAD")
    assert (head.status, head.headers["Content-Length"], head.data) == (200, "1000", b"")
    assert _request(pool, f"{server.url}/a").data == b"ok"
    assert server.connections == 1


def test_a_body_cut_short_gives_what_came_then_fails(scripted) -> None:
    """A download keeps the bytes that came before the cut and resumes after them."""
    server = scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], close_after=True)
    response = _request(Pool(), f"{server.url}/a", preload=False)
    assert response.read(10) == b"abc"
    with pytest.raises(HTTP_ERRORS, match="7 bytes before the end"):
        response.read(7)


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    b"HTTP/1.1 2OO OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n" * 101 + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
], ids=["not-http", "bad-status", "bad-length", "two-lengths", "bad-header", "many-headers",
        "long-line", "unknown-coding", "bad-chunk-size", "chunk-overrun", "endless-1xx"])
def test_a_malformed_answer_is_an_http_error(scripted, answer: bytes) -> None:
    server = scripted([answer], close_after=True)
    with pytest.raises(HTTP_ERRORS):
        _request(Pool(), f"{server.url}/a")


def test_a_header_that_would_split_the_request_is_refused(scripted) -> None:
    server = scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    with pytest.raises(HTTP_ERRORS, match="control character"):
        _request(Pool(), f"{server.url}/a", headers={"Authorization": "Bearer x\r\nEvil: 1"})
    assert server.requests == []


def test_a_streamed_body_without_a_length_is_sent_chunked(scripted) -> None:
    server = scripted([b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"])
    response = _request(Pool(), f"{server.url}/up", "PATCH", body=iter([b"a", b"", b"bc"]))
    assert response.status == 202
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Host: 127.0.0.1:" in head
    assert body == b"1\r\na\r\n2\r\nbc\r\n0\r\n\r\n"


def test_a_request_that_cannot_be_sent_fails_at_once_without_retries(scripted) -> None:
    """A token with a line break is the registry's fault, not a passing network failure."""
    from lamina.core.errors import RegistryProtocolError
    from lamina.core.images.registry.transport import Transport

    server = scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    transport = Transport(server.url.removeprefix("http://"), timeout=5)
    started = time.monotonic()
    with pytest.raises(RegistryProtocolError, match="cannot send a request") as err:
        transport.send("GET", transport.url("/v2/"),
                       headers={"Authorization": "Bearer x\r\nEvil: 1"})
    assert time.monotonic() - started < 0.2  # no back-off between attempts
    assert "report it" in (err.value.hint or "")
    assert server.requests == []
