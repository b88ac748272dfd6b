"""The docs stay true: the driver guide covers the whole contract, its code is the tested code,
and every hook and driver method has a test."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, needs_root, pip_install_target

from lamina.core.driver import Driver
from lamina.core.plugins import hookspec

GUIDE = (REPO / "docs" / "writing-a-driver.md").read_text()
EXAMPLE = REPO / "examples" / "lamina-fuse-overlayfs"
#: where tests live: lamina's own and the conformance suite's
TEST_MODULES = sorted([*(REPO / "tests").glob("test_*.py"),
                       *(REPO / "conformance").glob("test_*.py")])


def public_driver_methods() -> list[str]:
    return [
        name for name, member in inspect.getmembers(Driver)
        if not name.startswith("_") and callable(member)
    ]


def hooks() -> list[str]:
    return [n for n in dir(hookspec) if n.startswith("lamina_")]


def test_every_hook_is_documented_in_the_guide() -> None:
    assert hooks()
    missing = [h for h in hooks() if f"`{h}(" not in GUIDE]
    assert not missing, f"hooks not documented in docs/writing-a-driver.md: {missing}"


def test_every_driver_method_is_documented_in_the_guide() -> None:
    missing = [m for m in public_driver_methods() if f"`{m}(" not in GUIDE]
    assert not missing, f"Driver methods not documented in docs/writing-a-driver.md: {missing}"


def test_every_driver_method_states_its_contract() -> None:
    undocumented = [m for m in public_driver_methods() if not inspect.getdoc(getattr(Driver, m))]
    assert not undocumented


def _sources() -> dict[Path, str]:
    return {path: path.read_text() for path in TEST_MODULES}


def test_every_driver_method_has_a_test() -> None:
    """A method has a test when a test module under tests/ or conformance/ calls ``.NAME(``.

    The call is on a driver, or on a store whose method of that name hands the
    work to the driver (``store.mount`` -> ``driver.mount``).
    """
    sources = _sources()
    untested = [m for m in public_driver_methods()
                if not any(re.search(rf"\.{m}\(", text) for text in sources.values())]
    assert not untested, f"Driver methods no test module calls: {untested}"


def test_every_hook_has_a_test() -> None:
    """A hook has a test when a test module under tests/ or conformance/ implements it.

    That is ``def NAME(`` in a module using ``@hookimpl``: the test registers the
    implementation and so sees the hook called.
    """
    sources = _sources()
    untested = [h for h in hooks()
                if not any(f"def {h}(" in text and "@hookimpl" in text
                           for text in sources.values())]
    assert not untested, f"hooks no test module implements: {untested}"


def test_the_guides_minimal_driver_is_the_tested_one() -> None:
    """The complete minimal driver of the guide is the package tests/test_plugins.py installs."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", GUIDE, re.S)
              if b.startswith('"""A complete minimal lamina driver')]
    assert len(blocks) == 1
    source = (REPO / "tests/plugins/lamina-dircopy/lamina_dircopy/__init__.py").read_text()

    def body(text: str) -> str:
        return text.split("from __future__ import annotations", 1)[1].strip()

    assert body(blocks[0]) == body(source)


def test_the_guides_example_excerpts_are_the_examples_code() -> None:
    """A block marked ``<!-- from PATH -->`` is a run of consecutive lines of that file."""
    quoted = re.findall(r"<!-- from (\S+) -->\n```python\n(.*?)```", GUIDE, re.S)
    assert len(quoted) >= 4
    for path, block in quoted:
        source = (REPO / path).read_text()
        assert block in source, f"the guide's excerpt of {path} is not in that file:\n{block}"


def test_the_guide_walks_the_example_package() -> None:
    for path in ("pyproject.toml", "README.md", "lamina_fuse_overlayfs/__init__.py",
                 "lamina_fuse_overlayfs/driver.py", "lamina_fuse_overlayfs/fuse.py",
                 "tests/test_conformance.py"):
        assert (EXAMPLE / path).is_file(), path
        assert Path(path).name in GUIDE, f"the guide does not show {path}"
    pyproject = (EXAMPLE / "pyproject.toml").read_text()
    assert '[project.entry-points."lamina.drivers"]' in pyproject
    assert 'fuse-overlayfs = "lamina_fuse_overlayfs"' in pyproject
    # the guide ends with the matrix
    last = GUIDE.split("\n## ")
    steps = [s for s in last if s[:2].strip().isdigit()]
    assert steps[-1].startswith("12. Run the matrix"), steps[-1][:40]


def test_the_commands_the_guide_gives_exist() -> None:
    """Every flag the guide passes to ``lamina conformance`` is one the command accepts."""
    out = subprocess.run([sys.executable, "-m", "lamina.core.cli", "conformance", "--help"],
                         capture_output=True, text=True, check=True).stdout
    used = {f for line in re.findall(r"lamina conformance([^\n`]*)", GUIDE)
             for f in re.findall(r"(--[a-z-]+)", line)}
    assert {"--driver", "--fs", "--json", "--junit"} <= used
    missing = [flag for flag in sorted(used) if flag not in out]
    assert not missing, f"lamina conformance does not accept {missing}"


def guide_block(lang: str, marker: str) -> str:
    """The one ``lang`` code block of the guide that contains ``marker``."""
    blocks = [b for b in re.findall(rf"```{lang}\n(.*?)```", GUIDE, re.S) if marker in b]
    assert len(blocks) == 1, f"{len(blocks)} {lang} blocks of the guide contain {marker!r}"
    return blocks[0]


@needs_root
@pytest.mark.slow
def test_the_guides_minimal_driver_passes_the_whole_suite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the guide alone: step 1's pyproject.toml and step 3's module make a package,
    pip installs it, and step 5's test runs the whole suite on it through its entry point."""
    src = tmp_path / "lamina-dircopy"
    (src / "lamina_dircopy").mkdir(parents=True)
    (src / "pyproject.toml").write_text(guide_block("toml", 'name = "lamina-dircopy"'))
    (src / "lamina_dircopy" / "__init__.py").write_text(
        guide_block("python", '"""A complete minimal lamina driver'))
    site = tmp_path / "site"
    pip_install_target(src, site)
    monkeypatch.syspath_prepend(str(site))
    namespace: dict[str, object] = {}
    exec(guide_block("python", "def test_conformance("), namespace)
    root = tmp_path / "root"
    root.mkdir()
    namespace["test_conformance"](root)  # asserts result.ok, with the failures shown
    loaded = sys.modules.get("lamina_dircopy")
    assert loaded is not None and Path(loaded.__file__).is_relative_to(site), loaded


# -- the user docs' examples are real commands and a real config ------------------------

USER_DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _shell_examples() -> list[tuple[str, str]]:
    """Each `lamina ...` command of a ```sh block in the README and docs/ (pipes and
    `&&` split, comments and output redirections dropped), with where it is."""
    found = []
    for path in USER_DOCS:
        for block in re.findall(r"```sh\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.splitlines():
                line = line.split("  #")[0].split(" > ")[0].strip()
                for part in re.split(r"\s*(?:&&|\|)\s*", line):
                    if part.startswith("lamina "):
                        found.append((path.name, part))
    return found


@pytest.mark.parametrize(("doc", "command"), _shell_examples())
def test_documented_commands_parse(doc: str, command: str) -> None:
    """A command shown in the docs is accepted by the real parser, flags and all."""
    import shlex

    from lamina.core.cli import build_parser

    argv = shlex.split(command)[1:]
    try:
        args, extra = build_parser().parse_known_args(argv)
    except SystemExit:
        pytest.fail(f"{doc}: `{command}` is not a valid lamina command")
    assert not extra or args.command == "conformance", f"{doc}: `{command}`: {extra}"


def test_documented_config_file_loads(tmp_path: Path) -> None:
    """docs/configuration.md's example file is a valid configuration, key for key."""
    from lamina.core.config import parse_config

    doc = (REPO / "docs" / "configuration.md").read_text()
    example = re.search(r"```toml\n(.*?)```", doc, flags=re.S)
    assert example is not None
    path = tmp_path / "lamina.toml"
    path.write_text(example.group(1))
    config = parse_config(path)
    assert config.driver == "overlay" and str(config.root) == "/var/lib/lamina"
    assert config.network["bridge"] == "lamina0"
    assert config.containers["log_opts"] == {"max-size": "10m", "max-file": "3"}
    from lamina.core.containers.spec import parse_log_config

    assert parse_log_config(config.containers["log_driver"],
                            [f"{k}={v}" for k, v in config.containers["log_opts"].items()])
