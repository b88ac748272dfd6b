"""The lamina command as a user meets it: clear errors, no tracebacks, real output."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import needs_root, run_lamina

from lamina.core.host.fsinfo import filesystem_type

VFS = {"LAMINA_DRIVER": "vfs"}


def stderr(proc) -> str:
    return proc.stderr.decode()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["layer", "rm", "nope"], "no layer 'nope'"),
        (["layer", "mount", "../etc"], "invalid layer id"),
        (["layer", "apply", "/nonexistent.tar"], "cannot read /nonexistent.tar"),
        (["--driver", "zfs", "info"], "no storage driver named 'zfs'"),
        (["--config", "/nonexistent.toml", "info"], "does not exist"),
    ],
)
def test_user_errors_are_one_clear_line(tmp_path: Path, args: list[str], expected: str) -> None:
    proc = run_lamina(*args, root=tmp_path / "root", env=VFS, check=False)
    assert proc.returncode != 0
    err = stderr(proc)
    assert "Traceback" not in err
    assert err.startswith("lamina: error: ")
    assert expected in err
    assert "hint: " in err


def test_bad_config_key_lists_valid_ones(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[drivers.vfs]\nsize = "1G"\n')
    proc = run_lamina("info", root=tmp_path / "root", check=False,
                      env={"LAMINA_CONFIG": str(config)})
    assert proc.returncode == 2
    assert "unknown option(s) size for driver 'vfs'" in stderr(proc)
    assert "Traceback" not in stderr(proc)


@needs_root
def test_junk_layer_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar file at all\n" * 100)
    root = tmp_path / "root"
    proc = run_lamina("layer", "apply", str(junk), root=root, env=VFS, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in stderr(proc)
    ls = run_lamina("layer", "ls", "--format", "json", root=root, env=VFS)
    assert json.loads(ls.stdout) == []


@needs_root
def test_layer_workflow(tmp_path: Path, busybox_tar: Path) -> None:
    root = tmp_path / "root"
    base = run_lamina("layer", "apply", str(busybox_tar), root=root, env=VFS).stdout.decode()
    base = base.strip()
    top = run_lamina("layer", "create", "--rw", "--parent", base, root=root,
                     env=VFS).stdout.decode().strip()
    path = Path(run_lamina("layer", "mount", top, root=root, env=VFS).stdout.decode().strip())
    (path / "root" / "new.txt").write_text("hello\n")
    (path / "etc" / "hostname").unlink()
    run_lamina("layer", "unmount", top, root=root, env=VFS)

    changes = run_lamina("layer", "changes", top, root=root, env=VFS).stdout.decode()
    lines = set(changes.splitlines())
    assert {"A /root/new.txt", "D /etc/hostname", "C /root", "C /etc"} <= lines

    out = tmp_path / "top.tar"
    run_lamina("layer", "diff", top, "-o", str(out), root=root, env=VFS)
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert "root/new.txt" in names and "etc/.wh.hostname" in names

    listing = json.loads(run_lamina("layer", "ls", "--format", "json", root=root,
                                    env=VFS).stdout)
    by_id = {row["id"]: row for row in listing}
    assert by_id[top]["parent"] == base and by_id[top]["writable"] is True
    assert by_id[base]["diff_id"].startswith("sha256:")
    assert by_id[base]["size"] == busybox_tar.stat().st_size

    proc = run_lamina("layer", "rm", base, root=root, env=VFS, check=False)
    assert proc.returncode != 0 and "child layer" in stderr(proc)
    run_lamina("layer", "rm", top, base, root=root, env=VFS)


@needs_root
def test_trace_prints_each_operation(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    root = tmp_path / "root"
    proc = run_lamina("--trace", "layer", "apply", "-", root=root, env=VFS, input=buf.getvalue())
    err = stderr(proc)
    assert "lamina trace: vfs create" in err
    assert "lamina trace: vfs apply" in err
    assert " ms" in err
    layer = proc.stdout.decode().strip()
    proc = run_lamina("layer", "rm", layer, root=root, env={**VFS, "LAMINA_TRACE": "1"})
    assert "lamina trace: vfs remove" in stderr(proc)


def test_info_and_drivers(tmp_path: Path) -> None:
    info = json.loads(run_lamina("info", "--format", "json", root=tmp_path / "r").stdout)
    assert info["driver"] in {"vfs", "overlay", "btrfs"}
    assert info["backing_filesystem"] == filesystem_type(tmp_path)
    assert info["why"]
    text = run_lamina("info", root=tmp_path / "r").stdout.decode()
    assert "chosen because" in text
    drivers = run_lamina("drivers", root=tmp_path / "r").stdout.decode()
    assert "vfs" in drivers


# a bug planted in the real command: what a user sees of an exception lamina did not expect
_PLANTED_BUG = (
    "import sys; from lamina.core.cli import main, system\n"
    "def cmd_info(args, engine):\n    raise RuntimeError('planted\\nbug')\n"
    "system.cmd_info = cmd_info\nsys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize("debug", [False, True])
def test_a_bug_is_one_line_and_debug_shows_its_traceback(tmp_path: Path, debug: bool) -> None:
    import subprocess
    import sys

    args = ["--debug"] if debug else []
    proc = subprocess.run(
        [sys.executable, "-c", _PLANTED_BUG, *args, "--root", str(tmp_path / "r"), "info"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert ("Traceback (most recent call last):" in lines) is debug
    assert lines[-2] == "lamina: error: unexpected RuntimeError: planted bug"
    assert lines[-1].startswith("hint: this is a bug in lamina: rerun with --debug")
    if not debug:
        assert len(lines) == 2


def test_debug_shows_the_traceback_of_a_user_error_too(tmp_path: Path) -> None:
    proc = run_lamina("--debug", "layer", "mount", "nope", root=tmp_path / "root", env=VFS,
                      check=False)
    assert proc.returncode == 1
    assert "Traceback (most recent call last):" in stderr(proc)
    assert "lamina: error: no layer 'nope'" in stderr(proc)


def one_file_tar(size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("file")
        info.size = size
        tar.addfile(info, io.BytesIO(b"x" * size))
    return buf.getvalue()


@needs_root
def test_short_ids_name_layers_in_every_command(tmp_path: Path) -> None:
    root = tmp_path / "root"

    def lamina(*args: str, check: bool = True, input: bytes | None = None):
        return run_lamina(*args, root=root, env=VFS, check=check, input=input)

    base = lamina("layer", "apply", "-", input=one_file_tar(10)).stdout.decode().strip()
    listed = lamina("layer", "ls").stdout.decode().splitlines()[1].split()[0]
    assert len(listed) == 12 and base.startswith(listed)
    top = lamina("layer", "create", "--rw", "--parent", listed).stdout.decode().strip()
    on_top = lamina("layer", "apply", "--parent", listed, "-",
                    input=one_file_tar(3)).stdout.decode().strip()
    short = top[:12]
    path = Path(lamina("layer", "mount", short).stdout.decode().strip())
    (path / "new").write_text("hi\n")
    lamina("layer", "unmount", short)
    assert "A /new" in lamina("layer", "changes", short).stdout.decode().splitlines()
    lamina("layer", "diff", short, "-o", str(tmp_path / "top.tar"))
    with tarfile.open(tmp_path / "top.tar") as tar:
        assert "new" in tar.getnames()
    lamina("layer", "rm", short, on_top[:5])
    lamina("layer", "rm", base[:1])
    assert json.loads(lamina("layer", "ls", "--format", "json").stdout) == []


@needs_root
def test_ambiguous_and_unknown_short_ids_are_clear_errors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for layer_id in ["cafe", "cafe01", "cafe02"]:
        run_lamina("layer", "create", "--id", layer_id, root=root, env=VFS)
    proc = run_lamina("layer", "mount", "caf", root=root, env=VFS, check=False)
    assert proc.returncode == 1
    assert stderr(proc).splitlines() == [
        "lamina: error: layer id 'caf' is ambiguous: 3 layers start with it "
        "(cafe, cafe01, cafe02)",
        "hint: give more characters of the id",
    ]
    proc = run_lamina("layer", "create", "--parent", "dead", root=root, env=VFS, check=False)
    assert proc.returncode == 1 and "no layer 'dead'" in stderr(proc)
    assert "Traceback" not in stderr(proc)
    # a full id wins over the ids it is a prefix of (Docker's rule)
    run_lamina("layer", "rm", "cafe", root=root, env=VFS)
    ids = run_lamina("layer", "ls", "-q", root=root, env=VFS).stdout.decode().split()
    assert sorted(ids) == ["cafe01", "cafe02"]


BLOCK_IMPORTS = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # `import name` now fails as if it were not installed
del sys.argv[1]
from lamina.core.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize("blocked", ["pytest", "hypothesis"])
@pytest.mark.parametrize("matrix", [False, True])
def test_conformance_without_its_extra_says_what_to_install(
    tmp_path: Path, blocked: str, matrix: bool
) -> None:
    workdir = tmp_path / "w"
    args = ["--driver", "all", "--fs", "tmpfs", "--workdir", str(workdir)] if matrix else []
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_IMPORTS, blocked, "--root", str(tmp_path / "r"),
         "--driver", "vfs", "conformance", *args],
        capture_output=True, timeout=120,
    )
    assert proc.returncode == 1
    assert stderr(proc).splitlines() == [
        f"lamina: error: the conformance suite needs {blocked}, which is not installed",
        "hint: install lamina's conformance extra: pip install 'lamina[conformance]'",
    ]
    assert not workdir.exists()


def test_conformance_extra_holds_what_the_suite_imports() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extra = project["project"]["optional-dependencies"]["conformance"]
    assert {re.split(r"[<>=!~ ;\[]", req)[0] for req in extra} == {"pytest", "hypothesis"}


def test_version_comes_from_the_installed_metadata() -> None:
    import importlib.metadata

    proc = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom lamina.core.cli import main\n"
         "try:\n    main()\nexcept SystemExit:\n    pass\n"
         "print('importlib.metadata' in sys.modules, file=sys.stderr)", "--version"],
        capture_output=True, timeout=60,
    )
    assert proc.stdout.decode() == f"lamina {importlib.metadata.version('lamina')}\n"
    assert stderr(proc) == "False\n"  # read from the METADATA header, as `lamina drivers` does


@needs_root
def test_layer_table_shows_sizes_for_people_and_json_exact_bytes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    layer = run_lamina("layer", "apply", "-", root=root, env=VFS,
                       input=one_file_tar(5000)).stdout.decode().strip()
    table = run_lamina("layer", "ls", root=root, env=VFS).stdout.decode().splitlines()
    assert table[0].split()[:4] == ["ID", "PARENT", "MODE", "SIZE"]
    assert table[1].split()[:4] == [layer[:12], "ro", "10.2", "kB"]
    rows = json.loads(run_lamina("layer", "ls", "--format", "json", root=root, env=VFS).stdout)
    assert rows[0]["size"] == 10240


@pytest.mark.parametrize(
    "size, text",
    [(0, "0 B"), (999, "999 B"), (1000, "1 kB"), (10240, "10.2 kB"), (2_100_000, "2.1 MB"),
     (999_999, "1 MB"), (123_456_789, "123 MB"), (5 * 10**9, "5 GB"), (10**21, "1 ZB")],
)
def test_human_size(size: int, text: str) -> None:
    from lamina.core.cli.sizes import human_size

    assert human_size(size) == text


@needs_root
def test_info_lists_layers_once_and_says_why_truthfully(tmp_path: Path) -> None:
    root = tmp_path / "root"
    layer = run_lamina("layer", "create", root=root, env=VFS).stdout.decode().strip()
    text = run_lamina("info", root=root).stdout.decode()
    assert [line.split() for line in text.splitlines() if "Layers:" in line] == [
        ["Layers:", "1"]
    ]
    info = json.loads(run_lamina("info", "--format", "json", root=root).stdout)
    assert info["driver"] == "vfs" and "records layers of it" in info["why"]
    run_lamina("layer", "rm", layer, root=root, env=VFS)
    info = json.loads(run_lamina("info", "--format", "json", root=root).stdout)
    assert info["layers"] == 0
    # with no layer left, no driver is prior: the choice says why without claiming layers
    assert "records layers" not in info["why"] and "already has layers" not in info["why"]


@needs_root
def test_info_never_hides_a_disagreeing_layer_count(tmp_path: Path) -> None:
    root = tmp_path / "root"
    layer = run_lamina("layer", "create", root=root, env=VFS).stdout.decode().strip()
    with sqlite3.connect(root / "lamina.db") as db:
        db.execute("DELETE FROM layers WHERE id = ?", (layer,))
    db.close()
    proc = run_lamina("info", root=root, env=VFS, check=False)
    if proc.returncode == 0:
        lines = [line for line in proc.stdout.decode().splitlines() if "Layers:" in line]
        assert len(lines) == 1
        assert lines[0].split()[:2] == ["Layers:", "0"]
        assert "the vfs driver's home holds 1" in lines[0]
    else:  # a store that refuses to open over a disagreement says so clearly
        assert stderr(proc).startswith("lamina: error: ") and "Traceback" not in stderr(proc)


def test_plain_tables_look_as_rich_draws_them() -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from lamina.core.cli.tables import plain_lines

    columns = ["ID", "PARENT", "MODE", "SIZE"]
    for title, rows in [
        (None, [["abc", "", "rw", "10.2 kB"], ["abcdefabcdef", "x", "ro", ""]]),
        ("Storage drivers (root /x)", [["a", "[b]", "c", "d"]]),
        (None, []),
    ]:
        table = Table(title=title, box=None, header_style="bold", pad_edge=False)
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*(Text(c) for c in row))  # "[b]" as text, not markup
        console = Console(soft_wrap=True, width=1000, record=True, file=io.StringIO())
        console.print(table)
        assert plain_lines(title, columns, rows, width=1000, styled=False) == (
            console.export_text().splitlines()
        )
    # what rich must fold or measure is left to it
    rows = [["abcdefabcdef", "abcdefabcdef", "ro", "10.2 kB"]]
    assert plain_lines(None, columns, rows, width=20, styled=False) is None
    assert plain_lines(None, ["ID"], [["\u4e2d"]], width=1000, styled=False) is None


@needs_root
def test_layer_table_is_drawn_without_importing_rich(tmp_path: Path) -> None:
    """rich costs ~0.4 ms a row: 5,000 layers would take 2 s (the plain path: ~10 ms)."""
    root = tmp_path / "root"
    layer = run_lamina("layer", "create", root=root, env=VFS).stdout.decode().strip()
    code = (
        "import sys\n"
        "from lamina.core.cli import main\n"
        f"rc = main(['--driver', 'vfs', '--root', {str(root)!r}, 'layer', 'ls'])\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert proc.stdout.decode().splitlines()[1].startswith(layer[:12] + "  ")
    assert "rich" not in stderr(proc).split()
