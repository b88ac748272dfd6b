"""A fault-injecting HTTP proxy in front of a real registry, for the fault tests.

:class:`FaultyRegistry` forwards every request to the real ``docker-registry`` and
does to the answers what a test asks, through its attributes:

- ``stall_blob_at`` / ``cut_blob_at``: after that many bytes of a blob's body, stall
  (send nothing more for ``stall_seconds``) or close the connection; ``fault_times``
  says how many blob answers get it (then they pass untouched; -1: every one);
- ``fail_status`` (429, 500, ...) for the first ``fail_times`` requests whose path
  holds ``fail_path``, with ``retry_after`` as ``Retry-After`` if set;
- ``corrupt_blobs``: one byte of every blob body changed (same length);
- ``redirect_blobs``: blob answers become a 307 to :attr:`side`, another host
  (127.0.0.2, another port) that serves the blob from the registry's storage and
  records each request's ``Authorization`` header in ``side.requests``;
- ``challenge``: every 401's ``WWW-Authenticate`` replaced by this text.

- ``corrupt_manifests``: one byte of every manifest body changed.

``requests`` records (method, path, headers) of everything the proxy received. Upload
``Location`` URLs the registry answers with its own address are rewritten to the proxy's,
so that every request of an upload passes through it.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_BLOB = re.compile(r"^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "host"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@dataclass
class SideHost:
    """The "other host" blobs are redirected to: serves blobs from the registry's storage."""

    storage: Path
    address: str = "127.0.0.2"
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        side = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                side.requests.append((self.path, self.headers.get("Authorization")))
                digest = self.path.rsplit("/", 1)[-1]
                hexa = digest.split(":", 1)[-1]
                data_path = (side.storage / "docker" / "registry" / "v2" / "blobs" / "sha256"
                             / hexa[:2] / hexa / "data")
                if not data_path.exists():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = data_path.read_bytes()
                start = 0
                found = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
                if found and int(found.group(1)) < len(data):
                    start = int(found.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args: object) -> None:
                pass

        try:
            self._httpd = _Server((self.address, 0), Handler)
        except OSError:  # no 127.0.0.2 on this host: another port is another origin too
            self.address = "127.0.0.1"
            self._httpd = _Server((self.address, 0), Handler)
        self.host = f"{self.address}:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class FaultyRegistry:
    """A proxy on 127.0.0.1:PORT in front of ``upstream`` (``host:port``); see the module."""

    def __init__(self, upstream: str, storage: Path) -> None:
        self.upstream = upstream
        self.side = SideHost(storage)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.reset()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                proxy._forward(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def reset(self) -> None:
        """No faults; the records emptied."""
        self.stall_blob_at: int | None = None
        self.stall_seconds = 5.0
        self.cut_blob_at: int | None = None
        self.fault_times = 1
        self.fail_status: int | None = None
        self.fail_times = 0
        self.fail_path = "/manifests/"
        self.retry_after: str | None = None
        self.corrupt_blobs = False
        self.corrupt_manifests = False
        self.redirect_blobs = False
        self.challenge: str | None = None
        self.requests.clear()
        self.side.requests.clear()
        self._lock = threading.Lock()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self.side.stop()

    def _take(self, kind: str) -> bool:
        """Whether this answer gets fault ``kind`` (counting it down)."""
        with self._lock:
            if kind == "fail":
                if self.fail_times > 0:
                    self.fail_times -= 1
                    return True
                return False
            if self.fault_times == 0:
                return False
            if self.fault_times > 0:
                self.fault_times -= 1
            return True

    def _forward(self, req: BaseHTTPRequestHandler) -> None:
        method, path = req.command, req.path
        self.requests.append((method, path, dict(req.headers.items())))
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else None
        if self.fail_status and self.fail_path in path and self._take("fail"):
            req.send_response(self.fail_status)
            if self.retry_after is not None:
                req.send_header("Retry-After", self.retry_after)
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP_BY_HOP}
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        blob = _BLOB.match(path.split("?", 1)[0])
        is_blob_body = bool(blob) and method == "GET" and answer.status in (200, 206)
        corrupt = (is_blob_body and self.corrupt_blobs) or (
            self.corrupt_manifests and "/manifests/" in path and method == "GET"
            and answer.status == 200)
        if is_blob_body and self.redirect_blobs:
            answer.read()
            conn.close()
            req.send_response(307)
            req.send_header("Location", f"http://{self.side.host}/blobs/{blob.group(2)}")
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        req.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() in _HOP_BY_HOP or key.lower() == "content-length":
                continue
            if key.lower() == "www-authenticate" and self.challenge is not None:
                value = self.challenge
            if key.lower() == "location" and value.startswith(f"http://{self.upstream}/"):
                # an upload's next URL: through the proxy too, so that faults reach it
                value = f"http://{self.host}/" + value[len(f"http://{self.upstream}/"):]
            req.send_header(key, value)
        declared = answer.getheader("Content-Length")
        if method == "HEAD" or declared is None:
            data = b"" if method == "HEAD" else answer.read()
            if method != "HEAD" or declared is None:
                req.send_header("Content-Length", str(len(data)))
            else:
                req.send_header("Content-Length", declared)
            req.end_headers()
            req.wfile.write(data)
            conn.close()
            return
        req.send_header("Content-Length", declared)
        req.end_headers()
        stall = cut = None
        if is_blob_body and (self.stall_blob_at is not None or self.cut_blob_at is not None) \
                and self._take("blob"):
            stall, cut = self.stall_blob_at, self.cut_blob_at
        sent, corrupted = 0, False
        while True:
            chunk = answer.read(1 << 16)
            if not chunk:
                break
            if corrupt and not corrupted:
                chunk = chunk[:-1] + bytes([chunk[-1] ^ 0x01])
                corrupted = True
            limit = stall if stall is not None else cut
            if limit is not None and sent + len(chunk) >= limit:
                req.wfile.write(chunk[: limit - sent])
                req.wfile.flush()
                if stall is not None:
                    time.sleep(self.stall_seconds)
                req.close_connection = True
                with contextlib.suppress(OSError):
                    req.connection.shutdown(socket.SHUT_RDWR)
                break
            req.wfile.write(chunk)
            sent += len(chunk)
        conn.close()
