"""``lamina login`` and ``lamina logout``: registry credentials, as Docker keeps them.

``login`` checks the credentials against the registry (``GET /v2/`` with them, through
its token server if it has one) before it stores anything, then writes them to
lamina's auth file (Docker's ``config.json`` shape, mode 0600; docs/configuration.md,
"Registry credentials"). ``logout`` removes them from that file.
"""

from __future__ import annotations

import argparse
import sys

from ..engine import Engine
from ..errors import CredentialsError, LaminaError


def login_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--username", help="user name (asked for on a terminal if not given)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("-p", "--password",
                        help="password (visible to other users of this machine: prefer "
                        "--password-stdin)")
    secret.add_argument("--password-stdin", action="store_true",
                        help="read the password from standard input")
    p.add_argument("host", nargs="?", metavar="HOST",
                   help="registry host[:port] (default: images.default_registry)")


def logout_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("host", nargs="?", metavar="HOST",
                   help="registry host[:port] (default: images.default_registry)")


def _host(args: argparse.Namespace, engine: Engine) -> str:
    from ..images.registry.credentials import normalize_host

    host = normalize_host(args.host or engine.config.images["default_registry"])
    if not host:
        raise LaminaError(f"{args.host!r} names no registry host",
                          hint="give HOST as host[:port], e.g. registry.example:5000")
    return host


def _ask(prompt: str, *, secret: bool) -> str:
    """Ask on the terminal; a clear error when there is none to ask on."""
    if not sys.stdin.isatty():
        what = "password" if secret else "user name"
        flag = "--password-stdin or -p" if secret else "-u USER"
        raise LaminaError(f"no {what} given and no terminal to ask for it on",
                          hint=f"give it with {flag}")
    if secret:
        import getpass

        return getpass.getpass(prompt)
    return input(prompt)


def cmd_login(args: argparse.Namespace, engine: Engine) -> int:
    from ..images.registry import Credentials, Registry
    from ..images.registry import credentials as stored

    host = _host(args, engine)
    username = args.username or _ask("Username: ", secret=False).strip()
    if args.password_stdin:
        if args.username is None:
            raise LaminaError("--password-stdin needs the user name",
                              hint="give it with -u USER")
        password = sys.stdin.read().rstrip("\r\n")
    elif args.password is not None:
        print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
              file=sys.stderr)
        password = args.password
    else:
        password = _ask("Password: ", secret=True)
    if not username or not password:
        raise LaminaError("the user name and the password must not be empty",
                          hint=f"lamina login -u USER --password-stdin {host}")
    credentials = Credentials(username, password)
    settings = engine.config.registry(host)
    Registry(host, insecure=bool(settings.get("insecure")), credentials=credentials
             ).check_login()
    stored.store(host, credentials)
    print("Login Succeeded")
    return 0


def cmd_logout(args: argparse.Namespace, engine: Engine) -> int:
    from ..images.registry import credentials as stored

    host = _host(args, engine)
    if stored.remove(host):
        print(f"Removing login credentials for {host}")
        return 0
    path = stored.auth_file()
    if stored.lookup(host) is not None:
        raise CredentialsError(
            f"lamina's auth file {path} has no login for {host}: its credentials come from "
            f"Docker's {stored.docker_config_file()}",
            hint=f"`docker logout {host}` removes those")
    raise CredentialsError(f"not logged in to {host} (nothing in {path})",
                           hint="`lamina login HOST` stores credentials; nothing was changed")
