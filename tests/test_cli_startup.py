"""What the command line does to start and end quickly, held invisible to its users.

The CLI adds a sub-command's arguments only when that sub-command parses (help
texts, parsed values and usage errors stay those of a parser built in full), and
the ``lamina`` process freezes its objects before the interpreter's exit (exit
handlers still run; an in-process caller of ``main(argv)`` is left alone).
"""

from __future__ import annotations

import contextlib
import gc
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LAMINA

from lamina.core.cli import build_parser, main

COMMANDS = {
    ("info",): ["--format"],
    ("drivers",): ["--format"],
    ("conformance",): ["--driver", "--fs", "--size-mb", "--junit", "--json", "--workdir",
                       "--cell-timeout", "-k", "-x"],
    ("layer", "create"): ["--parent", "--rw", "--id"],
    ("layer", "apply"): ["file", "--parent", "--rw", "--id"],
    ("layer", "ls"): ["--format", "-q, --quiet"],
    ("layer", "rm"): ["ID"],
    ("layer", "mount"): ["ID"],
    ("layer", "unmount"): ["ID"],
    ("layer", "diff"): ["ID", "-o OUTPUT, --output OUTPUT"],
    ("layer", "changes"): ["ID", "--format"],
}


def help_of(*words: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*words, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("words", list(COMMANDS), ids=" ".join)
def test_each_sub_command_help_lists_its_arguments(words: tuple[str, ...],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(*words, capsys=capsys)
    assert text.startswith(f"usage: lamina {' '.join(words)} [-h]")
    for argument in COMMANDS[words]:
        assert argument in text, (words, argument, text)


def test_top_level_and_layer_help_list_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    top = help_of(capsys=capsys)
    for name in ("info", "drivers", "conformance", "layer"):
        assert f"\n    {name}" in top
    layer = help_of("layer", capsys=capsys)
    for words in COMMANDS:
        if words[0] == "layer":
            assert f"\n    {words[1]}" in layer


def test_values_of_the_used_sub_command_are_parsed() -> None:
    args = build_parser().parse_args(
        ["--driver", "vfs", "--root", "/r", "layer", "apply", "t.tar", "--rw", "--id", "x"]
    )
    assert (args.driver, args.root, args.command, args.layer_command) == (
        "vfs", "/r", "layer", "apply")
    assert (args.file, args.rw, args.id, args.parent) == ("t.tar", True, "x", None)
    assert args.handler == "layer:cmd_apply"  # imported when the command runs
    args = build_parser().parse_args(["layer", "ls", "--format", "json", "-q"])
    assert (args.format, args.quiet) == ("json", True)


def test_every_command_names_a_handler_and_arguments_that_exist(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The table of commands names functions as strings: each must resolve."""
    import argparse

    from lamina.core.cli.app import _resolve

    def leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return [parser]
        return [leaf for action in subs for p in action.choices.values() for leaf in leaves(p)]

    found = leaves(build_parser())
    assert len(found) >= 12
    for leaf in found:
        assert callable(_resolve(leaf.get_default("handler")))
        with contextlib.suppress(SystemExit):  # required arguments missing: a usage error
            leaf.parse_known_args([])  # adds the arguments: their function must exist
    capsys.readouterr()


def test_usage_errors_name_the_sub_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["layer", "apply"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: lamina layer apply [-h]")
    assert "the following arguments are required: file" in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["layer", "ls", "--format", "xml"])
    assert "invalid choice: 'xml' (choose from 'table', 'json')" in capsys.readouterr().err


def test_help_wraps_to_columns() -> None:
    """``$COLUMNS`` sets the width, as argparse's own formatter reads it."""
    def widest(columns: str) -> int:
        out = subprocess.run([*LAMINA, "conformance", "--help"], capture_output=True,
                             text=True, check=True, env={"COLUMNS": columns}).stdout
        return max(len(line) for line in out.splitlines())

    assert widest("60") <= 58 < widest("200")


def test_the_command_freezes_its_objects_and_still_runs_exit_handlers(tmp_path: Path) -> None:
    code = (
        "import atexit, gc, sys\n"
        "from lamina.core.cli import main\n"
        "atexit.register(lambda: print('exit handler ran, frozen:', gc.get_freeze_count() > 0))\n"
        f"sys.argv = ['lamina', '--root', {str(tmp_path / 'root')!r}, 'drivers']\n"
        "sys.exit(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "vfs" in out
    assert out.rstrip().endswith("exit handler ran, frozen: True")


def test_main_called_in_process_freezes_nothing(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    before = gc.get_freeze_count()
    assert main(["--root", str(tmp_path / "root"), "drivers", "--format", "json"]) == 0
    assert '"name": "vfs"' in capsys.readouterr().out
    assert gc.get_freeze_count() == before
