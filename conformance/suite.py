"""The suite as a call: :func:`run` a driver through every case, get a :class:`SuiteResult`.

A driver author's own tests, lamina's tests and the matrix all need the same
thing: run the suite for one driver on one directory and know, per case,
what happened. :func:`run` runs the packaged suite with ``pytest.main`` in
this process and a small pytest plugin (:class:`Collector`) that keeps each
case's reports, so nobody parses pytest's output or a JUnit file::

    from lamina.conformance import run

    result = run("dircopy", root="/mnt/xfs/test", args=["-m", "not lamina_property"])
    assert result.ok, result.summary()

The matrix runs each cell in a child process (a crash or hang costs that cell
only): ``python -m lamina.conformance.suite --driver D --root DIR --result
FILE.json [pytest options]`` runs :func:`run` and writes the result as JSON,
which :meth:`SuiteResult.from_dict` reads back.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lamina.core.driver import Driver

#: what a case can come to; a failure in set-up or teardown (a leaked mount) is "failed"
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed")


@dataclass
class CaseResult:
    """One test of the suite: a numbered case, or one parameter of it."""

    #: the test's name, ``test_11_status`` or ``test_32_base_file_through_deep_chain[500]``
    name: str
    #: the module it is in, ``test_lifecycle``
    module: str
    #: one of :data:`OUTCOMES`
    outcome: str
    #: the exception's message for a failure, the reason for a skip or an xfail, else ""
    message: str = ""
    #: set-up, call and teardown, in seconds
    duration: float = 0.0
    #: the full failure report (traceback, captured output), else ""
    details: str = ""

    @property
    def number(self) -> int | None:
        """The case number (11 for ``test_11_status``); None for a test without one."""
        digits = self.name.removeprefix("test_")[:2]
        return int(digits) if digits.isdigit() else None

    @property
    def test(self) -> str:
        """``module::name``, how the matrix and its reports name the case."""
        return f"{self.module}::{self.name}"


@dataclass
class SuiteResult:
    """Every case of one run, in the order they ran, and pytest's exit status."""

    driver: str
    root: str
    cases: list[CaseResult] = field(default_factory=list)
    #: pytest's exit status: 0 all passed, 1 some failed, 2 interrupted, 4 usage error,
    #: 5 no test selected
    exit_code: int = 0
    duration: float = 0.0

    def count(self, outcome: str) -> int:
        return sum(1 for case in self.cases if case.outcome == outcome)

    @property
    def passed(self) -> int:
        return self.count("passed")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def xfailed(self) -> int:
        return self.count("xfailed")

    @property
    def ok(self) -> bool:
        """The driver conforms: pytest exited 0, no case failed and at least one passed.

        A run in which every case skipped (the driver refused the root, or it
        needs root and we are not) is not ok: :attr:`skip_reason` says why.
        """
        return self.exit_code == 0 and self.failed == 0 and self.passed > 0

    @property
    def skip_reason(self) -> str | None:
        """The reason shared by most skips when nothing ran (the whole suite skipped)."""
        if self.passed or self.failed or not self.skipped:
            return None
        reasons = [c.message for c in self.cases if c.outcome == "skipped"]
        return max(set(reasons), key=reasons.count)

    def case(self, name: str) -> CaseResult:
        """The case of that test name (``test_35_quota``); KeyError if it did not run."""
        for case in self.cases:
            if case.name == name:
                return case
        raise KeyError(name)

    def numbers(self, outcome: str = "passed") -> set[int]:
        """The numbers of the cases with that outcome (every parameter of a case counts)."""
        return {n for c in self.cases if c.outcome == outcome and (n := c.number) is not None}

    def summary(self) -> str:
        """A few lines for an assertion message: counts, then each failure with its report."""
        counts = ", ".join(f"{self.count(o)} {o}" for o in OUTCOMES if self.count(o))
        lines = [f"lamina conformance, driver {self.driver} on {self.root}: "
                 f"{counts or 'nothing ran'} (pytest exit {self.exit_code})"]
        for case in self.cases:
            if case.outcome == "failed":
                lines.append(f"FAILED {case.test}: {case.message}\n{case.details}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuiteResult:
        cases = [CaseResult(**case) for case in data.get("cases", [])]
        return cls(**{**data, "cases": cases})


class Collector:
    """A pytest plugin keeping one :class:`CaseResult` per test, from pytest's own reports.

    Pass it to ``pytest.main(args, plugins=[collector])``; afterwards
    ``collector.cases`` holds every test that was run or skipped, and every
    module that failed to import (as a failed case).
    """

    def __init__(self) -> None:
        self._by_id: dict[str, CaseResult] = {}

    @property
    def cases(self) -> list[CaseResult]:
        return list(self._by_id.values())

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self._by_id[report.nodeid] = CaseResult(
                name=report.nodeid, module=_module_of(report.nodeid), outcome="failed",
                message=f"collection failed: {_headline(report)}", details=report.longreprtext)

    def pytest_runtest_logreport(self, report: Any) -> None:
        case = self._by_id.get(report.nodeid)
        if case is None:
            name = report.nodeid.rsplit("::", 1)[-1]
            case = self._by_id[report.nodeid] = CaseResult(
                name=name, module=_module_of(report.nodeid), outcome="passed")
        case.duration += report.duration
        xfail = getattr(report, "wasxfail", None)
        if report.when == "call" and xfail is not None:
            case.outcome = "xfailed" if report.skipped else "xpassed"
            case.message = xfail
        elif report.skipped:
            case.outcome, case.message = "skipped", _skip_reason(report)
        elif report.failed and case.outcome != "failed":
            where = "" if report.when == "call" else f"error at {report.when}: "
            case.outcome = "failed"
            case.message = where + _headline(report)
            case.details = report.longreprtext


def _module_of(nodeid: str) -> str:
    """``test_lifecycle`` of ``conformance/test_lifecycle.py::test_11_status``."""
    return Path(nodeid.split("::", 1)[0]).stem


def _headline(report: Any) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)
    lines = report.longreprtext.strip().splitlines()
    return lines[-1] if lines else ""


def _skip_reason(report: Any) -> str:
    if isinstance(report.longrepr, tuple):  # (path, line, "Skipped: reason")
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return _headline(report)


def driver_spec(driver: str | type[Driver]) -> str:
    """What ``--lamina-driver`` takes for ``driver``: a name, ``module:Class``, or a class.

    A class must be importable by its module and name (not defined inside a
    function), because the suite's plugin loads it by that spec.
    """
    if isinstance(driver, str):
        return driver
    if not (isinstance(driver, type) and issubclass(driver, Driver)):
        raise TypeError(f"driver must be a name or a Driver subclass, not {driver!r}")
    spec = f"{driver.__module__}:{driver.__qualname__}"
    module = sys.modules.get(driver.__module__)
    if getattr(module, driver.__qualname__, None) is not driver:  # a class inside a function
        raise ValueError(
            f"driver class {driver.__qualname__} cannot be loaded again as {spec}: "
            "define it at the top level of an importable module"
        )
    return spec


def run(
    driver: str | type[Driver],
    root: str | os.PathLike[str] | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
    args: Sequence[str] = (),
) -> SuiteResult:
    """Run the conformance suite for ``driver`` on ``root`` in this process.

    ``driver`` is a registered name (``lamina drivers``), ``"package.module:Class"``
    or a :class:`~lamina.core.driver.Driver` subclass defined at module level.
    ``root`` is the directory on the backing filesystem under test where the
    stores are made (default: a temporary directory). ``config`` is a lamina
    TOML file whose ``[drivers.NAME]`` table gives the driver's options.
    ``args`` are more pytest options: ``-k EXPR``, ``-x``, ``-q``,
    ``-m "not lamina_property"`` (leaves out case 44, the slow property test).

    pytest's terminal output goes to stdout as usual; the caller's pytest
    configuration files are not read (``-c /dev/null``), so its ``addopts``
    cannot change the suite. Expected trees go to a temporary directory that
    is removed afterwards. Never raises for a failing case: look at the result.
    """
    import time

    import pytest

    spec = driver_spec(driver)
    collector = Collector()
    basetemp = Path(tempfile.mkdtemp(prefix="lamina-conformance-"))
    cmd = ["--pyargs", "lamina.conformance", f"--lamina-driver={spec}",
           "-c", os.devnull, "--rootdir", str(Path(__file__).resolve().parent),
           "-p", "no:cacheprovider", "--basetemp", str(basetemp),
           # no conftest.py of the caller's tree: its fixtures (an autouse one that
           # clears the environment, say) must not change what the suite sees
           "--noconftest"]
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        cmd += ["-p", "lamina.conformance.plugin"]
    if root is not None:
        cmd.append(f"--lamina-root={Path(root).resolve()}")
    if config is not None:
        cmd.append(f"--lamina-config={Path(config).resolve()}")
    cmd += list(args)
    started = time.monotonic()
    try:
        exit_code = int(pytest.main(cmd, plugins=[collector]))
    finally:
        shutil.rmtree(basetemp, ignore_errors=True)
    return SuiteResult(driver=spec, root=str(root) if root is not None else "",
                       cases=collector.cases, exit_code=exit_code,
                       duration=time.monotonic() - started)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lamina.conformance.suite``: one run, its result written as JSON.

    What the matrix starts for each cell. Options it does not know go to pytest.
    Exits with pytest's status.
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m lamina.conformance.suite")
    parser.add_argument("--driver", required=True, help="name or package.module:Class")
    parser.add_argument("--root", help="where the stores are made")
    parser.add_argument("--config", help="lamina TOML file with the driver's options")
    parser.add_argument("--result", required=True, help="write the SuiteResult here as JSON")
    known, pytest_args = parser.parse_known_args(argv)
    result = run(known.driver, known.root, config=known.config, args=pytest_args)
    out = Path(known.result)
    tmp = out.with_name(f".{out.name}.part")
    tmp.write_text(json.dumps(result.as_dict(), indent=1) + "\n")
    os.replace(tmp, out)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
