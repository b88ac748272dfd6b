"""``--chmod`` of COPY and ADD: an octal mode, or chmod(1)'s symbolic form.

BuildKit's rules (its Dockerfile front end and ``fsutil``'s copy): digits are octal, up to
07777, and set the permission bits of every file and directory copied (and of the
directories the copy makes on the way); anything else is parsed as chmod(1)'s symbolic
clauses (Dockerfile 1.14), applied with a umask of 0 to each entry's own mode:
``u+x``, ``go-w``, ``u=rwX,go=rX`` (``X``: execute for directories and for files that
already have an execute bit), ``g=u`` (copy another class's bits), ``+s``, ``o+t``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ..errors import BuildError

_CLAUSE = re.compile(r"([ugoa]*)((?:[-+=](?:[ugo]|[rwxXst]*))+)")
_ACTION = re.compile(r"([-+=])([ugo]|[rwxXst]*)")
#: the bits each class owns (its special bit included)
_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o0007, "a": 0o7777}
_SHIFT = {"u": 6, "g": 3, "o": 0}


class Chmod(NamedTuple):
    """``--chmod``: an octal mode, or chmod(1)'s symbolic clauses (umask 0)."""

    text: str
    octal: int | None
    clauses: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Chmod:
        """BuildKit's rules: octal up to 07777, else symbolic; anything else an error."""
        if text.isdigit():
            if re.fullmatch(r"[0-7]+", text) and int(text, 8) <= 0o7777:
                return cls(text, int(text, 8))
            raise BuildError(f"invalid --chmod={text}: an octal mode is between 0 and 07777",
                             hint="write e.g. --chmod=755, or symbolically --chmod=u=rwX,go=rX")
        clauses = []
        for part in text.split(","):
            match = _CLAUSE.fullmatch(part)
            if match is None:
                raise BuildError(f"invalid --chmod={text}: {part!r} is neither octal nor "
                                 "chmod's symbolic form", hint="write e.g. --chmod=755, or "
                                 "--chmod=u+x, --chmod=go-w, --chmod=u=rwX,go=rX, --chmod=g=u")
            actions = tuple((m.group(1), m.group(2)) for m in _ACTION.finditer(match.group(2)))
            clauses.append((match.group(1), actions))
        return cls(text, None, tuple(clauses))

    def apply(self, mode: int, is_dir: bool) -> int:
        """The permission bits (07777) an entry of permission bits ``mode`` gets."""
        if self.octal is not None:
            return self.octal
        for who, actions in self.clauses:
            mask = 0
            for w in who or "a":
                mask |= _WHO[w]
            for op, perms in actions:
                if perms in _SHIFT:  # copy another class's bits: g=u
                    bits = (mode >> _SHIFT[perms]) & 7
                    value = sum(bits << _SHIFT[w] for w in "ugo" if mask & (7 << _SHIFT[w]))
                else:
                    value = 0
                    for p in perms:
                        if p == "X":
                            value |= 0o111 if is_dir or mode & 0o111 else 0
                        else:
                            value |= {"r": 0o444, "w": 0o222, "x": 0o111, "s": 0o6000,
                                      "t": 0o1000}[p]
                    value &= mask | (0o1000 if mask & 0o7 else 0)
                if op == "+":
                    mode |= value
                elif op == "-":
                    mode &= ~value
                else:
                    mode = (mode & ~mask) | value
        return mode & 0o7777

    @property
    def dir_mode(self) -> int:
        """The mode of the directories the copy makes on the way (BuildKit: the octal one)."""
        return self.octal if self.octal is not None else 0o755
