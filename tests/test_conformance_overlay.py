"""What a conformance run of overlay must show, case by case.

No failure, every case that does not depend on a capability overlay lacks has
passed, the 500-layer read included. The whole matrix (tests/test_full_matrix.py)
applies these checks to overlay's run on every backing filesystem, ext4 among them
(a run on the machine's own ext4 disk as well would repeat its ext4 cell).
"""

from __future__ import annotations

from lamina.conformance import SuiteResult

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
