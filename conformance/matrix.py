"""The conformance matrix: every (driver, backing filesystem) pair, each in its own pytest.

A driver is only as correct as the filesystem under it allows, so the suite
is run once per pair. Each filesystem is made once on a loop device
(:mod:`lamina.conformance.backing`) and every driver gets its own directory
on it. Each cell is :func:`lamina.conformance.run` in a child process
(``python -m lamina.conformance.suite``), so a cell that crashes or hangs
costs that cell only; the child writes its :class:`~lamina.conformance.SuiteResult`
as JSON, and the counts and the JUnit report are made from that.

Nothing may outlive the run: backing filesystems are context managers,
SIGINT/SIGTERM/SIGHUP unwind them (the child pytest is asked to clean up
its stores first), and a run killed with SIGKILL leaves only what the next
run's :func:`~lamina.conformance.backing.cleanup_leftovers` removes.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.core.driver import Driver
from lamina.core.errors import ConfigError, LaminaError
from lamina.core.plugins.registry import DriverRegistry
from lamina.core.plugins.selection import support_reason

from . import backing
from .suite import CaseResult, SuiteResult

DEFAULT_WORKDIR = Path("/var/tmp/lamina-conformance")
#: a cell that runs longer than this is stopped and reported as an error
DEFAULT_CELL_TIMEOUT = 1800.0
#: how long a child pytest gets to tear its stores down after SIGINT
STOP_GRACE = 60.0
STATUSES = ("passed", "failed", "error", "n/a")
#: marks a directory as a matrix work directory: only such a directory is cleaned up
MARKER = ".lamina-conformance"
_PR_SET_PDEATHSIG = 1


class MatrixInterrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived; raised so every cleanup runs on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class DriverSpec:
    """A driver row: what the user named and, if it loaded, its class."""

    label: str
    #: what the child pytest gets as ``--lamina-driver``
    spec: str
    driver_class: type[Driver] | None
    #: why it could not be loaded (then every cell of its row is an error)
    broken: str | None = None


@dataclass
class Cell:
    """The outcome of one (driver, filesystem) pair."""

    driver: str
    fs: str
    status: str = "n/a"
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    #: failing cases: {"test": name, "message": first line of the failure}
    failures: list[dict[str, str]] = field(default_factory=list)
    #: why the cell is n/a or an error
    reason: str | None = None
    seconds: float = 0.0
    #: every case the cell's run reported (not in the JSON: the JUnit report has them)
    cases: list[CaseResult] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return f"{self.driver}@{self.fs}"

    @property
    def ran(self) -> int:
        return self.passed + self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "driver": self.driver, "fs": self.fs, "status": self.status,
            "passed": self.passed, "failed": self.failed, "skipped": self.skipped,
            "failures": self.failures, "reason": self.reason,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class MatrixResult:
    """Every cell of a run, in row (driver) and column (filesystem) order."""

    drivers: list[str]
    filesystems: list[str]
    cells: dict[tuple[str, str], Cell]
    seconds: float = 0.0
    #: what cleanup_leftovers removed at the start (a killed earlier run)
    leftovers: list[str] = field(default_factory=list)

    def cell(self, driver: str, fs: str) -> Cell:
        return self.cells[(driver, fs)]

    @property
    def ok(self) -> bool:
        """True when every cell passed or is not applicable."""
        return all(c.status in ("passed", "n/a") for c in self.cells.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "drivers": self.drivers, "filesystems": self.filesystems,
            "ok": self.ok, "seconds": round(self.seconds, 3),
            "cells": [self.cells[(d, f)].as_dict() for d in self.drivers
                      for f in self.filesystems],
        }


# --- choosing rows and columns -------------------------------------------------------


def default_filesystems() -> list[str]:
    """The filesystems this machine can make (by the cheap checks of the backing module)."""
    return [kind for kind in backing.FILESYSTEMS if backing.unavailable_reason(kind) is None]


def parse_filesystems(text: str | None) -> list[str]:
    """``ext4,xfs,...`` (None: the default); unknown names are an error."""
    if text is None or text.strip() in ("", "default"):
        kinds = default_filesystems()
        if not kinds:
            reasons = "; ".join(
                f"{k}: {backing.unavailable_reason(k)}" for k in backing.FILESYSTEMS
            )
            raise ConfigError(
                f"this machine cannot make any backing filesystem ({reasons})",
                hint="run as root with loop devices, mkfs.ext4, mkfs.xfs and mkfs.btrfs installed",
            )
        return kinds
    kinds = list(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in backing.FILESYSTEMS]
    if unknown or not kinds:
        raise ConfigError(
            f"--fs {text!r}: unknown filesystem {', '.join(unknown) or '(none given)'}",
            hint=f"choose from {', '.join(backing.FILESYSTEMS)}, separated by commas",
        )
    return kinds


def _load_class(spec: str) -> type[Driver]:
    module_name, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"--driver {spec}: cannot load it: {exc}",
            hint="give package.module:Class of an importable Driver subclass (check PYTHONPATH)",
        ) from exc
    if not (isinstance(obj, type) and issubclass(obj, Driver)):
        raise ConfigError(f"--driver {spec} is not a subclass of lamina.core.driver.Driver")
    return obj


def resolve_drivers(text: str, registry: DriverRegistry) -> list[DriverSpec]:
    """``all``, ``NAME[,NAME]`` or ``package.module:Class`` entries, in the order given.

    ``all`` is every registered driver plus every plugin that failed to load
    (a row of errors: a driver that cannot be imported does not conform).
    """
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise ConfigError("--driver: no driver named", hint="give all, NAME[,NAME] or module:Class")
    specs: list[DriverSpec] = []
    for name in names:
        if name == "all":
            specs += [DriverSpec(n, n, registry.drivers[n]) for n in sorted(registry.drivers)]
            specs += [DriverSpec(n, n, None, f"plugin failed to load: {err}")
                      for n, err in sorted(registry.broken.items())]
        elif ":" in name:
            cls = _load_class(name)
            specs.append(DriverSpec(cls.name or name, name, cls))
        else:
            specs.append(DriverSpec(name, name, registry.get(name)))
    unique: dict[str, DriverSpec] = {}
    for spec in specs:
        if spec.label in unique and unique[spec.label].spec != spec.spec:
            raise ConfigError(
                f"--driver: two drivers are called {spec.label!r} "
                f"({unique[spec.label].spec} and {spec.spec})",
                hint="test them in separate runs",
            )
        unique.setdefault(spec.label, spec)
    return list(unique.values())


# --- interruption ----------------------------------------------------------------------


@contextlib.contextmanager
def unwind_on_signals() -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM/SIGHUP into :class:`MatrixInterrupted`; ignore later ones.

    Ignoring the later ones is what lets the cleanup on the way out finish
    (a second Ctrl-C must not leave a loop device behind). After the block
    a SIGTERM or SIGHUP is re-delivered with its default action, so whoever
    started us sees the signal; SIGINT stays a KeyboardInterrupt for the CLI.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        if caught:
            print(f"lamina: {signal.Signals(signum).name} again: still cleaning up",
                  file=sys.stderr)
            return
        caught.append(signum)
        raise MatrixInterrupted(signum)

    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        if caught and caught[0] != signal.SIGINT:
            signal.signal(caught[0], signal.SIG_DFL)
            os.kill(os.getpid(), caught[0])


def _claim_workdir(workdir: Path) -> None:
    """Refuse a work directory that holds anything but a previous run's files.

    The start of a run unmounts everything below the work directory; pointed
    at ``/`` or a home directory by mistake that would be a disaster.
    """
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise ConfigError(
            f"--workdir {workdir} is not empty and was not made by `lamina conformance`",
            hint="give a new or empty directory (default /var/tmp/lamina-conformance)",
        )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).touch()


@contextlib.contextmanager
def _workdir_lock(workdir: Path, wait: float = 120.0) -> Iterator[int]:
    """Hold ``workdir/.lock``; another run (or a killed run's orphan pytest) holds it too.

    The descriptor is inherited by the cell's pytest, so a run killed with
    SIGKILL keeps the work dir locked until its orphaned child has finished
    tearing down: the next run then never unmounts under a live pytest.
    """
    _claim_workdir(workdir)
    fd = os.open(workdir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LaminaError(
                        f"another conformance run is using the work directory {workdir}",
                        hint="wait for it to finish or give another --workdir",
                    ) from None
                if not told:
                    print(f"lamina: waiting for another run to release {workdir}",
                          file=sys.stderr)
                    told = True
                time.sleep(0.2)
        yield fd
    finally:
        os.close(fd)


# --- running one cell --------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: get SIGINT (and tear down) when the matrix process dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)


def _stop(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> None:
    """Ask the cell's pytest to stop and clean up (SIGINT), then kill its group."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _first_line(text: str | None) -> str:
    """The headline of a message; with the next line when it ends in a colon."""
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    head = lines[0]
    if head.endswith(":") and len(lines) > 1:
        head = f"{head} {lines[1]}"
    return head[:300]


def fill_cell(result: SuiteResult, cell: Cell) -> None:
    """Fill ``cell``'s counts, failures and cases from the run's result."""
    cell.cases = list(result.cases)
    for case in result.cases:
        if case.outcome == "failed":
            cell.failed += 1
            cell.failures.append({"test": case.test, "message": _first_line(case.message)})
        elif case.outcome in ("skipped", "xfailed"):
            cell.skipped += 1
        else:
            cell.passed += 1
    if cell.ran == 0:
        # the plugin skips the whole session when the driver refuses the root
        cell.reason = result.skip_reason


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def run_cell(
    spec: DriverSpec, fs: str, root: Path, *, reports: Path, basetemp: Path,
    pytest_args: Sequence[str] = (), config: Path | None = None,
    timeout: float = DEFAULT_CELL_TIMEOUT, lock_fd: int | None = None,
) -> Cell:
    """Run the suite for one driver on ``root`` in a child pytest; never raises for its failures."""
    cell = Cell(spec.label, fs)
    report = reports / f"{cell.name}.json"
    log = reports / f"{cell.name}.log"
    report.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "lamina.conformance.suite", f"--driver={spec.spec}",
        f"--root={root}", f"--result={report}", "-rfE", "--basetemp", str(basetemp),
    ]
    if config is not None:
        cmd.append(f"--config={config}")
    cmd += list(pytest_args)
    start = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
            pass_fds=(lock_fd,) if lock_fd is not None else (),
        )
        try:
            returncode = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            returncode = None
        except BaseException:
            _stop(proc)
            raise
    cell.seconds = time.monotonic() - start
    if report.exists():
        try:
            fill_cell(SuiteResult.from_dict(json.loads(report.read_text())), cell)
        except (ValueError, TypeError) as exc:
            cell.reason = f"unreadable result {report}: {exc}"
    if returncode is None:
        cell.status = "error"
        cell.reason = f"stopped after {timeout:.0f} s (cell timeout); log: {log}"
    elif cell.failed:
        cell.status = "failed"
    elif returncode == 0 and cell.passed:
        cell.status = "passed"
    elif returncode == 0 and cell.ran == 0 and cell.skipped:
        cell.status = "n/a"
    elif returncode == 5:
        cell.status = "error"
        cell.reason = "no test was selected (pytest exit 5): check -k"
    else:
        cell.status = "error"
        detail = _tail(log)
        cell.reason = (f"pytest exited with status {returncode} without a failing case; "
                       f"log: {log}" + (f"\n{detail}" if detail else ""))
    return cell


# --- the matrix ----------------------------------------------------------------------------


def _clear(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def run_matrix(
    drivers: Sequence[DriverSpec],
    filesystems: Sequence[str],
    *,
    workdir: Path = DEFAULT_WORKDIR,
    size_mb: int | None = None,
    pytest_args: Sequence[str] = (),
    config: Path | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    timeout: float = DEFAULT_CELL_TIMEOUT,
    progress: Callable[[str], None] | None = None,
) -> MatrixResult:
    """Make each filesystem once, run every driver's suite on it, and tear it all down.

    ``options`` maps a driver label to its options, only to check each
    driver's support the way the store will use it. Raises
    :class:`MatrixInterrupted` (after cleaning up) on SIGINT/SIGTERM/SIGHUP.
    """
    say = progress or (lambda _msg: None)
    workdir = Path(workdir).resolve()
    labels = [d.label for d in drivers]
    result = MatrixResult(labels, list(filesystems), {})
    total = len(drivers) * len(filesystems)
    start = time.monotonic()
    with unwind_on_signals(), _workdir_lock(workdir) as lock_fd:
        result.leftovers = backing.cleanup_leftovers(workdir)
        if result.leftovers:
            say(f"removed what an interrupted run left in {workdir}: "
                + "; ".join(result.leftovers))
        reports = workdir / "reports"
        basetemp = workdir / "tmp"
        for stale in (reports, basetemp, *(workdir / k for k in backing.FILESYSTEMS)):
            if stale.is_dir() and not os.path.ismount(stale):
                _clear(stale)
        reports.mkdir()
        try:
            for fs in filesystems:
                _run_column(result, drivers, fs, workdir, reports, basetemp, size_mb=size_mb,
                            pytest_args=pytest_args, config=config, timeout=timeout,
                            lock_fd=lock_fd, say=say, total=total)
        finally:
            # catches what an interruption at an unlucky moment (between losetup and
            # the bookkeeping of its device, say) could still have left
            backing.cleanup_leftovers(workdir)
            _clear(basetemp)
    result.seconds = time.monotonic() - start
    return result


def _run_column(
    result: MatrixResult, drivers: Sequence[DriverSpec], fs: str, workdir: Path,
    reports: Path, basetemp: Path, *, size_mb: int | None, pytest_args: Sequence[str],
    config: Path | None, timeout: float, lock_fd: int, say: Callable[[str], None], total: int,
) -> None:
    def record(cell: Cell) -> None:
        result.cells[(cell.driver, fs)] = cell
        done = len(result.cells)
        what = {"passed": f"passed {cell.passed}", "failed": f"FAILED {cell.failed}/{cell.ran}",
                "error": "ERROR", "n/a": "n/a"}[cell.status]
        why = f" ({_first_line(cell.reason)})" if cell.status in ("n/a", "error") else ""
        say(f"[{done}/{total}] {cell.name}: {what} in {cell.seconds:.1f} s{why}")

    def column_not_applicable(reason: str) -> None:
        for spec in drivers:
            record(Cell(spec.label, fs, "n/a", reason=reason))

    reason = backing.unavailable_reason(fs)
    if reason:
        column_not_applicable(f"{fs} cannot be made here: {reason}")
        return
    say(f"making {fs} ({size_mb or backing.DEFAULT_SIZE_MB[fs]} MB) below {workdir}")
    try:
        with backing.backing_filesystem(fs, workdir, size_mb=size_mb) as made:
            for spec in drivers:
                record(_cell_on(spec, fs, made.path, reports=reports, basetemp=basetemp,
                                pytest_args=pytest_args, config=config, timeout=timeout,
                                lock_fd=lock_fd))
    except backing.BackingUnavailable as exc:
        if any((spec.label, fs) in result.cells for spec in drivers):
            raise  # failed on the way out, not while making it
        column_not_applicable(str(exc))


def _cell_on(spec: DriverSpec, fs: str, mountpoint: Path, **kwargs: Any) -> Cell:
    """A cell's support check in this process, then its suite in a child."""
    if spec.driver_class is None:
        return Cell(spec.label, fs, "error", reason=spec.broken)
    cls = spec.driver_class
    root = mountpoint / spec.label
    root.mkdir(mode=0o700, exist_ok=True)
    if cls.capabilities.needs_root and os.geteuid() != 0:
        return Cell(spec.label, fs, "n/a", reason="the driver needs root")
    started = time.monotonic()
    try:
        refused = support_reason(cls, root)
    except LaminaError as exc:
        return Cell(spec.label, fs, "error", reason=str(exc),
                    seconds=time.monotonic() - started)
    if refused:
        return Cell(spec.label, fs, "n/a", reason=refused, seconds=time.monotonic() - started)
    return run_cell(spec, fs, root, **kwargs)


# --- reports -----------------------------------------------------------------------------


def _cell_text(cell: Cell) -> tuple[str, str]:
    """(text, rich style) of a matrix cell."""
    if cell.status == "passed":
        return f"passed {cell.passed}\n{cell.seconds:.1f} s", "green"
    if cell.status == "failed":
        return f"FAILED {cell.failed}/{cell.ran}\n{cell.seconds:.1f} s", "bold red"
    if cell.status == "error":
        return f"ERROR\n{cell.seconds:.1f} s", "bold red"
    return "n/a", "dim"


def render(result: MatrixResult, file: Any = None) -> None:
    """Print the matrix (rows drivers, columns filesystems), then n/a reasons and failures."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = file or sys.stdout
    texts = {key: _cell_text(cell) for key, cell in result.cells.items()}
    widths = [max(len("driver"), *(len(d) for d in result.drivers))]
    widths += [max(len(fs), *(len(line) for d in result.drivers
                               for line in texts[(d, fs)][0].splitlines()))
               for fs in result.filesystems]
    # never truncate a cell: wider than the terminal is better than "FAILED 2/…"
    console = Console(file=out, highlight=False, soft_wrap=True)
    console = Console(file=out, highlight=False, soft_wrap=True,
                      width=max(console.width, sum(w + 3 for w in widths) + 1))
    table = Table(title="lamina conformance matrix", header_style="bold", show_lines=True)
    table.add_column("driver", no_wrap=True)
    for fs in result.filesystems:
        table.add_column(fs, no_wrap=True)
    for driver in result.drivers:
        row = [Text(driver)]
        for fs in result.filesystems:
            text, style = texts[(driver, fs)]
            row.append(Text(text, style=style))
        table.add_row(*row)
    console.print(table)
    cells = [result.cell(d, f) for d in result.drivers for f in result.filesystems]
    lines: list[str] = []
    not_applicable = [c for c in cells if c.status == "n/a"]
    if not_applicable:
        lines.append("Not applicable:")
        lines += [f"  {c.name}: {c.reason or 'every case was skipped'}" for c in not_applicable]
    for c in cells:
        if c.status == "failed":
            lines.append(f"Failed in {c.name} ({c.failed} of {c.ran}):")
            lines += [f"  {f['test']}: {f['message']}" if f["message"] else f"  {f['test']}"
                      for f in c.failures]
        elif c.status == "error":
            lines.append(f"Error in {c.name}: {c.reason}")
    verdict = "every cell passed or is not applicable" if result.ok else "some cells FAILED"
    lines.append(f"{len(cells)} cells in {result.seconds:.1f} s: {verdict}")
    print("\n".join(lines), file=out)
    out.flush()


def junit_tree(result: MatrixResult) -> ET.ElementTree:
    """One <testsuite> per cell, named driver@fs; classnames prefixed with the cell."""
    top = ET.Element("testsuites", name="lamina conformance matrix")
    totals: Counter[str] = Counter()
    for driver in result.drivers:
        for fs in result.filesystems:
            cell = result.cell(driver, fs)
            suite = ET.SubElement(top, "testsuite", name=cell.name, time=f"{cell.seconds:.3f}")
            props = ET.SubElement(suite, "properties")
            for key, value in (("driver", driver), ("filesystem", fs),
                               ("status", cell.status)):
                ET.SubElement(props, "property", name=key, value=value)
            cases = [_junit_case(suite, cell, case) for case in cell.cases]
            failures = errors = skipped = 0
            if cell.status == "n/a" and not cases:
                case = ET.SubElement(suite, "testcase", classname=cell.name,
                                     name="not applicable", time="0")
                ET.SubElement(case, "skipped", type="pytest.skip",
                              message=cell.reason or "not applicable")
                cases = [case]
            elif cell.status == "error":
                case = ET.SubElement(suite, "testcase", classname=cell.name, name="run",
                                     time=f"{cell.seconds:.3f}")
                err = ET.SubElement(case, "error", message=_first_line(cell.reason))
                err.text = cell.reason
                cases.append(case)
            for case in suite.iter("testcase"):
                kinds = {child.tag for child in case}
                failures += "failure" in kinds
                errors += "error" in kinds and "failure" not in kinds
                skipped += "skipped" in kinds and not kinds & {"failure", "error"}
            counts = {"tests": len(cases), "failures": failures, "errors": errors,
                      "skipped": skipped}
            for key, value in counts.items():
                suite.set(key, str(value))
                totals[key] += value
    for key in ("tests", "failures", "errors", "skipped"):
        top.set(key, str(totals[key]))
    top.set("time", f"{result.seconds:.3f}")
    ET.indent(top)
    return ET.ElementTree(top)


def _junit_case(suite: ET.Element, cell: Cell, case: CaseResult) -> ET.Element:
    """A <testcase> as pytest's JUnit report writes it, the class name prefixed with the cell."""
    element = ET.SubElement(suite, "testcase", classname=f"{cell.name}.{case.module}",
                            name=case.name, time=f"{case.duration:.3f}")
    if case.outcome == "failed":
        failure = ET.SubElement(element, "failure", message=case.message)
        failure.text = case.details
    elif case.outcome in ("skipped", "xfailed"):
        kind = "pytest.xfail" if case.outcome == "xfailed" else "pytest.skip"
        ET.SubElement(element, "skipped", type=kind, message=case.message)
    return element


def _write_atomically(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_junit(result: MatrixResult, path: Path) -> None:
    """The merged JUnit XML report, for CI systems."""
    data = ET.tostring(junit_tree(result).getroot(), encoding="utf-8", xml_declaration=True)
    _write_atomically(path, data + b"\n")


def write_json(result: MatrixResult, path: Path) -> None:
    """The cells as JSON: status, counts, failures, reason, seconds."""
    _write_atomically(path, (json.dumps(result.as_dict(), indent=2) + "\n").encode())
