"""What a conformance run of vfs must show, and the suite's own entry points.

:func:`check_passes` is applied by the whole matrix (tests/test_full_matrix.py) to
vfs's run on every backing filesystem, ext4 among them: no failure, every case
number run. The tests here check how the suite is started (as a pytest plugin
without a driver, with an unknown one, through the CLI).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lamina.conformance import SuiteResult
from lamina.conformance.suite import Collector

pytestmark = [pytest.mark.root, pytest.mark.slow]

#: cases every driver runs; 25, 34 and 35 depend on capabilities
ALWAYS = {*range(1, 25), *range(26, 34), *range(36, 44)}


def check_passes(result: SuiteResult) -> None:
    assert result.ok, result.summary()
    assert result.passed >= 60, f"only {result.passed} conformance tests passed"
    missing = ALWAYS - result.numbers("passed")
    assert not missing, f"cases that did not pass: {sorted(missing)}"
    # vfs declares rename_lower_dir; case 34 has no capability; vfs has no quota
    assert {25, 34} <= result.numbers("passed")
    assert result.case("test_35_quota").message.startswith("driver declares quota=False")


def test_suite_is_skipped_without_a_driver() -> None:
    """Without --lamina-driver the plugin is inert: every case skips, saying what to pass."""
    collector = Collector()
    code = pytest.main(["--pyargs", "lamina.conformance", "-q", "-p", "no:cacheprovider",
                        "-c", os.devnull, "--rootdir", str(Path.cwd()),
                        "-k", "test_01 or test_13"], plugins=[collector])
    assert code == 0
    assert collector.cases and all(
        (c.outcome, c.message) == ("skipped", "pass --lamina-driver NAME to run the lamina "
                                   "conformance suite") for c in collector.cases
    ), collector.cases


def test_unknown_driver_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "lamina.conformance", "-p",
         "no:cacheprovider", "--lamina-driver", "no-such-driver"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
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
