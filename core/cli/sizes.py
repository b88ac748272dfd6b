"""Byte counts for people: ``2.1 MB``, in decimal units as Docker shows them.

Tables show these; ``--format json`` keeps exact bytes.
"""

from __future__ import annotations

#: decimal units (1 kB = 1000 B), Docker's ``units.HumanSize`` names
UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def human_size(size: int) -> str:
    """``size`` bytes with three significant digits and a decimal unit: ``10.2 kB``.

    Rounding moves to the next unit (999,999 B is ``1 MB``, never ``1e+03 kB``).
    """
    value = float(size)
    unit = 0
    while abs(value) >= 1000 and unit < len(UNITS) - 1:
        value /= 1000
        unit += 1
    text = f"{value:.3g}"
    if abs(float(text)) >= 1000 and unit < len(UNITS) - 1:
        value /= 1000
        unit += 1
        text = f"{value:.3g}"
    return f"{text} {UNITS[unit]}"


#: binary units (1 KiB = 1024 B), as ``docker stats`` shows memory
BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_binary(size: int) -> str:
    """``size`` bytes with four significant digits and a binary unit: ``1.496 MiB``."""
    value = float(size)
    unit = 0
    while abs(value) >= 1024 and unit < len(BINARY_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{value:.4g} {BINARY_UNITS[unit]}"
