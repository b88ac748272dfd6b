"""Real registries for the tests: ``docker-registry`` on 127.0.0.1, open, Basic or Bearer.

:func:`start_registry` runs the Debian package's CNCF distribution registry on a free
port with its storage in a temporary directory, and waits until ``/v2/`` answers.
Basic auth uses an htpasswd file with a bcrypt line (the ``htpasswd`` tool if
installed, else the ``bcrypt`` package of the test extra). Bearer auth uses
:class:`TokenServer`, a small token server run in a thread: it checks the user's
password and signs an ES256 JWT with a key whose self-signed certificate the registry
trusts (``rootcertbundle``); the JWT header carries that certificate (``x5c``), as the
distribution registry requires.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

USERNAME = "lamina"
PASSWORD = "s3cret, with spaces"
SERVICE = "lamina-test-registry"
ISSUER = "lamina-test-issuer"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def htpasswd_line(username: str, password: str) -> str:
    """``user:$2y$...``: the bcrypt form the distribution registry accepts."""
    tool = shutil.which("htpasswd")
    if tool:
        out = subprocess.run([tool, "-nbB", username, password], check=True,
                             capture_output=True, text=True).stdout
        return out.strip().splitlines()[0]
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    return f"{username}:{hashed}"


@dataclass
class RunningRegistry:
    """One ``docker-registry serve`` process and how to reach it."""

    host: str
    storage: Path
    process: subprocess.Popen
    username: str | None = None
    password: str | None = None
    token_server: TokenServer | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def creds(self) -> str | None:
        """``user:password`` for skopeo's ``--creds``, if the registry wants them."""
        return f"{self.username}:{self.password}" if self.username else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.token_server is not None:
            self.token_server.stop()


def start_registry(workdir: Path, *, auth: str | None = None) -> RunningRegistry:
    """``docker-registry`` on 127.0.0.1:PORT; ``auth`` None, ``"basic"`` or ``"token"``."""
    binary = shutil.which("docker-registry")
    if binary is None:
        import pytest

        pytest.skip("docker-registry is not installed (.ci/setup installs it)")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    port = free_port()
    lines = [
        "version: 0.1",
        "log:",
        "  level: error",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  secret: lamina-test-secret",
    ]
    username = password = None
    token_server = None
    if auth == "basic":
        username, password = USERNAME, PASSWORD
        (workdir / "htpasswd").write_text(htpasswd_line(username, password) + "\n")
        lines += ["auth:", "  htpasswd:", "    realm: lamina-basic-realm",
                  f"    path: {workdir / 'htpasswd'}"]
    elif auth == "token":
        username, password = USERNAME, PASSWORD
        token_server = TokenServer(workdir, {username: password})
        lines += ["auth:", "  token:", f"    realm: {token_server.url}/token",
                  f"    service: {SERVICE}", f"    issuer: {ISSUER}",
                  f"    rootcertbundle: {token_server.cert_path}"]
    elif auth is not None:
        raise ValueError(auth)
    config = workdir / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    log = workdir / "registry.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=out,
                                   start_new_session=True)
    registry = RunningRegistry(f"127.0.0.1:{port}", storage, process, username, password,
                               token_server, log)
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            registry.stop()
            raise RuntimeError(f"docker-registry exited: {log.read_text()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).close()
            break
        except urllib.error.HTTPError:
            break  # 401: up, and asking for credentials
        except OSError:
            if time.monotonic() > deadline:
                registry.stop()
                raise RuntimeError(f"docker-registry did not answer: {log.read_text()}"
                                   ) from None
            time.sleep(0.05)
    return registry


# --- the Bearer token server --------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """A token server for the distribution registry's ``auth.token``, in a thread.

    ``GET /token?service=...&scope=repository:NAME:pull,push`` with Basic credentials
    answers ``{"token": JWT, "expires_in": ...}``; anonymous requests get a token with
    no access; a wrong password gets 401. ``requests`` records every request's scopes.
    """

    workdir: Path
    users: dict[str, str]
    expires_in: int = 300
    requests: list[dict[str, list[str]]] = field(default_factory=list)
    #: answer ``access_token`` instead of ``token`` (both are allowed by the spec)
    access_token_key: bool = False

    def __post_init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lamina test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .sign(self._key, hashes.SHA256()))
        self.cert_path = self.workdir / "token-signer.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._answer(self)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(request.path).query)
        self.requests.append(query)
        user = None
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(name) != password:
                request.send_response(401)
                request.send_header("Content-Type", "application/json")
                request.end_headers()
                request.wfile.write(b'{"details": "wrong user name or password"}')
                return
            user = name
        access = []
        for scope in " ".join(query.get("scope", [])).split():
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            if kind == "repository" and user is not None:
                access.append({"type": kind, "name": repo, "actions": actions.split(",")})
        body = {"access_token" if self.access_token_key else "token":
                self.token(user or "", query.get("service", [""])[0], access),
                "expires_in": self.expires_in}
        data = json.dumps(body).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def token(self, subject: str, audience: str, access: list[dict]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self._x5c]}
        claims = {"iss": ISSUER, "sub": subject, "aud": audience, "exp": now + self.expires_in,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
