""".dockerignore: Docker's pattern rules (moby's patternmatcher and ignorefile reader)."""

from __future__ import annotations

import pytest

from lamina.core.build.dockerignore import Dockerignore, clean
from lamina.core.errors import DockerfileSyntaxError


def excluded(patterns: str, path: str) -> bool:
    return Dockerignore.parse(patterns).excluded(path)


@pytest.mark.parametrize(("patterns", "path", "expected"), [
    # plain names, and a directory pattern covering everything beneath
    ("a", "a", True), ("a", "a/b/c", True), ("a", "b/a", False), ("a", "ab", False),
    # cleaned: ./a, a/, /a, a//b/.. all mean a
    ("./a", "a", True), ("a/", "a/x", True), ("/a", "a", True), ("a//b/..", "a", True),
    # * and ? stop at /
    ("*.md", "x.md", True), ("*.md", "docs/x.md", False), ("*/*.md", "docs/x.md", True),
    ("?.txt", "a.txt", True), ("?.txt", "ab.txt", False), ("a?b", "a/b", False),
    # classes: ^ negates, ranges
    ("file[0-9]", "file7", True), ("file[0-9]", "filex", False),
    ("file[^0-9]", "filex", True), ("file[^0-9]", "file7", False),
    # ** is any number of directories, none included
    ("**/*.pyc", "x.pyc", True), ("**/*.pyc", "a/b/x.pyc", True),
    ("a/**/z", "a/z", True), ("a/**/z", "a/b/c/z", True), ("a/**/z", "b/z", False),
    ("a/**", "a/b", True), ("a/**", "a/b/c", True), ("a/**", "a", False), ("**", "any/x", True),
    ("**/node_modules", "x/node_modules/y", True),
    # escapes make glob characters literal
    ("\\*.txt", "*.txt", True), ("\\*.txt", "a.txt", False),
    # regular-expression characters mean themselves
    ("a+b(c).txt", "a+b(c).txt", True), ("a.b", "axb", False),
    # whitespace around a pattern is trimmed
    ("   spaced.txt   ", "spaced.txt", True),
])
def test_patterns(patterns: str, path: str, expected: bool) -> None:
    assert excluded(patterns, path) is expected


def test_comments_only_in_the_first_column_and_blank_lines() -> None:
    ignore = Dockerignore.parse("# comment\n\n   \n  # not a comment\nkept\n")
    assert [p.text for p in ignore.patterns] == ["# not a comment", "kept"]
    assert ignore.excluded("# not a comment") is True


def test_exceptions_reinclude_and_the_last_matching_line_wins() -> None:
    ignore = Dockerignore.parse("*.md\n!README*.md\nREADME-secret.md\n")
    assert ignore.excluded("CHANGES.md") is True
    assert ignore.excluded("README.md") is False
    assert ignore.excluded("README-secret.md") is True


def test_an_exception_beneath_an_excluded_directory() -> None:
    ignore = Dockerignore.parse("node_modules\n!node_modules/keep\n")
    assert ignore.excluded("node_modules/x/y") is True
    assert ignore.excluded("node_modules/keep") is False
    assert ignore.excluded("node_modules/keep/deep/file") is False
    assert ignore.excluded("node_modules") is True  # the walk still descends into it


def test_exclude_everything_but() -> None:
    ignore = Dockerignore.parse("*\n!src\n!Dockerfile\n")
    assert ignore.excluded("README.md") is True
    assert ignore.excluded("src/main.c") is False
    assert ignore.excluded("Dockerfile") is False


def test_the_context_itself_is_never_excluded() -> None:
    assert excluded("*\n**\n", ".") is False


def test_the_dockerfile_and_dockerignore_are_matched_like_any_file() -> None:
    ignore = Dockerignore.parse("Dockerfile\n.dockerignore\n")
    assert ignore.excluded("Dockerfile") and ignore.excluded(".dockerignore")


def test_prunable_directories() -> None:
    ignore = Dockerignore.parse("build\nnode_modules\n!node_modules/keep\n!*/docs\n.git\n")
    assert ignore.prunable("build") is False  # !*/docs could match build/docs
    assert ignore.prunable(".git") is False  # likewise .git/docs
    assert ignore.prunable("node_modules") is False
    assert ignore.prunable("src") is False  # not excluded at all
    plain = Dockerignore.parse("build\n.git\n!src/keep\n")
    assert plain.prunable("build") is True and plain.prunable(".git") is True
    assert Dockerignore.parse("a\n!a/**/b\n").prunable("a") is False
    assert Dockerignore.parse("a\n!x/**/b\n").prunable("a") is True
    assert Dockerignore.parse("a\n").prunable("a/b") is True


def test_prunable_never_skips_a_reincluded_file() -> None:
    """Brute force: whatever prunable skips, excluded agrees is excluded, file by file."""
    files = ["a/b/c", "a/b/d.md", "a/docs/x", "b/keep", "b/x/keep", "c/d/e/f", "docs/a",
             "x.md", "a/keep"]
    for text in ("a\n!a/b\n", "*\n!*/keep\n", "a\nb\n!**/keep\n", "*\n!docs\n",
                 "**/b\n!a/b/*.md\n", "a\nc\n!c/d/e\n"):
        ignore = Dockerignore.parse(text)
        dirs = {"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)}
        for d in dirs:
            if ignore.prunable(d):
                beneath = [f for f in files if f.startswith(d + "/")]
                assert all(ignore.excluded(f) for f in beneath), (text, d)


def test_a_lone_exclamation_mark_and_a_bad_class_are_errors() -> None:
    with pytest.raises(DockerfileSyntaxError) as info:
        Dockerignore.parse("ok\n!\n", filename="ctx/.dockerignore")
    assert str(info.value).startswith("ctx/.dockerignore:2:")
    with pytest.raises(DockerfileSyntaxError, match="bad pattern"):
        Dockerignore.parse("file[0-9\n")


def test_clean_is_gos_filepath_clean() -> None:
    assert [clean(p) for p in ("", "a/", "./a", "a/./b", "a/../b", "//a", "../a", "/")] == [
        ".", "a", "a", "a/b", "b", "/a", "../a", "/"]
