"""Words of a Dockerfile: quotes, escapes and ``$VAR`` substitution as BuildKit's lexer does them.

Docker expands variables itself only in some instructions (ADD, COPY, ENV, EXPOSE, FROM,
LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR, ARG); a ``RUN``/``CMD``/``ENTRYPOINT`` string goes to
the shell untouched. Where it does, a word is processed like one shell word without
commands: ``'...'`` literal, ``"..."`` with ``$`` and the escape character active, the escape
character (``\\`` or the ``escape`` directive's backtick) taking the next character
literally, and these substitutions, an unset variable standing for the empty string:

``$VAR`` ``${VAR}``; ``${VAR:-word}`` (unset or empty) and ``${VAR-word}`` (unset);
``${VAR:+word}`` and ``${VAR+word}``; ``${VAR:?msg}`` and ``${VAR?msg}`` (an error);
``${VAR#pat}`` ``${VAR##pat}`` ``${VAR%pat}`` ``${VAR%%pat}`` (prefix and suffix removal,
shortest and longest) and ``${VAR/pat/repl}`` ``${VAR//pat/repl}``, patterns with ``*``,
``?`` and ``[...]``.

Errors are :class:`~lamina.core.errors.DockerfileSyntaxError` without a place; the caller,
who knows the instruction, names the file and line (:mod:`.instructions`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from ..errors import BuildError, DockerfileSyntaxError

#: parameters a shell has that a Dockerfile never sets: ``$1``, ``$@``, ``$?``, ...
_SPECIAL = frozenset("@*#?-$!0")
_SPACE = frozenset(" \t\n\r\v\f")


def expand(word: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    """``word`` with quotes removed, escapes applied and variables from ``env`` substituted.

    What ``ENV``, ``LABEL``, ``COPY`` and the other expanding instructions do to each word
    (BuildKit's ``ProcessWord``): spaces stay, so ``"a b"`` gives ``a b``.
    """
    return _Lexer(word, env, escape).run()[0]


def expand_fields(word: str, env: Mapping[str, str], *, escape: str = "\\") -> list[str]:
    """``word`` expanded and split into fields at unquoted whitespace (``EXPOSE $PORTS``)."""
    return _Lexer(word, env, escape).run()[1]


def expand_heredoc(content: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    """A heredoc's body with its variables substituted, as a shell does for ``<<EOF``.

    Quotes are text here; only ``$`` and the escape character before ``$`` or itself act.
    """
    return _Lexer(content, env, escape, raw=True).run()[0]


def unquote(word: str, *, escape: str = "\\") -> str:
    """``word`` with its quotes and escapes removed and no variable substituted."""
    return _Lexer(word, {}, escape, keep_unset=True).run()[0]


def json_array(text: str) -> list[str] | None:
    """The exec form of ``text`` (a JSON array of strings), or None for the shell form.

    As BuildKit: text that is not a JSON array is the shell form (``CMD [oops`` runs
    ``[oops`` in a shell), whatever follows the array is ignored, and an array of anything
    but strings is an error rather than a command.
    """
    text = text.lstrip()
    if not text.startswith("["):
        return None
    try:
        value, _end = json.JSONDecoder(parse_constant=_not_json).raw_decode(text)
    except ValueError:
        return None
    if not all(isinstance(item, str) for item in value):
        raise DockerfileSyntaxError(
            "a JSON array (exec form) may hold only strings",
            hint='quote every element: ["sh", "-c", "echo 1"]')
    return value


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # Python's json takes NaN and Infinity; Go's not


def split_words(text: str, *, escape: str = "\\") -> list[str]:
    """``text`` split at unquoted whitespace, quotes and escapes kept in the words.

    How ``ENV``, ``LABEL`` and ``ARG`` find their ``KEY=VALUE`` words before anything is
    expanded (BuildKit's ``parseWords``): ``a="x y" b`` is ``['a="x y"', 'b']``.
    """
    words: list[str] = []
    word: list[str] = []
    quote = ""
    in_word = blank_ok = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                if i + 1 == n:  # an escape at the very end is dropped
                    break
                word.append(ch)
                i += 1
                ch = text[i]
            word.append(ch)
        elif ch.isspace():
            if in_word and (word or blank_ok):
                words.append("".join(word))
            word, in_word, blank_ok = [], False, False
        else:
            in_word = True
            if ch in "'\"":
                quote, blank_ok = ch, True
            elif ch == escape:
                if i + 1 == n:
                    break
                word.append(ch)
                i += 1
                ch = text[i]
            word.append(ch)
        i += 1
    if in_word and (word or blank_ok):
        words.append("".join(word))
    return words


def glob_regex(pattern: str, escape: str = "\\") -> str:
    """A shell pattern (``*``, ``?``, ``[...]``, escapes) as a regular expression."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == escape and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "[" and (end := _class_end(pattern, i)) > 0:
            body = pattern[i + 1:end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def _class_end(pattern: str, start: int) -> int:
    """Where the ``[...]`` class opened at ``start`` closes, or -1 (a literal ``[``)."""
    j = start + 1
    if pattern[j:j + 1] in ("!", "^") and j < len(pattern):
        j += 1
    if pattern[j:j + 1] == "]":
        j += 1  # a ] first in the class is one of its characters
    return pattern.find("]", j)


class _Lexer:
    """One pass over a word; ``run`` returns the whole word and its fields."""

    __slots__ = ("env", "escape", "keep_unset", "n", "pos", "raw", "text")

    def __init__(self, text: str, env: Mapping[str, str], escape: str, *, raw: bool = False,
                 keep_unset: bool = False) -> None:
        self.text = text
        self.n = len(text)
        self.pos = 0
        self.env = env
        self.escape = escape
        self.raw = raw  # heredoc bodies: quotes are text
        self.keep_unset = keep_unset  # unquote(): `$X` stays `$X`

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < self.n else ""

    def run(self, stop: str = "") -> tuple[str, list[str]]:
        """Process up to ``stop`` (consumed) or the end; the word and its fields."""
        result: list[str] = []
        fields: list[str] = []
        field: list[str] = []
        in_field = False

        def add_split(text: str) -> None:  # unquoted characters: whitespace separates fields
            nonlocal field, in_field
            for ch in text:
                if ch in _SPACE:
                    if in_field and field:
                        fields.append("".join(field))
                        field, in_field = [], False
                else:
                    field.append(ch)
                    in_field = True

        def add_raw(text: str) -> None:  # quoted or escaped characters: always part of a field
            nonlocal in_field
            field.append(text)
            in_field = True

        stopped = False
        while self.pos < self.n:
            ch = self.text[self.pos]
            if stop and ch == stop:
                self.pos += 1
                stopped = True
                break
            if ch == "$":
                value = self._dollar()
                result.append(value)
                add_split(value)
            elif ch == "'" and not self.raw:
                value = self._single_quoted()
                result.append(value)
                add_raw(value)
            elif ch == '"' and not self.raw:
                value = self._double_quoted()
                result.append(value)
                add_raw(value)
            elif ch == self.escape:
                self.pos += 1
                if self.pos == self.n:
                    break  # an escape at the end escapes nothing
                nxt = self.text[self.pos]
                self.pos += 1
                if self.raw and nxt != "$" and nxt != self.escape:
                    result.append(ch + nxt)
                    add_raw(ch + nxt)
                else:
                    result.append(nxt)
                    add_raw(nxt)
            else:
                self.pos += 1
                result.append(ch)
                add_split(ch)
        if stop and not stopped:
            raise DockerfileSyntaxError(f"missing '{stop}' in {self.text!r}")
        if field:
            fields.append("".join(field))
        return "".join(result), fields

    def _single_quoted(self) -> str:
        end = self.text.find("'", self.pos + 1)
        if end < 0:
            raise DockerfileSyntaxError(f"unterminated single quote in {self.text!r}",
                                        hint="close the quote with '")
        value = self.text[self.pos + 1:end]
        self.pos = end + 1
        return value

    def _double_quoted(self) -> str:
        self.pos += 1
        out: list[str] = []
        while self.pos < self.n:
            ch = self.text[self.pos]
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
                continue
            self.pos += 1
            if ch == self.escape and self.pos < self.n:
                nxt = self.text[self.pos]
                if nxt in ('"', "$", self.escape):
                    ch = nxt
                    self.pos += 1
            out.append(ch)
        raise DockerfileSyntaxError(f"unterminated double quote in {self.text!r}",
                                    hint='close the quote with "')

    def _name(self) -> str:
        start = self.pos
        ch = self._peek()
        if ch.isdigit():
            while self._peek().isdigit():
                self.pos += 1
            return self.text[start:self.pos]
        if ch and ch in _SPECIAL:
            self.pos += 1
            return ch
        while (ch := self._peek()) and (ch.isalnum() or ch == "_"):
            self.pos += 1
        return self.text[start:self.pos]

    def _dollar(self) -> str:
        start = self.pos
        self.pos += 1
        if self._peek() != "{":
            name = self._name()
            if not name:
                return "$"
            if name not in self.env and self.keep_unset:
                return self.text[start:self.pos]
            return self.env.get(name, "")
        self.pos += 1
        first = self._peek()
        if not first:
            raise DockerfileSyntaxError(f"missing '}}' in {self.text!r}")
        if first in "{}:":
            raise DockerfileSyntaxError(f"bad substitution in {self.text!r}")
        name = self._name()
        op = self._peek()
        self.pos += 1
        if op == "}":
            if name not in self.env and self.keep_unset:
                return self.text[start:self.pos]
            return self.env.get(name, "")
        value = self.env.get(name)
        if op == ":":
            op = ":" + self._peek()
            self.pos += 1
        elif op in "#%/" and op and self._peek() == op:
            op += op
            self.pos += 1
        if op not in (":-", ":+", ":?", "-", "+", "?", "#", "##", "%", "%%", "/", "//"):
            raise DockerfileSyntaxError(
                f"unsupported substitution ${{{name}{op}...}} in {self.text!r}",
                hint="Dockerfiles take ${VAR}, ${VAR:-default}, ${VAR-default}, "
                "${VAR:+alt}, ${VAR+alt}, ${VAR:?error}, ${VAR#pat}, ${VAR%pat} and "
                "${VAR/pat/repl}")
        if op in ("/", "//"):
            pattern = self._until("/")
            replacement = self.run("}")[0]
            return self._replace(value or "", pattern, replacement, op == "//")
        word = self.run("}")[0]
        unset = value is None or (op[0] == ":" and value == "")
        if op in (":-", "-"):
            return word if unset else value or ""
        if op in (":+", "+"):
            return "" if unset else word
        if op in (":?", "?"):
            if unset:
                raise BuildError(f"{name}: {word or 'parameter not set'}",
                                 hint=f"set {name} (ARG, ENV or --build-arg {name}=VALUE)")
            return value or ""
        return self._trim(value or "", word, op)

    def _until(self, stop: str) -> str:
        """The raw text up to ``stop`` (consumed): a substitution's pattern."""
        end = self.pos
        while end < self.n and self.text[end] != stop:
            end += 2 if self.text[end] == self.escape else 1
        if end >= self.n:
            raise DockerfileSyntaxError(f"missing '{stop}' in {self.text!r}")
        pattern = self.text[self.pos:end]
        self.pos = end + 1
        return pattern

    def _trim(self, value: str, pattern: str, op: str) -> str:
        regex = re.compile(glob_regex(pattern, self.escape), re.S)
        cuts = range(len(value) + 1)
        if op in ("#", "##"):
            for i in (cuts if op == "#" else reversed(cuts)):
                if regex.fullmatch(value, 0, i):
                    return value[i:]
        else:
            for i in (reversed(cuts) if op == "%" else cuts):
                if regex.fullmatch(value, i):
                    return value[:i]
        return value

    def _replace(self, value: str, pattern: str, replacement: str, every: bool) -> str:
        if not pattern:
            return value
        regex = re.compile(glob_regex(pattern, self.escape), re.S)
        return regex.sub(lambda _m: replacement, value, count=0 if every else 1)
