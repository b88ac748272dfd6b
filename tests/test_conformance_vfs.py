"""The conformance suite passes on vfs, on the machine's disk and on a tmpfs.

The suite runs in a subprocess exactly as a driver author runs it
(``python -m pytest --pyargs lamina.conformance --lamina-driver vfs``), and
its JUnit report is read back: no failure, no error, every case number run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lamina.core.host.fsinfo import filesystem_type

pytestmark = [pytest.mark.root, pytest.mark.slow]

#: cases every driver runs; 25, 34 and 35 depend on capabilities
ALWAYS = [*range(1, 25), *range(26, 34), *range(36, 44)]


def run_suite(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run the packaged suite; return the process and {test name: outcome}."""
    report = tmp / "report.xml"
    cmd = [
        sys.executable, "-m", "pytest", "--pyargs", "lamina.conformance",
        "-p", "no:cacheprovider", "-q", "--basetemp", str(tmp / "basetemp"),
        f"--junitxml={report}", *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp,
                          env={**os.environ})
    outcomes: dict[str, str] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            kinds = {child.tag for child in case}
            outcome = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
            if outcome == "skipped":
                outcome += ": " + (case.find("skipped").get("message") or "")
            outcomes[case.get("name")] = outcome
    return proc, outcomes


def case_numbers(names: list[str]) -> set[int]:
    return {int(m.group(1)) for n in names if (m := re.match(r"test_(\d\d)_", n))}


def check_passes(proc: subprocess.CompletedProcess[str], outcomes: dict[str, str]) -> None:
    bad = {n: o for n, o in outcomes.items() if o in ("failure", "error")}
    assert proc.returncode == 0 and not bad, (
        f"conformance failures on vfs: {sorted(bad)}\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    )
    passed = [n for n, o in outcomes.items() if o == "passed"]
    assert len(passed) >= 60, f"only {len(passed)} conformance tests passed"
    missing = set(ALWAYS) - case_numbers(passed)
    assert not missing, f"cases that did not pass: {sorted(missing)}"
    # vfs declares rename_lower_dir; case 34 has no capability; vfs has no quota
    assert {25, 34} <= case_numbers(passed)
    assert outcomes.get("test_35_quota", "").startswith("skipped: driver declares quota=False")


def test_suite_passes_on_disk(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc, outcomes = run_suite(tmp_path, "--lamina-driver", "vfs", "--lamina-root", str(root))
    check_passes(proc, outcomes)
    assert not os.listdir(root), f"the suite left stores behind: {os.listdir(root)}"


def test_suite_passes_on_tmpfs(tmp_path: Path, tmpfs: Path) -> None:
    proc, outcomes = run_suite(tmp_path, "--lamina-driver", "vfs", "--lamina-root", str(tmpfs))
    assert filesystem_type(tmpfs) == "tmpfs"
    check_passes(proc, outcomes)


def test_suite_is_skipped_without_a_driver(tmp_path: Path) -> None:
    """Without --lamina-driver the plugin is inert: every case skips, saying what to pass."""
    proc, outcomes = run_suite(tmp_path, "-k", "test_01 or test_13")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert outcomes and all(
        o == "skipped: pass --lamina-driver NAME to run the lamina conformance suite"
        for o in outcomes.values()
    ), outcomes


def test_unknown_driver_is_a_usage_error(tmp_path: Path) -> None:
    proc, _ = run_suite(tmp_path, "--lamina-driver", "no-such-driver")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "no storage driver named 'no-such-driver'" in proc.stderr


def test_cli_runs_the_suite(tmp_path: Path) -> None:
    """`lamina conformance --driver vfs` runs the same suite (a few cases, for speed)."""
    # pytest options through PYTEST_ADDOPTS: the command's pass-through of
    # options after --driver is not what this test is about
    env = {
        **os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "PYTEST_ADDOPTS": f"-q -k 'test_01 or test_07' --basetemp {tmp_path / 'bt'}",
    }
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lamina"), "conformance", "--driver", "vfs"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.search(r"\b[2-9] passed", proc.stdout), proc.stdout[-2000:]
