"""The conformance suite has teeth: it fails every deliberately broken driver, by case name.

Each mutant (tests/mutants/drivers.py) is vfs with one bug. The packaged
suite runs against it in a subprocess, exactly as a driver author runs it
(``--lamina-driver mutants.drivers:<Class>``), restricted with ``-k`` to the
cases expected to catch it, and its JUnit report must show every one of
those cases failing (a failure or a teardown error). vfs itself runs the
same selection as the control: those cases pass on a correct driver, so
the failures are the mutants' doing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO

from lamina.core.host import mounts

pytestmark = [pytest.mark.root, pytest.mark.slow]

#: mutant class -> the cases that must fail for it (by test name, parameters included)
CATCHES: dict[str, tuple[str, ...]] = {
    "IgnoresWhiteouts": (
        "test_15_delete_stays_deleted[tar]", "test_17_dir_deleted_then_recreated[tar]",
        "test_39_whiteout_with_nested_whiteout[dir-first]", "test_24_rename[commit]",
    ),
    "IgnoresOpaque": (
        "test_16_rm_rf_and_recreate_same_layer[tar]", "test_43_opaque_marker_order[marker-last]",
        "test_43_opaque_marker_order[marker-first]",
    ),
    "DropsXattrs": ("test_30_xattrs[tar]", "test_30_xattrs[commit]"),
    "DropsSetuid": ("test_13_base_tree_round_trip[tar]", "test_21_chmod_only[tar]"),
    "LosesHardlinks": (
        "test_13_base_tree_round_trip[tar]", "test_26_hardlink_lower_then_remove_original",
        "test_27_modify_one_hardlink_name",
    ),
    "RoundsMtimes": ("test_40_mtimes_truncated_not_rounded", "test_28_symlinks[tar]"),
    "TruncatesMtimes": ("test_40_mtimes_truncated_not_rounded", "test_28_symlinks[tar]"),
    "ReadOnlyAcceptsWrites": ("test_06_read_only_refuses_writes",),
    "LeaksMounts": ("test_07_mount_counting", "test_03_parent_chain"),
    "WritesReachParent": ("test_06_writable_layer_writes_stay_in_it",),
    "WrongRootMode": ("test_01_create_without_parent",),
    "ForgetsLayersOnRestart": ("test_09_restart_persistence",),
    "RemoveKeepsLayer": ("test_08_exists_and_list",),
    "IgnoresQuota": ("test_35_quota",),
    "IgnoresLayerQuota": ("test_46_layer_quota",),
    "CreatesOrphans": ("test_04_failed_create_leaves_nothing",),
    "CloseTwiceFails": ("test_10_close",),
    "StatusWithoutBackingFs": ("test_11_status",),
    "NondeterministicDiff": ("test_42_diff_deterministic",),
    "ExportsCharDeviceWhiteouts": ("test_38_exported_tar_format",),
}

#: what a leaked mount looks like at teardown (the store_factory's leak check)
LEAK_MESSAGE = "mounts left under the store root"


def _selection(names: tuple[str, ...]) -> str:
    """A ``-k`` expression choosing the test functions of ``names``."""
    functions = sorted({re.sub(r"\[.*\]$", "", name) for name in names})
    return " or ".join(functions)


def run_suite(driver: str, names: tuple[str, ...], tmp: Path) -> dict[str, tuple[str, str]]:
    """Run the selected cases against ``driver``; return {test name: (outcome, message)}."""
    tmp.mkdir(parents=True, exist_ok=True)
    report = tmp / "report.xml"
    cmd = [
        sys.executable, "-m", "pytest", "--pyargs", "lamina.conformance",
        "--lamina-driver", driver, "--lamina-root", str(tmp / "root"),
        "-p", "no:cacheprovider", "-q", "--basetemp", str(tmp / "basetemp"),
        f"--junitxml={report}", "-k", _selection(names),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp, env=env)
    leaked = mounts.mounts_under(tmp)
    for point in sorted(leaked, key=len, reverse=True):
        mounts.detach(Path(point))
    assert not leaked, f"{driver}: the suite run left mounts behind: {leaked}"
    assert report.exists(), f"{driver}: no JUnit report\n{proc.stdout[-3000:]}\n{proc.stderr}"
    outcomes: dict[str, tuple[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                # a test may fail and then error at teardown: keep both messages
                before = outcomes.get(name, ("passed", ""))
                outcome = tag if before[0] == "passed" else before[0]
                message = before[1] + (found.get("message") or "") + (found.text or "")
                outcomes[name] = (outcome, message)
        outcomes.setdefault(name, ("passed", ""))
    return outcomes


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, tuple[str, str]]]:
    """Every mutant's run and the vfs control run, two at a time (the machine has 2 cores)."""
    base = tmp_path_factory.mktemp("mutants")
    every = tuple(sorted({name for names in CATCHES.values() for name in names}))
    jobs = {"vfs": ("vfs", every)}
    jobs.update({m: (f"mutants.drivers:{m}", names) for m, names in CATCHES.items()})
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            key: pool.submit(run_suite, driver, names, base / key)
            for key, (driver, names) in jobs.items()
        }
        return {key: future.result() for key, future in futures.items()}


def test_every_mutant_is_listed() -> None:
    from mutants import MUTANTS

    assert set(MUTANTS) == set(CATCHES), "a mutant without expected cases, or the reverse"


#: cases vfs skips for lack of a capability; their control runs where a driver has it
CONTROLLED_ELSEWHERE = {
    "test_35_quota": "tests/test_conformance_btrfs.py: btrfs declares quota and passes it",
    "test_46_layer_quota": "tests/test_conformance_btrfs.py: btrfs declares layer_quota and "
    "passes it",
}


def test_control_vfs_passes_the_same_cases(reports) -> None:
    outcomes = reports["vfs"]
    expected = {name for names in CATCHES.values() for name in names}
    bad = {
        n: o[0]
        for n, o in outcomes.items()
        if n in expected and o[0] != "passed"
        and not (n in CONTROLLED_ELSEWHERE and o[0] == "skipped")
    }
    missing = expected - set(outcomes)
    assert not missing, f"cases not run on vfs (renamed?): {sorted(missing)}"
    assert not bad, f"the control run on vfs does not pass: {bad}"


@pytest.mark.parametrize("mutant", sorted(CATCHES))
def test_suite_catches_mutant(reports, mutant: str) -> None:
    """Every expected case fails (or errors) for the mutant."""
    outcomes = reports[mutant]
    missing = set(CATCHES[mutant]) - set(outcomes)
    assert not missing, f"{mutant}: cases not run: {sorted(missing)}"
    escaped = [n for n in CATCHES[mutant] if outcomes[n][0] not in ("failure", "error")]
    assert not escaped, (
        f"{mutant} got through {escaped}: these cases are too weak for the bug they exist for"
    )


def test_leaked_mounts_are_named_at_teardown(reports) -> None:
    """A driver whose unmount does nothing is reported as leaking mounts, not only by case 7."""
    outcomes = reports["LeaksMounts"]
    assert outcomes["test_03_parent_chain"][0] == "error", outcomes["test_03_parent_chain"]
    assert LEAK_MESSAGE in outcomes["test_03_parent_chain"][1]
