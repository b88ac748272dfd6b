"""lamina's conformance suite against this driver: ``pytest tests/`` (as root).

``LAMINA_TEST_ROOT`` chooses the backing filesystem (default: a temporary
directory). ``lamina.conformance.run`` runs the suite in a pytest session of
its own, so its options and fixtures stay its own; on failure the result's
summary names each failing case with its report.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lamina_fuse_overlayfs import FuseOverlayDriver

from lamina.conformance import run


def test_lamina_conformance_suite(tmp_path: Path) -> None:
    root = Path(os.environ.get("LAMINA_TEST_ROOT") or tmp_path)
    reason = FuseOverlayDriver.check_support(root)
    if reason:
        pytest.skip(reason)
    # case 44 runs on its own: lamina conformance
    result = run(FuseOverlayDriver, root, args=["-q", "-m", "not lamina_property"])
    assert result.ok, result.summary()
