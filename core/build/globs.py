"""Go's ``filepath.Match`` patterns as regular expressions: the one translation both the
context's COPY sources (core/build/context.py) and ``.dockerignore`` (core/build/
dockerignore.py, which adds ``**``) use, as BuildKit and moby's patternmatcher both
build on ``filepath.Match``.

Shell patterns in ``${VAR#pattern}`` are another language (``*`` matches ``/`` there):
core/build/words.py has its own.
"""

from __future__ import annotations

import re


def match_regex(component: str) -> str | None:
    """Go's ``filepath.Match`` pattern as the source of a regex for ``fullmatch`` (``*`` and
    ``?`` never match ``/``); None for a bad pattern (an empty or unterminated class, a
    trailing escape: Go's ``ErrBadPattern``)."""
    out = []
    i, n = 0, len(component)
    while i < n:
        ch = component[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            i += 1
            if i >= n:
                return None
            out.append(re.escape(component[i]))
        elif ch == "[":
            i += 1
            negate = i < n and component[i] == "^"
            if negate:
                i += 1
            body = []
            while i < n and (component[i] != "]" or not body):
                lo = component[i]
                if lo == "\\":
                    i += 1
                    if i >= n:
                        return None
                    lo = component[i]
                elif lo == "]":
                    return None  # an empty class
                i += 1
                if i + 1 < n and component[i] == "-" and component[i + 1] != "]":
                    hi = component[i + 1]
                    if hi == "\\":
                        i += 1
                        if i + 1 >= n:
                            return None
                        hi = component[i + 1]
                    if hi < lo:
                        return None
                    body.append(f"{re.escape(lo)}-{re.escape(hi)}")
                    i += 2
                else:
                    body.append(re.escape(lo))
            if i >= n or not body:
                return None  # unterminated
            out.append("[" + ("^" if negate else "") + "".join(body) + "]")
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)
