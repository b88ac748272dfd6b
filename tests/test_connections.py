"""The registry client's HTTP connections (core/images/registry/connections.py), against
small servers on 127.0.0.1 that do what registries and their proxies do to idle
keep-alive connections: close them, or drop a request that arrives on one."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
