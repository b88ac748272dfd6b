"""What commands print: listings as tables or JSON (``--format``), and errors.

Tables are drawn by :mod:`.tables`; an error is one ``lamina: error:`` line and a
``hint:`` line (the command line's contract, docs/architecture.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import LaminaError


def terminal_columns() -> int:
    """The width argparse wraps help to: ``$COLUMNS``, else the terminal's, else 80.

    What ``shutil.get_terminal_size`` answers. argparse's own formatter imports shutil
    for it, and shutil imports bz2 and lzma: ~2 ms of every start.
    """
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from .tables import print_table

    tty = sys.stdout.isatty()
    # a pipe has no width: do not fold cells at 80 columns there
    print_table(title, columns, rows, width=terminal_columns() if tty else 1000, styled=tty)


def print_json(data: Any, *, listing: bool = False) -> None:
    """Indented JSON; with ``listing``, a list of rows as one compact object per line.

    ``indent`` makes the json module fall back to its pure-Python encoder (~40 us an
    object); a listing of thousands of rows stays within its time budget by encoding
    each row with the C encoder instead, which also keeps it ``grep``-able.
    """
    import json

    if listing and isinstance(data, list) and data:
        sys.stdout.write("[\n  ")
        sys.stdout.write(",\n  ".join(json.dumps(row, sort_keys=True) for row in data))
        sys.stdout.write("\n]\n")
        return
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def for_each(names: Iterable[str], act: Callable[[str], None], *,
             missing: type[LaminaError], force: bool) -> int:
    """Docker's way of ``rm``-like commands: ``act`` on each name in turn, the name printed
    when it is done, an error reported and the rest done all the same; one not there is
    no error with ``force``. The exit status."""
    status = 0
    for name in names:
        try:
            act(name)
            print(name)
        except missing as exc:
            if not force:
                report(exc)
                status = 1
        except LaminaError as exc:
            report(exc)
            status = 1
    return status


def report(exc: LaminaError) -> None:
    print(f"lamina: error: {exc}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)
