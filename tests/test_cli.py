"""The lamina command as a user meets it: clear errors, no tracebacks, real output."""

from __future__ import annotations

import io
import json
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
    "import sys; from lamina.core.cli import app as cli\n"
    "def cmd_info(args, engine):\n    raise RuntimeError('planted\\nbug')\n"
    "cli.cmd_info = cmd_info\nsys.exit(cli.main(sys.argv[1:]))\n"
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
