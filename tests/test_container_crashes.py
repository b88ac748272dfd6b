"""SIGKILL of lamina at any moment of run, start, stop and commit; 200 runs in parallel.

Each test kills a real lamina process (the foreground ``run``, a detached container's
monitor, ``start``, ``stop``, ``commit``) at many moments, runs one ordinary command
(``lamina ps -a``: every container command reconciles first) and then looks at the
machine from outside lamina: no mount under the store, no ``lmv*`` veth and no DNAT rule
in the test's network namespace, no leased address and no ``running`` row whose monitor
is dead in ``lamina.db`` (read-only), no cgroup directory of a container, no process of a
container or of lamina left, no layer besides the image's, its init layer and the
containers' writable layers, no half image.

The moments are of two kinds. *Events*: a poller watches what a run makes, in the order
it makes it (the writable layer's row, the mount, the cgroup, the ``running`` row, the
lease, the veth, and their removal at the end), and kills the moment one appears or
goes; that hits each phase every time, whatever the machine's speed. *Delays*: kills
swept over the command's whole duration, measured first, for whatever lies between.

Only the overlay driver: the launcher, the monitor and the network are the same for
every driver. lamina runs in a network namespace of its own (``host_netns``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import child_pids, needs_root, process_state, until
from test_containers import IMAGE, Site, _site

from lamina.core.containers.store import monitor_alive
from lamina.core.host import mounts

pytestmark = needs_root
CGROUPS = Path("/sys/fs/cgroup")
#: a host port for -p; only inside the test's network namespace
PORT = "18080"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Site]:
    yield from _site(tmp_path_factory.mktemp("crashes") / "store", "overlay", busybox_tar)


class World:
    """One store and one network namespace, seen from outside lamina."""

    def __init__(self, site: Site, netns: list[str]) -> None:
        self.site = site
        self.netns = netns
        self.holder = int(netns[1].split("/")[2])  # --net=/proc/PID/ns/net
        self.token = uuid.uuid4().hex  # in each container's environment: finds its processes
        self.seen_ids: set[str] = set()  # every container id met: their cgroups are checked

    # -- running lamina ----------------------------------------------------------------

    def cmd(self, *args: str) -> list[str]:
        return [*self.netns, *self.site.cmd(*args)]

    def lamina(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.cmd(*args), capture_output=True, timeout=60)
        if check:
            assert proc.returncode == 0, (args, proc.stderr.decode())
        return proc

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(*args), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)

    def flags(self) -> list[str]:
        """For ``run``/``create``: the bridge with a published port, a memory limit (so a
        cgroup) and the token in the environment."""
        return ["-e", f"CRASH_TOKEN={self.token}", "-p", f"{PORT}:80", "-m", "32m"]

    # -- reading the state ---------------------------------------------------------------

    def query(self, sql: str) -> list[tuple]:
        db = sqlite3.connect(f"file:{self.site.root / 'lamina.db'}?mode=ro", uri=True,
                             timeout=30)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    def containers(self) -> list[tuple[str, str, int | None, str | None, str]]:
        """(id, state, pid, monitor identity, layer) of every container."""
        rows = self.query("SELECT id, state, pid, process, layer FROM containers")
        self.seen_ids |= {r[0] for r in rows}
        return rows

    def states(self) -> set[str]:
        return {r[0] for r in self.query("SELECT state FROM containers")}

    def veths(self) -> list[str]:
        text = Path(f"/proc/{self.holder}/net/dev").read_text()
        return [line.split(":")[0].strip() for line in text.splitlines()
                if line.strip().startswith("lmv")]

    def dnat_rules(self) -> list[str]:
        out = subprocess.run([*self.netns, "nft", "list", "table", "ip", "lamina"],
                             capture_output=True, text=True).stdout
        return [line.strip() for line in out.splitlines() if "dnat to" in line]

    def leases(self) -> list[tuple[str, str]]:
        return self.query("SELECT address, container_id FROM network_addresses")

    def cgroups(self, ids: set[str]) -> list[str]:
        return [str(p) for i in ids for p in CGROUPS.glob(f"*/lamina/{i}")]

    def token_processes(self) -> list[int]:
        """Processes with this test's token in their environment: containers' processes."""
        found = []
        needle = f"CRASH_TOKEN={self.token}".encode()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if (needle in Path(f"/proc/{entry}/environ").read_bytes()
                            and process_state(int(entry)) not in ("Z", None)):
                        found.append(int(entry))
        return found

    def lamina_processes(self) -> list[int]:
        """Live processes of lamina on this store (the command line names its root)."""
        out = subprocess.run(["pgrep", "-f", str(self.site.root)], capture_output=True,
                             text=True).stdout
        return [int(p) for p in out.split() if process_state(int(p)) not in ("Z", None)]

    def layers(self) -> list[dict]:
        return json.loads(self.site.out("layer", "ls", "--format", "json"))

    # -- the verdict -------------------------------------------------------------------

    def leftovers(self) -> list[str]:
        """What is left that no live container explains; empty when all is well.

        A container whose monitor lives may be running (a killed ``start`` command's
        monitor goes on): what it holds is its own.
        """
        problems = []
        rows = self.containers()
        live = {cid for cid, state, _, process, _ in rows
                if state == "running" and monitor_alive(process)}
        for cid, state, *_ in rows:
            if state == "running" and cid not in live:
                problems.append(f"container {cid[:12]} says running, its monitor is dead")
        layers = {r[4] for r in rows if r[0] in live}
        for point in mounts.mounts_under(self.site.root):
            if not any(layer in point for layer in layers):
                problems.append(f"mount {point}")
        owned = {"lmv" + cid[:12] for cid in live}
        problems += [f"veth {name}" for name in self.veths() if name not in owned]
        problems += [f"lease {address} of {cid[:12]}" for address, cid in self.leases()
                     if cid not in live]
        problems += [f"rule {rule}" for rule in self.dnat_rules()
                     if not any(cid in rule for cid in live)]
        problems += [f"cgroup {path}" for path in self.cgroups(self.seen_ids - live)]
        layers_now = dict(self.query("SELECT id, state FROM layers"))
        problems += [f"{state} layer {lid[:12]}" for lid, state in layers_now.items()
                     if state != "ready"]
        problems += [f"layer data without a record: {name[:12]}"
                     for name in _listdir(self.site.root / "overlay") - set(layers_now)]
        problems += [f"directory of a removed container {name[:12]}"
                     for name in _listdir(self.site.root / "containers")
                     - {r[0] for r in rows}]
        if not live:
            problems += [f"container process {pid}" for pid in self.token_processes()]
        monitors = {int(p.split(":")[1]) for cid, _, _, p, _ in rows if cid in live}
        # a monitor lives on for a moment after it recorded its container exited
        end = time.monotonic() + 3
        while (stray := [p for p in self.lamina_processes() if p not in monitors]) \
                and time.monotonic() < end:
            time.sleep(0.01)
        problems += [f"lamina process {pid}" for pid in stray]
        return problems

    def next_command(self) -> None:
        """The ordinary command after a crash: it must leave nothing of the crash behind."""
        self.lamina("ps", "-a", "--format", "json")

    def check(self, what: str) -> None:
        self.next_command()
        problems = self.leftovers()
        assert not problems, f"after {what}: {problems}"

    def remove_all(self) -> None:
        ids = [r[0] for r in self.containers()]
        if ids:
            self.lamina("rm", "-f", *ids)


def _listdir(path: Path) -> set[str]:
    try:
        return {n for n in os.listdir(path) if re.fullmatch("[0-9a-f]{64}", n)}
    except FileNotFoundError:
        return set()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)


def _kill_when(pid: int, event: Callable[[], bool], done: Callable[[], bool],
               timeout: float = 30) -> bool:
    """SIGKILL ``pid`` as soon as ``event()`` holds; False if ``done()`` came first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if event():
            _kill(pid)
            return True
        if done():
            return False
        time.sleep(0.0002)
    raise AssertionError("neither the event nor the end came")


def _delays(duration: float, count: int) -> list[float]:
    """``count`` kill delays spread over ``duration`` (and a little beyond)."""
    return [duration * 1.1 * i / (count - 1) for i in range(count)]


def _timed(world: World, *args: str) -> float:
    """How long the command takes here, now (the slower of two: a CI may load the machine)."""
    took = []
    for _ in range(2):
        start = time.monotonic()
        world.lamina(*args)
        took.append(time.monotonic() - start)
    return max(took)


# -- events: what a run makes, in order ---------------------------------------------------


def _run_events(world: World) -> list[tuple[str, Callable[[], Callable[[], bool]]]]:
    """(name, factory of a fresh ``event()``) for each phase of a run, in order."""

    def appears(read: Callable[[], object]) -> Callable[[], Callable[[], bool]]:
        def factory() -> Callable[[], bool]:
            before = read()
            return lambda: read() != before
        return factory

    def goes(read: Callable[[], object]) -> Callable[[], Callable[[], bool]]:
        def factory() -> Callable[[], bool]:
            seen = []

            def event() -> bool:
                now = bool(read())
                if now:
                    seen.append(True)
                return bool(seen) and not now
            return event
        return factory

    layers = lambda: world.query("SELECT count(*) FROM layers")[0][0]  # noqa: E731
    mounted = lambda: mounts.mounts_under(world.site.root)  # noqa: E731
    others = _listdir(CGROUPS / "memory" / "lamina")  # not this store's (another's, a CI's)
    cgroup = lambda: _listdir(CGROUPS / "memory" / "lamina") - others  # noqa: E731
    running = lambda: "running" in world.states()  # noqa: E731
    leased = lambda: world.leases()  # noqa: E731
    veth = lambda: world.veths()  # noqa: E731
    return [
        ("the writable layer's row", appears(layers)),
        ("the mount", appears(mounted)),
        ("the cgroup", appears(cgroup)),
        ("the running row", appears(running)),
        ("the lease", appears(leased)),
        ("the veth", appears(veth)),
        ("the cgroup's removal", goes(cgroup)),
        ("the lease's release", goes(leased)),
        ("the veth's removal", goes(veth)),
        ("the unmount", goes(mounted)),
        ("the exited row", goes(running)),
    ]


# -- run in the foreground ----------------------------------------------------------------


def test_sigkill_of_a_foreground_run_at_any_moment(site: Site, host_netns: list[str]) -> None:
    world = World(site, host_netns)
    args = ["run", *world.flags(), "--rm", IMAGE, "sh", "-c", "sleep 0.05"]
    duration = _timed(world, *args)
    missed = []
    for name, factory in _run_events(world):
        proc = world.popen(*args)
        hit = _kill_when(proc.pid, factory(), lambda p=proc: p.poll() is not None)
        proc.wait()
        assert hit or proc.returncode == 0, (name, proc.stderr.read())  # type: ignore[union-attr]
        world.check(f"a kill at {name}" if hit else f"a run that ended before {name}")
        missed += [] if hit else [name]
    assert len(missed) <= 2, f"the poller missed {missed}: the kills hit no phase"
    for delay in _delays(duration, 10):
        proc = world.popen(*args)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        world.check(f"a kill {delay * 1000:.0f} ms into run")
    _store_still_works(world)


def _store_still_works(world: World) -> None:
    """A killed run may leave its container (exited or created): it starts and goes."""
    for cid, state, *_ in world.containers():
        assert state != "running", cid
    out = world.lamina("run", "--rm", "-p", f"{PORT}:80", "-m", "32m", IMAGE, "sh", "-c",
                       "ip -4 addr show eth0 | grep -c inet").stdout
    assert out == b"1\n"
    world.remove_all()
    assert world.leftovers() == []
    _only_image_layers(world)


def _only_image_layers(world: World) -> None:
    """No layer left but the images' own, their init layers and the containers'."""
    from lamina.core.images.store import is_init_layer

    used = {r[0] for r in world.query("SELECT layer_id FROM image_layers")}
    used |= {r[4] for r in world.containers()}
    extra = [layer for layer in world.layers() if layer["id"] not in used
             and not is_init_layer(layer["id"], layer["parent"])]
    assert extra == [], extra


# -- a detached container's monitor ------------------------------------------------------


class Monitor:
    """The monitor a ``run -d`` or ``start`` command forks, found as the command's child."""

    def __init__(self, cli: subprocess.Popen) -> None:
        self.cli = cli
        self.pid: int | None = None

    def find(self) -> int | None:
        if self.pid is None:
            children = child_pids(self.cli.pid)
            self.pid = children[0] if children else None
        return self.pid

    def ended(self) -> bool:
        """The monitor is gone (or a zombie), or the command ended without forking one."""
        if self.find() is None:
            return self.cli.poll() is not None and self.find() is None
        return process_state(self.pid) in ("Z", None)  # type: ignore[arg-type]

    def kill_when(self, event: Callable[[], bool]) -> bool:
        """SIGKILL the monitor as soon as ``event()`` holds; False if it ended first."""
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.find() is not None and event():
                _kill(self.pid)  # type: ignore[arg-type]
                return True
            if self.ended():
                return False
            time.sleep(0.0002)
        raise AssertionError("neither the event nor the end came")

    def kill_after(self, delay: float) -> None:
        """SIGKILL the monitor ``delay`` seconds after it was forked."""
        end = time.monotonic() + 30
        while self.find() is None:
            assert time.monotonic() < end and self.cli.poll() is None, "no monitor was forked"
            time.sleep(0.0002)
        time.sleep(delay)
        _kill(self.pid)  # type: ignore[arg-type]

    def wait(self) -> None:
        self.cli.wait(30)
        until(self.ended)


def test_sigkill_of_a_detached_containers_monitor_at_any_moment(
        site: Site, host_netns: list[str]) -> None:
    world = World(site, host_netns)
    args = ["run", "-d", "--rm", *world.flags(), IMAGE, "sh", "-c", "sleep 0.1"]
    lifetime = []
    for _ in range(2):  # from its fork to its end, unkilled
        monitor = Monitor(world.popen(*args))
        until(lambda m=monitor: m.find() is not None or m.cli.poll() is not None)
        start = time.monotonic()
        until(monitor.ended)
        lifetime.append(time.monotonic() - start)
        assert monitor.cli.wait() == 0
    world.check("detached runs")
    missed = []
    for name, factory in _run_events(world)[1:]:  # [0], the layer's row, precedes the fork
        monitor = Monitor(world.popen(*args))
        hit = monitor.kill_when(factory())
        monitor.wait()
        world.check(f"a kill of the monitor at {name}" if hit else f"a run ended before {name}")
        missed += [] if hit else [name]
    assert len(missed) <= 2, f"the poller missed {missed}: the kills hit no phase"
    for delay in _delays(max(lifetime), 6):
        monitor = Monitor(world.popen(*args))
        monitor.kill_after(delay)
        monitor.wait()
        world.check(f"a kill of the monitor {delay * 1000:.0f} ms after its fork")
    _store_still_works(world)


# -- start and stop ---------------------------------------------------------------------------


def _running(world: World) -> bool:
    return "running" in world.states()


def _monitor_pid(world: World) -> int:
    (process,) = [r[3] for r in world.containers() if r[1] == "running"]
    return int(process.split(":")[1])


def _end(world: World, cid: str) -> None:
    """Stop the container if a killed command left it running; then nothing may be left."""
    if _running(world):
        world.lamina("kill", cid, check=False)
        world.lamina("wait", cid)
    assert world.leftovers() == []


def test_sigkill_of_start_and_of_its_monitor(site: Site, host_netns: list[str]) -> None:
    world = World(site, host_netns)
    cid = world.lamina("create", *world.flags(), IMAGE, "sh", "-c",
                       "sleep 1000").stdout.decode().strip()
    took = []
    for _ in range(2):
        start = time.monotonic()
        world.lamina("start", cid)
        took.append(time.monotonic() - start)
        _end(world, cid)
    # the command killed: its monitor, if forked already, goes on alone and starts it
    for delay in _delays(max(took), 6):
        proc = world.popen("start", cid)
        time.sleep(delay)
        forked = child_pids(proc.pid)
        proc.kill()
        proc.wait()
        world.check(f"a kill {delay * 1000:.0f} ms into start")
        if forked:
            until(lambda m=forked[0]: _running(world) or process_state(m) in ("Z", None))
            assert _running(world), f"start killed {delay * 1000:.0f} ms in: not started"
        _end(world, cid)
    # the monitor killed at each phase of the start
    for name, factory in _run_events(world)[1:6]:
        monitor = Monitor(world.popen("start", cid))
        hit = monitor.kill_when(factory())
        monitor.wait()
        world.check(f"a kill of start's monitor at {name}" if hit else f"start ended ({name})")
        _end(world, cid)
    world.lamina("start", cid)  # the container still starts
    assert world.states() == {"running"}
    world.lamina("rm", "-f", cid)
    assert world.leftovers() == []


def test_sigkill_of_stop_and_of_the_monitor_it_stops(site: Site, host_netns: list[str]) -> None:
    world = World(site, host_netns)
    # on SIGTERM it takes a moment to end: stop has something to wait for
    cid = world.lamina("create", *world.flags(), IMAGE, "sh", "-c",
                       "trap 'sleep 0.1; exit 3' TERM; while :; do sleep 0.02; done"
                       ).stdout.decode().strip()
    took = []
    for _ in range(2):
        world.lamina("start", cid)
        start = time.monotonic()
        world.lamina("stop", cid)
        took.append(time.monotonic() - start)
        assert world.leftovers() == []
    # stop killed: the container ends anyway (its monitor tears down) or runs on
    for delay in _delays(max(took), 6):
        if not _running(world):
            world.lamina("start", cid)
        proc = world.popen("stop", cid)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        world.check(f"a kill {delay * 1000:.0f} ms into stop")
    # the monitor killed while it ends the container a stop signalled: a second stop
    # (or any command) finishes the job
    teardown = [e for e in _run_events(world) if e[0] in (
        "the cgroup's removal", "the lease's release", "the veth's removal", "the unmount",
        "the exited row")]
    for name, factory in teardown:
        if not _running(world):
            world.lamina("start", cid)
        stop = world.popen("stop", cid)
        hit = _kill_when(_monitor_pid(world), factory(), lambda p=stop: p.poll() is not None)
        assert stop.wait(30) == 0, stop.stderr.read()  # type: ignore[union-attr]
        world.check(f"a kill of the monitor at {name}" if hit else f"a stop before {name}")
    world.lamina("rm", "-f", cid)
    assert world.leftovers() == []


# -- commit --------------------------------------------------------------------------------


def test_sigkill_of_commit_leaves_no_half_image_and_no_layer(site: Site,
                                                             host_netns: list[str]) -> None:
    from lamina.core.images.store import is_init_layer

    world = World(site, host_netns)
    world.lamina("run", "--name", "builder", "--network", "none", IMAGE, "sh", "-c",
                 "echo hi > /greeting; mkdir -p /srv/app")
    images = lambda: {r[0] for r in world.query("SELECT id FROM images")}  # noqa: E731
    # the layers, but the init layers a run of an image makes (they go with the image)
    layers = lambda: {lid for lid, parent in world.query(  # noqa: E731
        "SELECT id, parent FROM layers") if not is_init_layer(lid, parent)}
    base_images, base_layers = images(), layers()
    assert base_images == {i["ID"] for i in json.loads(world.lamina(
        "images", "--no-trunc", "--format", "json").stdout)}
    assert base_layers <= {layer["id"] for layer in world.layers()}
    commit = ("commit", "-m", "crash", "builder", "committed:1")

    def verdict(what: str) -> None:
        world.check(what)
        new = images() - base_images
        assert len(new) <= 1, (what, new)
        if new:  # whole: the image runs, its layer is the only new one
            assert len(layers() - base_layers) == 1, what
            world.lamina("rmi", "committed:1")
        assert (images(), layers()) == (base_images, base_layers), what

    took = []
    for _ in range(2):
        start = time.monotonic()
        world.lamina(*commit)
        took.append(time.monotonic() - start)
        out = world.lamina("run", "--rm", "--network", "none", "committed:1", "cat",
                           "/greeting").stdout
        assert out == b"hi\n"
        verdict("a commit")
    tmp = site.root / "tmp"
    count = lambda sql: lambda: world.query(sql)[0][0]  # noqa: E731

    def appears(read: Callable[[], object]) -> Callable[[], bool]:
        before = read()
        return lambda: read() != before

    events = [
        ("the export's file", lambda: appears(lambda: sorted(tmp.glob("ingest-commit-*")))),
        ("the layer's row", lambda: appears(count("SELECT count(*) FROM layers"))),
        ("the layer ready", lambda: appears(
            count("SELECT count(*) FROM layers WHERE state = 'ready'"))),
        ("the image's row", lambda: appears(count("SELECT count(*) FROM images"))),
    ]
    for name, factory in events:
        proc = world.popen(*commit)
        hit = _kill_when(proc.pid, factory(), lambda p=proc: p.poll() is not None)
        proc.wait()
        verdict(f"a kill of commit at {name}" if hit else f"a commit ended before {name}")
    for delay in _delays(max(took), 8):
        proc = world.popen(*commit)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        verdict(f"a kill {delay * 1000:.0f} ms into commit")
    world.lamina("rm", "builder")


# -- many runs at once ------------------------------------------------------------------------


def test_two_hundred_parallel_runs_never_share_an_address_in_use_and_leave_nothing(
        site: Site, host_netns: list[str]) -> None:
    """200 ``run --rm`` on the bridge, 8 at a time (a new one as soon as one ends).

    Each container prints its address and the machine's uptime (which the container
    shares) when it begins and ends: that span lies within its address's lease, so two
    containers whose spans overlap must have had different addresses.
    """
    from concurrent.futures import ThreadPoolExecutor

    world = World(site, host_netns)
    script = ("read up _ < /proc/uptime; echo $up; "
              "ip -4 addr show eth0 | sed -n 's/.*inet \\([0-9.]*\\).*/\\1/p'; "
              "sleep 0.4; read up _ < /proc/uptime; echo $up")

    def one(_: int) -> subprocess.CompletedProcess:
        return subprocess.run(world.cmd("run", "--rm", IMAGE, "sh", "-c", script),
                              capture_output=True, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    failed = [r.stderr.decode() for r in results if r.returncode != 0]
    assert not failed, failed[:3]
    spans = []
    for r in results:
        begin, address, end = r.stdout.decode().split()
        assert address.startswith("10.87."), address
        spans.append((float(begin), float(end), address))
    spans.sort()
    overlapping = 0
    for i, (_, end, address) in enumerate(spans):
        for other_begin, _, other in spans[i + 1:]:
            if other_begin >= end - 0.01:  # uptime counts in 10 ms steps
                break
            overlapping += 1
            assert other != address, f"{address} held by two running containers at once"
    assert overlapping >= 100, "the runs hardly overlapped: the test proves nothing"
    assert len({s[2] for s in spans}) < 200, "no address was ever reused"
    world.next_command()
    assert world.leftovers() == []
    assert world.containers() == []
    _only_image_layers(world)
