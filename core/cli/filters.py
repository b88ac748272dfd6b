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


#: the ``--filter`` keys of the prune commands (Docker's)
PRUNE_FILTERS = {
    "until": "only what was made before this time: a timestamp or a duration back from "
             "now (24h)",
    "label": "only what has this label: KEY or KEY=VALUE",
    "label!": "only what does not have this label: label!=KEY or label!=KEY=VALUE",
}


class PruneFilter:
    """What a prune's ``--filter until=... label=... label!=...`` lets it remove: all
    of them must hold (Docker's)."""

    def __init__(self, given: list[str], *, until: bool = True) -> None:
        from ..gotime import parse_timestamp

        known = PRUNE_FILTERS if until else {k: v for k, v in PRUNE_FILTERS.items()
                                             if k != "until"}
        found = parse_filters(given, known)
        self.until: float | None = None
        if "until" in found:
            if len(found["until"]) > 1:
                raise InvalidFilter("more than one until filter", hint="give until once")
            try:
                self.until = parse_timestamp(found["until"][0]) / 1e9
            except ValueError as exc:
                raise InvalidFilter(
                    f"invalid until filter: {exc}",
                    hint="until=24h, until=2026-12-07T10:15:00Z or a Unix time") from None
        self.labels = [_label(v) for v in found.get("label", [])]
        self.not_labels = [_label(v) for v in found.get("label!", [])]

    def admits(self, created: float | None, labels: dict[str, str]) -> bool:
        if self.until is not None and (created is None or created >= self.until):
            return False
        return (all(_has(labels, key, value) for key, value in self.labels)
                and not any(_has(labels, key, value) for key, value in self.not_labels))


def _label(text: str) -> tuple[str, str | None]:
    key, eq, value = text.partition("=")
    return key, value if eq else None


def _has(labels: dict[str, str], key: str, value: str | None) -> bool:
    return key in labels and (value is None or labels[key] == value)
