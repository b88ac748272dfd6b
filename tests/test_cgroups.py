"""Resource limits with real processes in real cgroups: a memory hog is OOM-killed, a fork
bomb stops at its pids limit, --cpus throttles, and nothing is left behind.

Every test works below its own parent group (``lamina-test-<pid>-<random>``), removed
at teardown with whatever is in it. A test process waits on its stdin until it has been
moved into its group, so the limits hold from its first instruction and the test runner
itself never joins a group.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_root, run_lamina

from lamina.core.errors import CgroupError
from lamina.core.launcher import cgroups
from lamina.core.launcher.cgroups import Cgroup, Hierarchies, Limits

pytestmark = needs_root
FOUND = Hierarchies.discover()
BUSYBOX = shutil.which("busybox")


def needs(*controllers: str) -> pytest.MarkDecorator:
    missing = [c for c in controllers if FOUND.where(c) is None]
    return pytest.mark.skipif(bool(missing), reason=f"no {', '.join(missing)} controller here")


def new_id() -> str:
    return secrets.token_hex(32)


@pytest.fixture
def parent() -> Iterator[str]:
    name = f"lamina-test-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        mounts = {*FOUND.v1.values(), *([FOUND.unified] if FOUND.unified else [])}
        for mount in mounts:
            top = mount / name
            if not top.is_dir():
                continue
            for entry in os.listdir(top):
                if (top / entry).is_dir():
                    group = Cgroup.open(entry, parent=name)
                    group.kill_all()
                    group.remove()
            os.rmdir(top)


class Waiting:
    """A process that waits on its stdin before it execs ``argv``: placed, then released."""

    def __init__(self, *argv: str) -> None:
        gate, self._release = os.pipe()
        self.proc = subprocess.Popen(["sh", "-c", 'read _ ; exec "$@"', "sh", *argv],
                                     stdin=gate, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        os.close(gate)
        self.pid = self.proc.pid

    def release(self) -> None:
        os.write(self._release, b"\n")
        os.close(self._release)

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err.decode(errors="replace")


def run_in(group: Cgroup, *argv: str, timeout: float = 30) -> tuple[int, str]:
    child = Waiting(*argv)
    group.add(child.pid)
    child.release()
    return child.finish(timeout)


# --- limits ------------------------------------------------------------------------------


@needs("memory")
def test_memory_hog_is_oom_killed(parent: str) -> None:
    group = Cgroup.create(new_id(), Limits(memory=32 << 20), parent=parent)
    status, _ = run_in(group, sys.executable, "-c", "b = b'x' * (200 << 20)")
    assert status == -signal.SIGKILL
    assert group.oom_killed()
    group.remove()
    assert not any(path.exists() for path in group.paths)


@needs("memory")
def test_process_within_its_memory_limit_is_not_oom_killed(parent: str) -> None:
    group = Cgroup.create(new_id(), Limits(memory=64 << 20), parent=parent)
    status, _ = run_in(group, sys.executable, "-c", "b = b'x' * (8 << 20)")
    assert status == 0
    assert not group.oom_killed()
    group.remove()


@needs("pids")
@pytest.mark.skipif(BUSYBOX is None, reason="needs busybox (busybox-static)")
def test_fork_bomb_stopped_by_pids_limit(parent: str) -> None:
    group = Cgroup.create(new_id(), Limits(pids=20), parent=parent)
    pids_dir = group.path_for("pids")
    assert pids_dir is not None
    assert (pids_dir / "pids.max").read_text().strip() == "20"
    bomb = "i=0; while [ $i -lt 100 ]; do sleep 30 >/dev/null 2>&1 & i=$((i+1)); done; wait"
    child = Waiting(BUSYBOX, "sh", "-c", bomb)  # type: ignore[arg-type]
    group.add(child.pid)
    child.release()
    try:
        status, err = child.finish(timeout=15)
        assert status != 0 and "can't fork" in err
    except subprocess.TimeoutExpired:  # a shell that survives a failed fork waits here
        pass
    assert 0 < len(group.pids()) <= 20
    events = dict(line.split() for line in (pids_dir / "pids.events").read_text().splitlines())
    assert int(events["max"]) > 0  # the kernel refused forks at the limit
    group.kill_all()
    assert group.pids() == []
    group.remove()
    assert not pids_dir.exists()


@needs("cpu")
def test_cpus_become_a_cfs_quota_that_throttles(parent: str) -> None:
    group = Cgroup.create(new_id(), Limits(cpus=0.5), parent=parent)
    cpu = group.path_for("cpu")
    assert cpu is not None
    if (cpu / "cpu.max").exists():
        assert (cpu / "cpu.max").read_text().split() == ["50000", "100000"]
    else:
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    child = Waiting(sys.executable, "-c",
                    "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass")
    group.add(child.pid)
    start = time.monotonic()
    child.release()
    _, _, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - start
    used = usage.ru_utime + usage.ru_stime
    stat = dict(line.split() for line in (cpu / "cpu.stat").read_text().splitlines())
    assert int(stat["nr_throttled"]) > 0
    assert used <= 0.5 * wall + 0.15, (used, wall)
    child.proc.stdout.close()  # type: ignore[union-attr]
    child.proc.stderr.close()  # type: ignore[union-attr]
    group.remove()


@needs("pids", "memory")
def test_create_again_reuses_the_group_and_rewrites_every_limit(parent: str) -> None:
    container = new_id()
    first = Cgroup.create(container, Limits(memory=64 << 20, pids=10), parent=parent)
    second = Cgroup.create(container, Limits(memory=128 << 20), parent=parent)
    assert first.paths == second.paths
    pids, memory = second.path_for("pids"), second.path_for("memory")
    assert pids is not None and memory is not None
    assert (pids / "pids.max").read_text().strip() == "max"  # not given: unlimited again
    limit = "memory.max" if (memory / "memory.max").exists() else "memory.limit_in_bytes"
    assert int((memory / limit).read_text()) == 128 << 20
    second.remove()
    second.remove()  # idempotent
    assert not any(path.exists() for path in second.paths)


@needs("memory")
def test_a_limit_the_kernel_refuses_is_a_clear_error_and_loses_nothing(parent: str) -> None:
    """v1 refuses a memory limit below what the group holds and cannot reclaim (no swap)."""
    container = new_id()
    group = Cgroup.create(container, Limits(memory=128 << 20, memory_swap=128 << 20),
                          parent=parent)
    holder = Waiting(sys.executable, "-c",
                     "import sys\nb = b'x' * (48 << 20)\nprint('ready', flush=True)\n"
                     "sys.stdin.read()")
    group.add(holder.pid)
    holder.release()
    assert holder.proc.stdout is not None and holder.proc.stdout.readline() == b"ready\n"
    try:
        with pytest.raises(CgroupError, match="the kernel refused") as error:
            Cgroup.create(container, Limits(memory=8 << 20, memory_swap=8 << 20),
                          parent=parent)
        assert error.value.hint and "already uses" in error.value.hint
        assert group.pids() == [holder.pid]  # the group and its process are still there
        assert holder.proc.poll() is None
    finally:
        group.kill_all()
        holder.finish()
    group.remove()


@needs("cpu")
def test_a_failed_create_removes_the_groups_it_made(parent: str) -> None:
    """v1 keeps a child's CFS quota within its parent's: our parent gets 0.2 CPUs."""
    where = FOUND.where("cpu")
    assert where is not None
    if where[0] != "v1":
        pytest.skip("cgroup2 lets a child's cpu.max exceed its parent's")
    (where[1] / parent).mkdir()
    (where[1] / parent / "cpu.cfs_quota_us").write_text("20000")
    container = new_id()
    with pytest.raises(CgroupError, match=r"cpu\.cfs_quota_us"):
        Cgroup.create(container, Limits(cpus=1.0, pids=10), parent=parent)
    mounts = {*FOUND.v1.values(), *([FOUND.unified] if FOUND.unified else [])}
    assert [m for m in mounts if (m / parent / container).exists()] == []


def test_container_ids_that_are_not_64_hex_digits_are_refused(parent: str) -> None:
    for bad in ["../../etc", "A" * 64, "a" * 63, "", "a" * 63 + "/", "g" * 64]:
        with pytest.raises(CgroupError, match="not a container id"):
            Cgroup.create(bad, parent=parent)
    for mount in FOUND.v1.values():
        assert not (mount / parent).exists() or os.listdir(mount / parent) == []


def test_limits_are_checked_as_docker_checks_them() -> None:
    with pytest.raises(CgroupError, match="6MB") as small:
        Limits.parse(memory="5m")
    assert small.value.hint and "6m" in small.value.hint
    with pytest.raises(CgroupError, match="needs a memory limit"):
        Limits.parse(memory_swap="64m")
    with pytest.raises(CgroupError, match="below the memory limit"):
        Limits.parse(memory="64m", memory_swap="32m")
    with pytest.raises(CgroupError, match="out of range"):
        Limits.parse(cpus=(os.cpu_count() or 1) + 1)
    with pytest.raises(CgroupError, match="invalid size"):
        Limits.parse(memory="lots")
    with pytest.raises(CgroupError, match="--pids-limit"):
        Limits.parse(pids_limit="many")
    limits = Limits.parse(memory="32m", memory_swap="-1", pids_limit="-1", cpus="0.5",
                          cpu_shares="0")
    assert limits == Limits(memory=32 << 20, memory_swap=-1, cpus=0.5)
    assert Limits.parse(memory="1.5g", pids_limit=0).memory == 3 << 29
    assert Limits.parse(memory="64MiB").controllers() == {"memory"}


# --- a machine without the controller -----------------------------------------------------


def test_a_limit_without_its_controller_is_an_error_not_ignored(parent: str) -> None:
    bare = Hierarchies()  # no hierarchy at all
    with pytest.raises(CgroupError, match="no memory cgroup controller") as error:
        Cgroup.create(new_id(), Limits(memory=32 << 20), parent=parent, hierarchies=bare)
    assert error.value.hint and "--memory" in error.value.hint
    assert Cgroup.create(new_id(), Limits(), parent=parent, hierarchies=bare).paths == []


@pytest.mark.skipif(FOUND.unified is None, reason="no cgroup2 hierarchy mounted")
def test_v2_refuses_a_controller_its_root_does_not_offer(parent: str) -> None:
    only_v2 = Hierarchies(unified=FOUND.unified, unified_controllers=FOUND.unified_controllers)
    if "pids" in only_v2.unified_controllers:
        pytest.skip("this cgroup2 hierarchy has the pids controller")
    with pytest.raises(CgroupError, match="no pids cgroup controller"):
        Cgroup.create(new_id(), Limits(pids=20), parent=parent, hierarchies=only_v2)
    assert not (FOUND.unified / parent).exists()


# --- cgroup2 -------------------------------------------------------------------------------


@pytest.mark.skipif(FOUND.unified is None, reason="no cgroup2 hierarchy mounted")
def test_v2_group_holds_and_kills_a_process_tree(parent: str) -> None:
    """On a hybrid machine this is the cgroup2 tracking group; on a v2 machine, the group."""
    only_v2 = Hierarchies(unified=FOUND.unified, unified_controllers=FOUND.unified_controllers)
    container = new_id()
    group = Cgroup.create(container, parent=parent, hierarchies=only_v2)
    assert group.paths == [FOUND.unified / parent / container]
    child = Waiting("sh", "-c", "sleep 60 & sleep 60 & wait")
    group.add(child.pid)
    child.release()
    deadline = time.monotonic() + 5
    while len(group.pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(group.pids()) == 3
    group.kill_all()
    assert child.finish()[0] == -signal.SIGKILL
    assert group.pids() == []
    group.remove()
    assert not (FOUND.unified / parent / container).exists()


V2_LIMITS = {"memory", "pids", "cpu"}


@pytest.mark.skipif(
    any(FOUND.where(c) != ("v2", FOUND.unified) for c in V2_LIMITS),
    reason="the cgroup2 hierarchy here offers none of memory/pids/cpu (they are bound to "
           "v1), and enabling one would reconfigure the host; on a v2 machine the tests "
           "above run through the v2 files")
def test_v2_limit_files(parent: str) -> None:
    only_v2 = Hierarchies(unified=FOUND.unified, unified_controllers=FOUND.unified_controllers)
    group = Cgroup.create(new_id(), Limits(memory=32 << 20, memory_swap=48 << 20, pids=20,
                                           cpus=0.5, cpu_shares=1024),
                          parent=parent, hierarchies=only_v2)
    path = group.path_for("memory")
    assert path is not None
    assert (path / "memory.max").read_text().strip() == str(32 << 20)
    if (path / "memory.swap.max").exists():
        assert (path / "memory.swap.max").read_text().strip() == str(16 << 20)
    assert (path / "pids.max").read_text().strip() == "20"
    assert (path / "cpu.max").read_text().split() == ["50000", "100000"]
    assert (path / "cpu.weight").read_text().strip() == "39"
    status, _ = run_in(group, sys.executable, "-c", "b = b'x' * (200 << 20)")
    assert status == -signal.SIGKILL and group.oom_killed()
    group.remove()


# --- v1 ------------------------------------------------------------------------------------


@needs("freezer")
def test_v1_kill_all_freezes_then_kills(parent: str) -> None:
    only_v1 = Hierarchies(v1=FOUND.v1)
    group = Cgroup.create(new_id(), parent=parent, hierarchies=only_v1)
    assert group.path_for("freezer") is not None  # joined: no cgroup.kill to use
    child = Waiting("sh", "-c", "sleep 60 & sleep 60 & wait")
    group.add(child.pid)
    child.release()
    deadline = time.monotonic() + 5
    while len(group.pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    group.kill_all()
    assert child.finish()[0] == -signal.SIGKILL
    assert group.pids() == []
    freezer = group.path_for("freezer")
    assert freezer is not None and (freezer / "freezer.state").read_text().strip() == "THAWED"
    group.remove()


# --- leftovers -----------------------------------------------------------------------------


@needs("pids")
def test_sweep_removes_dead_containers_groups_and_keeps_live_ones(parent: str) -> None:
    dead, alive, foreign = new_id(), new_id(), new_id()
    for container in (dead, alive, foreign):
        Cgroup.create(container, parent=parent)
    sleepers = [Waiting("sleep", "60"), Waiting("sleep", "60")]
    Cgroup.open(alive, parent=parent).add(sleepers[0].pid)
    Cgroup.open(foreign, parent=parent).add(sleepers[1].pid)  # another store's, running
    try:
        assert cgroups.sweep({alive}, parent=parent) == [dead]
        assert Cgroup.open(dead, parent=parent).paths == []
        assert Cgroup.open(alive, parent=parent).pids() == [sleepers[0].pid]
        assert Cgroup.open(foreign, parent=parent).pids() == [sleepers[1].pid]
    finally:
        for sleeper in sleepers:
            sleeper.proc.kill()
            sleeper.finish()
    assert sorted(cgroups.sweep(set(), parent=parent)) == sorted([alive, foreign])


@needs("memory")
def test_open_finds_the_group_from_another_command(parent: str) -> None:
    container = new_id()
    made = Cgroup.create(container, Limits(memory=32 << 20), parent=parent)
    run_in(made, sys.executable, "-c", "b = b'x' * (200 << 20)")
    found = Cgroup.open(container, parent=parent)
    assert sorted(found.paths) == sorted(made.paths)
    assert found.oom_killed()
    found.remove()


@needs("pids")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_in_its_cgroup_namespace_the_container_sees_its_group_as_root(parent: str) -> None:
    group = Cgroup.create(new_id(), parent=parent)
    child = Waiting("unshare", "--cgroup", "cat", "/proc/self/cgroup")
    group.add(child.pid)
    child.release()
    out, _ = child.proc.communicate(timeout=10)
    lines = out.decode().splitlines()
    pids_line = next(line for line in lines if ":pids:" in line or line.startswith("0::"))
    assert pids_line.endswith(":/")
    group.remove()


def test_detect_names_the_layout() -> None:
    described = cgroups.detect()
    assert described.split(":")[0] == FOUND.mode
    if FOUND.mode == "hybrid":
        assert str(FOUND.unified) in described


def test_info_says_which_cgroups_lamina_uses(tmp_path: Path) -> None:
    out = run_lamina("info", root=tmp_path / "root").stdout.decode()
    line = next(line for line in out.splitlines() if line.startswith("Cgroups:"))
    assert line.split(None, 1)[1] == cgroups.detect()


def test_hierarchies_are_read_from_the_mount_table(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
        "41 31 0:38 / /sys/fs/cgroup/my\\040unified rw - cgroup2 cgroup2 rw\n")
    found = Hierarchies.discover(str(table))
    assert found.v1 == {"cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
                        "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct")}
    assert found.unified == Path("/sys/fs/cgroup/my unified")
    assert found.mode == "hybrid"
    assert found.where("cpu") == ("v1", Path("/sys/fs/cgroup/cpu,cpuacct"))
    assert found.where("memory") is None
