"""lamina's conformance suite against this driver: ``pytest tests/`` (as root).

``LAMINA_TEST_ROOT`` chooses the backing filesystem (default: a temporary
directory). The suite runs in a pytest of its own, so its options and
fixtures stay its own; on failure its report is shown.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from lamina_fuse_overlayfs import FuseOverlayDriver


def test_lamina_conformance_suite(tmp_path: Path) -> None:
    root = Path(os.environ.get("LAMINA_TEST_ROOT") or tmp_path)
    reason = FuseOverlayDriver.check_support(root)
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "lamina.conformance", "-q", "-rfE",
         "-p", "no:cacheprovider", "--lamina-driver=fuse-overlayfs", f"--lamina-root={root}",
         "-m", "not lamina_property"],  # case 44 runs on its own: lamina conformance
        capture_output=True, text=True,
    )
    failed = {line.split("::", 1)[1].split(" ", 1)[0] for line in proc.stdout.splitlines()
              if line.startswith(("FAILED ", "ERROR ")) and "::" in line}
    assert proc.returncode == 0 and " passed" in proc.stdout and not failed, proc.stdout[-8000:]
