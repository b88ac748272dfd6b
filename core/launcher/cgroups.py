"""Resource limits through cgroups: one group per container in each hierarchy it needs.

A container's group is ``<hierarchy>/<parent>/<container id>`` (``parent`` is "lamina"),
created below the host's hierarchies and removed when the container ends; lamina never
mounts, unmounts or reconfigures a hierarchy and never moves a process it did not start.
Plain file I/O, no library: a group costs a few ``mkdir``/``write``/``rmdir`` calls.

Three layouts exist, and :class:`Hierarchies` says which one a machine has:

- **v2** (the modern default): ``/sys/fs/cgroup`` is cgroup2, one directory holds every
  controller. The controllers a limit needs are enabled in ``<parent>/cgroup.subtree_control``
  (lamina's own group, which holds no process); the root must offer them, as systemd does.
- **v1**: one hierarchy per controller (``/sys/fs/cgroup/memory``, ``.../pids``, ...); the
  container gets a directory in each hierarchy it joins.
- **hybrid**: v1 controllers plus a cgroup2 hierarchy without them (often at
  ``/sys/fs/cgroup/unified``). Each controller is used where it is mounted (v1 first), and
  the container also gets a controller-less group in the cgroup2 hierarchy, which tracks
  its processes and kills them all at once (``cgroup.kill``).

The launcher's order: :meth:`Cgroup.create` before the child execs, :meth:`Cgroup.add` of
the child's pid while it waits on its sync pipe (so the limits hold from its first
instruction, and the caller itself is never placed in a group), then the child unshares
its cgroup namespace (``CLONE_NEWCGROUP``): its group becomes its root, and
``/proc/self/cgroup`` inside shows ``/`` for every hierarchy. ``add`` waits ~10 ms for an
RCU grace period in the kernel (idle time): the child can do its own set-up meanwhile
and wait on the pipe just before it unshares the cgroup namespace and execs. After the child exits:
:meth:`Cgroup.oom_killed` (read before removal), :meth:`Cgroup.kill_all` for anything left,
:meth:`Cgroup.remove`. A lamina process killed in between leaves the group behind;
:func:`sweep` from the next command removes the groups of containers no longer alive.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lamina.core.errors import CgroupError

#: the group below each hierarchy that holds lamina's containers' groups
PARENT = "lamina"
#: Docker's smallest --memory: below it a container cannot even start its runtime
MIN_MEMORY = 6 * 1024 * 1024
#: the CFS period --cpus is expressed in (Docker's, 100 ms)
CFS_PERIOD = 100_000
#: cpu.shares' range in v1 (the kernel clamps silently; lamina refuses instead)
MIN_SHARES, MAX_SHARES = 2, 262_144
#: controllers a v1 mount may name in its options (anything else is a mount option)
V1_CONTROLLERS = frozenset({
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio",
    "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc",
})
#: controllers every container joins where the machine has them, limits or not: memory
#: for usage and OOM counts, pids for the process list
ALWAYS = frozenset({"memory", "pids"})

_ID = re.compile(r"[0-9a-f]{64}\Z")
_BYTES = re.compile(r"(?i)^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


# --- the limits ----------------------------------------------------------------------


def parse_bytes(value: int | str, *, what: str = "--memory") -> int:
    """Bytes from Docker's size notation: ``"32m"``, ``"1.5g"``, ``"512MiB"``, ``"1048576"``.

    Units are binary as Docker's (``m`` is 2**20); a bare number is bytes.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise CgroupError(f"{what} must be a size, not {value!r}", hint='like "32m" or "1g"')
    if isinstance(value, int):
        return value
    match = _BYTES.match(value)
    if not match:
        raise CgroupError(f"invalid size for {what}: {value!r}",
                          hint='write a number with an optional unit b, k, m, g, like "32m"')
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class Limits:
    """What a container may use; ``None`` is unlimited. Checked when made (:class:`CgroupError`).

    The fields mean what Docker's flags mean: ``memory`` (``--memory``, bytes, at least
    6 MB), ``memory_swap`` (``--memory-swap``: memory *plus* swap, ``-1`` for unlimited
    swap; unset with ``memory`` set, the container may use as much swap as memory, where
    the kernel accounts swap), ``pids`` (``--pids-limit``), ``cpus`` (``--cpus``: a CFS
    quota of ``cpus`` x 100 ms per 100 ms), ``cpu_shares`` (``--cpu-shares``, a relative
    weight).
    """

    memory: int | None = None
    memory_swap: int | None = None
    pids: int | None = None
    cpus: float | None = None
    cpu_shares: int | None = None

    def __post_init__(self) -> None:
        if self.memory is not None and self.memory < MIN_MEMORY:
            raise CgroupError(
                f"memory limit {self.memory} bytes is below the minimum of 6MB",
                hint="give --memory at least 6m")
        if self.memory_swap is not None:
            if self.memory is None:
                raise CgroupError("a memory+swap limit needs a memory limit",
                                  hint="give --memory as well as --memory-swap")
            if self.memory_swap != -1 and self.memory_swap < self.memory:
                raise CgroupError(
                    f"memory+swap limit {self.memory_swap} is below the memory limit "
                    f"{self.memory}",
                    hint="--memory-swap counts memory plus swap: give at least --memory, "
                         "or -1 for unlimited swap")
        if self.pids is not None and self.pids < 1:
            raise CgroupError(f"pids limit must be at least 1, not {self.pids}",
                              hint="leave --pids-limit out (or give -1) for no limit")
        if self.cpus is not None:
            available = os.cpu_count() or 1
            if not (math.isfinite(self.cpus) and 0.01 <= self.cpus <= available):
                raise CgroupError(
                    f"--cpus {self.cpus} is out of range",
                    hint=f"give from 0.01 to {available}.00: this machine has "
                         f"{available} CPUs")
        if self.cpu_shares is not None and not MIN_SHARES <= self.cpu_shares <= MAX_SHARES:
            raise CgroupError(f"cpu shares {self.cpu_shares} is out of range",
                              hint=f"give --cpu-shares from {MIN_SHARES} to {MAX_SHARES}")

    @classmethod
    def parse(cls, *, memory: int | str | None = None, memory_swap: int | str | None = None,
              pids_limit: int | str | None = None, cpus: float | str | None = None,
              cpu_shares: int | str | None = None) -> Limits:
        """Limits from Docker's flag values as typed: ``memory="32m"``, ``pids_limit=-1``...

        As Docker: ``--pids-limit`` 0 or -1, ``--cpus 0`` and ``--cpu-shares 0`` mean no
        limit; ``--memory-swap -1`` unlimited swap.
        """
        swap = None
        if memory_swap is not None:
            swap = -1 if str(memory_swap).strip() == "-1" else parse_bytes(
                memory_swap, what="--memory-swap")
        pids = _number(pids_limit, int, "--pids-limit")
        cpu = _number(cpus, float, "--cpus")
        shares = _number(cpu_shares, int, "--cpu-shares")
        return cls(
            memory=None if memory is None else parse_bytes(memory),
            memory_swap=swap,
            pids=None if pids is None or pids <= 0 else int(pids),
            cpus=None if not cpu else float(cpu),
            cpu_shares=None if not shares else int(shares),
        )

    def controllers(self) -> frozenset[str]:
        """The controllers these limits need."""
        needed = set()
        if self.memory is not None:
            needed.add("memory")
        if self.pids is not None:
            needed.add("pids")
        if self.cpus is not None or self.cpu_shares is not None:
            needed.add("cpu")
        return frozenset(needed)


def _number(value: object, kind: type, flag: str) -> float | int | None:
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise CgroupError(f"invalid value for {flag}: {value!r}",
                          hint=f"{flag} takes a number") from None


# --- what the machine has ------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchies:
    """The cgroup hierarchies mounted here: v1 controllers and the cgroup2 mount."""

    #: controller -> mount point of the v1 hierarchy that has it
    v1: Mapping[str, Path] = field(default_factory=dict)
    #: the cgroup2 mount, if any
    unified: Path | None = None
    #: the controllers the cgroup2 root offers (its cgroup.controllers)
    unified_controllers: frozenset[str] = frozenset()

    @classmethod
    def discover(cls, mountinfo: str = "/proc/self/mountinfo") -> Hierarchies:
        """Read the hierarchies from the mount table (the first mount of each wins)."""
        v1: dict[str, Path] = {}
        unified: Path | None = None
        with open(mountinfo) as table:
            for line in table:
                fields, _, rest = line.partition(" - ")
                parts, tail = fields.split(), rest.split()
                if len(parts) < 5 or len(tail) < 3:
                    continue
                mount_point = Path(_unescape(parts[4]))
                if tail[0] == "cgroup2" and unified is None:
                    unified = mount_point
                elif tail[0] == "cgroup":
                    for option in tail[2].split(","):
                        if option in V1_CONTROLLERS:
                            v1.setdefault(option, mount_point)
        offered: frozenset[str] = frozenset()
        if unified is not None:
            with contextlib.suppress(OSError):
                offered = frozenset((unified / "cgroup.controllers").read_text().split())
        return cls(v1=v1, unified=unified, unified_controllers=offered)

    @property
    def mode(self) -> str:
        """``"v2"``, ``"v1"``, ``"hybrid"`` or ``"none"``."""
        if self.v1 and self.unified is not None:
            return "hybrid"
        if self.v1:
            return "v1"
        return "v2" if self.unified is not None else "none"

    def where(self, controller: str) -> tuple[str, Path] | None:
        """``("v1", mount)`` or ``("v2", mount)`` for a controller, ``None`` if absent.

        A controller bound to a v1 hierarchy is not available in cgroup2 (the kernel
        gives each controller to one hierarchy), so v1 is looked at first.
        """
        if controller in self.v1:
            return "v1", self.v1[controller]
        if self.unified is not None and controller in self.unified_controllers:
            return "v2", self.unified
        return None

    def describe(self) -> str:
        """One line for ``lamina info``: the layout and what lamina uses of it."""
        if self.mode == "none":
            return "none: no cgroup hierarchy is mounted; resource limits cannot be applied"
        v2 = ""
        if self.unified is not None:
            offered = " ".join(sorted(self.unified_controllers)) or "no controllers"
            v2 = f"cgroup2 at {self.unified} ({offered})"
        if self.mode == "v2":
            return f"v2: {v2}; containers in {self.unified / PARENT}"
        names = ", ".join(sorted(self.v1))
        roots = {p.parent for p in self.v1.values()}
        where = f"under {roots.pop()}" if len(roots) == 1 else "in their hierarchies"
        v1 = f"v1 controllers {names} {where}"
        if self.mode == "v1":
            return f"v1: {v1}"
        return (f"hybrid: {v1} (used for limits); {v2} tracks each container's "
                "processes")


def detect() -> str:
    """The layout here and what lamina uses, for ``lamina info``."""
    return Hierarchies.discover().describe()


def _unescape(path: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


# --- a container's group -------------------------------------------------------------


def check_id(container_id: str) -> str:
    """The id, if it is a full container id (64 lowercase hex): it becomes a directory name."""
    if not isinstance(container_id, str) or not _ID.match(container_id):
        raise CgroupError(f"not a container id for a cgroup: {container_id!r}",
                          hint="a cgroup is named after the full 64-hex-digit container id")
    return container_id


class Cgroup:
    """A container's groups: one directory per hierarchy it joined.

    Made by :meth:`create` or found again by :meth:`open`; every method works on the
    directories, so another lamina process (``stop``, ``kill``) can open the group of a
    container it did not start.
    """

    def __init__(self, container_id: str, dirs: Mapping[str, Path],
                 tracking: Path | None = None) -> None:
        self.container_id = container_id
        #: controller -> the container's directory holding it
        self.dirs = dict(dirs)
        #: the container's cgroup2 group: it holds the v2 controllers, and on a hybrid
        #: machine (none there) tracks the processes; None without a cgroup2 hierarchy
        self.tracking = tracking

    def __repr__(self) -> str:
        return f"Cgroup({self.container_id[:12]}, {sorted(self.dirs)})"

    @property
    def paths(self) -> list[Path]:
        """Every directory of this group, each once (v2 holds all its controllers in one)."""
        seen = dict.fromkeys([*self.dirs.values(), *([self.tracking] if self.tracking else [])])
        return list(seen)

    def path_for(self, controller: str) -> Path | None:
        """The directory that holds ``controller`` for this container, if it joined it."""
        return self.dirs.get(controller)

    # -- life cycle --------------------------------------------------------------

    @classmethod
    def create(cls, container_id: str, limits: Limits | None = None, *, parent: str = PARENT,
               hierarchies: Hierarchies | None = None) -> Cgroup:
        """Make the container's groups and write its limits; idempotent per id.

        A limit whose controller the machine lacks is a :class:`CgroupError`, never
        ignored. Creating again reuses the directories and writes every limit again,
        unlimited for those not given. If a write fails, the container's directories this
        call made are removed again (the ``parent`` groups stay, as after :meth:`remove`).
        """
        check_id(container_id)
        limits = limits or Limits()
        found = hierarchies or Hierarchies.discover()
        needed = limits.controllers()
        for controller in sorted(needed):
            if found.where(controller) is None:
                raise _missing(controller, found)
        joined = needed | {c for c in ALWAYS if found.where(c) is not None}

        place = {c: found.where(c) for c in joined}
        in_v2 = {c for c, at in place.items() if at is not None and at[0] == "v2"}
        v2 = sorted(in_v2)

        made: list[Path] = []
        try:
            tracking = None
            if found.unified is not None:
                # the container's cgroup2 group: its v2 controllers, or (hybrid) only
                # its processes, optional then (a read-only cgroup2 mount, say)
                make = _mkdir if v2 or found.mode == "v2" else _try_mkdir
                top = make(found.unified / parent, [])  # parents stay: others may use them
                if top is not None:
                    if v2:
                        v2 = _enable(top, v2, needed, found)
                    tracking = make(top / container_id, made)
            dirs: dict[str, Path] = dict.fromkeys(v2, tracking) if tracking else {}
            if "freezer" in found.v1 and not (tracking and (tracking / "cgroup.kill").exists()):
                joined |= {"freezer"}  # to stop forks while kill_all works
            for controller in sorted(joined - in_v2):
                top = _mkdir(found.v1[controller] / parent, [])
                dirs[controller] = _mkdir(top / container_id, made)
            cgroup = cls(container_id, dirs, tracking)
            cgroup._apply(limits)
            return cgroup
        except BaseException:
            for path in reversed(made):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            raise

    @classmethod
    def open(cls, container_id: str, *, parent: str = PARENT,
             hierarchies: Hierarchies | None = None) -> Cgroup:
        """The groups a container has now (none if it has none): for another command."""
        check_id(container_id)
        found = hierarchies or Hierarchies.discover()
        dirs: dict[str, Path] = {}
        tracking = None
        if found.unified is not None:
            group = found.unified / parent / container_id
            if group.is_dir():
                tracking = group
                dirs.update((c, group) for c in _controllers_of(group) if c not in found.v1)
        for controller, mount in found.v1.items():
            group = mount / parent / container_id
            if group.is_dir():
                dirs[controller] = group
        return cls(container_id, dirs, tracking)

    def _apply(self, limits: Limits) -> None:
        """Write the limits into the joined groups (unlimited where not given)."""
        if "memory" in self.dirs:
            self._apply_memory(limits)
        if "pids" in self.dirs:
            _write(self.dirs["pids"] / "pids.max", "max" if limits.pids is None else limits.pids)
        if "cpu" in self.dirs:
            group, v2 = self.dirs["cpu"], self._is_v2("cpu")
            quota = None if limits.cpus is None else round(limits.cpus * CFS_PERIOD)
            if v2:
                _write(group / "cpu.max", f"{'max' if quota is None else quota} {CFS_PERIOD}")
                shares = limits.cpu_shares
                _write(group / "cpu.weight",
                       100 if shares is None else 1 + (shares - 2) * 9999 // 262142)
            else:
                _write(group / "cpu.cfs_period_us", CFS_PERIOD)
                _write(group / "cpu.cfs_quota_us", -1 if quota is None else quota)
                _write(group / "cpu.shares", 1024 if limits.cpu_shares is None
                       else limits.cpu_shares)

    def _apply_memory(self, limits: Limits) -> None:
        group = self.dirs["memory"]
        memory = limits.memory
        swap = limits.memory_swap  # memory plus swap, -1 unlimited, None: Docker's default
        if swap is None and memory is not None:
            swap = 2 * memory
        if self._is_v2("memory"):
            _write(group / "memory.max", "max" if memory is None else memory)
            swap_file = group / "memory.swap.max"
            value = "max" if swap in (None, -1) else swap - memory  # type: ignore[operator]
            if swap_file.exists():
                _write(swap_file, value)
            elif limits.memory_swap not in (None, -1):
                raise _no_swap(swap_file)
            return
        swap_file = group / "memory.memsw.limit_in_bytes"
        if not swap_file.exists():
            if limits.memory_swap not in (None, -1):
                raise _no_swap(swap_file)
            _write(group / "memory.limit_in_bytes", -1 if memory is None else memory)
            return
        # the kernel keeps memory <= memory+swap at every step: raise the larger one first
        new_memory = -1 if memory is None else memory
        new_swap = -1 if swap in (None, -1) else swap
        current = int((group / "memory.limit_in_bytes").read_text())
        order = [("memory.memsw.limit_in_bytes", new_swap),
                 ("memory.limit_in_bytes", new_memory)]
        if not (new_swap == -1 or new_swap > current):
            order.reverse()
        for name, value in order:
            _write(group / name, value)

    def _is_v2(self, controller: str) -> bool:
        return (self.dirs[controller] / "cgroup.controllers").exists()

    def add(self, pid: int) -> None:
        """Move process ``pid`` into every group of the container.

        Call it for the child alone, while it waits: its children inherit the groups.
        """
        for path in self.paths:
            _write(path / "cgroup.procs", pid, adding=True)

    def pids(self) -> list[int]:
        """The processes in the container's groups now."""
        found: set[int] = set()
        for path in self.paths:
            with contextlib.suppress(FileNotFoundError):
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
        return sorted(found)

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this container.

        Read it after the container exits and before :meth:`remove`. v2 counts in
        ``memory.events``, v1 in ``memory.oom_control`` (kernels from 4.13); ``False``
        when the container joined no memory controller.
        """
        group = self.dirs.get("memory")
        if group is None:
            return False
        name = "memory.events" if self._is_v2("memory") else "memory.oom_control"
        try:
            text = (group / name).read_text()
        except FileNotFoundError:
            return False
        counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(counts.get("oom_kill", 0)) > 0

    def kill_all(self, timeout: float = 2.0) -> None:
        """SIGKILL every process left in the container's groups and wait until they are gone.

        cgroup2's ``cgroup.kill`` (Linux 5.14) does it in one write, forks included.
        Elsewhere the freezer (v1's, or cgroup2's ``cgroup.freeze``) stops the processes
        first so none forks while they are killed one by one; each is signalled through
        a pidfd opened while it is still listed, so a recycled pid is never hit.
        """
        deadline = time.monotonic() + timeout
        kill_file = next((p / "cgroup.kill" for p in self.paths
                          if (p / "cgroup.kill").exists()), None)
        if kill_file is not None:
            _write(kill_file, 1)
        else:
            while self.pids() and time.monotonic() < deadline:
                self._freeze(True, deadline)
                try:
                    self._signal_each(signal.SIGKILL)
                finally:
                    self._freeze(False, deadline)  # v1 delivers the SIGKILLs on thawing
                time.sleep(0.002)
        while self.pids():
            if time.monotonic() >= deadline:
                raise CgroupError(
                    f"processes {self.pids()} of container {self.container_id[:12]} "
                    f"survived SIGKILL for {timeout} s",
                    hint="they may be stuck in the kernel (D state); try again later")
            time.sleep(0.002)

    # -- pause ---------------------------------------------------------------------

    @classmethod
    def for_freezing(cls, container_id: str, members: Callable[[], list[int]], *,
                     parent: str = PARENT, hierarchies: Hierarchies | None = None) -> Cgroup:
        """The container's group that can freeze it (``pause``), made now if it has none.

        A container without limits has no group (a start saves ~10 ms): one is made in
        the cgroup2 hierarchy (``cgroup.freeze`` needs no controller), else in v1's
        freezer, and ``members()`` (its processes, however found) moved in until none is
        left outside: a process forking meanwhile is caught by the next round.
        """
        check_id(container_id)
        found = hierarchies or Hierarchies.discover()
        group = cls.open(container_id, parent=parent, hierarchies=found)
        if not group.can_freeze:
            if found.unified is not None:
                top = _mkdir(found.unified / parent, [])
                group = cls(container_id, group.dirs, _mkdir(top / container_id, []))
            elif "freezer" in found.v1:
                top = _mkdir(found.v1["freezer"] / parent, [])
                group = cls(container_id, {**group.dirs,
                                           "freezer": _mkdir(top / container_id, [])},
                            group.tracking)
            else:
                raise CgroupError("this machine has no cgroup freezer: a container cannot "
                                  "be paused here",
                                  hint="mount cgroup2 (or v1's freezer) to pause containers")
        group.move_in(members)
        return group

    def move_in(self, members: Callable[[], list[int]]) -> None:
        """Move the processes ``members()`` lists into every directory of the group, round
        after round until none is left outside (a process forking meanwhile is caught by
        the next round): for a group made after its container started."""
        for _ in range(100):
            moved = False
            wanted = members()
            for path in self.paths:
                inside: set[int] = set()
                with contextlib.suppress(FileNotFoundError):
                    inside = {int(p) for p in (path / "cgroup.procs").read_text().split()}
                for pid in wanted:
                    if pid not in inside:
                        moved = True
                        with contextlib.suppress(CgroupError):  # gone meanwhile
                            _write(path / "cgroup.procs", pid, adding=True)
            if not moved:
                return

    @property
    def can_freeze(self) -> bool:
        return "freezer" in self.dirs or (
            self.tracking is not None and (self.tracking / "cgroup.freeze").exists())

    def freeze(self, frozen: bool, timeout: float = 5.0) -> None:
        """Stop every process of the group (``pause``), or let them go on (``unpause``)."""
        deadline = time.monotonic() + timeout
        self._freeze(frozen, deadline)
        if frozen and not self.frozen():
            raise CgroupError(f"container {self.container_id[:12]} did not freeze in "
                              f"{timeout} s", hint="a process may be stuck in the kernel "
                              "(D state); try again")

    def frozen(self) -> bool:
        """Whether the group is frozen (a paused container)."""
        with contextlib.suppress(OSError):
            if "freezer" in self.dirs:
                return (self.dirs["freezer"] / "freezer.state").read_text().strip() == "FROZEN"
            if self.tracking is not None:
                return "frozen 1" in (self.tracking / "cgroup.events").read_text()
        return False

    def _freeze(self, frozen: bool, deadline: float) -> None:
        """Stop (or let go) every process, so that none forks while they are killed."""
        if "freezer" in self.dirs:
            state = self.dirs["freezer"] / "freezer.state"
            _write(state, "FROZEN" if frozen else "THAWED")
            done = "FROZEN"
        elif self.tracking is not None and (self.tracking / "cgroup.freeze").exists():
            state = self.tracking / "cgroup.events"
            _write(self.tracking / "cgroup.freeze", int(frozen))
            done = "frozen 1"
        else:
            return
        while frozen and done not in state.read_text() and time.monotonic() < deadline:
            time.sleep(0.001)

    def _signal_each(self, signum: int) -> None:
        for pid in self.pids():
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                if pid in self.pids():  # still ours after the pidfd pinned it
                    signal.pidfd_send_signal(pidfd, signum)
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)

    def remove(self, timeout: float = 1.0) -> None:
        """Remove the container's groups; idempotent.

        A group still busy (a process not yet gone after being killed) is retried until
        ``timeout``, then a :class:`CgroupError` names what is still in it.
        """
        deadline = time.monotonic() + timeout
        for path in self.paths:
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as error:
                    if error.errno != errno.EBUSY or time.monotonic() >= deadline:
                        raise CgroupError(
                            f"cannot remove cgroup {path}: {error.strerror} "
                            f"(processes {self.pids()})",
                            hint="stop the container's processes first (kill_all); "
                                 "the next lamina command removes it") from None
                    time.sleep(0.005)


def sweep(alive_ids: Iterable[str], *, parent: str = PARENT,
          hierarchies: Hierarchies | None = None) -> list[str]:
    """Remove the groups of containers not in ``alive_ids`` (what a crash left); their ids.

    Only empty groups go: ``rmdir`` refuses a group with processes, which belongs to a
    container still running (another store's, say), so a sweep never kills anything.
    """
    alive = set(alive_ids)
    found = hierarchies or Hierarchies.discover()
    mounts = dict.fromkeys([*found.v1.values(), *([found.unified] if found.unified else [])])
    removed: set[str] = set()
    for mount in mounts:
        try:
            names = os.listdir(mount / parent)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            if name in alive or not _ID.match(name):
                continue
            try:
                os.rmdir(mount / parent / name)
                removed.add(name)
            except FileNotFoundError:
                removed.add(name)
            except OSError:
                pass  # busy: a live container's
    return sorted(removed)


# --- file helpers ---------------------------------------------------------------------


def _mkdir(path: Path, made: list[Path]) -> Path:
    """``mkdir`` that records what it made; an existing directory is fine."""
    try:
        os.mkdir(path, 0o755)
        made.append(path)
    except FileExistsError:
        pass
    except OSError as error:
        raise CgroupError(f"cannot create cgroup {path}: {error.strerror}",
                          hint="lamina must run as root with the cgroup hierarchies "
                               "mounted read-write") from None
    return path


def _try_mkdir(path: Path, made: list[Path]) -> Path | None:
    """:func:`_mkdir` for an optional group: ``None`` where it cannot be made."""
    try:
        return _mkdir(path, made)
    except CgroupError:
        return None


def _enable(top: Path, controllers: list[str], needed: frozenset[str],
            found: Hierarchies) -> list[str]:
    """Enable ``controllers`` for the containers below lamina's own cgroup2 group.

    The root must pass each down to ``top``: a missing one is an error if a limit
    ``needed`` it, else it is left out. Returns the controllers enabled.
    """
    offered = set((top / "cgroup.controllers").read_text().split())
    for controller in controllers:
        if controller not in offered and controller in needed:
            raise CgroupError(
                f"the cgroup2 hierarchy at {found.unified} does not pass the {controller} "
                f"controller down to {top}",
                hint=f"enable it in the root's subtree (echo +{controller} > "
                     f"{found.unified}/cgroup.subtree_control; systemd does this), or run "
                     "without the limit")
    usable = [c for c in controllers if c in offered]
    enabled = set((top / "cgroup.subtree_control").read_text().split())
    wanted = [c for c in usable if c not in enabled]
    if wanted:
        _write(top / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
    return usable


def _controllers_of(group: Path) -> list[str]:
    try:
        return (group / "cgroup.controllers").read_text().split()
    except OSError:
        return []


def _write(path: Path, value: object, *, adding: bool = False) -> None:
    """One ``write(2)`` of ``value`` (the kernel reads a cgroup file's value per write)."""
    data = str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as error:
        if adding and error.errno == errno.ESRCH:
            raise CgroupError(f"process {value} is gone: it cannot join {path.parent}",
                              hint="the container's process exited before it started") \
                from None
        raise CgroupError(f"the kernel refused {str(value)!r} for {path}: {error.strerror}",
                          hint="check the limit's value; a memory limit below what the "
                               "container already uses is refused") from None


def _missing(controller: str, found: Hierarchies) -> CgroupError:
    flag = {"memory": "--memory", "pids": "--pids-limit", "cpu": "--cpus/--cpu-shares"}
    return CgroupError(
        f"this machine has no {controller} cgroup controller ({found.describe()})",
        hint=f"mount the {controller} controller, or run without {flag.get(controller, '')}")


def _no_swap(path: Path) -> CgroupError:
    return CgroupError(
        f"the kernel does not account swap here ({path.name} is missing)",
        hint="boot with swap accounting (swapaccount=1), or run without --memory-swap")
