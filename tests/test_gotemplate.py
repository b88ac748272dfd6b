"""``--format`` templates: what Go's text/template (and Docker's functions) print for them.

The expected outputs are Go's own for the same template and data (Docker's
``inspect -f`` and ``images --format`` idioms among them).
"""

from __future__ import annotations

import pytest

from lamina.core.cli.gotemplate import Template, TemplateError, go_string, render_rows

DATA = {
    "Id": "sha256:abc", "RepoTags": ["a:1", "b:2"], "Size": 10240, "Empty": [],
    "Config": {"Env": ["A=1", "B=2"], "Labels": {"tier": "web", "z": "last"}, "Cmd": None},
    "State": {"Pid": 42, "Running": True, "ExitCode": 0, "Ratio": 0.5},
    "Created": 1796615358.0809786, "Name": "/web",
}


@pytest.mark.parametrize("template, expected", [
    ("{{.Id}}", "sha256:abc"),
    ("{{.State.Pid}} {{.State.Running}}", "42 true"),
    ("{{.Nope}}", "<no value>"),
    ("{{.Config.Labels.tier}}", "web"),
    ("{{.Config.Labels}}", "map[tier:web z:last]"),
    ("{{.RepoTags}}", "[a:1 b:2]"),
    ("{{.Config.Cmd}}", "<no value>"),
    ("{{json .Config}}", '{"Cmd":null,"Env":["A=1","B=2"],"Labels":{"tier":"web","z":"last"}}'),
    ("{{json .Name}}", '"/web"'),
    ("{{index .RepoTags 1}}", "b:2"),
    ("{{index .Config.Labels \"z\"}}", "last"),
    ("{{len .RepoTags}}", "2"),
    ("{{range .RepoTags}}[{{.}}]{{end}}", "[a:1][b:2]"),
    ("{{range $i, $t := .RepoTags}}{{$i}}={{$t}};{{end}}", "0=a:1;1=b:2;"),
    ("{{range $k, $v := .Config.Labels}}{{$k}}:{{$v}},{{end}}", "tier:web,z:last,"),
    ("{{range .Empty}}x{{else}}none{{end}}", "none"),
    ("{{range .RepoTags}}{{$.Name}}{{end}}", "/web/web"),
    ("{{if .State.Running}}up{{else}}down{{end}}", "up"),
    ("{{if .State.ExitCode}}failed{{else if .State.Running}}up{{else}}down{{end}}", "up"),
    ("{{if not .Empty}}empty{{end}}", "empty"),
    ("{{if and .State.Running .Empty}}x{{else}}y{{end}}", "y"),
    ("{{or .Empty .Name}}", "/web"),
    ("{{with .State}}{{.Pid}}{{end}}", "42"),
    ("{{with .Nope}}x{{else}}no{{end}}", "no"),
    ("{{if eq .Name \"/web\" \"/db\"}}match{{end}}", "match"),
    ("{{if gt .Size 100}}big{{end}}", "big"),
    ("{{.Name | printf \"%q\"}}", '"/web"'),
    ("{{printf \"%5d|%-4s|%v\" .State.Pid \"ab\" .RepoTags}}", "   42|ab  |[a:1 b:2]"),
    ("{{join .Config.Env \",\"}}", "A=1,B=2"),
    ("{{index (split .Id \":\") 1}}", "abc"),
    ("{{upper .Config.Labels.tier}} {{title \"hello world\"}}", "WEB Hello World"),
    ("{{truncate .Id 6}}", "sha256"),
    ("{{.Created}} {{.State.Ratio}}", "1.7966153580809786e+09 0.5"),
    ("{{println .Name}}", "/web\n"),
    ("{{/* a comment */}}x", "x"),
    ("a  {{- .Name -}}  b", "a/webb"),
    ("{{(index .RepoTags 0)}}", "a:1"),
    ("{{len (index .Config \"Env\")}}", "2"),
    ("{{.state.pid}}", "42"),  # Docker's fields are Go's; another case is accepted
])
def test_template_prints_what_go_prints(template: str, expected: str) -> None:
    assert Template(template).render(DATA) == expected


@pytest.mark.parametrize("template, message", [
    ("{{.Id", "not closed"),
    ("{{if .Id}}x", "has no {{end}}"),
    ("{{end}}", "unexpected {{end}}"),
    ("{{nosuch .Id}}", "function 'nosuch' not defined"),
    ("{{.Id .Name}}", "is not a function"),
    ("{{$x := .Id}}", "can only be declared"),
    ("{{template \"x\"}}", "not supported"),
    ("{{index .RepoTags 5}}", "out of range"),
    ("{{.Id.More}}", "can't evaluate field More"),
    ("{{$nope}}", "undefined variable"),
    ("{{.Name | .Id}}", "cannot take a piped value"),
])
def test_bad_templates_are_clear_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match="bad --format template") as exc:
        Template(template).render(DATA)
    assert message in str(exc.value)


@pytest.mark.parametrize("value, expected", [
    (1234567.0, "1.234567e+06"), (100000.0, "100000"), (0.0001, "0.0001"),
    (0.00001, "1e-05"), (-2.5, "-2.5"), (1e21, "1e+21"), (3.0, "3"), (0.0, "0"),
    (None, "<no value>"), (False, "false"), ({"b": [1, 2], "a": {}}, "map[a:map[] b:[1 2]]"),
])
def test_values_print_as_gos_percent_v(value: object, expected: str) -> None:
    assert go_string(value) == expected


def test_table_format_has_a_header_and_aligned_columns() -> None:
    rows = [{"ID": "abc", "Repository": "busybox"}, {"ID": "defghi", "Repository": "x"}]
    headers = {"ID": "IMAGE ID", "Repository": "REPOSITORY"}
    assert render_rows(r"table {{.ID}}\t{{.Repository}}", rows, headers) == (
        "IMAGE ID   REPOSITORY\n"
        "abc        busybox\n"
        "defghi     x\n")
    assert render_rows("{{.Repository}}:{{.ID}}", rows, headers) == "busybox:abc\nx:defghi\n"
