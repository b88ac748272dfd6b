"""HTTP to one registry host: the scheme, pooled connections, retries, redirects, timeouts.

The connections are :mod:`.connections`', imported on the first request: only
commands that talk to a registry pay for it. We retry connection
errors, 429 (honouring ``Retry-After``) and 5xx with exponential back-off, and follow
redirects ourselves so that the ``Authorization`` header never reaches another origin
(blobs are often a 307 to a storage host). Every request has a connect and a read
timeout: a stalled registry ends in an error, never a hang.
"""

from __future__ import annotations

import ipaddress
import random
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from ...errors import RegistryError, RegistryProtocolError, RegistryUnavailable

if TYPE_CHECKING:
    from .connections import Pool, Response

#: attempts of one request that fails transiently (connection error, 429, 5xx)
ATTEMPTS = 4
#: first back-off delay in seconds; doubled each time, with jitter
BACKOFF = 0.25
#: longest wait a ``Retry-After`` may ask for (longer ones are cut to this)
MAX_RETRY_AFTER = 10.0
#: redirects followed for one request
MAX_REDIRECTS = 5
#: where Docker Hub's API answers (``docker.io`` is only its name)
DOCKER_HUB_API = "registry-1.docker.io"

_POOLS: dict[bool, Any] = {}
_POOLS_LOCK = threading.Lock()


def pool(verify: bool) -> Pool:
    """The process's connection pool (one per certificate policy); thread-safe."""
    with _POOLS_LOCK:
        found = _POOLS.get(verify)
        if found is None:
            from .connections import Pool

            found = _POOLS[verify] = Pool(verify=verify)
        return found


def is_local(host: str) -> bool:
    """Whether ``host`` (``name[:port]``) is this machine: localhost, 127.0.0.0/8, ::1."""
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def user_agent() -> str:
    from ...plugins.entrypoints import distribution_version

    return f"lamina/{distribution_version('lamina') or 'unknown'}"


def retry_delay(attempt: int, retry_after: str | None) -> float:
    """Seconds to wait before attempt ``attempt + 1``: ``Retry-After`` if given, else back-off."""
    if retry_after:
        try:
            return min(max(float(retry_after), 0.0), MAX_RETRY_AFTER)
        except ValueError:
            from email.utils import parsedate_to_datetime

            try:
                when = parsedate_to_datetime(retry_after).timestamp()
                return min(max(when - time.time(), 0.0), MAX_RETRY_AFTER)
            except (TypeError, ValueError):
                pass
    return BACKOFF * (2 ** attempt) * (0.75 + random.random() / 2)


def transient_status(status: int) -> bool:
    """429 and the 5xx that may pass (not 501 Not Implemented, 505 Version Not Supported)."""
    return status == 429 or (500 <= status < 600 and status not in (501, 505))


class Transport:
    """Requests to one registry host over one scheme, through the process's pool."""

    def __init__(self, host: str, *, insecure: bool = False, timeout: float = 30.0) -> None:
        self.host = host
        api = DOCKER_HUB_API if host == "docker.io" else host
        #: plain http for this machine; https (certificate unchecked if insecure) elsewhere,
        #: falling back to plain http for a registry marked insecure that does not speak TLS
        self.scheme = "http" if is_local(host) else "https"
        self.base = f"{self.scheme}://{api}"
        self.insecure = insecure
        self.timeout = timeout
        self.user_agent = user_agent()

    def url(self, path: str) -> str:
        """An absolute URL for ``path`` (``/v2/...``), or a Location the registry sent."""
        return urljoin(self.base + "/", path)

    def same_origin(self, url: str) -> bool:
        return origin(url) == origin(self.base)

    def send(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
             body: bytes | Iterable[bytes] | None = None, stream: bool = False,
             retry: bool = True, what: str = "",
             auth_origin: str | None = None) -> Response:
        """One request with retries of transient failures, redirects followed.

        ``Authorization`` goes only to the registry's origin (or ``auth_origin``'s: a
        token realm): a redirect elsewhere drops it, and it is never sent again, even
        if that origin redirects home. With ``stream`` the body is
        left unread (the caller reads and releases it); otherwise it is preloaded.
        A body that is not bytes can be sent once only: such requests are not retried.
        Raises :class:`RegistryUnavailable` after the last attempt; any status the
        registry answers, 4xx included, is returned.
        """
        from .connections import HTTP_ERRORS, UnsendableRequest

        hdrs = {"User-Agent": self.user_agent, **(headers or {})}
        retry = retry and (body is None or isinstance(body, bytes))
        attempts = ATTEMPTS if retry else 1
        last = ""
        deadline = time.monotonic() + 4 * self.timeout + 30
        for attempt in range(attempts):
            try:
                response = self._follow(method, url, hdrs, body, stream, auth_origin)
            except UnsendableRequest as exc:
                raise RegistryProtocolError(
                    f"registry {self.host}: cannot send a request{_for(what)}: {exc}",
                    hint="a value the registry or its token server sent (a token, a "
                    "Location) cannot go into an HTTP header; report it to the registry's "
                    "operator", host=self.host) from None
            except HTTP_ERRORS as exc:
                tls_failed = _is_tls_error(exc)
                if self.insecure and self.scheme == "https" and url.startswith(self.base) and \
                        tls_failed:
                    # an insecure registry that speaks plain http: use it from now on
                    old, self.scheme = self.base, "http"
                    self.base = "http" + self.base[len("https"):]
                    url = self.base + url[len(old):]
                    continue
                if tls_failed or "CERTIFICATE" in str(exc):
                    raise RegistryError(
                        f"registry {self.host}: TLS failed{_for(what)}: {_reason(exc)}",
                        hint=f"if {self.host} is meant to be used without a valid certificate, "
                        f'set insecure = true under [registries."{self.host}"] in lamina.toml',
                        host=self.host) from None
                last = _reason(exc)
                delay = retry_delay(attempt, None)
            else:
                if not transient_status(response.status) or attempt == attempts - 1:
                    return response
                last = f"it answered {response.status} {response.reason or ''}".rstrip()
                delay = retry_delay(attempt, response.headers.get("Retry-After"))
                response.drain_conn()
                response.release_conn()
            if attempt == attempts - 1 or time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
        raise RegistryUnavailable(
            f"registry {self.host} cannot be reached{_for(what)}: {last}"
            + (f" (after {attempts} attempts)" if attempts > 1 else ""),
            hint=f"check that {self.host} is up and reachable ({self.base}), then try again",
            host=self.host)

    def _follow(self, method: str, url: str, headers: dict[str, str],
                body: bytes | Iterable[bytes] | None, stream: bool,
                auth_origin: str | None) -> Response:
        """``method url``, following up to :data:`MAX_REDIRECTS` redirects by hand."""
        verify = not self.insecure
        trusted = True
        home = origin(auth_origin or self.base)
        for _ in range(MAX_REDIRECTS + 1):
            if trusted and origin(url) != home:
                trusted = False
            sent = headers if trusted else {k: v for k, v in headers.items()
                                            if k.lower() != "authorization"}
            response = pool(verify).request(
                method, url, headers=sent, body=body, preload=not stream,
                connect_timeout=min(self.timeout, 15.0), read_timeout=self.timeout)
            location = response.headers.get("Location")
            if response.status not in (301, 302, 303, 307, 308) or not location or \
                    method not in ("GET", "HEAD"):
                return response
            response.drain_conn()
            response.release_conn()
            url = urljoin(url, location)
        raise RegistryError(f"registry {self.host}: more than {MAX_REDIRECTS} redirects",
                            hint="the registry (or its storage) is misconfigured", host=self.host)


def _is_tls_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a TLS failure (:mod:`ssl` is only imported for https origins)."""
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(exc, ssl.SSLError)


def _for(what: str) -> str:
    return f" ({what})" if what else ""


def _reason(exc: BaseException) -> str:
    """The innermost, shortest account of a connection failure."""
    reason = getattr(exc, "reason", None)
    while isinstance(reason, BaseException) and getattr(reason, "reason", None):
        reason = reason.reason
    text = str(reason or exc)
    if "timed out" in text.lower():
        return f"timed out ({text})"
    return text
