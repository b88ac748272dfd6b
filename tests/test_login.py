"""``lamina login``/``logout`` through the real CLI, and where credentials are read from.

The auth file is Docker's ``config.json`` shape, 0600 in a 0700 directory; Docker's own
file (and its credential helpers) is read for hosts lamina has no login for.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lamina.core.config import Config
from lamina.core.errors import CredentialsError, RegistryAuthError
from lamina.core.images.registry import Credentials, Registry, credentials
from lamina.core.images.registry.auth import forget_tokens

#: the installed console script, as a user runs it
LAMINA = str(Path(sys.executable).parent / "lamina")


@pytest.fixture(autouse=True)
def _fresh_tokens() -> None:
    forget_tokens()


def lamina(*args: str, stdin: str | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    full.update(env or {})
    return subprocess.run([LAMINA, *args], input=(stdin or "").encode(), capture_output=True,
                          env=full, timeout=120)


def auth_path() -> Path:
    return Path(os.environ["XDG_CONFIG_HOME"]) / "lamina" / "auth.json"


def b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def one_error(proc: subprocess.CompletedProcess) -> tuple[str, str]:
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("lamina: error: "), err
    assert lines[1].startswith("hint: "), err
    return lines[0], lines[1]


def test_login_stores_docker_shaped_0600_then_logout(basic_registry: Any) -> None:
    host = basic_registry.host
    path = auth_path()
    path.parent.mkdir(mode=0o700, parents=True)
    path.write_text(json.dumps({"auths": {"other:5000": {"auth": b64("a", "b")}},
                                "credHelpers": {"x.example": "none"}, "extra": [1]}))
    proc = lamina("login", "-u", basic_registry.username, "--password-stdin", host,
                  stdin=basic_registry.password + "\n")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == "Login Succeeded\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert data["auths"][host] == {"auth": b64(basic_registry.username, basic_registry.password)}
    assert data["auths"]["other:5000"] and data["credHelpers"] and data["extra"] == [1]
    # the stored login is what a Registry made from the config uses
    client = Registry.from_config(host, Config())
    client.check_login()
    assert client.auth.credentials == Credentials(basic_registry.username,
                                                  basic_registry.password)

    proc = lamina("logout", host)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == f"Removing login credentials for {host}\n"
    data = json.loads(path.read_text())
    assert host not in data["auths"] and data["auths"]["other:5000"] and data["extra"] == [1]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    line, _ = one_error(lamina("logout", host))
    assert f"not logged in to {host}" in line


def test_fresh_login_makes_the_directory_0700(basic_registry: Any, tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "auth.json"
    proc = lamina("login", "-u", basic_registry.username, "-p", basic_registry.password,
                  basic_registry.host, env={"LAMINA_AUTH_FILE": str(path)})
    assert proc.returncode == 0, proc.stderr.decode()
    assert "--password-stdin" in proc.stderr.decode()  # Docker's warning about -p
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not auth_path().exists()


def test_wrong_password_is_refused_and_nothing_stored(basic_registry: Any) -> None:
    line, hint = one_error(lamina("login", "-u", basic_registry.username, "--password-stdin",
                                  basic_registry.host, stdin="wrong"))
    assert basic_registry.host in line and "refused the credentials" in line
    assert f"lamina login {basic_registry.host}" in hint
    assert not auth_path().exists()


def test_login_with_a_token_registry(token_registry: Any) -> None:
    proc = lamina("login", "-u", token_registry.username, "--password-stdin",
                  token_registry.host, stdin=token_registry.password)
    assert proc.returncode == 0, proc.stderr.decode()
    assert token_registry.host in json.loads(auth_path().read_text())["auths"]
    line, _ = one_error(lamina("login", "-u", token_registry.username, "--password-stdin",
                               token_registry.host, stdin="wrong"))
    assert "token server" in line and "refused" in line


def test_no_password_and_no_terminal(basic_registry: Any) -> None:
    line, hint = one_error(lamina("login", "-u", "someone", basic_registry.host))
    assert "no password given" in line and "--password-stdin" in hint
    line, hint = one_error(lamina("login", "--password-stdin", basic_registry.host, stdin="x"))
    assert "-u USER" in hint


def test_unreachable_registry_login(tmp_path: Path) -> None:
    line, _ = one_error(lamina("login", "-u", "u", "--password-stdin", "127.0.0.1:1",
                                  stdin="p"))
    assert "127.0.0.1:1 cannot be reached" in line


# --- where credentials come from -----------------------------------------------------------


def docker_config(data: dict) -> Path:
    path = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_docker_config_is_read_for_hosts_lamina_lacks(basic_registry: Any) -> None:
    host = basic_registry.host
    docker_config({"auths": {f"http://{host}/v2/": {"auth": b64(basic_registry.username,
                                                                 basic_registry.password)}}})
    Registry.from_config(host, Config()).check_login()
    # lamina's own file wins over Docker's
    credentials.store(host, Credentials(basic_registry.username, "wrong"))
    with pytest.raises(RegistryAuthError):
        Registry.from_config(host, Config()).check_login()
    # logout removes lamina's login; Docker's is left alone and said so
    assert lamina("logout", host).returncode == 0
    line, hint = one_error(lamina("logout", host))
    assert "Docker's" in line and f"docker logout {host}" in hint
    Registry.from_config(host, Config()).check_login()


def test_docker_hub_key() -> None:
    docker_config({"auths": {"https://index.docker.io/v1/": {"auth": b64("hub", "pw")}}})
    assert credentials.lookup("docker.io") == Credentials("hub", "pw")
    assert credentials.lookup("index.docker.io") == Credentials("hub", "pw")
    credentials.store("docker.io", Credentials("mine", "pw2"))
    assert json.loads(auth_path().read_text())["auths"] == {
        "https://index.docker.io/v1/": {"auth": b64("mine", "pw2")}}
    assert credentials.lookup("registry-1.docker.io") == Credentials("mine", "pw2")
    assert credentials.lookup("other.example") is None


def test_credential_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docker_config({"auths": {"store.example": {}}, "credsStore": "lamtest",
                   "credHelpers": {"helped.example": "absent"}})
    with pytest.raises(CredentialsError, match="docker-credential-absent") as err:
        credentials.lookup("helped.example")
    assert "not installed" in str(err.value) and "lamina login helped.example" in err.value.hint
    helper = tmp_path / "docker-credential-lamtest"
    helper.write_text('#!/bin/sh\nread server\n[ "$1" = get ] || exit 2\n'
                      'echo "{\\"ServerURL\\": \\"$server\\", \\"Username\\": \\"u-$server\\", '
                      '\\"Secret\\": \\"s3\\"}"\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert credentials.lookup("store.example") == Credentials("u-store.example", "s3")
    assert credentials.lookup("unlisted.example") is None


@pytest.mark.parametrize("content", ["{not json", '{"auths": []}', "\xff"])
def test_malformed_auth_file_is_a_clear_error(content: str) -> None:
    path = auth_path()
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(CredentialsError) as err:
        credentials.lookup("h")
    assert str(path) in str(err.value) and err.value.hint
    line, _ = one_error(lamina("logout", "h"))
    assert str(path) in line
    assert path.read_text() == content  # nothing lost


def test_a_malformed_entry_is_an_error_that_logout_removes() -> None:
    path = auth_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"auths": {"h": {"auth": "!!"}, "k": {"auth": b64("u", "p")}}}))
    with pytest.raises(CredentialsError, match="not base64") as err:
        credentials.lookup("h")
    assert str(path) in str(err.value) and "lamina logout" in err.value.hint
    assert lamina("logout", "h").returncode == 0
    assert credentials.lookup("h") is None and credentials.lookup("k") == Credentials("u", "p")


def test_credentials_never_printed() -> None:
    assert "pw" not in repr(Credentials("user", "pw"))
