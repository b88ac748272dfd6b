"""Registry authentication: ``WWW-Authenticate`` challenges, Basic, and Bearer tokens.

A registry answers 401 with one or more challenges. ``Basic realm=...`` (htpasswd)
wants the credentials on every request; ``Bearer realm=...,service=...,scope=...``
wants a token from the realm, asked for with those parameters (and the credentials,
if any) and sent as ``Authorization: Bearer``. Tokens are cached per registry,
credentials, realm, service and scopes until shortly before ``expires_in``, in the
whole process: a second :class:`~.client.Registry` of the same host reuses them.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from ...errors import RegistryAuthError, RegistryProtocolError, RegistryUnavailable
from .credentials import Credentials

#: seconds a token lives when the token server does not say (the distribution spec's)
DEFAULT_TOKEN_LIFETIME = 60
#: tokens are dropped this many seconds before they expire (clock skew, slow requests)
TOKEN_MARGIN = 5


class Challenge(NamedTuple):
    scheme: str  # lower case: "bearer", "basic", ...
    params: dict[str, str]  # keys lower case


class MalformedChallenge(ValueError):
    """A ``WWW-Authenticate`` header that cannot be parsed; the message says where."""


def _tokens(header: str) -> list[tuple[str, str]]:
    """``header`` as (kind, text) pairs: ``word``, ``quoted`` (unescaped), ``=`` and ``,``."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(header)
    while i < n:
        c = header[i]
        if c in " \t":
            i += 1
        elif c in ",=":
            out.append((c, c))
            i += 1
        elif c == '"':
            value, i = [], i + 1
            while i < n and header[i] != '"':
                if header[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(header[i])
                i += 1
            if i >= n:
                raise MalformedChallenge("a quoted value is not closed")
            out.append(("quoted", "".join(value)))
            i += 1
        else:
            start = i
            while i < n and header[i] not in ' \t,="':
                i += 1
            out.append(("word", header[start:i]))
    return out


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge of a ``WWW-Authenticate`` value (RFC 7235), in order.

    Quoted values may hold commas and escaped quotes; several challenges may share
    one header (``Bearer realm="a,b",scope="x", Basic realm="y"``). A token68 value
    (``Negotiate abc==``) is kept under the key ``""``. Anything else raises
    :class:`MalformedChallenge` saying what was wrong.
    """
    toks = _tokens(header)
    kind = [t[0] for t in toks] + ["end", "end"]
    challenges: list[Challenge] = []
    i = 0
    while kind[i] == ",":
        i += 1
    if kind[i] == "end":
        raise MalformedChallenge("it holds no challenge")
    while kind[i] != "end":
        if kind[i] != "word":
            raise MalformedChallenge(f"expected an auth scheme, found {toks[i][1]!r}")
        scheme, params = toks[i][1], {}
        i += 1
        if kind[i] == "word" and (kind[i + 1] != "=" or kind[_after_eqs(kind, i)] in (",", "end")):
            # token68: one word (with its "=" padding) alone after the scheme
            end = _after_eqs(kind, i)
            params[""] = toks[i][1] + "=" * (end - i - 1)
            i = end
            if kind[i] not in (",", "end"):
                raise MalformedChallenge(f"unexpected {toks[i][1]!r} after {params['']!r}")
        while kind[i] == "word" and kind[i + 1] == "=":
            name = toks[i][1].lower()
            if kind[i + 2] not in ("word", "quoted"):
                raise MalformedChallenge(f"parameter {toks[i][1]!r} of {scheme} has no value")
            if name in params:
                raise MalformedChallenge(f"parameter {toks[i][1]!r} of {scheme} is given twice")
            params[name] = toks[i + 2][1]
            i += 3
            if kind[i] not in (",", "end"):
                raise MalformedChallenge(
                    f"expected a comma after {toks[i - 3][1]}=..., found {toks[i][1]!r}")
            while kind[i] == ",":
                i += 1
        while kind[i] == ",":
            i += 1
        if kind[i] not in ("word", "end"):
            raise MalformedChallenge(f"unexpected {toks[i][1]!r} in the {scheme} challenge")
        if kind[i] == "word" and kind[i - 1] != ",":
            raise MalformedChallenge(f"expected a comma before {toks[i][1]!r}")
        challenges.append(Challenge(scheme.lower(), params))
    return challenges


def _after_eqs(kind: list[str], i: int) -> int:
    """The index after the word at ``i`` and the "=" signs right after it."""
    j = i + 1
    while kind[j] == "=":
        j += 1
    return j


#: how the registry client fetches a token: (url, headers) -> (status, body)
TokenFetch = Callable[[str, dict[str, str]], tuple[int, bytes]]


def basic_header(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class _Tokens:
    """The process's Bearer tokens and the last challenge of each registry."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: (host, user, scopes) -> (Authorization value, monotonic expiry)
        self.headers: dict[tuple[str, str | None, tuple[str, ...]], tuple[str, float]] = {}
        #: (host, user) -> "basic" once the registry asked for Basic
        self.basic: set[tuple[str, str | None]] = set()


_CACHE = _Tokens()


def forget_tokens() -> None:
    """Drop every cached token (tests; a long-lived process after a logout)."""
    with _CACHE.lock:
        _CACHE.headers.clear()
        _CACHE.basic.clear()


class Authenticator:
    """The ``Authorization`` header for one registry host and one set of credentials.

    ``scopes`` are the distribution spec's ``repository:NAME:ACTIONS`` strings a request
    needs (empty for ``/v2/``). Thread-safe; tokens are shared by the whole process.
    """

    def __init__(self, host: str, credentials: Credentials | None) -> None:
        self.host = host
        self.credentials = credentials
        self._user = credentials.username if credentials else None
        #: token requests made (tests count them)
        self.token_requests = 0

    def cached(self, scopes: tuple[str, ...]) -> str | None:
        """The header to send before any challenge: a live cached token, or Basic."""
        now = time.monotonic()
        with _CACHE.lock:
            if (self.host, self._user) in _CACHE.basic and self.credentials:
                return basic_header(self.credentials)
            found = _CACHE.headers.get((self.host, self._user, tuple(sorted(scopes))))
            if found and found[1] > now:
                return found[0]
        return None

    def answer(self, header: str | None, scopes: tuple[str, ...], fetch: TokenFetch) -> str:
        """The header that answers a 401's ``WWW-Authenticate`` ``header``.

        Raises :class:`RegistryProtocolError` for a missing or malformed challenge,
        :class:`RegistryAuthError` when credentials are needed and missing, or refused
        by the token server.
        """
        if not header:
            raise self._malformed("the 401 answer has no WWW-Authenticate header")
        try:
            challenges = parse_challenges(header)
        except MalformedChallenge as exc:
            raise self._malformed(f"malformed WWW-Authenticate header ({exc}): {header[:200]!r}"
                                  ) from None
        by_scheme = {c.scheme: c for c in reversed(challenges)}
        if "bearer" in by_scheme:
            return self._bearer(by_scheme["bearer"], scopes, fetch)
        if "basic" in by_scheme:
            if self.credentials is None:
                raise self._needs_login("it wants a user name and password (Basic auth)")
            with _CACHE.lock:
                _CACHE.basic.add((self.host, self._user))
            return basic_header(self.credentials)
        names = ", ".join(sorted(by_scheme))
        raise self._malformed(f"it asks for authentication lamina does not speak: {names}")

    def _bearer(self, challenge: Challenge, scopes: tuple[str, ...], fetch: TokenFetch) -> str:
        from urllib.parse import urlencode, urlsplit

        realm = challenge.params.get("realm", "")
        if urlsplit(realm).scheme not in ("http", "https") or not urlsplit(realm).netloc:
            raise self._malformed(f"the Bearer challenge's realm {realm!r} is not an http(s) URL")
        wanted = set(scopes)
        wanted.update(challenge.params.get("scope", "").split())
        query: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            query.append(("service", challenge.params["service"]))
        query.extend(("scope", s) for s in sorted(wanted))
        if self._user:
            query.append(("account", self._user))
        url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query else realm
        headers = {"Authorization": basic_header(self.credentials)} if self.credentials else {}
        self.token_requests += 1
        status, body = fetch(url, headers)
        if status in (401, 403):
            raise self._needs_login(f"its token server {urlsplit(realm).netloc} refused "
                                    + ("the credentials" if self.credentials else
                                       "an anonymous request") + f" ({status})")
        if status != 200:
            raise self._unavailable(f"its token server {urlsplit(realm).netloc} answered "
                                    f"{status}", status)
        import json

        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
            lifetime = float(answer.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not token or not isinstance(token, str):
            raise self._malformed(f"its token server {urlsplit(realm).netloc} sent no token")
        value = f"Bearer {token}"
        expiry = time.monotonic() + max(lifetime - TOKEN_MARGIN, 1.0)
        with _CACHE.lock:
            _CACHE.headers[(self.host, self._user, tuple(sorted(scopes)))] = (value, expiry)
        return value

    def _needs_login(self, reason: str) -> RegistryAuthError:
        what = "refused the credentials" if self.credentials else "needs credentials"
        return RegistryAuthError(
            f"registry {self.host} {what}: {reason}",
            hint=f"`lamina login {self.host}` with a user that may access it", host=self.host,
            status=401)

    def _malformed(self, reason: str) -> RegistryProtocolError:
        return RegistryProtocolError(
            f"registry {self.host} asked for authentication lamina cannot follow: {reason}",
            hint="the registry (or a proxy in front of it) is misconfigured; tell its operator",
            host=self.host, status=401)

    def _unavailable(self, reason: str, status: int) -> RegistryUnavailable:
        return RegistryUnavailable(f"registry {self.host}: {reason}",
                                   hint="try again later", host=self.host, status=status)
