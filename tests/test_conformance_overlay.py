"""The conformance suite passes on overlay: the machine's ext4, loop xfs (ftype=1), btrfs, tmpfs.

Each run is a subprocess exactly as a driver author runs the suite
(``python -m pytest --pyargs lamina.conformance --lamina-driver overlay``);
its JUnit report is read back: no failure, no error, every case that does not
depend on a capability overlay lacks has passed, the 500-layer read included.
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

#: every case but 25 (rename_lower_dir=False) and 35 (quota=False)
EXPECTED = {*range(1, 25), *range(26, 35), *range(36, 44)}


def run_suite(tmp: Path, root: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run the packaged suite on overlay under ``root``; return the process and outcomes."""
    report = tmp / "report.xml"
    cmd = [
        sys.executable, "-m", "pytest", "--pyargs", "lamina.conformance", "-p",
        "no:cacheprovider", "-q", "--basetemp", str(tmp / "basetemp"), f"--junitxml={report}",
        "--lamina-driver", "overlay", "--lamina-root", str(root), *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=tmp)
    outcomes: dict[str, str] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            kinds = {child.tag for child in case}
            outcome = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
            if outcome == "skipped":
                outcome += ": " + (case.find("skipped").get("message") or "")
            outcomes[case.get("name")] = outcome
    return proc, outcomes


def check_passes(proc: subprocess.CompletedProcess[str], outcomes: dict[str, str]) -> None:
    bad = {n: o for n, o in outcomes.items() if o in ("failure", "error")}
    assert proc.returncode == 0 and not bad, (
        f"conformance failures on overlay: {sorted(bad)}\n{proc.stdout[-6000:]}\n"
        f"{proc.stderr[-2000:]}"
    )
    passed = {int(m.group(1)) for n, o in outcomes.items()
              if o == "passed" and (m := re.match(r"test_(\d\d)_", n))}
    assert passed >= EXPECTED, f"cases that did not pass: {sorted(EXPECTED - passed)}"
    assert outcomes.get("test_32_base_file_through_deep_chain[500]") == "passed"
    assert outcomes["test_25_rename_lower_dir"].startswith(
        "skipped: driver declares rename_lower_dir=False")
    assert outcomes["test_35_quota"].startswith("skipped: driver declares quota=False")


def test_suite_passes_on_the_machines_disk(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    proc, outcomes = run_suite(tmp_path, root)
    check_passes(proc, outcomes)
    assert not [p for p in os.listdir(root) if not p.startswith("pytest")], os.listdir(root)


@pytest.mark.parametrize("kind", ["xfs", "btrfs", "tmpfs"])
def test_suite_passes_on_backing_filesystem(tmp_path: Path, kind: str) -> None:
    from lamina.conformance.backing import BackingUnavailable, backing_filesystem

    try:
        with backing_filesystem(kind, tmp_path / "backing", size_mb=2048) as fs:
            assert filesystem_type(fs.path) == kind
            proc, outcomes = run_suite(tmp_path, fs.path)
    except BackingUnavailable as exc:
        pytest.skip(str(exc))
    check_passes(proc, outcomes)
