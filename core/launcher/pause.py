"""``pause`` and ``unpause``: every process of a running container stopped and let go.

The cgroup freezer stops the processes without their knowing (no SIGSTOP a shell would
see): cgroup2's ``cgroup.freeze`` or v1's ``freezer.state``
(:meth:`~.cgroups.Cgroup.for_freezing`). A container without limits has no cgroup, so
its first pause makes one and moves its processes in; a marker in the container's
directory (``cgroup-made-later``) tells the monitor's teardown to remove that group when the
container ends. "Paused" is read from the kernel each time, never recorded: a
container is paused while its group is frozen.

A paused container still runs: ``stop`` and ``kill -s KILL`` let it go after the signal
so that it is delivered at once (cgroup2 delivers SIGKILL to frozen processes anyway,
v1 does not); ``exec`` is refused until ``unpause``.
"""

from __future__ import annotations

import contextlib

from ..containers.store import Container, ContainerStore
from ..errors import CgroupError, ContainerError

#: in the container's directory: its cgroup was made after its start (the monitor's
#: teardown removes it then; monitor.PAUSED_GROUP is the same name)
MARKER = "cgroup-made-later"


def pause(containers: ContainerStore, container: Container) -> None:
    """Freeze the running ``container``; an error if it is not running or paused already."""
    from . import cgroups
    from .stats import members

    _running(container)
    if paused(container):
        raise ContainerError(f"container {container.name} is already paused",
                             hint=f"let it go on with lamina unpause {container.name}")
    pid = container.pid
    assert pid is not None
    marker = containers.directory(container.id) / MARKER
    with contextlib.suppress(OSError):
        marker.touch()
    group = cgroups.Cgroup.for_freezing(container.id, lambda: members(pid))
    group.freeze(True)
    # a process forked between the last move and the freeze joins the frozen group now
    cgroups.Cgroup.for_freezing(container.id, lambda: members(pid))


def unpause(container: Container) -> None:
    """Let the paused ``container`` go on; an error if it is not paused."""
    _running(container)
    if not paused(container):
        raise ContainerError(f"container {container.name} is not paused",
                             hint=f"pause it first: lamina pause {container.name}")
    thaw(container)


def thaw(container: Container) -> None:
    """Let the container's processes go on if they are frozen (after a stop's signal)."""
    from . import cgroups

    with contextlib.suppress(CgroupError, OSError):
        group = cgroups.Cgroup.open(container.id)
        if group.can_freeze and group.frozen():
            group.freeze(False)


def paused(container: Container) -> bool:
    """Whether the running ``container``'s processes are frozen."""
    if not container.running:
        return False
    from . import cgroups

    try:
        return cgroups.Cgroup.open(container.id).frozen()
    except (CgroupError, OSError):
        return False


def _running(container: Container) -> None:
    if not container.running:
        raise ContainerError(f"container {container.name} is not running",
                             hint=f"start it first: lamina start {container.name}")
