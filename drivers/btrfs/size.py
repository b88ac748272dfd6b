"""Sizes as users write them in the config ("10G", "512M", 1048576)."""

from __future__ import annotations

import re

from lamina.core.errors import ConfigError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
#: compiled on first use (re caches it): importing the driver is every command's start-up
_SIZE_RE = r"(?i)^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$"

#: the smallest quota that still leaves room for a layer's own metadata
MIN_SIZE = 1 << 20


def parse_size(value: int | str, *, what: str = "size") -> int:
    """Bytes from ``value``: an int, or a number with an optional binary unit (K, M, G, T, P).

    "10G", "10GiB" and "10GB" all mean 10 * 2**30: quota tools count in
    binary units, and one meaning per letter avoids surprises.
    """
    hint = f'write {what} as bytes or a number with a unit, like "10G" or "512M" (at least 1M)'
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{what} must be a size like \"10G\", not {value!r}", hint=hint)
    if isinstance(value, int):
        result = value
    else:
        match = re.match(_SIZE_RE, value)
        if not match:
            raise ConfigError(f"{what} {value!r} is not a size", hint=hint)
        result = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if result < MIN_SIZE:
        raise ConfigError(f"{what} {value!r} is below the 1M minimum", hint=hint)
    return result
