"""The conformance matrix: real loop-device filesystems, real child pytests, real signals.

Each test runs ``lamina conformance`` as a user does, in a child process,
limited with ``-k`` to a few quick cases, and then checks what it printed,
wrote (JSON, JUnit) and left behind (nothing: no mount, no loop device).
Deliberately broken drivers are ``module:Class`` specs from a module
written to a temporary directory on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import needs_root

from lamina.core.host import mounts

pytestmark = [needs_root, pytest.mark.root]

QUICK = "test_01 or test_11"

DRIVERS = '''
from pathlib import Path

from lamina.core.host.fsinfo import filesystem_type
from lamina.drivers.vfs import VfsDriver


class LiarDriver(VfsDriver):
    """vfs, but status() always claims ext4: conforming on ext4 only."""

    name = "liar"

    def status(self):
        return [("Backing Filesystem", "ext4")]


class PickyDriver(VfsDriver):
    """vfs that refuses tmpfs in its support check."""

    name = "picky"

    @classmethod
    def check_support(cls, root: Path):
        if filesystem_type(root) == "tmpfs":
            return "picky does not work on tmpfs (test driver)"
        return super().check_support(root)


class CrashyDriver(VfsDriver):
    """vfs whose support check crashes: a bug, not "unsupported"."""

    name = "crashy"

    @classmethod
    def check_support(cls, root: Path):
        raise RuntimeError("boom")
'''


@pytest.fixture
def workdir(tmp_path: Path):
    """The matrix's work directory; whatever a test leaves there is removed, then reported."""
    path = tmp_path / "work"
    yield path
    from lamina.conformance.backing import cleanup_leftovers

    left = cleanup_leftovers(path)
    assert not left, f"the matrix run left these behind: {left}"


@pytest.fixture
def broken_drivers(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "matrix_test_drivers.py").write_text(textwrap.dedent(DRIVERS))
    return site


def lamina_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lamina.core.cli", "conformance", *args]


def env(tmp_path: Path, pythonpath: Path | None = None) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("LAMINA_", "PYTEST_"))
         or k.startswith("LAMINA_PROPERTY_")}
    e["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    if pythonpath is not None:
        e["PYTHONPATH"] = str(pythonpath)
    return e


def run(tmp_path: Path, *args: str, pythonpath: Path | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lamina_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path, env=env(tmp_path, pythonpath))


def loops_for(workdir: Path) -> list[str]:
    out = subprocess.run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.split() if line.startswith(str(workdir.resolve()) + "/")]


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (the cell's child pytest)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def assert_nothing_left(workdir: Path) -> None:
    assert mounts.mounts_under(workdir, include_self=True) == []
    assert loops_for(workdir) == []
    assert list(workdir.glob("*.img")) == []
    assert processes_mentioning(str(workdir.resolve()) + "/") == []


def matrix_row(stdout: str, driver: str) -> str:
    """The first table line of a driver's row."""
    pattern = re.compile(rf"[│|]\s*{re.escape(driver)}\s")
    rows = [line for line in stdout.splitlines() if pattern.match(line)]
    assert rows, f"no row for {driver} in:\n{stdout}"
    return rows[0]


def suites(junit: Path) -> dict[str, ET.Element]:
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    return {s.get("name"): s for s in root.iter("testsuite")}


# --- outcomes --------------------------------------------------------------------------


def test_vfs_on_ext4_and_tmpfs(tmp_path: Path, workdir: Path) -> None:
    report, junit = tmp_path / "m.json", tmp_path / "m.xml"
    proc = run(tmp_path, "--driver", "vfs", "--fs", "ext4,tmpfs", "-k", QUICK, "--workdir",
               str(workdir), "--json", str(report), "--junit", str(junit), "--size-mb", "512")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header = next(line for line in proc.stdout.splitlines() if "driver" in line)
    assert header.index("ext4") < header.index("tmpfs")
    assert matrix_row(proc.stdout, "vfs").count("passed 2") == 2
    assert re.search(r"\d+\.\d s", proc.stdout)
    assert "2 cells in" in proc.stdout and "every cell passed or is not applicable" in proc.stdout
    assert "[1/2] vfs@ext4: passed 2" in proc.stderr

    data = json.loads(report.read_text())
    assert data["ok"] is True and data["drivers"] == ["vfs"]
    assert data["filesystems"] == ["ext4", "tmpfs"]
    cells = {(c["driver"], c["fs"]): c for c in data["cells"]}
    for fs in ("ext4", "tmpfs"):
        cell = cells[("vfs", fs)]
        assert (cell["status"], cell["passed"], cell["failed"]) == ("passed", 2, 0), cell
        assert cell["failures"] == [] and cell["reason"] is None
        assert 0 < cell["seconds"] < 120

    found = suites(junit)
    assert set(found) == {"vfs@ext4", "vfs@tmpfs"}
    for name, suite in found.items():
        assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "0")
        cases = {c.get("name"): c.get("classname") for c in suite.iter("testcase")}
        assert set(cases) == {"test_01_create_without_parent", "test_11_status"}
        assert all(cls.startswith(name + ".") for cls in cases.values())
    assert_nothing_left(workdir)


def test_failing_cell_names_the_case(tmp_path: Path, workdir: Path, broken_drivers: Path) -> None:
    """A driver that is right on ext4 and wrong on tmpfs: one failed cell, exit 1."""
    report, junit = tmp_path / "m.json", tmp_path / "m.xml"
    proc = run(tmp_path, "--driver", "matrix_test_drivers:LiarDriver,vfs", "--fs", "ext4,tmpfs",
               "-k", QUICK, "--workdir", str(workdir), "--json", str(report), "--junit",
               str(junit), "--size-mb", "512", pythonpath=broken_drivers)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    liar = matrix_row(proc.stdout, "liar")
    assert "passed 2" in liar and "FAILED 1/2" in liar
    assert matrix_row(proc.stdout, "vfs").count("passed 2") == 2
    failed_part = proc.stdout.split("Failed in liar@tmpfs (1 of 2):", 1)
    assert len(failed_part) == 2, proc.stdout
    assert "test_11_status" in failed_part[1].splitlines()[1]
    assert "some cells FAILED" in proc.stdout

    cells = {(c["driver"], c["fs"]): c for c in json.loads(report.read_text())["cells"]}
    bad = cells[("liar", "tmpfs")]
    assert (bad["status"], bad["passed"], bad["failed"]) == ("failed", 1, 1)
    assert [f["test"] for f in bad["failures"]] == ["test_lifecycle::test_11_status"]
    assert "tmpfs" in bad["failures"][0]["message"]
    assert cells[("liar", "ext4")]["status"] == "passed"
    assert cells[("vfs", "tmpfs")]["status"] == "passed"

    suite = suites(junit)["liar@tmpfs"]
    assert suite.get("failures") == "1"
    failing = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failing] == ["test_11_status"]
    assert_nothing_left(workdir)


def test_not_applicable_cells_exit_zero(tmp_path: Path, workdir: Path,
                                        broken_drivers: Path) -> None:
    """A driver that refuses tmpfs, and xfs-noftype (which this kernel cannot mount): exit 0."""
    report, junit = tmp_path / "m.json", tmp_path / "m.xml"
    proc = run(tmp_path, "--driver", "matrix_test_drivers:PickyDriver,vfs", "--fs",
               "tmpfs,xfs-noftype", "-k", "test_01", "--workdir", str(workdir), "--json",
               str(report), "--junit", str(junit), "--size-mb", "512", pythonpath=broken_drivers)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = {(c["driver"], c["fs"]): c for c in json.loads(report.read_text())["cells"]}
    assert cells[("picky", "tmpfs")]["status"] == "n/a"
    assert cells[("picky", "tmpfs")]["reason"] == "picky does not work on tmpfs (test driver)"
    assert cells[("vfs", "tmpfs")]["status"] == "passed"
    assert "picky@tmpfs: picky does not work on tmpfs (test driver)" in proc.stdout
    assert "n/a" in matrix_row(proc.stdout, "picky")

    noftype = cells[("vfs", "xfs-noftype")]
    if noftype["status"] == "n/a":  # this kernel has no XFS V4
        assert "V4" in noftype["reason"] or "cannot mount" in noftype["reason"]
        assert f"vfs@xfs-noftype: {noftype['reason']}" in proc.stdout
        assert cells[("picky", "xfs-noftype")]["reason"] == noftype["reason"]
    else:
        assert noftype["status"] == "passed"

    suite = suites(junit)["picky@tmpfs"]
    assert suite.get("skipped") == "1" and suite.get("failures") == "0"
    skipped = suite.find("testcase/skipped")
    assert skipped is not None and "picky does not work on tmpfs" in skipped.get("message")
    assert_nothing_left(workdir)


def test_error_cells(tmp_path: Path, workdir: Path, broken_drivers: Path) -> None:
    """A crashing support check and a -k that selects nothing are errors, not passes."""
    junit = tmp_path / "m.xml"
    proc = run(tmp_path, "--driver", "matrix_test_drivers:CrashyDriver,vfs", "--fs", "tmpfs",
               "-k", "no_such_case", "--workdir", str(workdir), "--junit", str(junit),
               pythonpath=broken_drivers)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for driver in ("crashy", "vfs"):
        assert "ERROR" in matrix_row(proc.stdout, driver)
    assert ("Error in crashy@tmpfs: the support check of driver 'crashy' failed: "
            "RuntimeError: boom") in proc.stdout
    assert "Error in vfs@tmpfs: no test was selected (pytest exit 5): check -k" in proc.stdout
    found = suites(junit)
    for name in ("crashy@tmpfs", "vfs@tmpfs"):
        assert found[name].get("errors") == "1"
        assert found[name].find("testcase/error") is not None
    assert_nothing_left(workdir)


def test_cells_are_never_truncated() -> None:
    """Wide cells widen the table instead of becoming "FAILED 2/…" on an 80-column pipe."""
    import io

    from lamina.conformance.matrix import Cell, MatrixResult, render

    fss = ["ext4", "xfs", "xfs-noftype", "btrfs", "tmpfs"]
    result = MatrixResult(["a-rather-long-driver-name"], fss, {})
    for fs in fss:
        result.cells[("a-rather-long-driver-name", fs)] = Cell(
            "a-rather-long-driver-name", fs, "failed", passed=100, failed=123, seconds=1234.5,
            failures=[{"test": "test_x::test_01", "message": "m"}])
    out = io.StringIO()
    render(result, out)
    text = out.getvalue()
    assert "…" not in text
    assert matrix_row(text, "a-rather-long-driver-name").count("FAILED 123/223") == 5
    assert text.count("  test_x::test_01: m") == 5
    assert "some cells FAILED" in text


def test_bad_arguments(tmp_path: Path) -> None:
    proc = run(tmp_path, "--driver", "vfs", "--fs", "ext4,zfs")
    assert proc.returncode == 2
    assert "unknown filesystem zfs" in proc.stderr and "hint: choose from ext4" in proc.stderr
    busy = tmp_path / "precious"
    busy.mkdir()
    (busy / "data").write_text("keep me")
    proc = run(tmp_path, "--driver", "vfs", "--fs", "tmpfs", "--workdir", str(busy))
    assert proc.returncode == 2
    assert "was not made by `lamina conformance`" in proc.stderr
    assert (busy / "data").read_text() == "keep me"
    proc = run(tmp_path, "--driver", "no-such-driver", "--fs", "tmpfs")
    assert proc.returncode == 2 and "no storage driver named 'no-such-driver'" in proc.stderr


def test_single_driver_form_runs_in_process(tmp_path: Path) -> None:
    """`lamina conformance --driver vfs` alone: the suite as before, no matrix, no loop device."""
    proc = run(tmp_path, "--driver", "vfs", "-k", "test_01", "-q",
               "--basetemp", str(tmp_path / "bt"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\b1 passed", proc.stdout), proc.stdout
    assert "conformance matrix" not in proc.stdout


# --- interruption and leftovers ---------------------------------------------------------


def start_long_run(tmp_path: Path, workdir: Path) -> subprocess.Popen[str]:
    """A matrix run whose first cell (the whole suite on ext4) takes several seconds."""
    proc = subprocess.Popen(
        lamina_cmd("--driver", "vfs", "--fs", "ext4,tmpfs", "--workdir", str(workdir),
                   "--size-mb", "512"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env=env(tmp_path),
    )
    log = workdir / "reports" / "vfs@ext4.log"
    deadline = time.monotonic() + 60
    # wait until the cell's pytest is inside the suite: its stores exist on the ext4
    while not (log.exists() and "lamina conformance: driver" in log.read_text(errors="replace")
               and any((workdir / "ext4" / "vfs").glob("*"))):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the matrix run never started its first cell"
        time.sleep(0.05)
    assert mounts.is_mountpoint(workdir / "ext4") and loops_for(workdir)
    return proc


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_cleans_up(tmp_path: Path, workdir: Path, signum: int) -> None:
    proc = start_long_run(tmp_path, workdir)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    if signum == signal.SIGINT:
        assert proc.returncode == 130, out + err
        assert "interrupted" in err
    else:
        assert proc.returncode == -signal.SIGTERM, out + err  # re-raised after the cleanup
    assert "[2/2]" not in err, "the run went on after the signal"
    assert_nothing_left(workdir)


def test_leftovers_of_a_killed_run_are_removed_by_the_next(tmp_path: Path,
                                                           workdir: Path) -> None:
    proc = start_long_run(tmp_path, workdir)
    proc.kill()
    proc.communicate(timeout=30)
    # SIGKILL runs no cleanup: the ext4 stays mounted on its loop device
    assert mounts.is_mountpoint(workdir / "ext4") and loops_for(workdir)
    nxt = run(tmp_path, "--driver", "vfs", "--fs", "tmpfs", "-k", "test_01", "--workdir",
              str(workdir))
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    assert "removed what an interrupted run left" in nxt.stderr
    assert "unmounted" in nxt.stderr and "detached /dev/loop" in nxt.stderr
    assert "passed 1" in matrix_row(nxt.stdout, "vfs")
    # the killed run's pytest (told by the kernel that its parent died) has gone too
    assert_nothing_left(workdir)
