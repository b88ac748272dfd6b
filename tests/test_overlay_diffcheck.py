"""The native diff is used on this kernel and rebuilds the same tree as the generic diff.

:class:`DiffCheckingOverlayDriver` is the overlay driver with one addition:
every ``diff`` it is asked for is also made by the core's generic diff (two
mounted trees compared), both tars are applied onto copies of the parent's
tree, and the two results and the layer itself must be the same tree. The
whole conformance suite runs with it (a subprocess, ``--lamina-driver
module:Class``), so every scenario of the suite that diffs a layer checks
native against generic; each check is counted in a log file.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import pytest

from lamina.conformance import trees
from lamina.core.driver import LayerViews
from lamina.core.errors import DriverError
from lamina.core.host.treecopy import copy_tree
from lamina.core.layers.changes import generic_changes
from lamina.core.layertar.apply import apply_tar
from lamina.core.layertar.export import generic_diff
from lamina.drivers.overlay import OverlayDriver

pytestmark = [pytest.mark.root, pytest.mark.slow]

LOG_ENV = "LAMINA_OVERLAY_DIFFCHECK_LOG"


class DiffCheckingOverlayDriver(OverlayDriver):
    """Overlay whose every diff is checked against the generic diff, applied."""

    def diff(
        self, layer_id: str, parents: Sequence[str], out: IO[bytes], views: LayerViews
    ) -> int:
        assert self.features().native_diff, "native diff is off on this kernel"
        native, generic = io.BytesIO(), io.BytesIO()
        super().diff(layer_id, parents, native, views)
        generic_diff(layer_id, parents, generic, views, root_mode=self.capabilities.root_mode)
        scratch = Path(tempfile.mkdtemp(prefix="diffcheck-"))
        try:
            results = {}
            for name, data in (("native", native), ("generic", generic)):
                target = scratch / name
                if not parents:
                    target.mkdir(mode=self.capabilities.root_mode)
                else:
                    with views.view(parents[0]) as below:
                        copy_tree(below, target)
                apply_tar(io.BytesIO(data.getvalue()), target)
                results[name] = trees.snapshot(target)
            with views.view(layer_id) as layer:
                results["layer"] = trees.snapshot(layer)
            # tar cannot hold sockets: neither diff carries them
            sockets = [p for p, e in results["layer"].entries.items() if e.kind == "socket"]
            for path in sockets:
                del results["layer"].entries[path]
            if not parents:
                # a tar without a root entry cannot carry the root's mtime: the root
                # is as new as the apply, so that one field is not compared
                for name in ("native", "generic"):
                    results[name].entries[""] = dataclasses.replace(
                        results[name].entries[""], mtime_ns=results["layer"].entries[""].mtime_ns
                    )
            bad = trees.compare(results["generic"], results["native"])
            bad += trees.compare(results["layer"], results["native"])
            if bad:
                raise DriverError(
                    f"native diff of {layer_id} rebuilds another tree than the generic diff: "
                    + "; ".join(bad[:10])
                )
            want = generic_changes(
                layer_id, parents, views, root_mode=self.capabilities.root_mode
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        got = self.changes(layer_id, parents, views)
        log = os.environ.get(LOG_ENV)
        if log:
            with open(log, "a") as f:
                same = "same-changes" if got == want else f"other-changes {got} {want}"
                f.write(f"checked {layer_id} {same}\n")
        data = native.getvalue()
        out.write(data)
        return len(data)


def test_native_diff_is_used_here(tmp_path: Path) -> None:
    """On this kernel with the default options no redirect/metacopy xattrs appear."""
    home = tmp_path / "overlay"
    home.mkdir()
    driver = OverlayDriver(home)
    assert driver.features().native_diff
    assert ("Native Overlay Diff", "true") in driver.status()


def test_every_suite_scenario_same_tree_as_generic(tmp_path: Path) -> None:
    log = tmp_path / "checks.log"
    root = tmp_path / "root"
    root.mkdir()
    env = {**os.environ, LOG_ENV: str(log),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "lamina.conformance", "-p",
         "no:cacheprovider", "-q", "--basetemp", str(tmp_path / "bt"),
         "--lamina-driver", "test_overlay_diffcheck:DiffCheckingOverlayDriver",
         "--lamina-root", str(root)],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    lines = log.read_text().splitlines()
    assert len(lines) >= 30, f"only {len(lines)} diffs were checked"
    other = [line for line in lines if "other-changes" in line]
    assert not other, "\n".join(other[:5])
