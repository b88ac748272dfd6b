"""Dockerfile instructions applied to an image's container config (``import``/``commit --change``).

``docker import --change`` takes the instructions that only set config fields;
lamina takes these: ``CMD``, ``ENTRYPOINT`` (JSON array, or shell form run by
``/bin/sh -c``), ``ENV`` (``K=V ...``, or the old ``K V``), ``WORKDIR``
(relative to the previous one), ``USER``, ``LABEL`` (``K=V ...``), ``EXPOSE``
(``80``, ``80/tcp``, ``53/udp``), ``STOPSIGNAL`` and ``HEALTHCHECK`` (``NONE``, or
``[--interval=D --timeout=D --start-period=D --start-interval=D --retries=N] CMD ...``
in either form). Any other instruction, and
malformed arguments, raise :class:`~lamina.core.errors.InvalidChange` naming it.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Iterable
from typing import Any

from ..errors import InvalidChange

SUPPORTED = ("CMD", "ENTRYPOINT", "ENV", "WORKDIR", "USER", "LABEL", "EXPOSE", "STOPSIGNAL",
             "HEALTHCHECK")
_PORT = re.compile(r"^(\d{1,5})(?:/(tcp|udp|sctp))?$")
_KEY = re.compile(r"^[^=\s]+$")


def apply_changes(
    config: dict[str, Any], changes: Iterable[str], *, command: str = "import"
) -> dict[str, Any]:
    """``config`` (an image's ``config`` object) with each instruction applied, in order.

    ``command`` names the command in errors (``import``, ``commit``).
    """
    result = json.loads(json.dumps(config))
    for change in changes:
        word, _, rest = change.strip().partition(" ")
        if not word:
            raise InvalidChange("an empty --change")
        word = word.upper()
        rest = rest.strip()
        if word not in SUPPORTED:
            raise InvalidChange(f"--change {change!r}: {word} cannot be applied by {command}")
        if not rest:
            raise InvalidChange(f"--change {change!r}: {word} needs an argument")
        _APPLY[word](result, rest, change)
    return result


def _command(rest: str, change: str) -> list[str]:
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidChange(f"--change {change!r}: the JSON form is a list of strings")
        return value
    return ["/bin/sh", "-c", rest]


def _pairs(rest: str, change: str) -> list[tuple[str, str]]:
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise InvalidChange(f"--change {change!r}: {exc}") from None
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key or not _KEY.match(key):
            raise InvalidChange(f"--change {change!r}: {word!r} is not KEY=VALUE")
        pairs.append((key, value))
    return pairs


def _cmd(config: dict[str, Any], rest: str, change: str) -> None:
    config["Cmd"] = _command(rest, change)


def _entrypoint(config: dict[str, Any], rest: str, change: str) -> None:
    config["Entrypoint"] = _command(rest, change)
    config.pop("Cmd", None)  # as Docker: a new entrypoint drops the inherited CMD


def _env(config: dict[str, Any], rest: str, change: str) -> None:
    key, _, value = rest.partition(" ")
    if "=" not in key:  # the old form: ENV KEY VALUE
        if not _KEY.match(key):
            raise InvalidChange(f"--change {change!r}: {key!r} is not a variable name")
        pairs = [(key, value.strip())]
    else:
        pairs = _pairs(rest, change)
    env = list(config.get("Env") or [])
    for key, value in pairs:
        env = [e for e in env if e.partition("=")[0] != key]
        env.append(f"{key}={value}")
    config["Env"] = env


def _workdir(config: dict[str, Any], rest: str, change: str) -> None:
    if "\0" in rest:
        raise InvalidChange(f"--change {change!r}: the path has a NUL byte")
    base = config.get("WorkingDir") or "/"
    config["WorkingDir"] = posixpath.normpath(posixpath.join("/", base, rest))


def _user(config: dict[str, Any], rest: str, change: str) -> None:
    config["User"] = rest


def _label(config: dict[str, Any], rest: str, change: str) -> None:
    labels = dict(config.get("Labels") or {})
    labels.update(_pairs(rest, change))
    config["Labels"] = labels


def _expose(config: dict[str, Any], rest: str, change: str) -> None:
    ports = dict(config.get("ExposedPorts") or {})
    for word in rest.split():
        found = _PORT.match(word.lower())
        if not found or not 0 < int(found[1]) < 65536:
            raise InvalidChange(f"--change {change!r}: {word!r} is not PORT[/tcp|udp|sctp]")
        ports[f"{int(found[1])}/{found[2] or 'tcp'}"] = {}
    config["ExposedPorts"] = ports


def _stopsignal(config: dict[str, Any], rest: str, change: str) -> None:
    if not re.fullmatch(r"(SIG)?[A-Z0-9+-]+|\d+", rest):
        raise InvalidChange(f"--change {change!r}: {rest!r} is not a signal")
    config["StopSignal"] = rest


#: HEALTHCHECK's options: the config key each sets (durations in ns, as Docker's)
_HEALTH_FLAGS = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
                 "start-interval": "StartInterval", "retries": "Retries"}


def _healthcheck(config: dict[str, Any], rest: str, change: str) -> None:
    from ..gotime import parse_check_duration

    check: dict[str, Any] = {}
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        rest = rest.strip()
        name, eq, value = option[2:].partition("=")
        if name not in _HEALTH_FLAGS or not eq:
            raise InvalidChange(f"--change {change!r}: unknown HEALTHCHECK option {option!r}",
                                hint="options: " + ", ".join(f"--{k}=..." for k in _HEALTH_FLAGS))
        if name == "retries":
            if not value.isdigit() or int(value) < 1:
                raise InvalidChange(f"--change {change!r}: --retries must be at least 1")
            check["Retries"] = int(value)
            continue
        try:
            nanos = parse_check_duration(value)
        except ValueError:
            raise InvalidChange(f"--change {change!r}: --{name} {value!r} is not a duration "
                                "of at least 1ms", hint="e.g. --interval=30s") from None
        if nanos:
            check[_HEALTH_FLAGS[name]] = nanos
    kind, _, command = rest.partition(" ")
    if kind.upper() == "NONE" and not command.strip():
        config["Healthcheck"] = {"Test": ["NONE"]}
        return
    if kind.upper() != "CMD" or not command.strip():
        raise InvalidChange(f"--change {change!r}: write HEALTHCHECK [OPTIONS] CMD COMMAND, "
                            "or HEALTHCHECK NONE")
    command = command.strip()
    argv = _command(command, change) if command.startswith("[") else None
    config["Healthcheck"] = {"Test": ["CMD", *argv] if argv else ["CMD-SHELL", command],
                             **check}


_APPLY = {"CMD": _cmd, "ENTRYPOINT": _entrypoint, "ENV": _env, "WORKDIR": _workdir,
          "USER": _user, "LABEL": _label, "EXPOSE": _expose, "STOPSIGNAL": _stopsignal,
          "HEALTHCHECK": _healthcheck}
