"""The command line's parser: a sub-command's arguments exist as soon as it is used.

The CLI adds a sub-command's arguments only when that sub-command parses or
prints help (a start-up saving). These tests hold that invisible: help texts,
parsed values and usage errors are those of a parser built in full.
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import LAMINA

from lamina.core.cli import build_parser

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
    assert args.handler.__name__ == "cmd_layer_apply"
    args = build_parser().parse_args(["layer", "ls", "--format", "json", "-q"])
    assert (args.format, args.quiet) == ("json", True)


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
