"""The variables in effect at each step of a build, and each step's words expanded by them.

Docker's rules (BuildKit's where the builders differ):

- An ``ARG`` before the first ``FROM`` (a *global* arg) is usable in FROM lines only
  (:func:`global_values`, :func:`expand_from`); inside a stage it exists once the stage
  declares it again by name (``ARG VERSION``), with its global value.
- A stage's ``ARG NAME=DEFAULT`` is the ``--build-arg`` value if one is given, else the
  default (expanded); ``ARG NAME`` without one and without a build arg leaves it unset.
- ``ENV`` always wins over an ``ARG`` of the same name. Both are expanded against what was
  in effect *before* the instruction: ``ENV a=2 b=$a`` gives ``b`` the old ``a``.
- Words are expanded in ADD, COPY (sources, destination, ``--from``, ``--chown``,
  ``--chmod``, ``--checksum``, ``--exclude``, unquoted heredoc bodies), ENV, LABEL (keys and
  values), ARG defaults, EXPOSE (``$PORTS`` may give several), STOPSIGNAL, USER, VOLUME,
  WORKDIR and ``RUN --mount``; never in RUN, CMD, ENTRYPOINT, SHELL, HEALTHCHECK or ONBUILD,
  whose text is the shell's (or the later build's) to read.
- The proxy variables (``HTTP_PROXY`` and the others in :data:`PROXY_ARGS`) may be given as
  build args without an ``ARG``; they reach RUN's environment only.

The build engine calls, per stage: ``Variables(...)``, then for each instruction
``step(instruction)`` (expanded copy, and ARG/ENV recorded), ``run_environment()`` for a
RUN, and reads :attr:`Variables.args` and :attr:`Variables.env` for its cache key and the
image config.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ..errors import BuildError, DockerfileSyntaxError
from .instructions import (
    Add,
    Arg,
    Copy,
    Dockerfile,
    Env,
    Expose,
    From,
    Instruction,
    Label,
    Location,
    Run,
    Stage,
    Stopsignal,
    User,
    Volume,
    Workdir,
)
from .parser import Heredoc
from .words import expand, expand_fields, expand_heredoc

#: build args every Dockerfile may be given without declaring them (RUN sees them)
PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY",
              "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")
_PORT = re.compile(r"\d{1,5}(?:-\d{1,5})?(?:/(?:tcp|udp|sctp))?", re.I)


def global_values(dockerfile: Dockerfile, build_args: Mapping[str, str], *,
                  builtin: Mapping[str, str] | None = None) -> dict[str, str]:
    """The global ARGs' values: a build arg, else the default expanded with those before it.

    ``builtin`` are the args BuildKit defines itself (``TARGETPLATFORM``, ``BUILDARCH``,
    ...): the build passes them, as values of their own, which a Dockerfile may use in FROM
    and declare in a stage like any global arg.
    """
    values = dict(builtin or {})
    for arg in dockerfile.global_args:
        for name, default in arg.args:
            if name in build_args:
                values[name] = build_args[name]
            elif default is not None:
                values[name] = _expand_word(arg.location, default, values, dockerfile.escape)
    return values


def expand_from(base: From | Stage, values: Mapping[str, str], *,
                escape: str = "\\") -> From:
    """A stage's FROM with its image and ``--platform`` expanded by the global ARGs' values."""
    if isinstance(base, Stage):
        base = base.base
    image = _expand_word(base.location, base.image, values, escape)
    if not image:
        raise BuildError(f"{base.location}: the base image {base.image!r} expands to nothing",
                         hint="give the ARG it names a default or a --build-arg value")
    flags = dict(base.flags)
    if isinstance(flags.get("platform"), str):
        flags["platform"] = _expand_word(base.location, str(flags["platform"]), values, escape)
    return base._replace(image=image, flags=flags)


def unused_build_args(dockerfile: Dockerfile, build_args: Iterable[str]) -> list[str]:
    """The build args that no ARG declares (Docker warns of them and goes on)."""
    declared = set(PROXY_ARGS)
    for arg in dockerfile.global_args:
        declared.update(name for name, _ in arg.args)
    for stage in dockerfile.stages:
        for instruction in stage.instructions:
            if isinstance(instruction, Arg):
                declared.update(name for name, _ in instruction.args)
    return sorted(set(build_args) - declared)


class Variables:
    """The ARG and ENV values in effect in one stage, as its ARG and ENV steps change them.

    ``globals`` are :func:`global_values`; ``env`` the base image's environment (its
    config's ``Env`` list of ``K=V``, or a mapping), which ENV steps then change.
    """

    __slots__ = ("_build_args", "_globals", "args", "env", "escape")

    def __init__(self, globals: Mapping[str, str], build_args: Mapping[str, str], *,
                 env: Mapping[str, str] | Iterable[str] = (), escape: str = "\\") -> None:
        self._globals = dict(globals)
        self._build_args = dict(build_args)
        self.escape = escape
        #: the stage's ARGs that have a value, in the order declared
        self.args: dict[str, str] = {}
        #: the environment (base image's, then each ENV), in order: the config's ``Env``
        self.env: dict[str, str] = (dict(env) if isinstance(env, Mapping) else
                                    dict(item.partition("=")[::2] for item in env))

    def lookup(self) -> dict[str, str]:
        """What ``$VAR`` means at this step: the ARGs, overridden by the environment."""
        return {**self.args, **self.env}

    def run_environment(self) -> dict[str, str]:
        """A RUN's environment: proxy build args, the ARGs, then the environment on top."""
        proxies = {k: v for k, v in self._build_args.items() if k in PROXY_ARGS}
        return {**proxies, **self.args, **self.env}

    def step(self, instruction: Instruction) -> Instruction:
        """``instruction`` expanded, with its ARG or ENV values taking effect after it."""
        expanded = self.expand(instruction)
        self.apply(expanded)
        return expanded

    def apply(self, instruction: Instruction) -> None:
        """Record what an (expanded) ARG or ENV declares; other instructions change nothing."""
        if isinstance(instruction, Env):
            self.env.update(instruction.pairs)
        elif isinstance(instruction, Arg):
            for name, default in instruction.args:
                if name in self._build_args:
                    self.args[name] = self._build_args[name]
                elif default is not None:
                    self.args[name] = default
                elif name in self._globals:
                    self.args[name] = self._globals[name]

    def expand(self, instruction: Instruction) -> Instruction:
        """A copy of ``instruction`` with the words Docker expands expanded (module doc)."""
        env = self.lookup()
        loc = instruction.location

        def word(text: str) -> str:
            return _expand_word(loc, text, env, self.escape)

        if isinstance(instruction, Env | Label):
            return instruction._replace(
                pairs=tuple((word(k), word(v)) for k, v in instruction.pairs))
        if isinstance(instruction, Arg):
            return instruction._replace(args=tuple(
                (name, None if default is None else word(default))
                for name, default in instruction.args))
        if isinstance(instruction, Copy | Add):
            flags = {k: (tuple(word(x) for x in v) if isinstance(v, tuple) else
                         word(v) if isinstance(v, str) else v)
                     for k, v in instruction.flags.items()}
            sources = tuple(self._source(loc, s, env) for s in instruction.sources)
            return instruction._replace(flags=flags, sources=sources,
                                        dest=word(instruction.dest))
        if isinstance(instruction, Workdir):
            return instruction._replace(path=word(instruction.path))
        if isinstance(instruction, User):
            return instruction._replace(user=word(instruction.user))
        if isinstance(instruction, Stopsignal):
            return instruction._replace(signal=word(instruction.signal))
        if isinstance(instruction, Volume):
            paths = tuple(word(p) for p in instruction.paths)
            if any(not p.strip() for p in paths):
                raise BuildError(f"{loc}: a VOLUME path expands to nothing",
                                 hint="give the variable it names a value")
            return instruction._replace(paths=paths)
        if isinstance(instruction, Expose):
            return instruction._replace(ports=self._ports(instruction, env))
        if isinstance(instruction, Run) and "mount" in instruction.flags:
            flags = dict(instruction.flags)
            flags["mount"] = tuple(word(m) for m in flags["mount"])  # type: ignore[union-attr]
            return instruction._replace(flags=flags)
        return instruction

    def _source(self, loc: Location, source: str | Heredoc,
                env: Mapping[str, str]) -> str | Heredoc:
        if not isinstance(source, Heredoc):
            return _expand_word(loc, source, env, self.escape)
        if not source.expand:
            return source
        return source._replace(content=_expand_body(loc, source.content, env, self.escape))

    def _ports(self, instruction: Expose, env: Mapping[str, str]) -> tuple[str, ...]:
        ports: list[str] = []
        for text in instruction.ports:
            try:
                ports.extend(expand_fields(text, env, escape=self.escape))
            except DockerfileSyntaxError as exc:
                raise _located(instruction.location, exc) from None
        for port in ports:
            if not _PORT.fullmatch(port):
                raise BuildError(f"{instruction.location}: invalid port {port!r} in EXPOSE",
                                 hint="EXPOSE takes PORT, PORT/tcp, PORT/udp or a range "
                                 "such as 8000-8010/tcp")
        return tuple(ports)


def _expand_word(location: Location, text: str, env: Mapping[str, str], escape: str) -> str:
    try:
        return expand(text, env, escape=escape)
    except DockerfileSyntaxError as exc:
        raise _located(location, exc) from None
    except BuildError as exc:
        raise BuildError(f"{location}: {exc}", hint=exc.hint) from None


def _expand_body(location: Location, text: str, env: Mapping[str, str], escape: str) -> str:
    try:
        return expand_heredoc(text, env, escape=escape)
    except DockerfileSyntaxError as exc:
        raise _located(location, exc) from None
    except BuildError as exc:
        raise BuildError(f"{location}: {exc}", hint=exc.hint) from None


def _located(location: Location, exc: DockerfileSyntaxError) -> DockerfileSyntaxError:
    return DockerfileSyntaxError(exc.reason, filename=location.filename, line=location.line,
                                 column=location.column, hint=exc.hint)
