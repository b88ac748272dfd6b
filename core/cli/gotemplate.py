"""Go's ``text/template``, the part that Docker's ``--format`` users write.

``docker inspect -f '{{.State.Pid}}'``, ``docker images --format
'{{.Repository}}:{{.Tag}}'`` and ``{{range .RepoTags}}{{.}} {{end}}`` live in scripts
people already have, so lamina reads the same language: fields (``.A.B``, ``$``,
``$name``), literals, parenthesised pipelines and ``|``; ``if``/``else if``/``else``,
``range`` (with ``$i, $v :=``), ``with``, comments and ``{{-``/``-}}`` trimming; the
functions of Go (``index``, ``len``, ``print``, ``printf``, ``println``, ``eq``/``ne``/
``lt``/``le``/``gt``/``ge``, ``and``, ``or``, ``not``, ``slice``) and of Docker
(``json``, ``join``, ``split``, ``lower``, ``upper``, ``title``, ``truncate``, ``pad``).
Values print as Go's ``%v`` does (``map[a:1]``, ``[x y]``, ``<no value>``, floats as
``%g``). No library implements this language in Python; it is small enough to own.

Not supported, and refused with an error saying so: ``define``/``template``/``block``,
variable assignment outside ``range``/``with`` (``$x :=``), and the ``html``, ``js`` and
``urlquery`` functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

from ..errors import LaminaError


class TemplateError(LaminaError):
    """A ``--format`` template that cannot be parsed or run."""

    def __init__(self, message: str) -> None:
        super().__init__(f"bad --format template: {message}",
                         hint="Go template syntax, as Docker's: e.g. '{{.Id}}', "
                         "'{{json .Config}}', '{{range .RepoTags}}{{.}} {{end}}'")


class _Missing:
    """A map key that is not there: prints as Go's ``<no value>``, is false."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<no value>"


MISSING = _Missing()

# -- values as Go prints them ---------------------------------------------------------------


def go_string(value: Any) -> str:
    """``value`` as Go's ``fmt`` prints it with ``%v``."""
    if isinstance(value, str):
        return value
    if value is None or value is MISSING:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, dict):
        return "map[" + " ".join(f"{go_string(k)}:{go_string(v)}"
                                 for k, v in sorted(value.items())) + "]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_string(v) for v in value) + "]"
    return str(value)


def _go_float(value: float) -> str:
    """Go's ``%v`` of a float64: the shortest digits, as ``%g`` with exponents from 1e+06."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    exp10 = len(text) + exponent - 1
    prefix = "-" if sign else ""
    if exp10 < -4 or exp10 >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    point = exp10 + 1
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{text}"
    if point >= len(text):
        return prefix + text + "0" * (point - len(text))
    return f"{prefix}{text[:point]}.{text[point:]}"


def _truth(value: Any) -> bool:
    """Go's truth: false, 0, nil, an empty string, list or map are false."""
    return bool(value) and value is not MISSING


# -- functions ------------------------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(None if value is MISSING else value, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key, MISSING)
        elif isinstance(value, list | tuple | str):
            if not isinstance(key, int) or not -1 < key < len(value):
                raise TemplateError(f"index {go_string(key)} out of range")
            value = value[key]
        else:
            raise TemplateError(f"cannot index {go_string(value)}")
    return value


def _len(value: Any) -> int:
    if isinstance(value, str | list | tuple | dict):
        return len(value)
    raise TemplateError(f"len of {go_string(value)}")


def _slice(value: Any, *bounds: int) -> Any:
    if not isinstance(value, str | list | tuple):
        raise TemplateError(f"cannot slice {go_string(value)}")
    return value[slice(*bounds)]


def _printf(fmt: str, *args: Any) -> str:
    """Go's ``printf`` for the verbs templates use (%s %v %d %q %x %f %%, widths)."""
    values = iter(args)

    def convert(match: re.Match[str]) -> str:
        flags, verb = match.group(1), match.group(2)
        if verb == "%":
            return "%"
        try:
            value = next(values)
        except StopIteration:
            return f"%!{verb}(MISSING)"
        if verb in "sv":
            return ("%" + flags + "s") % go_string(value)
        if verb == "q":
            return ("%" + flags + "s") % json.dumps(go_string(value), ensure_ascii=False)
        if verb in "dxXfeEg" and isinstance(value, int | float) and not isinstance(value, bool):
            return ("%" + flags + verb) % value
        return f"%!{verb}({go_string(value)})"

    return re.sub(r"%([-+# 0]*\d*(?:\.\d+)?)([a-zA-Z%])", convert, fmt)


def _compare(op: Callable[[Any, Any], bool]) -> Callable[..., bool]:
    def compare(a: Any, *others: Any) -> bool:
        try:
            return any(op(a, b) for b in others) if op is _eq else op(a, *others)
        except TypeError:
            raise TemplateError(f"incompatible types for comparison: {go_string(a)}") from None
    return compare


def _eq(a: Any, b: Any) -> bool:
    return bool(a == b)


def _truncate(text: Any, length: int) -> str:
    text = go_string(text)
    return text[:length]


def _pad(text: Any, before: int, after: int) -> str:
    return " " * before + go_string(text) + " " * after


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "json": _json,
    "index": _index,
    "len": _len,
    "slice": _slice,
    "print": lambda *a: "".join(go_string(v) for v in a),
    "println": lambda *a: " ".join(go_string(v) for v in a) + "\n",
    "printf": _printf,
    "eq": _compare(_eq),
    "ne": _compare(lambda a, b: a != b),
    "lt": _compare(lambda a, b: a < b),
    "le": _compare(lambda a, b: a <= b),
    "gt": _compare(lambda a, b: a > b),
    "ge": _compare(lambda a, b: a >= b),
    "not": lambda a: not _truth(a),
    "join": lambda items, sep: sep.join(go_string(i) for i in items),
    "split": lambda text, sep: go_string(text).split(sep),
    "lower": lambda text: go_string(text).lower(),
    "upper": lambda text: go_string(text).upper(),
    "title": lambda text: go_string(text).title(),
    "truncate": _truncate,
    "pad": _pad,
}
#: ``and``/``or`` return one of their arguments, as Go's
_LOGIC = {"and", "or"}

# -- parsing --------------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:\\.|[^"\\])*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:\\.|[^'\\])')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?))
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
  | (?P<variable>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<dot>\.)
  | (?P<declare>:=)
  | (?P<punct>[()|,])
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
""", re.VERBOSE)

Node = Any  # the parse tree: tuples, see Template


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise TemplateError(f"unexpected {text[pos:pos + 10]!r} in {{{{{text}}}}}")
        kind = match.lastgroup or ""
        if kind != "space":
            out.append((kind, match.group()))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.items: list[tuple[str, Any]] = []  # ("text", str) or ("action", tokens)
        pos = 0
        for match in _ACTION.finditer(text):
            before = text[pos:match.start()]
            if match.group(1):
                before = before.rstrip()
            self.items.append(("text", before))
            self.items.append(("action", match.group(2)))
            if match.group(3):
                self.items.append(("trim", None))
            pos = match.end()
        rest = text[pos:]
        if "{{" in rest:
            raise TemplateError("an action opened with {{ is not closed with }}")
        self.items.append(("text", rest))
        # ``-}}`` trims the text after it
        cleaned: list[tuple[str, Any]] = []
        trim = False
        for kind, value in self.items:
            if kind == "trim":
                trim = True
                continue
            if kind == "text" and trim:
                value = value.lstrip()
            trim = False
            cleaned.append((kind, value))
        self.items = cleaned
        self.pos = 0

    def parse(self) -> list[Node]:
        body, end = self._list()
        if end is not None:
            raise TemplateError(f"unexpected {{{{{end}}}}}")
        return body

    def _list(self) -> tuple[list[Node], str | None]:
        """Nodes up to an ``end`` or ``else`` (returned) or the end of the template."""
        nodes: list[Node] = []
        while self.pos < len(self.items):
            kind, value = self.items[self.pos]
            self.pos += 1
            if kind == "text":
                if value:
                    nodes.append(("text", value))
                continue
            stripped = value.strip()
            if stripped.startswith("/*"):
                if not stripped.endswith("*/"):
                    raise TemplateError("a comment must end with */ before }}")
                continue
            tokens = _tokens(stripped)
            if not tokens:
                raise TemplateError("empty action {{}}")
            head = tokens[0][1] if tokens[0][0] == "word" else None
            if head in ("end", "else"):
                return nodes, stripped
            if head in ("if", "with"):
                nodes.append(self._branch(head, tokens[1:]))
            elif head == "range":
                nodes.append(self._range(tokens[1:]))
            elif head in ("define", "template", "block", "break", "continue"):
                raise TemplateError(f"{{{{{head}}}}} is not supported by lamina")
            else:
                nodes.append(("print", _Pipeline(tokens).node))
        return nodes, None

    def _branch(self, kind: str, tokens: list[tuple[str, str]]) -> Node:
        declared, tokens = _declaration(tokens, 1)
        condition = _Pipeline(tokens).node
        body, end = self._list()
        otherwise: list[Node] = []
        if end is None:
            raise TemplateError(f"{{{{{kind}}}}} has no {{{{end}}}}")
        if end != "end":
            rest = _tokens(end)[1:]
            if rest and rest[0] == ("word", "if") and kind == "if":
                otherwise = [self._branch("if", rest[1:])]  # else if: its own end ends both
                return ("if", condition, declared, body, otherwise)
            if rest:
                raise TemplateError(f"unexpected {{{{{end}}}}}")
            otherwise, end = self._list()
            if end != "end":
                raise TemplateError(f"{{{{{kind}}}}} has no {{{{end}}}}")
        return (kind, condition, declared, body, otherwise)

    def _range(self, tokens: list[tuple[str, str]]) -> Node:
        declared, tokens = _declaration(tokens, 2)
        source = _Pipeline(tokens).node
        body, end = self._list()
        otherwise: list[Node] = []
        if end == "else":
            otherwise, end = self._list()
        if end != "end":
            raise TemplateError("{{range}} has no {{end}}")
        return ("range", source, declared, body, otherwise)


def _declaration(tokens: list[tuple[str, str]], most: int) -> tuple[list[str],
                                                                      list[tuple[str, str]]]:
    """``$v :=`` or ``$i, $v :=`` in front of a pipeline: the names, and the pipeline."""
    if ("declare", ":=") not in tokens:
        return [], tokens
    at = tokens.index(("declare", ":="))
    names = [t[1] for t in tokens[:at] if t[0] == "variable"]
    if not 0 < len(names) <= most or len(names) + (len(names) - 1) != at:
        raise TemplateError("a declaration is $name := PIPELINE (range: $index, $value :=)")
    return names, tokens[at + 1:]


class _Pipeline:
    """Commands separated by ``|``; each is a value or a function and its arguments."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        if ("declare", ":=") in tokens:
            raise TemplateError("variables can only be declared by range, if and with")
        self.tokens = tokens
        self.pos = 0
        self.node = self._pipeline()
        if self.pos != len(tokens):
            raise TemplateError(f"unexpected {tokens[self.pos][1]!r}")

    def _pipeline(self) -> Node:
        commands = [self._command()]
        while self.pos < len(self.tokens) and self.tokens[self.pos] == ("punct", "|"):
            self.pos += 1
            commands.append(self._command())
        return ("pipe", commands)

    def _command(self) -> Node:
        operands = []
        while self.pos < len(self.tokens) and self.tokens[self.pos][1] not in ("|", ")"):
            operands.append(self._operand())
        if not operands:
            raise TemplateError("missing value in a pipeline")
        first = operands[0]
        if first[0] == "function":
            return ("call", first[1], operands[1:])
        if len(operands) > 1:
            raise TemplateError(f"{_describe(first)} is not a function: it takes no arguments")
        return ("value", first)

    def _operand(self) -> Node:
        kind, text = self.tokens[self.pos]
        self.pos += 1
        if kind == "punct" and text == "(":
            inner = self._pipeline()
            if self.pos >= len(self.tokens) or self.tokens[self.pos] != ("punct", ")"):
                raise TemplateError("unclosed (")
            self.pos += 1
            node: Node = ("sub", inner)
        elif kind == "field":
            return ("field", ("dot",), text[1:].split("."))
        elif kind == "dot":
            return ("dot",)
        elif kind == "variable":
            name, *path = text.split(".")
            return ("field", ("var", name), path) if path else ("var", name)
        elif kind in ("string", "char"):
            return ("literal", json.loads(text) if kind == "string" else
                    ord(json.loads('"' + text[1:-1].replace('"', '\\"') + '"')))
        elif kind == "raw":
            return ("literal", text[1:-1])
        elif kind == "number":
            value: Any = (int(text, 16) if text.lower().lstrip("-").startswith("0x")
                          else float(text) if any(c in text for c in ".eE") else int(text))
            return ("literal", value)
        elif kind == "word":
            if text in ("true", "false"):
                return ("literal", text == "true")
            if text == "nil":
                return ("literal", None)
            if text in FUNCTIONS or text in _LOGIC:
                return ("function", text)
            if text in ("html", "js", "urlquery", "call"):
                raise TemplateError(f"function {text!r} is not supported by lamina")
            raise TemplateError(f"function {text!r} not defined")
        else:
            raise TemplateError(f"unexpected {text!r}")
        # a parenthesised value may be followed by fields: (index .X 0).Name
        if self.pos < len(self.tokens) and self.tokens[self.pos][0] == "field":
            path = self.tokens[self.pos][1][1:].split(".")
            self.pos += 1
            return ("field", node, path)
        return node


def _describe(node: Node) -> str:
    return {"literal": "a constant", "dot": "dot", "var": "a variable",
            "field": "a field", "sub": "a parenthesised value"}.get(node[0], "a value")


# -- running --------------------------------------------------------------------------------


class Template:
    """A parsed template; :meth:`render` applies it to one value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._nodes = _Parser(text).parse()

    def render(self, data: Any) -> str:
        out: list[str] = []
        self._run(self._nodes, data, {"$": data}, out)
        return "".join(out)

    def _run(self, nodes: list[Node], dot: Any, variables: dict[str, Any],
             out: list[str]) -> None:
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "print":
                out.append(go_string(self._eval(node[1], dot, variables)))
            elif kind in ("if", "with"):
                _, condition, declared, body, otherwise = node
                value = self._eval(condition, dot, variables)
                inner = dict(variables)
                if declared:
                    inner[declared[0]] = value
                if _truth(value):
                    self._run(body, value if kind == "with" else dot, inner, out)
                else:
                    self._run(otherwise, dot, variables, out)
            elif kind == "range":
                _, source, declared, body, otherwise = node
                items = list(self._items(self._eval(source, dot, variables)))
                if not items:
                    self._run(otherwise, dot, variables, out)
                for key, value in items:
                    inner = dict(variables)
                    if len(declared) == 1:
                        inner[declared[0]] = value
                    elif len(declared) == 2:
                        inner[declared[0]], inner[declared[1]] = key, value
                    self._run(body, value, inner, out)

    @staticmethod
    def _items(value: Any) -> Iterator[tuple[Any, Any]]:
        if value is None or value is MISSING:
            return iter(())
        if isinstance(value, dict):
            return iter(sorted(value.items()))
        if isinstance(value, list | tuple):
            return iter(enumerate(value))
        if isinstance(value, int) and not isinstance(value, bool):
            return iter((i, i) for i in range(value))
        raise TemplateError(f"range can't iterate over {go_string(value)}")

    def _eval(self, node: Node, dot: Any, variables: dict[str, Any],
              final: tuple[Any, ...] = ()) -> Any:
        kind = node[0]
        if kind == "pipe":
            value: Any = ()
            for i, command in enumerate(node[1]):
                value = self._eval(command, dot, variables, (value,) if i else ())
            return value
        if kind == "call":
            name, args = node[1], node[2]
            if name in _LOGIC:  # short-circuit, and return the deciding argument
                value = None
                for arg in [*args, *(("literal", v) for v in final)]:
                    value = self._eval(arg, dot, variables)
                    if _truth(value) != (name == "and"):
                        return value
                return value
            values = [self._eval(a, dot, variables) for a in args] + list(final)
            try:
                return FUNCTIONS[name](*values)
            except TemplateError:
                raise
            except (TypeError, ValueError, AttributeError) as exc:
                raise TemplateError(f"error calling {name}: {exc}") from None
        if final:
            raise TemplateError(f"{_describe(node[1] if kind == 'value' else node)} "
                                "is not a function: it cannot take a piped value")
        if kind == "value":
            return self._eval(node[1], dot, variables)
        if kind == "literal":
            return node[1]
        if kind == "dot":
            return dot
        if kind == "var":
            if node[1] not in variables:
                raise TemplateError(f"undefined variable {node[1]}")
            return variables[node[1]]
        if kind == "sub":
            return self._eval(node[1], dot, variables)
        if kind == "field":
            value = self._eval(node[1], dot, variables)
            for name in node[2]:
                value = _field(value, name)
            return value
        raise TemplateError(f"cannot evaluate {kind}")


def _field(value: Any, name: str) -> Any:
    """``.name`` of a map: its key (Docker's field names; another case is accepted too)."""
    if isinstance(value, dict):
        if name in value:
            return value[name]
        lowered = name.lower()
        for key, item in value.items():
            if isinstance(key, str) and key.lower() == lowered:
                return item
        return MISSING
    if value is None or value is MISSING:
        raise TemplateError(f"nil pointer evaluating .{name}")
    raise TemplateError(f"can't evaluate field {name} in {go_string(value)}")


def render_rows(text: str, rows: list[dict[str, Any]], headers: dict[str, str]) -> str:
    """A listing's ``--format``: each row through the template, one line each.

    ``table TEMPLATE`` adds a header line (each field's column name from ``headers``)
    and aligns the tab-separated columns, as Docker's ``tabwriter`` does.
    """
    table = text.startswith("table")
    if table:
        text = text[len("table"):].lstrip() or "\t".join(f"{{{{.{k}}}}}" for k in headers)
    template = Template(text.replace("\\t", "\t").replace("\\n", "\n"))
    lines = [template.render(row) for row in rows]
    if not table:
        return "".join(line + "\n" for line in lines)
    head = template.render({k: v for k, v in headers.items()})
    cells = [line.split("\t") for line in [head, *lines]]
    widths: dict[int, int] = {}
    for row in cells:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell))
    return "".join("".join(c.ljust(widths[i] + 3) if i < len(row) - 1 else c
                           for i, c in enumerate(row)) + "\n" for row in cells)
