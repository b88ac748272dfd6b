"""``.dockerignore``: which files of a build context the build may see, by Docker's rules.

The rules of moby's ``patternmatcher`` and its ``ignorefile`` reader:

- A line starting with ``#`` is a comment (only in the first column); blank lines are
  skipped; every other line is trimmed of surrounding whitespace.
- A pattern is cleaned as Go's ``filepath.Clean`` does and made relative: ``./a``, ``a/``,
  ``/a`` and ``a//b/../`` all mean ``a``. Directory and file patterns are alike: a trailing
  ``/`` means nothing.
- ``*`` is any run of characters but ``/``, ``?`` one of them, ``[...]`` a class (``[^..]``
  negated; Go's, so ``!`` is just a character), ``\\`` escapes the next character, ``**``
  any number of directories, none included (``**/x``, ``a/**/b``), and a final ``/**``
  everything beneath (``a/**`` matches ``a/b`` but not ``a``).
- A pattern matching a directory matches everything beneath it.
- ``!pattern`` is an exception: it re-includes what it matches. Lines are read in order and
  the last one that matches a path decides.

The Dockerfile and ``.dockerignore`` themselves: Docker still reads them even when they are
ignored (the build needs them), but COPY and ADD cannot copy an ignored one. lamina does the
same: the build reads its Dockerfile by path whatever this file says, and asks
:meth:`Dockerignore.excluded` for everything the context offers to COPY and ADD.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from typing import NamedTuple

from ..errors import DockerfileSyntaxError
from .globs import match_regex


class Pattern(NamedTuple):
    """One cleaned pattern: its text, whether it is an exception, its compiled form."""

    text: str
    exception: bool
    regex: re.Pattern[str]
    #: the pattern's path components (for :meth:`Dockerignore.prunable`)
    parts: tuple[str, ...]
    line: int


def clean(path: str) -> str:
    """Go's ``filepath.Clean``: no empty, ``.`` or inner ``..`` components, no trailing ``/``."""
    cleaned = posixpath.normpath(path) if path else "."
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned  # POSIX keeps //


class Dockerignore:
    """The patterns of one ``.dockerignore``, asked path by path as the context is walked."""

    __slots__ = ("_any_exception", "patterns")

    def __init__(self, patterns: Iterable[Pattern]) -> None:
        self.patterns = tuple(patterns)
        self._any_exception = any(p.exception for p in self.patterns)

    @classmethod
    def parse(cls, text: str, *, filename: str = ".dockerignore") -> Dockerignore:
        """The patterns of a ``.dockerignore``'s text; a malformed one names its line."""
        patterns = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.removeprefix("\ufeff") if number == 1 else raw
            if line.startswith("#"):
                continue
            line = line.strip()
            if not line:
                continue
            exception = line.startswith("!")
            if exception:
                line = line[1:].strip()
                if not line:
                    raise DockerfileSyntaxError(
                        "an exception '!' names no pattern", filename=filename, line=number,
                        hint="write !PATTERN, e.g. !keep.txt")
            text_ = clean(line)
            if len(text_) > 1 and text_.startswith("/"):
                text_ = text_.lstrip("/") or "."
            try:
                regex = re.compile(_regex(text_))
            except (re.error, ValueError) as exc:
                raise DockerfileSyntaxError(
                    f"bad pattern {line!r}: {exc}", filename=filename, line=number,
                    hint="close every [ with ], or escape it as \\[") from None
            patterns.append(Pattern(text_, exception, regex, tuple(text_.split("/")), number))
        return cls(patterns)

    def excluded(self, relpath: str) -> bool:
        """Whether the build must not see ``relpath`` (relative to the context, ``/``-separated).

        Files and directories are asked alike; an excluded directory may still hold files
        an exception re-includes (see :meth:`prunable`).
        """
        path = clean(relpath).lstrip("/")
        if path in (".", ""):
            return False  # the context itself is always sent, as Docker
        parents = _parents(path)
        excluded = False
        for pattern in self.patterns:
            if pattern.exception != excluded:
                continue  # only a pattern that could change the answer is tried
            if pattern.regex.fullmatch(path) or any(pattern.regex.fullmatch(p) for p in parents):
                excluded = not pattern.exception
        return excluded

    def prunable(self, reldir: str) -> bool:
        """Whether the walk may skip directory ``reldir`` entirely.

        True when the directory is excluded and no exception could re-include anything
        beneath it: one whose leading components cannot match the directory's (``**``
        could match anything, so an exception with ``**`` before its last component keeps
        the walk going).
        """
        if not self.excluded(reldir):
            return False
        if not self._any_exception:
            return True
        parts = tuple(clean(reldir).lstrip("/").split("/"))
        return not any(p.exception and _could_reach_below(p.parts, parts)
                       for p in self.patterns)


def _parents(path: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``: the directories a pattern may match instead."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _could_reach_below(pattern: tuple[str, ...], directory: tuple[str, ...]) -> bool:
    """Whether some path beneath ``directory`` (or the directory itself) could match."""
    for i, part in enumerate(pattern):
        if "**" in part:
            return True
        if i >= len(directory):
            return True  # the pattern goes deeper than the directory: it may match beneath
        if not re.fullmatch(_regex(part), directory[i]):
            return False
    return True  # it matches the directory or one of its parents


def _regex(pattern: str) -> str:
    """A cleaned pattern as a regular expression for ``fullmatch`` (patternmatcher's rules:
    Go's ``filepath.Match`` for each piece, and ``**`` for any number of directories)."""
    out = []
    pieces = pattern.split("**")
    for index, piece in enumerate(pieces):
        if index:  # a ** before this piece
            if piece.startswith("/"):
                piece = piece[1:]  # **/ is **
            # at the end, anything (a/** is everything beneath a); else any directories
            out.append(".*" if not piece and index == len(pieces) - 1 else "(?:.*/)?")
        source = match_regex(piece)
        if source is None:
            raise ValueError("a bad pattern (an unterminated [ class, or a trailing \\)")
        out.append(source)
    return "".join(out)
