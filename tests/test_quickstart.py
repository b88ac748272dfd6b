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
    for tool in ("docker-registry", "skopeo", "busybox", "unshare"):
        assert shutil.which(tool), f"{tool} missing: .ci/setup installs it"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    env["QUICKSTART_ROOT"] = str(tmp_path / "store")
    # in a network namespace of its own (loopback up): the registry on 127.0.0.1, the
    # lamina0 bridge and its nftables table never touch the host's network
    script = f"ip link set lo up && exec bash {REPO / 'examples/quickstart.sh'}"
    proc = subprocess.run(["unshare", "--net", "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Status: Downloaded newer image for 127.0.0.1:" in out
    assert "demo/busybox" in out and "SHARED SIZE" in out
    # a container's output, the interactive shell's view and status, a detached one's log
    assert "\nhello from 127.0.0.1:" in out
    assert "Successfully tagged demo/app:1" in out
    assert "a file from the build context\nbuilt by lamina on " in out
    assert "I am demo, pid 1, user 0, in /" in out
    assert "my address on the bridge: 10.87." in out
    assert "the shell's exit status came back: 3" in out
    assert "\nweb started\n" in out and "sleep" in out
    assert "Storage driver:" in out
    containers = subprocess.run([str(REPO / ".venv/bin/lamina"), "--root",
                                 str(tmp_path / "store"), "ps", "-a", "-q"],
                                capture_output=True, text=True, check=True)
    assert containers.stdout == ""  # --rm and rm -f left none
    images = subprocess.run([str(REPO / ".venv/bin/lamina"), "--root", str(tmp_path / "store"),
                             "images", "-q"], capture_output=True, text=True, check=True)
    assert len(images.stdout.split()) == 2  # the pulled image and the one built on it
    assert not (tmp_path / "store" / "tmp").exists() or not list(
        (tmp_path / "store" / "tmp").glob("pull-*.part"))
