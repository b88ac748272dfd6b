"""Text tables for the command line: rich's look at the cost of joining strings.

``layer ls`` may list thousands of layers, and a rich table costs ~0.37 ms a row
besides rich's import. Most tables need nothing rich does: every cell is one line
of printable ASCII and the table fits the width. Those are drawn here, exactly as
rich draws ``Table(box=None, pad_edge=False)``: columns two spaces apart, every
cell padded to its column, the title on its own line; on a terminal the title
italic and the header bold. Anything else (wide or control characters, a table
wider than the terminal, whose cells rich folds) is left to rich.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

_BOLD, _ITALIC, _RESET = "\x1b[1m", "\x1b[3m", "\x1b[0m"
_GAP = "  "  # rich's padding of one space on each side of a column


def print_table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    width: int,
    styled: bool,
    file: TextIO | None = None,
) -> None:
    """Print a table no wider than ``width`` (folding cells if it must); ``styled`` for
    a terminal."""
    out = file or sys.stdout
    cells = [[str(c) for c in row] for row in rows]
    lines = plain_lines(title, columns, cells, width=width, styled=styled)
    if lines is None:
        _print_with_rich(title, columns, cells, width=width, file=out)
        return
    out.write("\n".join(lines))
    out.write("\n")


def plain_lines(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    width: int,
    styled: bool,
) -> list[str] | None:
    """The table's lines, or None when it needs rich (see the module docstring)."""
    text = "".join(columns) + "".join("".join(row) for row in rows) + (title or "")
    if not (text.isascii() and text.isprintable()):
        return None  # one check over everything: cheap for thousands of rows
    if any(len(row) != len(columns) for row in rows):
        return None
    by_column = list(zip(*rows, strict=True)) if rows else [()] * len(columns)
    widths = [max([len(name), *map(len, cells)]) for name, cells in zip(columns, by_column,
                                                                          strict=True)]
    if sum(widths) + len(_GAP) * (len(widths) - 1) > width:
        return None
    line = _GAP.join(f"{{:<{w}}}" for w in widths).format
    lines = []
    if title:
        lines.append(f"{_ITALIC}{title}{_RESET}" if styled else title)
    header = line(*columns)
    lines.append(f"{_BOLD}{header}{_RESET}" if styled else header)
    lines.extend(line(*row) for row in rows)
    return lines


def _print_with_rich(title: str | None, columns: Sequence[str],
                     rows: Sequence[Sequence[str]], *, width: int, file: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(Text(c) for c in row))  # a cell's "[...]" is text, not markup
    Console(soft_wrap=True, width=width, file=file).print(table)
