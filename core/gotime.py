"""Go's ways of writing time, which Docker's options and files use.

Docker users type Go durations (``--since 10m``, ``HEALTHCHECK --interval=1m30s``) and
read RFC 3339 times with nanoseconds (``logs -t``, the json-file log); no Python
library reads Go's duration syntax, so it is here, once. Times are integer
nanoseconds since the epoch (UTC), as Go's ``time.Time`` keeps them: a float of
seconds cannot hold a nanosecond's precision.
"""

from __future__ import annotations

import re
import time
from functools import cache

_DURATION = r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)"
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
          "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}

#: the timestamp shapes Docker's ``--since``/``--until`` take (moby's timetypes), tried
#: in order; without a zone the time is the host's local time
_TIMESTAMP = (
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:T(?P<hour>\d{2})(?::(?P<minute>\d{2})(?::(?P<second>\d{2})"
    r"(?:\.(?P<fraction>\d{1,9}))?)?)?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?"
)
_UNIX = r"(?P<seconds>-?\d+)(?:\.(?P<fraction>\d{1,9}))?"


@cache
def _pattern(source: str) -> re.Pattern[str]:
    """Compiled when first used: ``run`` imports this module (its log writes times) and
    never parses one."""
    return re.compile(source)


def parse_duration(text: str) -> int:
    """Go's ``time.ParseDuration`` (``1m30s``, ``1.5h``, ``250ms``, ``-5s``) in nanoseconds.

    Raises ValueError for anything else, the empty string included; ``0`` alone needs
    no unit, as in Go.
    """
    sign, body = (-1, text[1:]) if text[:1] == "-" else (1, text.removeprefix("+"))
    if body == "0":
        return 0
    if not body:
        raise ValueError(f"{text!r} is not a duration")
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _pattern(_DURATION).match(body, pos)
        if not match or match.group(1) in ("", "."):
            raise ValueError(f"{text!r} is not a duration")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return sign * int(total)


#: the shortest health check duration Docker accepts (0 stands for its default)
MIN_CHECK_NS = 1_000_000


def parse_check_duration(text: str) -> int:
    """A health check's interval, timeout or period (``--health-interval``, ``HEALTHCHECK
    --interval=``): a Go duration of at least 1ms, or 0 for Docker's default. Raises
    ValueError for anything else."""
    value = parse_duration(text)
    if value != 0 and value < MIN_CHECK_NS:
        raise ValueError(f"{text!r} is shorter than 1ms")
    return value


def parse_timestamp(text: str, *, now_ns: int | None = None) -> int:
    """A point in time as Docker's ``--since`` and ``--until`` read it, in nanoseconds.

    A Go duration counts back from now (``10m``: ten minutes ago); otherwise an RFC 3339
    time, whole or cut short (``2026-12-07``, ``2026-12-07T10:15``,
    ``2026-12-07T10:15:30.5Z``, local time without a zone), or Unix seconds with up
    to nine decimals. Raises ValueError for anything else.
    """
    from datetime import UTC, datetime, timedelta, timezone

    text = text.strip()
    now = time.time_ns() if now_ns is None else now_ns
    match = _pattern(_UNIX).fullmatch(text)
    if match:
        fraction = (match.group("fraction") or "").ljust(9, "0")
        seconds = int(match.group("seconds"))
        nanos = int(fraction)
        return seconds * 1_000_000_000 + (-nanos if text.startswith("-") else nanos)
    match = _pattern(_TIMESTAMP).fullmatch(text)
    if match:
        fields = match.groupdict()
        try:
            moment = datetime.strptime(
                f"{fields['date']} {fields['hour'] or '00'}:{fields['minute'] or '00'}:"
                f"{fields['second'] or '00'}", "%Y-%m-%d %H:%M:%S")
        except ValueError:
            raise ValueError(f"{text!r} is not a valid date and time") from None
        zone = fields["zone"]
        if zone == "Z":
            moment = moment.replace(tzinfo=UTC)
        elif zone:
            hours, minutes = int(zone[1:3]), int(zone[4:6])
            offset = (hours * 60 + minutes) * (-1 if zone[0] == "-" else 1)
            moment = moment.replace(tzinfo=timezone(timedelta(minutes=offset)))
        else:
            moment = moment.astimezone()  # the host's local time, as Docker's
        nanos = int((fields["fraction"] or "").ljust(9, "0"))
        return int(moment.timestamp()) * 1_000_000_000 + nanos
    try:
        return now - parse_duration(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a time nor a duration") from None


def rfc3339_nano(nanos: int) -> str:
    """``2026-12-07T10:15:30.123456789Z``: UTC with all nine digits, as ``docker logs -t``
    prints (Go's RFC3339NanoFixed), so that such times sort as text too."""
    seconds, fraction = divmod(nanos, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{fraction:09d}Z"


def parse_rfc3339_nano(text: str) -> int:
    """The inverse of :func:`rfc3339_nano` (any RFC 3339 time with a zone, in fact)."""
    match = _pattern(_TIMESTAMP).fullmatch(text)
    if not match or not match.group("zone") or not match.group("second"):
        raise ValueError(f"{text!r} is not an RFC 3339 time")
    return parse_timestamp(text)
