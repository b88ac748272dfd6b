"""Docker's ``--filter KEY=VALUE`` options, parsed once for every listing command.

Docker's rule for combining them: values given for the same key are alternatives
(``-f reference=a -f reference=b`` lists both), different keys must all hold.
"""

from __future__ import annotations

from ..errors import LaminaError


class InvalidFilter(LaminaError):
    """A ``--filter`` that is not ``KEY=VALUE`` with a key the command knows."""


def parse_filters(given: list[str], known: dict[str, str]) -> dict[str, list[str]]:
    """``given`` (each ``KEY=VALUE``) by key; ``known`` maps each key to its help text.

    An unknown key or a value-less filter is an :class:`InvalidFilter` listing the keys.
    """
    found: dict[str, list[str]] = {}
    for text in given:
        key, eq, value = text.partition("=")
        key = key.strip().lower()
        if key not in known or not eq:
            raise InvalidFilter(
                f"invalid filter {text!r}",
                hint="filters are KEY=VALUE with KEY one of: "
                + "; ".join(f"{k} ({v})" for k, v in known.items()),
            )
        found.setdefault(key, []).append(value)
    return found


def truth(key: str, values: list[str]) -> bool:
    """The one boolean a filter such as ``dangling=true`` gives."""
    words = {v.strip().lower() for v in values}
    if words <= {"true", "1"}:
        return True
    if words <= {"false", "0"}:
        return False
    raise InvalidFilter(f"invalid value for the {key} filter: {', '.join(values)}",
                        hint=f"{key}=true or {key}=false")
