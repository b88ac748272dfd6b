"""The Dockerfile language: what lamina's parser makes of each construct, as BuildKit does.

Where the ``dockerfile`` package (BuildKit's own Go parser, compiled) is installed, the
line-level cases are also checked against it (``test_agrees_with_buildkit``).
"""

from __future__ import annotations

import pytest

from lamina.core.build.instructions import (
    Add,
    Arg,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    Expose,
    From,
    Healthcheck,
    Label,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    Stopsignal,
    User,
    Volume,
    Workdir,
    parse,
    parse_trigger,
)
from lamina.core.build.parser import Heredoc
from lamina.core.build.variables import (
    Variables,
    expand_from,
    global_values,
    unused_build_args,
)
from lamina.core.build.words import expand, expand_fields, expand_heredoc, split_words
from lamina.core.errors import BuildError, DockerfileSyntaxError


def steps(text: str) -> list:
    """The instructions of a one-stage Dockerfile body (a FROM is put before it)."""
    return list(parse("FROM scratch\n" + text).stages[0].instructions)


def one(text: str):
    (instruction,) = steps(text)
    return instruction


def error(text: str, *, filename: str = "Dockerfile") -> DockerfileSyntaxError:
    with pytest.raises(DockerfileSyntaxError) as info:
        parse(text, filename=filename)
    return info.value


# --- lines: comments, continuations, directives ------------------------------------------


def test_comments_and_blank_lines_are_skipped_and_a_hash_inside_a_line_is_text() -> None:
    run = one("# a comment\n\n   # indented comment\nRUN echo a # not a comment\n")
    assert run.command == ("echo a # not a comment",)
    assert run.location.line == 5


def test_keywords_are_case_insensitive() -> None:
    assert isinstance(one("run echo"), Run)
    assert isinstance(one("Workdir /x"), Workdir)


def test_a_continuation_joins_lines_without_a_space_and_skips_comments_inside() -> None:
    run = one("RUN echo a \\\n# comment\n    b\\\nc\n")
    assert run.command == ("echo a     bc",)
    assert (run.location.line, run.location.end_line) == (2, 5)


def test_an_escaped_escape_at_the_end_is_not_a_continuation() -> None:
    first, second = steps("RUN echo \\\\\nRUN true\n")
    assert first.command == ("echo \\\\",)
    assert second.command == ("true",)


def test_whitespace_after_the_continuation_character_is_allowed() -> None:
    assert one("RUN a \\  \t\n b\n").command == ("a  b",)


def test_an_empty_continuation_line_is_skipped_with_a_warning() -> None:
    df = parse("FROM scratch\nRUN a \\\n\n  b\n")
    assert df.stages[0].instructions[0].command == ("a   b",)
    assert len(df.warnings) == 1 and "Dockerfile:2" in df.warnings[0]


def test_crlf_line_endings() -> None:
    df = parse("FROM scratch\r\nRUN a \\\r\n  b\r\nENV k=v\r\n")
    run, env = df.stages[0].instructions
    assert run.command == ("a   b",)
    assert env.pairs == (("k", "v"),)


def test_a_byte_order_mark_is_ignored() -> None:
    assert parse("\ufeffFROM scratch\n").stages[0].base.image == "scratch"


def test_the_escape_directive_makes_backtick_the_continuation_and_escape() -> None:
    df = parse("# escape=`\nFROM scratch\nRUN dir c:\\ `\n  && echo\nENV p=c:\\dir a=`$x\n")
    run, env = df.stages[0].instructions
    assert df.escape == "`" and df.directives == {"escape": "`"}
    assert run.command == ("dir c:\\   && echo",)
    assert Variables({}, {}, escape=df.escape).expand(env).pairs == (
        ("p", "c:\\dir"), ("a", "$x"))


def test_directives_are_case_insensitive_and_allow_spaces() -> None:
    df = parse("#  ESCAPE =  `\n# Syntax=docker/dockerfile:1.7\nFROM scratch\n")
    assert df.directives == {"escape": "`", "syntax": "docker/dockerfile:1.7"}


def test_directives_count_only_before_anything_else() -> None:
    for text in ("FROM scratch\n# escape=`\n", "# comment\n# escape=`\nFROM scratch\n",
                 "\n# escape=`\nFROM scratch\n", "# unknown=1\n# escape=`\nFROM scratch\n"):
        assert parse(text).escape == "\\", text


def test_a_repeated_directive_is_an_error() -> None:
    exc = error("# escape=`\n# escape=\\\nFROM scratch\n")
    assert (exc.line, exc.column) == (2, 1)
    assert "only one escape" in str(exc)


def test_an_invalid_escape_character_is_an_error() -> None:
    exc = error("# escape=x\nFROM scratch\n")
    assert exc.line == 1 and "escape" in exc.reason and exc.hint


def test_an_empty_file_and_a_file_without_from_are_errors() -> None:
    assert "no instructions" in error("# only a comment\n\n").reason
    assert "no FROM" in error("ARG A=1\n").reason


# --- errors name the file, line and column ----------------------------------------------


def test_an_unknown_instruction_suggests_the_closest() -> None:
    exc = error("FROM scratch\n\n  COPPY a b\n", filename="app/Dockerfile")
    assert str(exc).startswith("app/Dockerfile:3:3: unknown instruction: COPPY")
    assert exc.hint == "did you mean COPY?"
    assert "ENTRYPOINT" in error("FROM scratch\nXYZZY\n").hint  # nothing close: the list


def test_an_unknown_flag_names_its_column_and_what_the_instruction_takes() -> None:
    exc = error("FROM scratch\nCOPY --from=a --own=1 x y\n")
    assert (exc.line, exc.column) == (2, 15)
    assert "unknown flag --own for COPY" in exc.reason and "--chown" in exc.hint
    assert one("RUN a \\\n  --x=1 b\n").command == ("a   --x=1 b",)  # only leading flags
    assert "takes no flags" in error("FROM scratch\nWORKDIR --x=1 /a\n").hint


def test_a_flag_on_a_continuation_line_is_placed_there() -> None:
    exc = error("FROM scratch\nCOPY \\\n    --bad x y\n")
    assert (exc.line, exc.column) == (3, 5)


def test_flag_values_are_checked() -> None:
    assert "missing a value" in error("FROM scratch\nCOPY --from a b\n").reason
    assert "duplicate flag" in error("FROM scratch\nCOPY --chown=1 --chown=2 a b\n").reason
    assert "true or false" in error("FROM scratch\nCOPY --link=yes a b\n").reason
    assert "not supported" in error("FROM scratch\nRUN --network=bridge true\n").reason


def test_an_unterminated_heredoc_points_at_its_opening() -> None:
    exc = error("FROM scratch\n\nRUN cat <<EOF >/x\nhello\n")
    assert str(exc).startswith("Dockerfile:3:9: unterminated heredoc <<EOF started here")
    assert "EOF" in exc.hint


def test_instructions_before_the_first_from_are_refused_except_arg() -> None:
    exc = error("ARG A\nRUN true\nFROM scratch\n")
    assert exc.line == 2 and "before the first FROM" in exc.reason


def test_a_json_array_of_non_strings_is_an_error() -> None:
    exc = error("FROM scratch\nCMD [1, 2]\n")
    assert exc.line == 2 and "only strings" in exc.reason


# --- FROM and stages ----------------------------------------------------------------------


def test_stages_names_platform_and_global_args() -> None:
    df = parse("ARG BASE=alpine\nARG TAG\nFROM --platform=$BUILDPLATFORM ${BASE}:${TAG:-3} AS "
               "Builder\nRUN make\nFROM scratch\nCOPY --from=builder /out /\n")
    assert [a.args for a in df.global_args] == [(("BASE", "alpine"),), (("TAG", None),)]
    first, second = df.stages
    assert (first.index, first.name, second.name) == (0, "builder", None)
    assert first.base.flags == {"platform": "$BUILDPLATFORM"}
    assert df.stage("BUILDER") is first and df.stage("1") is second and df.stage("x") is None
    values = global_values(df, {"TAG": "3.19"}, builtin={"BUILDPLATFORM": "linux/amd64"})
    base = expand_from(first, values, escape=df.escape)
    assert (base.image, base.flags["platform"]) == ("alpine:3.19", "linux/amd64")
    assert expand_from(first, global_values(df, {}), escape="\\").image == "alpine:3"


def test_from_arguments_are_checked() -> None:
    assert "AS NAME" in error("FROM a b\n").hint
    assert "invalid stage name" in error("FROM a AS 1st\n").reason
    assert "duplicate stage name" in error("FROM a AS x\nFROM b AS X\n").reason


def test_a_base_image_that_expands_to_nothing_is_an_error() -> None:
    df = parse("ARG IMG\nFROM $IMG\n")
    with pytest.raises(BuildError, match="expands to nothing"):
        expand_from(df.stages[0], global_values(df, {}))


def test_global_arg_defaults_expand_with_earlier_ones_and_build_args_win() -> None:
    df = parse("ARG A=1\nARG B=${A}2\nARG C=x\nFROM scratch\n")
    assert global_values(df, {"A": "9"}) == {"A": "9", "B": "92", "C": "x"}


# --- shell and exec forms --------------------------------------------------------------


@pytest.mark.parametrize("kind", [Run, Cmd, Entrypoint])
def test_exec_form_and_shell_form(kind) -> None:
    word = kind.keyword
    exec_form = one(f'{word} ["echo", "a b", "$HOME"]\n')
    assert (exec_form.command, exec_form.shell_form) == (("echo", "a b", "$HOME"), False)
    shell_form = one(f"{word} echo $HOME && ls\n")
    assert (shell_form.command, shell_form.shell_form) == (("echo $HOME && ls",), True)


def test_invalid_json_falls_back_to_the_shell_form() -> None:
    assert one("CMD [\"a\", 'b']\n").command == ("[\"a\", 'b']",)
    assert one("RUN [ oops\n").shell_form is True


def test_text_after_a_json_array_is_ignored_as_buildkit_does() -> None:
    assert one('RUN ["a"] b\n').command == ("a",)


def test_empty_exec_forms_clear_and_empty_commands_are_errors() -> None:
    assert one("ENTRYPOINT []\n").command == ()
    assert "needs a command" in error("FROM scratch\nRUN\n").reason
    assert "needs a command" in error("FROM scratch\nRUN []\n").reason


def test_shell_needs_the_json_form() -> None:
    assert one('SHELL ["powershell", "-command"]\n').command == ("powershell", "-command")
    assert isinstance(one('SHELL ["sh"]\n'), Shell)
    assert "JSON array" in error("FROM scratch\nSHELL /bin/sh -c\n").reason


def test_run_flags() -> None:
    run = one("RUN --mount=type=cache,target=/root/.cache --mount=type=tmpfs,target=/t "
              "--network=none --security=sandbox make\n")
    assert run.flags == {"mount": ("type=cache,target=/root/.cache", "type=tmpfs,target=/t"),
                         "network": "none", "security": "sandbox"}
    assert run.command == ("make",)


def test_a_double_dash_ends_the_flags() -> None:
    assert one("COPY -- --weird-name /dst\n").sources == ("--weird-name",)


# --- heredocs -----------------------------------------------------------------------------


def test_run_heredoc_alone_is_the_program() -> None:
    run = one("RUN <<EOF\necho $HOME\n  indented\nEOF\n")
    assert run.heredocs == (Heredoc("EOF", "echo $HOME\n  indented\n", True, False, 0),)
    assert run.script() == ("echo $HOME\n  indented\n", run.heredocs[0])
    assert run.location.end_line == 5


def test_a_shebang_heredoc_is_kept_whole_for_the_build_to_execute() -> None:
    body, program = one("RUN <<EOT\n#!/usr/bin/env python3\nprint(1)\nEOT\n").script()
    assert body.startswith("#!/usr/bin/env python3\n") and program is not None


def test_heredocs_inside_a_command_go_to_the_shell_after_the_line() -> None:
    run = one("RUN cat <<A >/a && cat <<'B' >/b\none $X\nA\ntwo $X\nB\n")
    assert [(d.name, d.content, d.expand) for d in run.heredocs] == [
        ("A", "one $X\n", True), ("B", "two $X\n", False)]
    assert run.script() == ("cat <<A >/a && cat <<'B' >/b\none $X\nA\ntwo $X\nB", None)


def test_a_dash_heredoc_strips_leading_tabs_and_finds_an_indented_terminator() -> None:
    run = one("RUN <<-EOF\n\tif true; then\n\t\techo  yes\n\tfi\n\tEOF\nRUN next\n".replace(
        "RUN next\n", ""))
    assert run.heredocs[0].content == "if true; then\necho  yes\nfi\n"
    assert run.heredocs[0].chomp is True


def test_quoted_delimiters_turn_expansion_off() -> None:
    for opener in ('<<"EOF"', "<<'EOF'", '<<E"O"F'):
        copy = one(f"COPY {opener} /f\nx\nEOF\n")
        assert copy.sources[0].name == "EOF" and copy.sources[0].expand is False, opener


def test_a_heredoc_terminator_must_be_the_whole_line() -> None:
    run = one("RUN <<EOF\n EOF\nEOF2\nEOF\n")
    assert run.heredocs[0].content == " EOF\nEOF2\n"


def test_copy_heredocs_become_files_and_several_may_share_a_line() -> None:
    copy = one("COPY --chmod=755 <<a.sh <<b.txt /dir/\n#!/bin/sh\na.sh\nbee\nb.txt\n")
    assert isinstance(copy, Copy) and copy.dest == "/dir/"
    assert [(s.name, s.content) for s in copy.sources] == [("a.sh", "#!/bin/sh\n"),
                                                           ("b.txt", "bee\n")]
    mixed = one("COPY file <<EOF /dst\nx\nEOF\n")
    assert mixed.sources[0] == "file" and mixed.sources[1].name == "EOF"


def test_a_heredoc_with_a_file_descriptor() -> None:
    run = one("RUN 3<<EOF cat /dev/fd/3\nx\nEOF\n")
    assert run.heredocs[0].fd == 3


def test_no_heredocs_in_exec_form_quotes_or_other_instructions() -> None:
    assert one('RUN ["cat", "<<EOF"]\n').heredocs == ()
    assert one('RUN echo "<<EOF"\n').heredocs == ()
    first, second = steps("CMD cat <<EOF\nRUN true\n")
    assert first.command == ("cat <<EOF",) and second.command == ("true",)


def test_a_heredoc_cannot_be_a_destination() -> None:
    assert "destination" in error("FROM scratch\nCOPY a <<EOF\nx\nEOF\n").reason


def test_heredoc_bodies_keep_comments_and_continuations() -> None:
    run = one("RUN <<EOF\n# kept\necho a \\\n  b\nEOF\n")
    assert run.heredocs[0].content == "# kept\necho a \\\n  b\n"


# --- the other instructions --------------------------------------------------------------


def test_copy_and_add_sources_flags_and_json_form() -> None:
    copy = one("COPY --from=build --chown=app:app --chmod=0644 --link a b* /dst/\n")
    assert copy.flags == {"from": "build", "chown": "app:app", "chmod": "0644", "link": True}
    assert (copy.sources, copy.dest) == (("a", "b*"), "/dst/")
    add = one('ADD --checksum=sha256:abc --keep-git-dir=false ["a b.tar", "/x y/"]\n')
    assert isinstance(add, Add) and add.sources == ("a b.tar",) and add.dest == "/x y/"
    assert add.flags == {"checksum": "sha256:abc", "keep-git-dir": False}
    assert "source and a destination" in error("FROM scratch\nCOPY onlyone\n").reason
    assert "unknown flag --from for ADD" in error("FROM scratch\nADD --from=x a b\n").reason


def test_env_and_label_forms() -> None:
    env = one('ENV A=1 B="two words" C=three\\ words D=\n')
    assert env.pairs == (("A", "1"), ("B", '"two words"'), ("C", "three\\ words"), ("D", ""))
    legacy = one("ENV PATH /usr/local/bin:$PATH  \n")
    assert legacy.pairs == (("PATH", "/usr/local/bin:$PATH"),)
    label = one('LABEL "org.opencontainers.image.title"="My app" version=1\n')
    assert isinstance(label, Label) and label.pairs[1] == ("version", "1")
    assert "has no value" in error("FROM scratch\nENV ONLYKEY\n").reason
    assert "not KEY=VALUE" in error("FROM scratch\nENV A=1 B\n").reason


def test_arg_forms() -> None:
    arg = one('ARG A B=2 C="x y" D=\n')
    assert isinstance(arg, Arg)
    assert arg.args == (("A", None), ("B", "2"), ("C", '"x y"'), ("D", ""))


def test_single_string_instructions() -> None:
    workdir, user, signal, maintainer = steps(
        "WORKDIR /a b\nUSER app:staff\nSTOPSIGNAL SIGQUIT\nMAINTAINER Jane <j@x.org>\n")
    assert isinstance(workdir, Workdir) and workdir.path == "/a b"
    assert isinstance(user, User) and user.user == "app:staff"
    assert isinstance(signal, Stopsignal) and signal.signal == "SIGQUIT"
    assert isinstance(maintainer, Maintainer) and maintainer.name == "Jane <j@x.org>"
    assert "needs an argument" in error("FROM scratch\nWORKDIR\n").reason


def test_expose_and_volume() -> None:
    expose, volume, volumes = steps('EXPOSE 80 443/tcp 53/udp\nVOLUME /a /b\nVOLUME ["/c d"]\n')
    assert isinstance(expose, Expose) and expose.ports == ("80", "443/tcp", "53/udp")
    assert isinstance(volume, Volume) and volume.paths == ("/a", "/b")
    assert volumes.paths == ("/c d",)
    assert "cannot be empty" in error('FROM scratch\nVOLUME [""]\n').reason


def test_healthcheck() -> None:
    check = one("HEALTHCHECK --interval=1m30s --timeout=10s --start-period=1.5s "
                "--start-interval=500ms --retries=3 CMD curl -f http://localhost/ || exit 1\n")
    assert isinstance(check, Healthcheck)
    assert check.test == ("CMD-SHELL", "curl -f http://localhost/ || exit 1")
    assert (check.interval, check.timeout, check.start_period, check.start_interval) == (
        90_000_000_000, 10_000_000_000, 1_500_000_000, 500_000_000)
    assert check.retries == 3
    assert one('HEALTHCHECK CMD ["/bin/check", "-q"]\n').test == ("CMD", "/bin/check", "-q")
    assert one("healthcheck none\n").test == ("NONE",)


@pytest.mark.parametrize(("line", "message"), [
    ("HEALTHCHECK NONE x", "takes no arguments"),
    ("HEALTHCHECK --interval=5s NONE", "unknown flag --interval"),
    ("HEALTHCHECK CMD", "needs a command"),
    ("HEALTHCHECK RUN x", "unknown HEALTHCHECK type"),
    ("HEALTHCHECK --interval=5 CMD x", "not a duration"),
    ("HEALTHCHECK --timeout=0s CMD x", "shorter than 1ms"),
    ("HEALTHCHECK --retries=0 CMD x", "at least 1"),
])
def test_healthcheck_errors(line: str, message: str) -> None:
    assert message in error(f"FROM scratch\n{line}\n").reason


def test_onbuild_keeps_its_trigger_and_the_text_for_the_config() -> None:
    onbuild, with_heredoc = steps("ONBUILD COPY --chown=1 . /src\nONBUILD RUN <<EOF\nmake\nEOF\n")
    assert isinstance(onbuild, Onbuild) and isinstance(onbuild.trigger, Copy)
    assert onbuild.trigger.flags == {"chown": "1"}
    assert onbuild.expression == "COPY --chown=1 . /src"
    assert with_heredoc.expression == "RUN <<EOF\nmake\nEOF"
    assert with_heredoc.trigger.heredocs[0].content == "make\n"
    trigger = parse_trigger(with_heredoc.expression)
    assert isinstance(trigger, Run) and trigger.heredocs == with_heredoc.trigger.heredocs


@pytest.mark.parametrize("trigger", ["ONBUILD RUN x", "FROM x", "MAINTAINER me"])
def test_onbuild_refuses_some_triggers(trigger: str) -> None:
    assert "not allowed" in error(f"FROM scratch\nONBUILD {trigger}\n").reason


# --- words: substitution, quotes, escapes ---------------------------------------------


ENV = {"A": "alpha", "EMPTY": "", "P": "/usr/local/lib.tar.gz", "SP": "x y"}


@pytest.mark.parametrize(("word", "expected"), [
    ("$A", "alpha"), ("${A}", "alpha"), ("${A}_x", "alpha_x"), ("$A_x", ""),
    ("$UNSET", ""), ("a$", "a$"), ("$1", ""), ("\\$A", "$A"), ("'$A'", "$A"),
    ('"$A b"', "alpha b"), ('"\\$A"', "$A"), ('"a\\b"', "a\\b"), ("a\\ b", "a b"),
    ("${EMPTY:-d}", "d"), ("${EMPTY-d}", ""), ("${UNSET-d}", "d"), ("${A:-d}", "alpha"),
    ("${A:+alt}", "alt"), ("${EMPTY:+alt}", ""), ("${EMPTY+alt}", "alt"), ("${UNSET+alt}", ""),
    ("${UNSET:-${A}}", "alpha"), ('${UNSET:-"q u"}', "q u"),
    ("${P#*/}", "usr/local/lib.tar.gz"), ("${P##*/}", "lib.tar.gz"),
    ("${P%.*}", "/usr/local/lib.tar"), ("${P%%.*}", "/usr/local/lib"),
    ("${P/l/L}", "/usr/Local/lib.tar.gz"), ("${P//l/L}", "/usr/LocaL/Lib.tar.gz"),
    ("${A#[ab]}", "lpha"),
])
def test_expand(word: str, expected: str) -> None:
    assert expand(word, ENV) == expected


@pytest.mark.parametrize("word", ["${A", "${}", "${:x}", '"open', "'open", "${A:x}", "${A!}"])
def test_malformed_substitutions_and_quotes_are_errors(word: str) -> None:
    with pytest.raises(DockerfileSyntaxError):
        expand(word, ENV)


def test_a_required_variable_fails_with_its_message() -> None:
    with pytest.raises(BuildError, match="VERSION: set a version"):
        expand("${VERSION:?set a version}", {"VERSION": ""})
    assert expand("${VERSION?}", {"VERSION": ""}) == ""


def test_fields_split_unquoted_expansions() -> None:
    assert expand_fields("$SP 'a b' \"$SP\"", ENV) == ["x", "y", "a b", "x y"]


def test_heredoc_bodies_expand_variables_but_keep_quotes() -> None:
    assert expand_heredoc("'$A' \"$A\" \\$A \\n\n", ENV) == "'alpha' \"alpha\" $A \\n\n"


def test_split_words_keeps_quotes() -> None:
    assert split_words('a="x y" b\\ c \'d e\'') == ['a="x y"', "b\\ c", "'d e'"]


# --- variables in effect, step by step ---------------------------------------------------


DOCKERFILE = """\
ARG VERSION=1.0
ARG UNUSED_GLOBAL=g
FROM scratch
ARG VERSION
ARG USER=app
ENV HOME=/home/$USER PATH=$HOME/bin:$PATH
ENV USER=env-wins
ARG USER=ignored
COPY --chown=$USER <<EOF <<'RAW' src-$VERSION /dst/${VERSION}/
v=$VERSION
EOF
v=$VERSION
RAW
RUN echo $USER $VERSION
WORKDIR ${HOME:-/}/app
EXPOSE $PORTS 9000/udp
LABEL "version"=$VERSION
USER $USER
VOLUME $HOME/data
STOPSIGNAL ${SIG:-SIGTERM}
CMD echo $USER
"""


def run_stage(build_args: dict[str, str]) -> tuple[list, Variables]:
    df = parse(DOCKERFILE)
    values = global_values(df, build_args)
    variables = Variables(values, build_args, env=["PATH=/bin", "PORTS=80 443"],
                          escape=df.escape)
    return [variables.step(i) for i in df.stages[0].instructions], variables


def test_steps_expand_with_what_is_in_effect_before_them() -> None:
    done, variables = run_stage({"VERSION": "2.0"})
    (_arg, _arg2, env, _env2, _arg3, copy, run, workdir, expose, label, user, volume, signal,
     cmd) = done
    assert env.pairs == (("HOME", "/home/app"), ("PATH", "/bin:/bin"))  # $HOME: the old, unset
    assert copy.flags["chown"] == "env-wins"  # ENV beats an ARG of the same name
    assert copy.sources[0].content == "v=2.0\n" and copy.sources[1].content == "v=$VERSION\n"
    assert (copy.sources[2], copy.dest) == ("src-2.0", "/dst/2.0/")
    assert run.command == ("echo $USER $VERSION",)  # the shell's to expand
    assert workdir.path == "/home/app/app"
    assert expose.ports == ("80", "443", "9000/udp")
    assert label.pairs == (("version", "2.0"),)
    assert (user.user, volume.paths, signal.signal) == ("env-wins", ("/home/app/data",),
                                                         "SIGTERM")
    assert cmd.command == ("echo $USER",)
    assert variables.args == {"VERSION": "2.0", "USER": "ignored"}
    assert variables.env["USER"] == "env-wins"


def test_a_stage_arg_without_value_takes_the_global_one() -> None:
    done, variables = run_stage({})
    assert variables.args["VERSION"] == "1.0"
    assert done[5].dest == "/dst/1.0/"


def test_a_global_arg_is_not_visible_in_a_stage_until_declared() -> None:
    df = parse("ARG G=global\nFROM scratch\nENV A=$G\nARG G\nENV B=$G\n")
    variables = Variables(global_values(df, {}), {})
    a, _arg, b = (variables.step(i) for i in df.stages[0].instructions)
    assert a.pairs == (("A", ""),) and b.pairs == (("B", "global"),)


def test_run_environment_has_args_env_and_proxies() -> None:
    df = parse("FROM scratch\nARG X=1\nENV X=2 Y=3\n")
    variables = Variables({}, {"http_proxy": "http://p:3128", "OTHER": "o"})
    for instruction in df.stages[0].instructions:
        variables.step(instruction)
    assert variables.run_environment() == {"http_proxy": "http://p:3128", "X": "2", "Y": "3"}
    assert unused_build_args(df, ["X", "http_proxy", "OTHER"]) == ["OTHER"]


def test_expansion_errors_name_the_instruction() -> None:
    df = parse("FROM scratch\n\nWORKDIR ${A\nEXPOSE $P\n")
    workdir, expose = df.stages[0].instructions
    with pytest.raises(DockerfileSyntaxError) as info:
        Variables({}, {}).expand(workdir)
    assert (info.value.filename, info.value.line) == ("Dockerfile", 3)
    with pytest.raises(BuildError, match="Dockerfile:4: invalid port 'http'"):
        Variables({}, {}, env={"P": "http"}).expand(expose)


# --- against BuildKit's own parser ----------------------------------------------------


CROSS_CHECKED = [
    "FROM a\nRUN echo \\\\\nRUN x\n",
    "FROM a\nRUN a \\\n\n  b\n",
    "FROM a\nRUN a \\\n # c\n  b\n",
    "FROM a\r\nRUN <<EOF\r\nx\r\nEOF\r\n",
    ' # escape=`\nFROM a\nRUN a `\n b\nRUN ["c:\\\\x"]\n',
    "#escape=`\n\n# escape=\\\nFROM a\n",
    "FROM a\nRUN a\\  \n  b\n",
    "FROM --platform=linux/arm64 a AS b\nCOPY --from=b --chown=\"a b\" x y\n",
    "FROM a\nCOPY -- --a b\n",
    "FROM a\nRUN 3<<EOF cat\nx\nEOF\n",
    "FROM a\nRUN <<EOF <<-EOT\nx\nEOF\n\ty\n\tEOT\n",
    "FROM a\nCOPY <<a <<'b' /d/\n1\na\n2\nb\n",
    "FROM a\nRUN echo \"<<EOF\"\n",
    "FROM a\nRUN [\"echo\", \"<<EOF\"]\n",
    "FROM a\nENV A=\"b c\" D=e\\ f\nENV legacy  v w\nLABEL x=y \"a b\"=c\n",
    "FROM a\nARG a=1 b \"c=d e\"\n",
    "FROM a\nCMD [\"a\", 'b']\nENTRYPOINT [\"x\"] y\nSHELL [\"sh\", \"-c\"]\n",
    "FROM a\nEXPOSE 80   443/udp\nVOLUME [\"/a\", \"/b\"]\nVOLUME /c /d\n",
    "FROM a\nWORKDIR /a b\nUSER u:g\nSTOPSIGNAL 9\nMAINTAINER x y\n",
    "FROM a\nHEALTHCHECK --interval=5s CMD [\"a\",\"b\"]\nHEALTHCHECK CMD a b\n",
    "FROM a\nONBUILD RUN --mount=type=cache,target=/x echo\n",
    "FROM a\nONBUILD RUN <<EOF\nx\nEOF\n",
    "FROM a\nrun  \t echo   spaced  \n",
]


def _ours(instruction) -> tuple[str, ...]:
    """An instruction's arguments in the shape of the Go parser's ``value``."""
    if isinstance(instruction, From):
        return (instruction.image, "AS", instruction.name) if instruction.name else (
            instruction.image,)
    if isinstance(instruction, Env | Label):
        return tuple(part for pair in instruction.pairs for part in pair)
    if isinstance(instruction, Arg):
        return tuple(n if v is None else f"{n}={v}" for n, v in instruction.args)
    if isinstance(instruction, Copy | Add):
        return (*(s if isinstance(s, str) else s.name for s in instruction.sources),
                instruction.dest)
    if isinstance(instruction, Healthcheck):
        return ("CMD", *instruction.test[1:])
    for field in ("command", "ports", "paths", "path", "user", "signal", "name"):
        if hasattr(instruction, field):
            value = getattr(instruction, field)
            return tuple(value) if isinstance(value, tuple) else (value,)
    raise AssertionError(instruction)


@pytest.mark.parametrize("text", CROSS_CHECKED)
def test_agrees_with_buildkit(text: str) -> None:
    buildkit = pytest.importorskip("dockerfile")
    theirs = buildkit.parse_string(text)
    df = parse(text)
    ours = [i for s in df.stages for i in (s.base, *s.instructions)]
    assert len(ours) == len(theirs)
    for mine, go in zip(ours, theirs, strict=True):
        assert mine.keyword == go.cmd.upper()
        assert (mine.location.line, mine.location.end_line) == (go.start_line, go.end_line)
        if isinstance(mine, Onbuild):
            assert mine.trigger.keyword == go.sub_cmd.upper()
            mine = mine.trigger  # the Go binding shows no heredocs on an ONBUILD
            mine = mine._replace(heredocs=()) if isinstance(mine, Run) else mine
        else:
            assert tuple(f"--{k}={v}" if v is not True else f"--{k}"
                         for k, v in mine.flags.items()) == go.flags
        go_value = go.value
        if isinstance(mine, From) and mine.name:
            go_value = (go_value[0], "AS", go_value[2].lower())
        if isinstance(mine, Copy | Add):
            go_value = tuple(v if not v.startswith("<<") else v.strip("<-'\"")
                             for v in go_value)
        assert _ours(mine) == go_value
        docs = getattr(mine, "heredocs", ()) or [
            s for s in getattr(mine, "sources", ()) if isinstance(s, Heredoc)]
        assert [(d.name, d.fd) for d in docs] == [(h.name, h.file_descriptor)
                                                 for h in go.heredocs]
        for doc, go_doc in zip(docs, go.heredocs, strict=True):
            content = go_doc.content
            if doc.chomp:
                content = "".join(line.lstrip("\t") for line in content.splitlines(True))
            assert doc.content == content
