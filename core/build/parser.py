"""Lines of a Dockerfile: parser directives, comments, continuations and heredocs.

This is the first of two passes (BuildKit's ``parser`` package): the text becomes a list
of :class:`Node`, one per instruction, each with its keyword, its ``--flags`` and the rest
of its logical line, and the bodies of its heredocs. What an instruction's arguments mean
is the second pass, :mod:`.instructions`.

The rules, BuildKit's:

- *Parser directives* (``# escape=``, ``# syntax=``, ``# check=``) count only in the
  leading comment lines; the first line that is not one (an instruction, a blank line,
  another comment, an unknown directive) ends them. Each may be given once. ``escape`` is
  ``\\`` or a backtick; ``syntax`` and ``check`` are recorded and otherwise ignored.
- A line whose first non-blank character is ``#`` is a comment, also inside a continued
  instruction; a ``#`` anywhere else is text.
- The escape character as the last non-blank character of a line (not itself escaped)
  continues the instruction on the next line, joined without a space. Blank lines inside a
  continuation are skipped, with a warning (:attr:`Node.warnings`), as BuildKit does.
- ``RUN``, ``COPY`` and ``ADD`` in shell form (also under ``ONBUILD``) may carry heredocs:
  each word ``<<NAME``, ``<<-NAME`` or ``N<<NAME`` of the line opens one, read from the
  following lines, in order, up to a line holding only ``NAME`` (``<<-``: after leading
  tabs, which are also taken from the body). A quoted name (``<<"EOF"``, ``<<'EOF'``)
  turns substitution in the body off.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ..errors import DockerfileSyntaxError
from .words import json_array, split_words, unquote

#: a directive line: ``# name = value`` (the name a letter then letters and digits)
_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
KNOWN_DIRECTIVES = ("syntax", "escape", "check")
#: a heredoc word: an optional file descriptor, ``<<``, an optional ``-``, the name
_HEREDOC = re.compile(r"(\d*)<<(-?)([^<]*)")
#: the separator of keyword, flags and arguments (BuildKit's, not all of str.isspace)
_SPLIT = re.compile(r"[\t\v\f\r ]+")
_LINES = re.compile(r"[^\n]*\n|[^\n]+")
#: instructions whose shell form may carry heredocs
HEREDOC_KEYWORDS = frozenset({"RUN", "COPY", "ADD"})


class Heredoc(NamedTuple):
    """One heredoc: ``content`` is its body, each line with its newline.

    With ``chomp`` (``<<-``) the leading tabs are already gone from the body. ``expand``
    says whether ``$VAR`` in the body is substituted (the name was not quoted); ``fd`` is
    the file descriptor written before ``<<`` (0 when none).
    """

    name: str
    content: str
    expand: bool = True
    chomp: bool = False
    fd: int = 0


class Node(NamedTuple):
    """One instruction as written: the keyword, its flags and the rest of its logical line.

    ``keyword`` is upper case; ``flags`` are the leading ``--name[=value]`` words (quotes
    removed); ``args`` the text after them (stripped, nothing expanded); ``line`` and
    ``end_line`` the first and last physical lines, heredoc bodies included. ``child`` is
    the instruction an ``ONBUILD`` wraps. ``source`` is the logical line as joined.
    """

    keyword: str
    flags: tuple[str, ...]
    args: str
    heredocs: tuple[Heredoc, ...]
    line: int
    end_line: int
    column: int
    source: str
    child: Node | None
    positions: _Positions
    #: where each flag and the arguments start in ``source`` (for error columns)
    offsets: tuple[int, ...]
    args_offset: int

    @property
    def filename(self) -> str:
        return self.positions.filename

    def position(self, offset: int) -> tuple[int, int]:
        """The physical (line, column), both 1-based, of ``offset`` in :attr:`source`."""
        return self.positions.at(offset)


class Parsed(NamedTuple):
    """What the first pass gives: the instructions, the directives and the warnings."""

    nodes: tuple[Node, ...]
    directives: dict[str, str]
    escape: str
    warnings: tuple[str, ...]


class _Positions:
    """Maps offsets in a joined logical line back to physical lines and columns."""

    __slots__ = ("filename", "segments")

    def __init__(self, filename: str) -> None:
        self.filename = filename
        #: (offset in the logical line, physical line, column of that offset) per piece
        self.segments: list[tuple[int, int, int]] = []

    def at(self, offset: int) -> tuple[int, int]:
        start, line, column = self.segments[0]
        for seg in self.segments:
            if seg[0] > offset:
                break
            start, line, column = seg
        return line, column + (offset - start) + 1


def parse_lines(text: str, *, filename: str = "Dockerfile") -> Parsed:
    """The first pass over a whole Dockerfile; syntax errors name ``filename``, line, column."""
    lines = _LINES.findall(text)
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    directives: dict[str, str] = {}
    escape = "\\"
    warnings: list[str] = []
    nodes: list[Node] = []
    looking_for_directives = True
    i = 0
    while i < len(lines):
        body = lines[i].rstrip("\r\n")
        i += 1
        stripped = body.lstrip()
        if looking_for_directives:
            match = _DIRECTIVE.match(stripped)
            key = match.group(1).lower() if match else ""
            if key in KNOWN_DIRECTIVES:
                if key in directives:
                    raise DockerfileSyntaxError(
                        f"only one {key} parser directive can be used", filename=filename,
                        line=i, column=1, hint=f"remove the second '# {key}=' line")
                value = match.group(2)  # type: ignore[union-attr]
                if key == "escape":
                    if value not in ("\\", "`"):
                        raise DockerfileSyntaxError(
                            f"invalid escape character {value!r}", filename=filename, line=i,
                            column=body.index(value) + 1,
                            hint="the escape directive takes \\ or ` (a backtick)")
                    escape = value
                directives[key] = value
                continue
            looking_for_directives = False
        if stripped.startswith("#"):
            continue
        positions = _Positions(filename)
        positions.segments.append((0, i, len(body) - len(stripped)))
        first_line = i
        logical, more = _trim_continuation(stripped, escape)
        if not more and not logical:
            continue
        empty_continuation = False
        while more and i < len(lines):
            body = lines[i].rstrip("\r\n")
            i += 1
            if body.lstrip().startswith("#"):
                continue
            if not body.strip():
                empty_continuation = True
                continue
            piece, more = _trim_continuation(body, escape)
            positions.segments.append((len(logical), i, 0))
            logical += piece
        if empty_continuation:
            warnings.append(f"{filename}:{first_line}: empty continuation line "
                            "(Docker will make this an error)")
        node = _node(logical, positions, filename)
        target = node.child if node.keyword == "ONBUILD" and node.child else node
        if target.keyword in HEREDOC_KEYWORDS and not _exec_form(target):
            docs = []
            for heredoc, offset in _heredoc_words(node.source):
                content, i = _read_heredoc(lines, i, heredoc, node, offset, filename)
                docs.append(heredoc._replace(content=content))
            if docs and target is node:
                node = node._replace(heredocs=tuple(docs))
            elif docs:
                node = node._replace(child=target._replace(heredocs=tuple(docs), end_line=i),
                                     heredocs=tuple(docs))
        nodes.append(node._replace(end_line=i))
    if not nodes:
        raise DockerfileSyntaxError("file with no instructions", filename=filename,
                                    hint="a Dockerfile starts with FROM IMAGE")
    return Parsed(tuple(nodes), directives, escape, tuple(warnings))


def _exec_form(node: Node) -> bool:
    try:
        return json_array(node.args) is not None
    except DockerfileSyntaxError as exc:
        line, column = node.position(node.args_offset)
        raise DockerfileSyntaxError(exc.reason, filename=node.filename, line=line,
                                    column=column, hint=exc.hint) from None


def _trim_continuation(line: str, escape: str) -> tuple[str, bool]:
    """The line without a trailing continuation, and whether there was one."""
    body = line.rstrip(" \t")
    if body.endswith(escape) and not body.endswith(escape * 2):
        return body[:-1], True
    return line, False


def _node(source: str, positions: _Positions, filename: str, base: int = 0) -> Node:
    """A logical line split into keyword, flags and arguments (``base``: its offset)."""
    lead = len(source) - len(source.lstrip())
    parts = _SPLIT.split(source.strip(), maxsplit=1)
    keyword = parts[0].upper()
    rest_offset = lead + len(parts[0])
    rest = source[rest_offset:]
    flags, offsets, args_at = _flags(rest, rest_offset, positions, filename, base)
    args = rest[args_at - rest_offset:].strip()
    args_offset = args_at + (len(rest[args_at - rest_offset:]) -
                             len(rest[args_at - rest_offset:].lstrip()))
    line, column = positions.at(base + lead)
    child = None
    if keyword == "ONBUILD" and args:
        child = _node(source[args_offset:], positions, filename, base + args_offset)
    return Node(keyword, tuple(flags), args, (), line, line, column, source, child, positions,
                tuple(offsets), base + args_offset)


def _flags(rest: str, offset: int, positions: _Positions, filename: str,
           base: int) -> tuple[list[str], list[int], int]:
    """The leading ``--flag[=value]`` words of ``rest`` (quotes and ``\\`` removed).

    Returns the flags, where each starts (in the logical line) and where the arguments
    start. A lone ``--`` ends the flags. A flag's value may be quoted:
    ``--chown="a b"``.
    """
    flags: list[str] = []
    offsets: list[int] = []
    i, n = 0, len(rest)
    while True:
        while i < n and rest[i].isspace():
            i += 1
        if not rest.startswith("--", i):
            return flags, offsets, offset + i
        start = i
        word: list[str] = []
        quote = ""
        while i < n and (quote or not rest[i].isspace()):
            ch = rest[i]
            if quote:
                if ch == quote:
                    quote = ""
                    i += 1
                    continue
            elif ch in "'\"":
                quote = ch
                i += 1
                continue
            if ch == "\\" and i + 1 < n:
                i += 1
                ch = rest[i]
            elif ch == "\\":
                i += 1
                continue
            word.append(ch)
            i += 1
        if quote:
            line, column = positions.at(base + offset + start)
            raise DockerfileSyntaxError(f"unterminated quote in flag {rest[start:i]}",
                                        filename=filename, line=line, column=column,
                                        hint=f"close the quote with {quote}")
        text = "".join(word)
        if text == "--":
            return flags, offsets, offset + i
        flags.append(text)
        offsets.append(base + offset + start)


def heredoc_from_word(word: str) -> Heredoc | None:
    """The heredoc a word such as ``<<EOF``, ``<<-"EOF"`` or ``3<<EOF`` opens (no body yet)."""
    match = _HEREDOC.fullmatch(word)
    if not match or not match.group(3):
        return None
    rest = match.group(3)
    if len(split_words(rest)) != 1:
        return None
    name = unquote(rest)
    # quotes anywhere in the name (<<"EOF", <<E'O'F) turn substitution off, as in a shell
    quoted = (rest.count('"') + rest.count("'")) != (name.count('"') + name.count("'"))
    fd = int(match.group(1)) if match.group(1) else 0
    return Heredoc(name, "", not quoted, match.group(2) == "-", fd)


def _heredoc_words(source: str) -> list[tuple[Heredoc, int]]:
    """The heredocs the words of a logical line open, in order, with their offsets."""
    found = []
    search_from = 0
    for word in split_words(source):
        at = source.find(word, search_from)
        search_from = at + len(word) if at >= 0 else search_from
        heredoc = heredoc_from_word(word)
        if heredoc is not None:
            found.append((heredoc, max(at, 0)))
    return found


def _read_heredoc(lines: list[str], i: int, heredoc: Heredoc, node: Node, offset: int,
                  filename: str) -> tuple[str, int]:
    """The body of ``heredoc`` from ``lines[i:]`` and the index after its terminator."""
    body: list[str] = []
    while i < len(lines):
        text = lines[i]
        i += 1
        candidate = text.rstrip("\r\n")
        if heredoc.chomp:
            candidate = candidate.lstrip("\t")
            text = text.lstrip("\t")
        if candidate == heredoc.name:
            return "".join(body), i
        body.append(text)
    line, column = node.position(offset)
    prefix = "<<-" if heredoc.chomp else "<<"
    raise DockerfileSyntaxError(
        f"unterminated heredoc {prefix}{heredoc.name} started here", filename=filename,
        line=line, column=column,
        hint=f"end the heredoc with a line holding only {heredoc.name}")
