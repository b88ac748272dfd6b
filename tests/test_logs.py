"""Containers' logs: Go's time syntax, the json-file records, and ``lamina logs`` on real
containers (detached and in the foreground) as Docker's users know it."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from conftest import LAMINA, needs_root
from containersite import IMAGE, Site, busybox_site

from lamina.core import gotime
from lamina.core.containers import logs

SECOND = 1_000_000_000


# -- Go's durations and times -----------------------------------------------------------


@pytest.mark.parametrize(("text", "nanos"), [
    ("1m30s", 90 * SECOND), ("1.5h", 5400 * SECOND), ("250ms", 250_000_000),
    ("-5s", -5 * SECOND), ("0", 0), ("1h2m3s4ms5us6ns", 3723 * SECOND + 4_005_006),
    ("2µs", 2000), (".5s", SECOND // 2),
])
def test_go_durations(text: str, nanos: int) -> None:
    assert gotime.parse_duration(text) == nanos


@pytest.mark.parametrize("text", ["", "5", "1x", ".", "s", "1m 2s", "--1s"])
def test_what_is_not_a_go_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        gotime.parse_duration(text)


def test_the_times_docker_since_takes() -> None:
    base = int(datetime.fromisoformat("2026-12-07T10:15:30+00:00").timestamp()) * SECOND
    assert gotime.parse_timestamp("2026-12-07T10:15:30Z") == base
    assert gotime.parse_timestamp("2026-12-07T10:15:30.5Z") == base + SECOND // 2
    assert gotime.parse_timestamp("2026-12-07T10:15:30.000000007Z") == base + 7
    assert gotime.parse_timestamp("2026-12-07T11:15:30+01:00") == base
    assert gotime.parse_timestamp("2026-12-07T09:15:30-01:00") == base
    # without a zone: the host's local time
    local = int(datetime(2026, 12, 7, 10, 15).timestamp()) * SECOND
    assert gotime.parse_timestamp("2026-12-07T10:15") == local
    assert gotime.parse_timestamp("2026-12-07") == int(datetime(2026, 12, 7).timestamp()) * SECOND
    assert gotime.parse_timestamp("1607337600") == 1607337600 * SECOND
    assert gotime.parse_timestamp("1607337600.25") == 1607337600 * SECOND + SECOND // 4
    assert gotime.parse_timestamp("10m", now_ns=base) == base - 600 * SECOND
    for wrong in ("nope", "2026-13-07", "2026-12-07T25:00Z", "yesterday"):
        with pytest.raises(ValueError):
            gotime.parse_timestamp(wrong)


def test_rfc3339_with_nanoseconds_round_trips() -> None:
    stamp = 1796624978 * SECOND + 130036231
    assert gotime.rfc3339_nano(stamp) == "2026-12-07T06:29:38.130036231Z"
    assert gotime.parse_rfc3339_nano(gotime.rfc3339_nano(stamp)) == stamp
    assert gotime.rfc3339_nano(1796624978 * SECOND) == "2026-12-07T06:29:38.000000000Z"
    with pytest.raises(ValueError):
        gotime.parse_rfc3339_nano("2026-12-07T06:29:38")  # no zone: not this format


# -- the records --------------------------------------------------------------------------


def _writer(directory: Path, rotation: logs.Rotation | None = None) -> logs.LogWriter:
    return logs.LogWriter(logs.path(directory), rotation)


def test_records_have_dockers_json_file_shape_and_keep_every_byte(tmp_path: Path) -> None:
    log = _writer(tmp_path)
    log.feed("stdout", b"one\ntw")
    log.feed("stderr", b"\xff\xfe binary \x00\x1b[31m\n")
    log.feed("stdout", b"o\nthree without end")
    log.end("stdout")
    log.end("stderr")  # nothing pending: no record
    lines = logs.path(tmp_path).read_bytes().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [(e["stream"], e["log"]) for e in entries] == [
        ("stdout", "one\n"), ("stderr", "\udcff\udcfe binary \x00\x1b[31m\n"),
        ("stdout", "two\n"), ("stdout", "three without end")]
    for e in entries:
        assert set(e) == {"log", "stream", "time"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", e["time"])
    records = list(logs.read(tmp_path))
    assert [r.data for r in records] == [b"one\n", b"\xff\xfe binary \x00\x1b[31m\n", b"two\n",
                                         b"three without end"]
    assert all(a.nanos <= b.nanos for a, b in itertools.pairwise(records))


def test_a_long_line_is_logged_in_pieces(tmp_path: Path) -> None:
    log = _writer(tmp_path)
    line = b"x" * (logs.MAX_LINE * 2 + 100) + b"\n"
    log.feed("stdout", line[:5000])
    log.feed("stdout", line[5000:])
    log.feed("stderr", b"y" * (logs.MAX_LINE + 1))  # no newline yet: cut at the limit
    records = list(logs.read(tmp_path))
    assert [len(r.data) for r in records] == [logs.MAX_LINE, logs.MAX_LINE, 101,
                                              logs.MAX_LINE]
    assert b"".join(r.data for r in records if r.stream == "stdout") == line


def test_tail_and_time_window(tmp_path: Path) -> None:
    log = _writer(tmp_path)
    for n in range(5):
        log.feed("stdout" if n % 2 else "stderr", b"line %d\n" % n)
        time.sleep(0.002)
    # a monitor killed mid-write leaves a torn record: skipped, also by --tail
    with open(logs.path(tmp_path), "ab") as f:
        f.write(b'{"log":"torn')
    records = list(logs.read(tmp_path))
    assert [r.data for r in records] == [b"line %d\n" % n for n in range(5)]
    tail = lambda n: [r.data for r in logs.read(tmp_path, logs.Window(tail=n))]  # noqa: E731
    assert tail(2) == [b"line 3\n", b"line 4\n"]
    assert tail(0) == []
    assert tail(99) == [r.data for r in records]
    since = records[2].nanos
    assert [r.data for r in logs.read(tmp_path, logs.Window(since=since))] == [
        b"line 2\n", b"line 3\n", b"line 4\n"]
    assert [r.data for r in logs.read(tmp_path, logs.Window(until=since))] == [
        b"line 0\n", b"line 1\n", b"line 2\n"]
    assert [r.data for r in logs.read(tmp_path, logs.Window(tail=3, until=since))] == [
        b"line 2\n"]


def test_tail_of_a_log_larger_than_a_read(tmp_path: Path) -> None:
    log = _writer(tmp_path)
    log.feed("stdout", b"".join(b"%07d\n" % n for n in range(50_000)))  # ~4 MB of records
    assert [r.data for r in logs.read(tmp_path, logs.Window(tail=3))] == [
        b"0049997\n", b"0049998\n", b"0049999\n"]
    assert len(list(logs.read(tmp_path, logs.Window(tail=20_000)))) == 20_000


def test_following_reads_what_comes_until_the_container_stops(tmp_path: Path) -> None:
    log = _writer(tmp_path)
    log.feed("stdout", b"before\n")
    running = threading.Event()
    running.set()

    def later() -> None:
        for n in range(3):
            time.sleep(0.05)
            log.feed("stderr", b"later %d\n" % n)
        running.clear()  # stopped: the reader reads once more, then ends

    thread = threading.Thread(target=later)
    thread.start()
    seen = [r.data for r in logs.read(tmp_path, running=running.is_set, poll=0.01)]
    thread.join()
    assert seen == [b"before\n", b"later 0\n", b"later 1\n", b"later 2\n"]


def test_a_rotated_log_keeps_max_file_files_of_at_most_max_size(tmp_path: Path) -> None:
    log = _writer(tmp_path, logs.Rotation(max_size=1000, max_files=3))
    for n in range(100):  # ~8 KB of records, a few at a time
        log.feed("stdout" if n % 3 else "stderr", b"".join(b"line %03d\n" % (n * 2 + k)
                                                            for k in range(2)))
    log.close()
    files = logs.files(tmp_path)
    assert [f.name for f in files] == [logs.FILE + ".2", logs.FILE + ".1", logs.FILE]
    assert all(0 < f.stat().st_size <= 1000 for f in files)
    kept = [r.data for r in logs.read(tmp_path)]
    # the newest lines, whole and in order, and nothing older than what was dropped
    assert kept == [b"line %03d\n" % n for n in range(200 - len(kept), 200)]
    assert 20 < len(kept) < 60
    # --tail reaches back across the files; max-file=1 drops the file it rotates
    assert [r.data for r in logs.read(tmp_path, logs.Window(tail=len(kept) - 2))] == kept[2:]
    assert [r.data for r in logs.read(tmp_path, logs.Window(tail=1))] == [b"line 199\n"]
    one = tmp_path / "one"
    one.mkdir()
    log = _writer(one, logs.Rotation(max_size=200, max_files=1))
    for n in range(50):
        log.feed("stdout", b"x%02d\n" % n)
    assert [f.name for f in logs.files(one)] == [logs.FILE]
    assert logs.path(one).stat().st_size <= 200
    assert [r.data for r in logs.read(one)][-1] == b"x49\n"


# (a follower that sleeps through several rotations still reads every file kept)
@pytest.mark.parametrize(("max_files", "poll"), [(1, 0.01), (3, 0.01), (20, 0.2)])
def test_following_goes_on_through_rotations(tmp_path: Path, max_files: int,
                                             poll: float) -> None:
    log = _writer(tmp_path, logs.Rotation(max_size=300, max_files=max_files))
    log.feed("stdout", b"first\n")
    running = threading.Event()
    running.set()

    def later() -> None:
        for n in range(40):  # ~2,600 bytes of records: several rotations
            log.feed("stdout", b"n%02d\n" % n)
            time.sleep(0.005)
        running.clear()

    thread = threading.Thread(target=later)
    thread.start()
    seen = [r.data for r in logs.read(tmp_path, running=running.is_set, poll=poll)]
    thread.join()
    assert seen == [b"first\n", *(b"n%02d\n" % n for n in range(40))]


def test_a_log_of_raw_output_is_still_shown(tmp_path: Path) -> None:
    (tmp_path / logs.RAW_FILE).write_bytes(b"a\nb\nc\n")
    assert [r.data for r in logs.read(tmp_path)] == [b"a\nb\nc\n"]
    assert [r.data for r in logs.read(tmp_path, logs.Window(tail=1))] == [b"c\n"]
    assert list(logs.read(tmp_path, logs.Window(since=1))) == []  # no times to cut by


# -- lamina logs on real containers ----------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Site]:
    yield from busybox_site(tmp_path_factory.mktemp("logs") / "store", busybox_tar)


@needs_root
def test_logs_sends_each_line_back_to_its_stream(site: Site) -> None:
    site("run", "-d", "--network", "none", "--name", "streams", IMAGE, "sh", "-c",
         "echo out1; echo err1 >&2; printf 'no end'; sleep 0.2; echo ' now'; echo err2 >&2")
    site("wait", "streams")
    shown = site("logs", "streams")
    assert shown.stdout == b"out1\nno end now\n"
    assert shown.stderr == b"err1\nerr2\n"
    assert site("logs", "--tail", "1", "streams").stderr == b"err2\n"
    stamped = site("logs", "-t", "streams").stdout.decode().splitlines()
    assert [re.fullmatch(r"(\S+Z) (.*)", line).group(2) for line in stamped] == [
        "out1", "no end now"]
    times = [gotime.parse_rfc3339_nano(line.split()[0]) for line in stamped]
    assert abs(times[0] - time.time_ns()) < 60 * SECOND
    assert times[1] - times[0] >= 150_000_000  # the second line came after the sleep
    # the window: from the first line's time up to a moment before the second
    until = gotime.rfc3339_nano(times[0] + 100_000_000)
    assert site("logs", "--until", until, "streams").stdout == b"out1\n"
    assert site("logs", "--since", gotime.rfc3339_nano(times[1]), "streams").stdout == \
        b"no end now\n"
    assert site("logs", "--since", "1h", "streams").stdout == b"out1\nno end now\n"
    # Docker's LogPath: the json-file itself
    log_path = Path(site.out("inspect", "-f", "{{.LogPath}}", "streams").strip())
    assert json.loads(log_path.read_bytes().splitlines()[0])["log"] == "out1\n"
    assert site("logs", "--until", "1h", "streams").stdout == b""


@needs_root
def test_follow_prints_as_it_comes_and_ends_with_the_container(site: Site) -> None:
    site("run", "-d", "--network", "none", "--name", "ticker", IMAGE, "sh", "-c",
         "for i in 1 2 3; do echo tick $i; sleep 0.3; done; echo done >&2")
    follower = subprocess.Popen([*LAMINA, "--root", str(site.root), "logs", "-f", "ticker"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = follower.stdout.readline()
    assert first == b"tick 1\n"
    assert site.out("inspect", "-f", "{{.State.Running}}", "ticker").strip() == "true"
    out, err = follower.communicate(timeout=20)
    assert follower.returncode == 0
    assert first + out == b"tick 1\ntick 2\ntick 3\n"
    assert err == b"done\n"


@needs_root
def test_a_foreground_run_is_logged_and_writes_to_pipes_not_the_terminal(site: Site) -> None:
    ran = site("run", "--network", "none", "--name", "fg", IMAGE, "sh", "-c",
               "echo hello; echo oops >&2; test -t 1 && echo tty || echo pipe; exit 3",
               check=False)
    assert ran.returncode == 3
    assert (ran.stdout, ran.stderr) == (b"hello\npipe\n", b"oops\n")
    logged = site("logs", "fg")
    assert (logged.stdout, logged.stderr) == (b"hello\npipe\n", b"oops\n")
    # with a pty, one stream: stdout (as Docker's)
    site("run", "-d", "-t", "--network", "none", "--name", "tty", IMAGE, "sh", "-c",
         "echo to-err >&2")
    site("wait", "tty")
    assert site("logs", "tty").stdout == b"to-err\r\n"


@needs_root
def test_a_reader_that_goes_away_does_not_stop_the_container(site: Site) -> None:
    """``lamina run ... | head -1``: the container runs on, its output still logged."""
    run = subprocess.Popen(
        [*LAMINA, "--root", str(site.root), "run", "--network", "none", "--name", "headed",
         IMAGE, "sh", "-c", "echo first; sleep 0.3; i=0; while [ $i -lt 2000 ]; do "
         "echo more $i; i=$((i+1)); done; exit 5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert run.stdout.readline() == b"first\n"
    run.stdout.close()
    assert run.wait(timeout=30) == 5
    logged = site("logs", "headed").stdout.splitlines()
    assert logged[0] == b"first" and logged[-1] == b"more 1999" and len(logged) == 2001


@needs_root
def test_logs_refuses_what_is_not_a_time_or_a_count(site: Site) -> None:
    site("create", "--name", "idle", IMAGE, "true")
    for args, words in ((["--since", "yesterday"], b"neither a time nor a duration"),
                        (["--until", "2026-13-01"], b"not a valid date"),
                        (["--tail", "-3"], b"not a number of lines")):
        refused = site("logs", *args, "idle", check=False)
        assert refused.returncode != 0
        assert words in refused.stderr and b"Traceback" not in refused.stderr
    assert site("logs", "idle").stdout == b""  # never started: nothing logged


@needs_root
def test_log_options_rotate_the_log_or_keep_none(site: Site) -> None:
    site("run", "--network", "none", "--name", "rotating", "--log-opt", "max-size=2k",
         "--log-opt", "max-file=2", IMAGE, "sh", "-c",
         "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); done")
    shown = site("logs", "rotating").stdout.decode().splitlines()
    # what the two files hold: the last lines, whole and in order, nothing older
    assert 20 < len(shown) < 100
    assert shown == [f"line {n}" for n in range(300 - len(shown), 300)]
    log_path = Path(site.out("inspect", "-f", "{{.LogPath}}", "rotating").strip())
    kept = sorted(p.name for p in log_path.parent.glob(log_path.name + "*"))
    assert kept == [log_path.name, log_path.name + ".1"]
    assert all(p.stat().st_size <= 2048 for p in log_path.parent.glob(log_path.name + "*"))
    assert json.loads(site.out("inspect", "-f", "{{json .HostConfig.LogConfig}}",
                               "rotating")) == {"Type": "json-file",
                                                "Config": {"max-size": "2k", "max-file": "2"}}
    # the none driver: the output still reaches the terminal; logs says there is none
    quiet = site("run", "--network", "none", "--name", "unlogged", "--log-driver", "none",
                 IMAGE, "echo", "seen")
    assert quiet.stdout == b"seen\n"
    refused = site("logs", "unlogged", check=False)
    assert refused.returncode != 0 and b"log driver none" in refused.stderr
    assert site.out("inspect", "-f", "{{.LogPath}}", "unlogged") == "\n"
    for args, words in ((["--log-driver", "syslog"], b"not supported"),
                        (["--log-opt", "max-size=big"], b"invalid log max-size"),
                        (["--log-opt", "colour=red"], b"unknown log option"),
                        (["--log-opt", "max-file=3"], b"needs max-size"),
                        (["--log-opt", "max-file=0", "--log-opt", "max-size=1m"],
                         b"invalid log max-file"),
                        (["--log-driver", "none", "--log-opt", "max-size=1m"],
                         b"unknown log option")):
        refused = site("run", *args, IMAGE, "true", check=False)
        assert refused.returncode == 125, (args, refused.stderr)
        assert words in refused.stderr and b"Traceback" not in refused.stderr


@needs_root
def test_the_configs_log_options_are_every_containers_default(site: Site,
                                                              tmp_path: Path) -> None:
    config = tmp_path / "lamina.toml"
    config.write_text('[containers]\nlog_opts = { max-size = "1k" }\n')
    site("--config", str(config), "run", "--network", "none", "--name", "defaulted",
         "--log-opt", "max-file=3", IMAGE, "sh", "-c",
         "i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); done")
    # the config's max-size and the flag's max-file, merged key by key (Docker's rule)
    assert json.loads(site.out("inspect", "-f", "{{json .HostConfig.LogConfig.Config}}",
                               "defaulted")) == {"max-size": "1k", "max-file": "3"}
    shown = site("logs", "defaulted").stdout.decode().splitlines()
    assert shown[-1] == "line 199" and len(shown) < 60
    # another driver on the command line leaves the config's options out
    site("--config", str(config), "run", "--network", "none", "--name", "quiet",
         "--log-driver", "none", IMAGE, "true")
    assert site.out("inspect", "-f", "{{json .HostConfig.LogConfig}}", "quiet") == \
        '{"Config":{},"Type":"none"}\n'
    config.write_text('[containers]\nlog_opts = { max-size = "huge" }\n')
    refused = site("--config", str(config), "run", IMAGE, "true", check=False)
    assert refused.returncode == 125
    assert str(config).encode() in refused.stderr and b"max-size" in refused.stderr
    config.write_text('[containers]\nlog_opts = { max-file = 3 }\n')
    refused = site("--config", str(config), "ps", check=False)
    assert refused.returncode != 0 and b"must be strings" in refused.stderr
