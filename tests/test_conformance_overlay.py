"""The conformance suite passes on overlay on the machine's own disk.

The run calls the suite as a driver author's tests do (``lamina.conformance.run``)
and checks its result case by case: no failure, every case that does not
depend on a capability overlay lacks has passed, the 500-layer read included.
On loop xfs, btrfs, tmpfs and the filesystems without d_type, overlay runs in the
whole matrix (tests/test_full_matrix.py), checked case by case the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lamina.conformance import SuiteResult, run

pytestmark = [pytest.mark.root, pytest.mark.slow]

#: every case but 25 (rename_lower_dir=False) and 35 (quota=False)
EXPECTED = {*range(1, 25), *range(26, 35), *range(36, 44)}


def check_passes(result: SuiteResult) -> None:
    assert result.ok, result.summary()
    missing = EXPECTED - result.numbers("passed")
    assert not missing, f"cases that did not pass: {sorted(missing)}"
    assert result.case("test_32_base_file_through_deep_chain[500]").outcome == "passed"
    assert result.case("test_25_rename_lower_dir").message.startswith(
        "driver declares rename_lower_dir=False")
    assert result.case("test_35_quota").message.startswith("driver declares quota=False")


def test_suite_passes_on_the_machines_disk(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    check_passes(run("overlay", root, args=["-q"]))
    assert not [p for p in os.listdir(root) if not p.startswith("pytest")], os.listdir(root)
