"""The README's main job runs, start to end, as a newcomer would run it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from conftest import needs_root

REPO = Path(__file__).resolve().parent.parent


@needs_root
def test_quickstart_pulls_lists_and_runs(tmp_path: Path) -> None:
    for tool in ("docker-registry", "skopeo", "busybox"):
        assert shutil.which(tool), f"{tool} missing: .ci/setup installs it"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    env["QUICKSTART_ROOT"] = str(tmp_path / "store")
    proc = subprocess.run(["bash", str(REPO / "examples/quickstart.sh")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Status: Downloaded newer image for 127.0.0.1:" in out
    assert "demo/busybox" in out and "SHARED SIZE" in out
    assert "hello from 127.0.0.1:" in out
    images = subprocess.run([str(REPO / ".venv/bin/lamina"), "--root", str(tmp_path / "store"),
                             "images", "-q"], capture_output=True, text=True, check=True)
    assert len(images.stdout.split()) == 1
    assert not (tmp_path / "store" / "tmp").exists() or not list(
        (tmp_path / "store" / "tmp").glob("pull-*.part"))
