"""``--sysctl NAME=VALUE``: kernel settings of the container's own namespaces.

Only the settings that belong to a namespace the container has of its own can be
given, as Docker's rule: the IPC ones (``kernel.msg*``, ``kernel.sem``, ``kernel.shm*``,
``fs.mqueue.*``) and, unless it shares the host's network, ``net.*``. The monitor
writes them after the container's network is set up (so ``net.ipv4.conf.eth0.*``
exists) and before it lets the process go, from a thread that enters the container's
namespace for the moment: what /proc/sys shows is the namespace of the thread that
opens it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence

from ..errors import ContainerError, LaunchError
from ..network.netns import setns

IPC = frozenset({"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                 "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"})
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"[a-z0-9_]+(\.[a-zA-Z0-9_-]+)+")


def parse(text: str, network: str, ipc: str = "") -> tuple[str, str]:
    """``NAME=VALUE``, checked against Docker's rule (see the module)."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not _NAME.fullmatch(name) or ".." in name or "\n" in value:
        raise ContainerError(f"invalid --sysctl {text!r}",
                             hint="give NAME=VALUE, as net.core.somaxconn=1024")
    if name.startswith("net."):
        if network == "host":
            raise ContainerError(f"sysctl {name} is not allowed in the host's network "
                                 "namespace", hint="give it without --network host")
    elif name not in IPC and not name.startswith("fs.mqueue."):
        raise ContainerError(f"sysctl {name} is not allowed: it is not of a namespace the "
                             "container has of its own",
                             hint="only net.*, fs.mqueue.* and kernel.msg*/sem/shm* are")
    elif ipc == "host":
        raise ContainerError(f"sysctl {name} is not allowed in the host's IPC namespace",
                             hint="give it without --ipc host")
    return name, value


@contextlib.contextmanager
def _entered(pid: int, kind: str, flag: int) -> Iterator[None]:
    target = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    own = os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(target, flag)
        try:
            yield
        finally:
            setns(own, flag)  # a failure to return propagates: never stay inside
    finally:
        os.close(target)
        os.close(own)


def apply(pid: int, settings: Sequence[tuple[str, str]]) -> None:
    """Write ``settings`` in the namespaces of process ``pid``; a refusal is an error."""
    for kind, flag in (("net", CLONE_NEWNET), ("ipc", CLONE_NEWIPC)):
        mine = [(n, v) for n, v in settings if (n.startswith("net.")) == (kind == "net")]
        if not mine:
            continue
        with _entered(pid, kind, flag):
            for name, value in mine:
                path = "/proc/sys/" + name.replace(".", "/")
                try:
                    with open(path, "w") as f:
                        f.write(value)
                except OSError as exc:
                    raise LaunchError(f"cannot set sysctl {name}={value}: {exc.strerror}",
                                      hint="check the name and the value (sysctl -a on the "
                                      "host lists them)") from None
