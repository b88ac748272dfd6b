"""What a running container uses: CPU, memory, network, block I/O and processes.

``lamina stats`` shows what ``docker stats`` shows, read from the kernel without a daemon:

- the container's processes are those in its pid namespace (its first process's, which
  ``exec`` joins too), found in ``/proc``;
- CPU is their user+system time (``/proc/<pid>/stat``), as a share of the host's CPU time
  between two samples times the number of CPUs (Docker's formula: 100% is one CPU);
- memory is the memory cgroup's usage less its inactive file cache (Docker's figure)
  when the container has a memory limit, else the processes' proportional set size
  (``smaps_rollup``: shared pages counted once); the limit is the cgroup's, else the
  host's memory;
- network is what the container's interfaces other than ``lo`` received and sent
  (``/proc/<pid>/net/dev`` shows its network namespace);
- block I/O is what its processes read from and wrote to storage (``/proc/<pid>/io``).
  A process that ended takes its counts with it: the figure is that of those running.

A container without limits has no cgroup (core/launcher/cgroups.py: joining one costs a
start ~10 ms), which is why the rest is read from its processes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NamedTuple

from ..containers.store import Container
from ..errors import LaminaError

_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class Sample(NamedTuple):
    """One reading of a container."""

    cpu_ns: int  #: CPU time of its processes, user + system
    host_cpu_ns: int  #: the host's CPU time, all CPUs (for the share)
    memory: int
    memory_limit: int
    net_rx: int
    net_tx: int
    block_read: int
    block_write: int
    pids: int


class Usage(NamedTuple):
    """A container's use between two samples, as ``docker stats`` shows it."""

    cpu_percent: float
    memory: int
    memory_limit: int
    net_rx: int
    net_tx: int
    block_read: int
    block_write: int
    pids: int

    @property
    def memory_percent(self) -> float:
        return 100.0 * self.memory / self.memory_limit if self.memory_limit else 0.0


def members(pid: int) -> list[int]:
    """The processes in the pid namespace of ``pid`` (empty once it is gone)."""
    try:
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                    found.append(int(entry))
    return sorted(found)


def sample(container: Container) -> Sample | None:
    """A reading of the running ``container``; None when it is not running."""
    if not container.running or container.pid is None:
        return None
    pids = members(container.pid)
    if not pids:
        return None
    cpu = read = written = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
            cpu += (int(fields[11]) + int(fields[12])) * _TICK_NS  # utime, stime
        io = _keyed(f"/proc/{pid}/io", ":")
        read += io.get("read_bytes", 0)
        written += io.get("write_bytes", 0)
        pss += _keyed(f"/proc/{pid}/smaps_rollup", ":").get("Pss", 0) * 1024
    memory, limit = _cgroup_memory(container)
    rx, tx = _network(container.pid)
    return Sample(cpu, _host_cpu_ns(), pss if memory is None else memory,
                  limit or _host_memory(), rx, tx, read, written, len(pids))


def usage(before: Sample, after: Sample) -> Usage:
    """The use between two samples (CPU) and at the second (the rest)."""
    host = after.host_cpu_ns - before.host_cpu_ns
    cpu = after.cpu_ns - before.cpu_ns
    percent = 100.0 * cpu / host * os.cpu_count() if host > 0 and cpu > 0 else 0.0
    return Usage(percent, after.memory, after.memory_limit, after.net_rx, after.net_tx,
                 after.block_read, after.block_write, after.pids)


def _keyed(path: str, separator: str) -> dict[str, int]:
    """``key: number [unit]`` lines as a dict of the numbers."""
    found = {}
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            key, sep, rest = line.partition(separator)
            words = rest.split()
            if sep and words and words[0].isdigit():
                found[key.strip()] = int(words[0])
    return found


def _host_cpu_ns() -> int:
    """All CPUs' time since boot (``/proc/stat``'s first line, iowait and steal too)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:9]
    return sum(int(v) for v in fields) * _TICK_NS


def _host_memory() -> int:
    return _keyed("/proc/meminfo", ":").get("MemTotal", 0) * 1024


def _network(pid: int) -> tuple[int, int]:
    """Bytes received and sent by the interfaces of ``pid``'s network namespace, but lo."""
    rx = tx = 0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/net/dev") as f:
        for line in f.readlines()[2:]:
            name, _, counters = line.partition(":")
            values = counters.split()
            if name.strip() != "lo" and len(values) >= 9:
                rx += int(values[0])
                tx += int(values[8])
    return rx, tx


def _cgroup_memory(container: Container) -> tuple[int | None, int | None]:
    """Usage less inactive file cache, and the limit, from the container's memory cgroup;
    (None, None) when it has none (no limits: no cgroup)."""
    from . import cgroups

    try:
        group = cgroups.Cgroup.open(container.id).path_for("memory")
    except (OSError, LaminaError):
        return None, None
    if group is None:
        return None, None
    if (group / "memory.current").exists():  # cgroup2
        usage = _number(group / "memory.current")
        inactive = _keyed(str(group / "memory.stat"), " ").get("inactive_file", 0)
        limit = _number(group / "memory.max")
    else:
        usage = _number(group / "memory.usage_in_bytes")
        inactive = _keyed(str(group / "memory.stat"), " ").get("total_inactive_file", 0)
        limit = _number(group / "memory.limit_in_bytes")
    if usage is None:
        return None, None
    host = _host_memory()
    return max(0, usage - inactive), limit if limit is not None and limit < host else None


def _number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
