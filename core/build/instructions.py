"""Dockerfile instructions as typed records, and the stages they make.

The second pass over a Dockerfile (BuildKit's ``instructions`` package): each
:class:`~.parser.Node` becomes one of the named tuples below, with its flags checked
against what that instruction takes and its arguments in the form Docker gives them. Nothing
is expanded here: words keep their quotes and ``$VAR`` until :mod:`.variables` expands
them for one step, with the ARG and ENV values in effect there.

Every record starts with the same three fields: ``location`` (:class:`Location`),
``source`` (the logical line as written) and ``flags`` (name to value: ``str``, ``True``
/``False`` for a switch, a tuple for a flag given several times such as ``RUN --mount``).
Shell and exec forms are ``command`` (a tuple of words) with ``shell_form``: the shell form
is one word, the text as written, run later as ``SHELL + [text]``.
"""

from __future__ import annotations

import difflib
import re
from typing import NamedTuple

from ..errors import DockerfileSyntaxError
from ..gotime import parse_duration
from .parser import Heredoc, Node, heredoc_from_word, parse_lines
from .words import json_array, split_words

#: a stage name: what ``FROM ... AS name`` accepts (lower-cased first, as BuildKit)
_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*")
#: the shortest HEALTHCHECK interval Docker accepts (1 ms)
MIN_DURATION_NS = 1_000_000


class Location(NamedTuple):
    """Where an instruction is: file, first and last line (heredocs included), column."""

    filename: str
    line: int
    end_line: int
    column: int

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}"


class From(NamedTuple):
    """``FROM [--platform=P] IMAGE [AS NAME]``: ``image`` unexpanded, ``name`` lower case."""

    location: Location
    source: str
    flags: dict[str, object]
    image: str
    name: str | None
    keyword = "FROM"


class Run(NamedTuple):
    """``RUN``: the command, shell or exec form, and the heredocs of its line."""

    location: Location
    source: str
    flags: dict[str, object]
    command: tuple[str, ...]
    shell_form: bool
    heredocs: tuple[Heredoc, ...] = ()
    keyword = "RUN"

    def script(self) -> tuple[str, Heredoc | None]:
        """What the shell runs for a shell-form RUN, and the heredoc that *is* the program.

        ``RUN <<EOF`` alone (one heredoc, nothing else on the line) runs the heredoc's body:
        the second value is that heredoc, and the build writes it to a file and executes it
        when it starts with ``#!``, or else runs ``SHELL + [body]``. Any other line goes to
        the shell whole, with each heredoc's body and terminator after it, so that the
        shell reads them: ``("cat <<EOF > f\\nhello\\nEOF", None)``.
        """
        if not self.shell_form:
            raise ValueError("an exec-form RUN has no shell script")
        text = self.command[0]
        if len(self.heredocs) == 1 and heredoc_from_word(text.strip()) is not None:
            return self.heredocs[0].content, self.heredocs[0]
        for doc in self.heredocs:
            text += "\n" + doc.content + doc.name
        return text, None


class Cmd(NamedTuple):
    """``CMD``: the container's default command (shell form runs ``SHELL + [text]``)."""

    location: Location
    source: str
    flags: dict[str, object]
    command: tuple[str, ...]
    shell_form: bool
    keyword = "CMD"


class Entrypoint(NamedTuple):
    """``ENTRYPOINT``: as CMD; ``ENTRYPOINT []`` clears the base image's."""

    location: Location
    source: str
    flags: dict[str, object]
    command: tuple[str, ...]
    shell_form: bool
    keyword = "ENTRYPOINT"


class Shell(NamedTuple):
    """``SHELL ["exe", "arg"...]``: the shell of later shell forms (JSON form only)."""

    location: Location
    source: str
    flags: dict[str, object]
    command: tuple[str, ...]
    keyword = "SHELL"


#: a COPY/ADD source: a path or URL as written, or a heredoc that becomes a file
Source = str | Heredoc


class Copy(NamedTuple):
    """``COPY [--from --chown --chmod --link --parents --exclude] SRC... DEST``."""

    location: Location
    source: str
    flags: dict[str, object]
    sources: tuple[Source, ...]
    dest: str
    keyword = "COPY"


class Add(NamedTuple):
    """``ADD [--chown --chmod --link --checksum --keep-git-dir --exclude --unpack] SRC... DEST``."""

    location: Location
    source: str
    flags: dict[str, object]
    sources: tuple[Source, ...]
    dest: str
    keyword = "ADD"


class Env(NamedTuple):
    """``ENV K=V ...`` or the legacy ``ENV K V``: (key, value) pairs, quotes still in them."""

    location: Location
    source: str
    flags: dict[str, object]
    pairs: tuple[tuple[str, str], ...]
    keyword = "ENV"


class Label(NamedTuple):
    """``LABEL K=V ...`` (or ``LABEL K V``): (key, value) pairs, unexpanded."""

    location: Location
    source: str
    flags: dict[str, object]
    pairs: tuple[tuple[str, str], ...]
    keyword = "LABEL"


class Arg(NamedTuple):
    """``ARG NAME[=DEFAULT] ...``: (name, default or None) pairs, defaults unexpanded."""

    location: Location
    source: str
    flags: dict[str, object]
    args: tuple[tuple[str, str | None], ...]
    keyword = "ARG"


class Workdir(NamedTuple):
    """``WORKDIR PATH`` (relative paths are relative to the previous WORKDIR)."""

    location: Location
    source: str
    flags: dict[str, object]
    path: str
    keyword = "WORKDIR"


class User(NamedTuple):
    """``USER NAME|UID[:GROUP|GID]``."""

    location: Location
    source: str
    flags: dict[str, object]
    user: str
    keyword = "USER"


class Expose(NamedTuple):
    """``EXPOSE PORT[/PROTO] ...``, unexpanded (``$PORTS`` may become several)."""

    location: Location
    source: str
    flags: dict[str, object]
    ports: tuple[str, ...]
    keyword = "EXPOSE"


class Volume(NamedTuple):
    """``VOLUME PATH ...`` or ``VOLUME ["PATH", ...]``."""

    location: Location
    source: str
    flags: dict[str, object]
    paths: tuple[str, ...]
    keyword = "VOLUME"


class Stopsignal(NamedTuple):
    """``STOPSIGNAL SIGNAL`` (a name such as SIGTERM, or a number)."""

    location: Location
    source: str
    flags: dict[str, object]
    signal: str
    keyword = "STOPSIGNAL"


class Healthcheck(NamedTuple):
    """``HEALTHCHECK NONE`` or ``HEALTHCHECK [options] CMD ...`` in the image config's shape.

    ``test`` is Docker's ``Healthcheck.Test``: ``("NONE",)``, ``("CMD", exe, args...)`` or
    ``("CMD-SHELL", text)``; durations are nanoseconds and 0 (with ``retries``) means
    "Docker's default".
    """

    location: Location
    source: str
    flags: dict[str, object]
    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0
    keyword = "HEALTHCHECK"


class Onbuild(NamedTuple):
    """``ONBUILD INSTRUCTION``: the trigger parsed, and ``expression``, the text the image
    config's ``OnBuild`` keeps (heredoc bodies included) for :func:`parse_trigger`."""

    location: Location
    source: str
    flags: dict[str, object]
    trigger: Instruction
    expression: str
    keyword = "ONBUILD"


class Maintainer(NamedTuple):
    """``MAINTAINER NAME`` (deprecated by Docker; becomes the config's ``author``)."""

    location: Location
    source: str
    flags: dict[str, object]
    name: str
    keyword = "MAINTAINER"


Instruction = (From | Run | Cmd | Entrypoint | Shell | Copy | Add | Env | Label | Arg | Workdir
               | User | Expose | Volume | Stopsignal | Healthcheck | Onbuild | Maintainer)


class Stage(NamedTuple):
    """One build stage: its ``FROM``, its position and name, and its other instructions."""

    index: int
    name: str | None
    base: From
    instructions: tuple[Instruction, ...]


class Dockerfile(NamedTuple):
    """A parsed Dockerfile.

    ``global_args`` are the ``ARG``s before the first ``FROM`` (usable in FROM lines, and
    in a stage that declares them again by name); ``directives`` the parser directives
    given (``syntax``, ``escape``, ``check``); ``escape`` the escape character that
    :mod:`.variables` expands words with; ``warnings`` what BuildKit would warn about.
    """

    filename: str
    stages: tuple[Stage, ...]
    global_args: tuple[Arg, ...]
    directives: dict[str, str]
    escape: str
    warnings: tuple[str, ...]

    def stage(self, ref: str) -> Stage | None:
        """The stage named ``ref`` (any case), or numbered so (``COPY --from=0``); else None."""
        name = ref.lower()
        for stage in self.stages:
            if stage.name == name:
                return stage
        if ref.isdigit() and int(ref) < len(self.stages):
            return self.stages[int(ref)]
        return None


#: the flags each instruction takes: str (``--f=v``), bool (``--f`` or ``--f=true``) or
#: tuple (may repeat); instructions not named take none
FLAGS: dict[str, dict[str, type]] = {
    "FROM": {"platform": str},
    "RUN": {"mount": tuple, "network": str, "security": str},
    "COPY": {"from": str, "chown": str, "chmod": str, "link": bool, "parents": bool,
             "exclude": tuple},
    "ADD": {"chown": str, "chmod": str, "link": bool, "checksum": str, "keep-git-dir": bool,
            "exclude": tuple, "unpack": bool},
    "HEALTHCHECK": {"interval": str, "timeout": str, "start-period": str,
                    "start-interval": str, "retries": str},
}
_FLAG_VALUES = {("RUN", "network"): ("default", "none", "host"),
                ("RUN", "security"): ("sandbox", "insecure")}


def parse(text: str, *, filename: str = "Dockerfile") -> Dockerfile:
    """A Dockerfile's text as stages of typed instructions.

    Raises :class:`~lamina.core.errors.DockerfileSyntaxError` naming ``filename``, the line
    and the column for anything BuildKit would refuse before building: an unknown
    instruction or flag, a malformed argument, an unterminated heredoc or quote, an
    instruction other than ARG before the first FROM, a repeated stage name.
    """
    parsed = parse_lines(text, filename=filename)
    global_args: list[Arg] = []
    stages: list[Stage] = []
    current: list[Instruction] = []
    base: From | None = None
    names: set[str] = set()
    for node in parsed.nodes:
        instruction = _instruction(node, filename, parsed.escape)
        if isinstance(instruction, From):
            if base is not None:
                stages.append(Stage(len(stages), base.name, base, tuple(current)))
            if instruction.name in names:
                raise _error(node, f"duplicate stage name {instruction.name!r}",
                             hint="give each FROM ... AS NAME a different name")
            if instruction.name:
                names.add(instruction.name)
            base, current = instruction, []
        elif base is None:
            if not isinstance(instruction, Arg):
                raise _error(node, f"{node.keyword} before the first FROM",
                             hint="start the stage with FROM IMAGE; only ARG may come "
                             "before the first FROM")
            global_args.append(instruction)
        else:
            current.append(instruction)
    if base is None:
        raise DockerfileSyntaxError("no FROM instruction: the Dockerfile has no build stage",
                                    filename=filename, hint="start the stage with FROM IMAGE")
    stages.append(Stage(len(stages), base.name, base, tuple(current)))
    return Dockerfile(filename, tuple(stages), tuple(global_args), parsed.directives,
                      parsed.escape, parsed.warnings)


def parse_trigger(expression: str, *, escape: str = "\\") -> Instruction:
    """One ``ONBUILD`` trigger as an image's config keeps it (``RUN echo hi``), parsed.

    The build of an image on a base with triggers runs them first, as if they followed
    its FROM; errors name the file ``ONBUILD``.
    """
    text = f"# escape={escape}\n{expression}" if escape != "\\" else expression
    parsed = parse_lines(text, filename="ONBUILD")
    if len(parsed.nodes) != 1:
        raise DockerfileSyntaxError(f"an ONBUILD trigger is one instruction: {expression!r}",
                                    filename="ONBUILD")
    return _instruction(parsed.nodes[0], "ONBUILD", parsed.escape)


KEYWORDS = ("FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
            "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
            "HEALTHCHECK", "SHELL")


def _error(node: Node, reason: str, offset: int | None = None, *,
           hint: str | None = None) -> DockerfileSyntaxError:
    """A syntax error at ``offset`` of the node's logical line (its keyword by default)."""
    line, column = (node.line, node.column) if offset is None else node.position(offset)
    return DockerfileSyntaxError(reason, filename=node.filename, line=line, column=column,
                                 hint=hint)


def _instruction(node: Node, filename: str, escape: str) -> Instruction:
    try:
        return _build(node, filename, escape)
    except DockerfileSyntaxError as exc:
        if exc.line is not None:
            raise
        raise _error(node, exc.reason, node.args_offset, hint=exc.hint) from None


def _build(node: Node, filename: str, escape: str) -> Instruction:
    keyword = node.keyword
    builder = _BUILDERS.get(keyword)
    if builder is None:
        close = difflib.get_close_matches(keyword, KEYWORDS, n=1, cutoff=0.6)
        hint = (f"did you mean {close[0]}?" if close else
                "the instructions are " + ", ".join(sorted(KEYWORDS)))
        raise _error(node, f"unknown instruction: {keyword}", hint=hint)
    location = Location(filename, node.line, node.end_line, node.column)
    flags = _parse_flags(node)
    return builder(node, location, flags, escape)


def _parse_flags(node: Node) -> dict[str, object]:
    known = FLAGS.get(node.keyword, {})
    if node.keyword == "HEALTHCHECK" and node.args and node.args.split()[0].upper() == "NONE":
        known = {}  # HEALTHCHECK NONE takes no options
    flags: dict[str, object] = {}
    for text, offset in zip(node.flags, node.offsets, strict=True):
        name, eq, value = text[2:].partition("=")
        kind = known.get(name)
        if kind is None:
            takes = ", ".join(f"--{f}" for f in known)
            raise _error(node, f"unknown flag --{name} for {node.keyword}", offset,
                         hint=f"{node.keyword} takes {takes}" if takes
                         else f"{node.keyword} takes no flags")
        if kind is bool:
            if eq and value.lower() not in ("true", "false"):
                raise _error(node, f"--{name} takes true or false, not {value!r}", offset,
                             hint=f"write --{name} alone, or --{name}=false")
            if name in flags:
                raise _error(node, f"duplicate flag --{name}", offset)
            flags[name] = not eq or value.lower() == "true"
            continue
        if not eq:
            raise _error(node, f"missing a value on flag --{name}", offset,
                         hint=f"write --{name}=VALUE")
        allowed = _FLAG_VALUES.get((node.keyword, name))
        if allowed and value not in allowed:
            raise _error(node, f"--{name}={value} is not supported", offset,
                         hint=f"--{name} takes {', '.join(allowed)}")
        if kind is tuple:
            flags[name] = (*flags.get(name, ()), value)  # type: ignore[misc]
        elif name in flags:
            raise _error(node, f"duplicate flag --{name}", offset,
                         hint=f"give --{name} once")
        else:
            flags[name] = value
    return flags


def _needs_args(node: Node, what: str = "an argument") -> None:
    if not node.args:
        raise _error(node, f"{node.keyword} needs {what}")


def _from(node: Node, location: Location, flags: dict[str, object], escape: str) -> From:
    words = _SPLIT_WS.split(node.args) if node.args else []
    if len(words) == 3 and words[1].lower() == "as":
        name = words[2].lower()
        if not _STAGE_NAME.fullmatch(name):
            raise _error(node, f"invalid stage name {words[2]!r}",
                         node.args_offset + node.args.rindex(words[2]),
                         hint="a stage name starts with a letter and has only letters, "
                         "digits, '-', '_' and '.'")
        return From(location, node.source, flags, words[0], name)
    if len(words) != 1:
        raise _error(node, "FROM takes an image and, optionally, AS NAME",
                     hint="write FROM IMAGE or FROM IMAGE AS NAME")
    return From(location, node.source, flags, words[0], None)


_SPLIT_WS = re.compile(r"[\t\v\f\r ]+")


def _command(node: Node, *, allow_empty: bool = False) -> tuple[tuple[str, ...], bool]:
    """A RUN/CMD/ENTRYPOINT's words and whether they are the shell form."""
    words = json_array(node.args)
    if words is not None:
        if not words and not allow_empty:
            raise _error(node, f"{node.keyword} needs a command")
        return tuple(words), False
    _needs_args(node, "a command")
    return (node.args,), True


def _run(node: Node, location: Location, flags: dict[str, object], escape: str) -> Run:
    command, shell = _command(node)
    return Run(location, node.source, flags, command, shell, node.heredocs)


def _cmd(node: Node, location: Location, flags: dict[str, object], escape: str) -> Cmd:
    return Cmd(location, node.source, flags, *_command(node, allow_empty=True))


def _entrypoint(node: Node, location: Location, flags: dict[str, object],
                escape: str) -> Entrypoint:
    return Entrypoint(location, node.source, flags, *_command(node, allow_empty=True))


def _shell(node: Node, location: Location, flags: dict[str, object], escape: str) -> Shell:
    words = json_array(node.args)
    if not words:
        raise _error(node, "SHELL takes a JSON array of at least one string",
                     node.args_offset, hint='write SHELL ["/bin/sh", "-c"]')
    return Shell(location, node.source, flags, tuple(words))


def _sources_and_dest(node: Node) -> tuple[tuple[Source, ...], str]:
    words = json_array(node.args)
    if words is None:
        words = _SPLIT_WS.split(node.args) if node.args else []
    if len(words) < 2:
        raise _error(node, f"{node.keyword} needs a source and a destination",
                     hint=f"write {node.keyword} SRC... DEST")
    if heredoc_from_word(words[-1]) is not None:
        raise _error(node, f"{node.keyword} cannot take a heredoc as its destination")
    docs = {doc.name: doc for doc in node.heredocs}
    sources: list[Source] = []
    for word in words[:-1]:
        opened = heredoc_from_word(word) if docs else None
        sources.append(docs.get(opened.name, word) if opened is not None else word)
    return tuple(sources), words[-1]


def _copy(node: Node, location: Location, flags: dict[str, object], escape: str) -> Copy:
    return Copy(location, node.source, flags, *_sources_and_dest(node))


def _add(node: Node, location: Location, flags: dict[str, object], escape: str) -> Add:
    return Add(location, node.source, flags, *_sources_and_dest(node))


def _pairs(node: Node, escape: str) -> tuple[tuple[str, str], ...]:
    """ENV and LABEL: ``K=V ...``, or the legacy ``K V`` when the first word has no ``=``."""
    words = split_words(node.args, escape=escape)
    if not words:
        raise _error(node, f"{node.keyword} needs KEY=VALUE")
    if "=" not in words[0]:
        parts = _SPLIT_WS.split(node.args, maxsplit=1)
        if len(parts) < 2:
            raise _error(node, f"{node.keyword} {parts[0]} has no value",
                         hint=f"write {node.keyword} {parts[0]}=VALUE")
        return ((parts[0], parts[1]),)
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            raise _error(node, f"{word!r} is not KEY=VALUE",
                         node.args_offset + max(node.args.find(word), 0),
                         hint="mixing KEY=VALUE with the legacy 'KEY VALUE' form is not "
                         "allowed; quote values with spaces: KEY=\"a b\"")
        if not key:
            raise _error(node, f"{node.keyword} names cannot be blank")
        pairs.append((key, value))
    return tuple(pairs)


def _env(node: Node, location: Location, flags: dict[str, object], escape: str) -> Env:
    return Env(location, node.source, flags, _pairs(node, escape))


def _label(node: Node, location: Location, flags: dict[str, object], escape: str) -> Label:
    return Label(location, node.source, flags, _pairs(node, escape))


def _arg(node: Node, location: Location, flags: dict[str, object], escape: str) -> Arg:
    words = split_words(node.args, escape=escape)
    if not words:
        raise _error(node, "ARG needs a name", hint="write ARG NAME or ARG NAME=DEFAULT")
    args: list[tuple[str, str | None]] = []
    for word in words:
        name, eq, value = word.partition("=")
        if not name:
            raise _error(node, "ARG names cannot be blank")
        args.append((name, value if eq else None))
    return Arg(location, node.source, flags, tuple(args))


def _one(node: Node, location: Location, flags: dict[str, object],
         escape: str) -> Workdir | User | Stopsignal | Maintainer:
    _needs_args(node)
    kind = {"WORKDIR": Workdir, "USER": User, "STOPSIGNAL": Stopsignal,
            "MAINTAINER": Maintainer}[node.keyword]
    return kind(location, node.source, flags, node.args)  # type: ignore[abstract]


def _expose(node: Node, location: Location, flags: dict[str, object], escape: str) -> Expose:
    _needs_args(node, "a port")
    return Expose(location, node.source, flags, tuple(_SPLIT_WS.split(node.args)))


def _volume(node: Node, location: Location, flags: dict[str, object], escape: str) -> Volume:
    words = json_array(node.args)
    if words is None:
        words = _SPLIT_WS.split(node.args) if node.args else []
    if not words:
        raise _error(node, "VOLUME needs a path")
    if any(not w.strip() for w in words):
        raise _error(node, "a VOLUME path cannot be empty")
    return Volume(location, node.source, flags, tuple(words))


def _healthcheck(node: Node, location: Location, flags: dict[str, object],
                 escape: str) -> Healthcheck:
    _needs_args(node, "NONE or CMD")
    kind, rest = (*_SPLIT_WS.split(node.args, maxsplit=1), "")[:2]
    kind = kind.upper()
    rest = rest.strip()
    if kind == "NONE":
        if rest:
            raise _error(node, "HEALTHCHECK NONE takes no arguments")
        return Healthcheck(location, node.source, flags, ("NONE",))
    if kind != "CMD":
        raise _error(node, f"unknown HEALTHCHECK type {kind!r}",
                     hint="write HEALTHCHECK [OPTIONS] CMD COMMAND, or HEALTHCHECK NONE")
    words = json_array(rest)
    if words is not None:
        test = ("CMD", *words)
    elif rest:
        test = ("CMD-SHELL", rest)
    else:
        test = ()
    if len(test) < 2:
        raise _error(node, "HEALTHCHECK CMD needs a command")
    durations = {}
    for flag in ("interval", "timeout", "start-period", "start-interval"):
        value = flags.get(flag)
        durations[flag] = _duration(node, flag, value) if isinstance(value, str) else 0
    retries = 0
    if isinstance(flags.get("retries"), str):
        text = str(flags["retries"])
        if not text.lstrip("-").isdigit() or int(text) < 1:
            raise _error(node, f"--retries must be a whole number of at least 1, not {text!r}")
        retries = int(text)
    return Healthcheck(location, node.source, flags, test, durations["interval"],
                       durations["timeout"], durations["start-period"],
                       durations["start-interval"], retries)


def _duration(node: Node, flag: str, text: str) -> int:
    """Go's ``time.ParseDuration`` (``1m30s``, ``1.5h``, ``250ms``) in nanoseconds."""
    if not text:
        raise _error(node, f"--{flag} needs a duration")
    try:
        total = parse_duration(text)
    except ValueError:
        raise _error(node, f"--{flag}={text} is not a duration",
                     hint="a duration is a number and a unit: 30s, 1m30s, 500ms, 1h") from None
    if total < MIN_DURATION_NS:
        raise _error(node, f"--{flag}={text} is shorter than 1ms",
                     hint="give at least 1ms, or leave the option out for Docker's default")
    return total


def _onbuild(node: Node, location: Location, flags: dict[str, object], escape: str) -> Onbuild:
    _needs_args(node, "an instruction")
    assert node.child is not None
    trigger_keyword = node.child.keyword
    if trigger_keyword == "ONBUILD":
        raise _error(node, "ONBUILD ONBUILD is not allowed", node.args_offset,
                     hint="an ONBUILD trigger cannot add triggers")
    if trigger_keyword in ("FROM", "MAINTAINER"):
        raise _error(node, f"{trigger_keyword} is not allowed as an ONBUILD trigger",
                     node.args_offset)
    trigger = _build(node.child, location.filename, escape)
    expression = node.source[node.args_offset:].strip()
    for doc in node.heredocs:
        expression += "\n" + doc.content + doc.name
    return Onbuild(location, node.source, flags, trigger, expression)


_BUILDERS = {
    "FROM": _from, "RUN": _run, "CMD": _cmd, "ENTRYPOINT": _entrypoint, "SHELL": _shell,
    "COPY": _copy, "ADD": _add, "ENV": _env, "LABEL": _label, "ARG": _arg,
    "WORKDIR": _one, "USER": _one, "STOPSIGNAL": _one, "MAINTAINER": _one,
    "EXPOSE": _expose, "VOLUME": _volume, "HEALTHCHECK": _healthcheck, "ONBUILD": _onbuild,
}
