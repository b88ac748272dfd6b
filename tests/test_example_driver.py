"""The driver kit: the fuse-overlayfs example installs like any third-party package and conforms.

The package in examples/lamina-fuse-overlayfs is installed with pip into a
private directory (no index, no dependencies: lamina itself comes from this
checkout) and used only from that directory on the path, as an installed plugin
is. Its own tests (the whole conformance suite through ``lamina.conformance.run``,
and its behaviour tests) then run on the machine's disk (ext4), each outcome read
from pytest's reports, and the matrix runner shows it as a row (the whole matrix,
tests/test_full_matrix.py, runs it on every backing filesystem).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import REPO, needs_root, run_lamina

from lamina.conformance.suite import CaseResult, Collector

EXAMPLE = REPO / "examples" / "lamina-fuse-overlayfs"

needs_fuse_overlayfs = pytest.mark.skipif(
    shutil.which("fuse-overlayfs") is None or not os.path.exists("/dev/fuse"),
    reason="fuse-overlayfs or /dev/fuse missing (.ci/setup installs fuse-overlayfs)",
)


@pytest.fixture(scope="module")
def site(example_site: Path) -> Path:
    return example_site


def run_example_tests(site: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example's own tests in a pytest session of their own; every one must pass."""
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("LAMINA_TEST_ROOT", str(root))
    collector = Collector()
    # importlib mode: the example's conftest must not replace lamina's `conftest` module
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir",
                        str(EXAMPLE), "--import-mode=importlib", str(EXAMPLE / "tests")],
                       plugins=[collector])
    cases = {case.name: case for case in collector.cases}
    bad = [c for c in cases.values() if c.outcome not in ("passed", "xfailed")]
    assert code == 0 and not bad, "\n".join(f"{c.test}: {c.outcome} {c.details or c.message}"
                                            for c in bad)
    suite: CaseResult = cases["test_lamina_conformance_suite"]
    assert suite.outcome == "passed", suite  # ran, not skipped


def test_installed_package_registers_through_its_entry_point(site: Path, tmp_path: Path) -> None:
    files = {p.name for p in site.iterdir()}
    assert "lamina_fuse_overlayfs" in files
    assert any(f.startswith("lamina_fuse_overlayfs-1.0.0.dist-info") for f in files), files
    out = run_lamina("drivers", "--format", "json", root=tmp_path / "root",
                     env={"PYTHONPATH": str(site)})
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    row = rows["fuse-overlayfs"]
    assert row["origin"] == "lamina-fuse-overlayfs 1.0.0"
    usable = os.geteuid() == 0 and shutil.which("fuse-overlayfs") is not None
    assert row["supported"] is usable, row


def test_example_uses_only_the_public_core_api() -> None:
    """A third-party package may import lamina.core.* and nothing else of lamina."""
    for source in (EXAMPLE / "lamina_fuse_overlayfs").glob("*.py"):
        for line in source.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and words[1].startswith("lamina"):
                module = words[1]
                assert module.startswith(("lamina.core", "lamina_fuse_overlayfs")), (
                    f"{source.name}: {line.strip()}")


@needs_root
@needs_fuse_overlayfs
def test_suite_passes_on_the_machines_disk(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path("/var/tmp") / f"lamina-example-{os.getpid()}"
    root.mkdir(mode=0o700)
    try:
        run_example_tests(site, root, monkeypatch)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@needs_root
@needs_fuse_overlayfs
def test_example_is_a_row_of_the_matrix(site: Path, tmp_path: Path) -> None:
    """``lamina conformance --driver fuse-overlayfs --fs tmpfs``: a passing row of the matrix."""
    report = tmp_path / "matrix.json"
    cases = "test_01 or test_06 or test_13 or test_37 or test_20_chown_only"
    proc = run_lamina("conformance", "--driver", "fuse-overlayfs", "--fs", "tmpfs",
                      "--size-mb", "512", "--workdir", str(tmp_path / "work"),
                      "--json", str(report), "-k", cases,
                      env={"PYTHONPATH": str(site)}, check=False)
    cells = json.loads(report.read_text())["cells"]
    assert [(c["driver"], c["fs"]) for c in cells] == [("fuse-overlayfs", "tmpfs")], cells
    cell = cells[0]
    assert cell["status"] == "passed" and cell["failures"] == [], cell
    assert cell["passed"] >= 6 and cell["skipped"] >= 1, cell  # the declared limit skips
    assert proc.returncode == 0, proc.stdout
