"""Registry credentials: lamina's auth file, Docker's ``config.json``, credential helpers.

Both files have Docker's shape, ``{"auths": {"HOST": {"auth": base64("user:password")}}}``,
so that either tool can read what the other wrote. lamina writes only its own file
(``$LAMINA_AUTH_FILE``, else ``$XDG_CONFIG_HOME/lamina/auth.json``), atomically, mode
0600 in a 0700 directory, keeping every key it does not know. Reading falls back to
Docker's file (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``) for hosts
lamina's file lacks, including its ``credsStore``/``credHelpers`` programs
(``docker-credential-NAME get``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from ...errors import CredentialsError, host_error

#: the name Docker Hub goes by in Docker's config.json
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
#: every spelling of Docker Hub's host: credentials of one are the credentials of all
DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")


class Credentials(NamedTuple):
    username: str
    password: str

    def __repr__(self) -> str:  # never print a password by accident
        return f"Credentials(username={self.username!r}, password=***)"


def normalize_host(key: str) -> str:
    """The registry host a config key names: ``https://index.docker.io/v1/`` -> ``docker.io``."""
    host = key.strip()
    for scheme in ("https://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme):]
    host = host.split("/", 1)[0].lower()
    return "docker.io" if host in DOCKER_HUB_HOSTS else host


def auth_file() -> Path:
    """lamina's own auth file (it need not exist)."""
    explicit = os.environ.get("LAMINA_AUTH_FILE")
    if explicit:
        return Path(explicit)
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "lamina" / "auth.json"


def docker_config_file() -> Path:
    """Docker's config.json (it need not exist)."""
    directory = os.environ.get("DOCKER_CONFIG")
    return Path(directory) / "config.json" if directory else Path.home() / ".docker" / "config.json"


def _read(path: Path) -> dict[str, Any]:
    """The file's JSON object; ``{}`` when it does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise host_error(exc, "read the auth file", path) from None
    except UnicodeDecodeError:
        text = "\0"
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise CredentialsError(f"auth file {path} is not valid JSON: {exc}",
                               hint="fix or remove that file (`lamina login` writes it anew)"
                               ) from None
    if not isinstance(data, dict) or not isinstance(data.get("auths", {}), dict):
        raise CredentialsError(
            f"auth file {path} is not of Docker's shape {{\"auths\": {{HOST: {{...}}}}}}",
            hint="fix or remove that file (`lamina login` writes it anew)")
    return data


def _decode(path: Path, key: str, entry: Any) -> Credentials | None:
    """The credentials of one ``auths`` entry, or None if it holds none."""
    if not isinstance(entry, dict):
        raise CredentialsError(f"auth file {path}: the entry of {key!r} is not an object",
                               hint="fix that entry, or `lamina logout` and log in again")
    if entry.get("auth"):
        try:
            raw = base64.b64decode(entry["auth"], validate=True).decode()
            user, sep, password = raw.partition(":")
        except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
            sep = ""
        if not sep:
            raise CredentialsError(
                f"auth file {path}: the \"auth\" of {key!r} is not base64 of \"user:password\"",
                hint="fix that entry, or `lamina logout` and log in again")
        return Credentials(user, password)
    if entry.get("username") and entry.get("password") is not None:
        return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def _from_auths(path: Path, data: dict[str, Any], host: str) -> Credentials | None:
    for key, entry in data.get("auths", {}).items():
        if normalize_host(key) == host:
            found = _decode(path, key, entry)
            if found is not None:
                return found
    return None


def _helper(name: str, host: str) -> Credentials | None:
    """Ask ``docker-credential-NAME get`` for ``host``'s credentials (None if it has none)."""
    import shutil  # here: most pulls never run a helper, and subprocess costs ~4 ms
    import subprocess

    program = f"docker-credential-{name}"
    if not isinstance(name, str) or not name or shutil.which(program) is None:
        raise CredentialsError(
            f"Docker's config.json names the credential helper {program!r} for {host}, "
            "but that program is not installed",
            hint=f"install {program}, or `lamina login {host}` to keep the credentials in "
            "lamina's own auth file")
    server = DOCKER_HUB_KEY if host == "docker.io" else host
    try:
        proc = subprocess.run([program, "get"], input=server.encode(), capture_output=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CredentialsError(f"credential helper {program} failed for {host}: {exc}",
                               hint=f"check that {program} works (`{program} list`)") from None
    if proc.returncode != 0:
        text = (proc.stdout + proc.stderr).decode(errors="replace").strip()
        if "not found" in text.lower():
            return None
        raise CredentialsError(f"credential helper {program} failed for {host}: {text}",
                               hint=f"check that {program} works (`{program} list`)")
    try:
        answer = json.loads(proc.stdout)
        return Credentials(str(answer["Username"]), str(answer["Secret"]))
    except (ValueError, KeyError, TypeError):
        raise CredentialsError(f"credential helper {program} gave no credentials for {host}",
                               hint=f"check that {program} works (`{program} list`)") from None


def lookup(host: str) -> Credentials | None:
    """The credentials for ``host``: lamina's file first, then Docker's (and its helpers)."""
    host = normalize_host(host)
    path = auth_file()
    found = _from_auths(path, _read(path), host)
    if found is not None:
        return found
    docker = docker_config_file()
    data = _read(docker)
    helpers = data.get("credHelpers") or {}
    for key, name in helpers.items() if isinstance(helpers, dict) else ():
        if normalize_host(key) == host:
            return _helper(name, host)
    found = _from_auths(docker, data, host)
    if found is not None:
        return found
    if data.get("credsStore") and any(normalize_host(k) == host for k in data.get("auths", {})):
        return _helper(data["credsStore"], host)
    return None


def _key_for(host: str) -> str:
    return DOCKER_HUB_KEY if host == "docker.io" else host


def store(host: str, credentials: Credentials) -> Path:
    """Write ``host``'s credentials into lamina's auth file; returns the file's path."""
    host = normalize_host(host)
    path = auth_file()
    data = _read(path)
    auths = data.setdefault("auths", {})
    for key in [k for k in auths if normalize_host(k) == host]:
        del auths[key]
    token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
    auths[_key_for(host)] = {"auth": token}
    _write(path, data)
    return path


def remove(host: str) -> bool:
    """Forget ``host``'s credentials in lamina's auth file; False if it had none."""
    host = normalize_host(host)
    path = auth_file()
    data = _read(path)
    auths = data.get("auths", {})
    keys = [k for k in auths if normalize_host(k) == host]
    if not keys:
        return False
    for key in keys:
        del auths[key]
    _write(path, data)
    return True


def _write(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``data``, readable by its owner only."""
    import tempfile

    try:
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, parents=True)
        fd, tmp = tempfile.mkstemp(prefix=".auth-", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise host_error(exc, "write the auth file", path) from None
    try:
        with os.fdopen(fd, "w") as f:  # mkstemp made it 0600
            json.dump(data, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise host_error(exc, "write the auth file", path) from None
