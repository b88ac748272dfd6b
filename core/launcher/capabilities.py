"""Capabilities of a container's process: Docker's default set, and nothing above it.

Root in a container is root on the host minus what its capabilities withhold, so the
launcher's child reduces them just before exec, as runc does for Docker:

- the **bounding set** loses every capability not kept (``PR_CAPBSET_DROP``). This is
  what limits the container for good: at exec a root process gets ``bounding |
  inheritable`` as its permitted and effective sets, a non-root one only what file
  capabilities grant within the bounding set, and no process in it can ever get a
  capability back;
- the **ambient** set is cleared and the **inheritable** set emptied (inheritable
  capabilities survived exec into non-root programs before Docker stopped setting them,
  CVE-2022-24769);
- **effective** and **permitted** become the kept set (``capset``), so the launcher's
  last steps run with no more than the container will have;
- **no_new_privs** is set: no set-user-id binary or file capability in the image can
  raise privileges again, and a seccomp filter can be loaded without CAP_SYS_ADMIN.
  Docker leaves this off unless ``--security-opt no-new-privileges``; lamina always sets
  it, so a set-user-id ``su`` or a ``ping`` with file capabilities run by a non-root user
  in the container gains nothing.

Order with the user switch: :func:`restrict` is called **before** the launcher's
``setgroups``/``setgid``/``setuid``. With ``uid_changes=True`` it leaves CAP_SETUID and
CAP_SETGID in the effective and permitted sets (not in the bounding set) so that the
switch works even when they were dropped (``--cap-drop SETUID -u 1000``); the kernel
clears the effective and permitted sets when the uid leaves 0 (no ``PR_SET_KEEPCAPS``),
and exec computes the container's sets from the bounding set alone. So ``-u 1000`` gives
``CapEff`` 0 with ``CapBnd`` Docker's set, exactly what ``docker run -u 1000`` shows.

Everything here is ``prctl`` and ``capset`` through ctypes: no library beyond libc.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

from lamina.core.errors import LaunchError

#: capability numbers (linux/capability.h), by the name without ``CAP_``
NUMBERS: dict[str, int] = {
    name: number for number, name in enumerate((
        "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
        "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
        "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
        "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
        "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
        "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
        "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
    ))
}
NAMES: dict[int, str] = {number: f"CAP_{name}" for name, number in NUMBERS.items()}

#: Docker's default set (moby's ``caps.DefaultCapabilities``): ``CapEff`` of a root
#: process in the container reads ``00000000a80425fb``
DEFAULT_CAPABILITIES: frozenset[int] = frozenset(NUMBERS[n] for n in (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
))

_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                   ctypes.c_ulong]
_prctl.restype = ctypes.c_int


def _call_prctl(what: str, option: int, arg2: int = 0, arg3: int = 0) -> int:
    result = _prctl(option, arg2, arg3, 0, 0)
    if result < 0:
        err = ctypes.get_errno()
        raise LaunchError(f"cannot {what}: {os.strerror(err)}",
                          hint="lamina must run as root with CAP_SETPCAP to start a container")
    return result


def last_capability() -> int:
    """The highest capability number this kernel knows (``/proc/sys/kernel/cap_last_cap``)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except OSError:  # no /proc in the new root yet: the kernel says EINVAL past the last
        last = 0
        while last < 63 and _prctl(_PR_CAPBSET_READ, last + 1, 0, 0, 0) >= 0:
            last += 1
        return last


def bounding_set() -> frozenset[int]:
    """The capabilities in this process's bounding set."""
    return frozenset(c for c in range(last_capability() + 1)
                     if _call_prctl("read the bounding set", _PR_CAPBSET_READ, c) == 1)


def parse_capability(name: str) -> frozenset[int]:
    """The capabilities a ``--cap-add``/``--cap-drop`` value names, as Docker reads them.

    ``CAP_NET_ADMIN``, ``NET_ADMIN`` and ``net_admin`` name one capability; ``ALL``
    names every capability the kernel knows that lamina itself holds in its bounding
    set (a container cannot get more than its launcher has).
    """
    upper = name.strip().upper()
    if upper == "ALL":
        return bounding_set()
    short = upper.removeprefix("CAP_")
    number = NUMBERS.get(short)
    if number is None or number > last_capability():
        raise LaunchError(
            f"unknown capability: {name!r}",
            hint="use a name from capabilities(7) such as NET_ADMIN or CAP_SYS_TIME, or ALL")
    return frozenset((number,))


def format_mask(caps: Iterable[int]) -> str:
    """Capabilities as /proc/PID/status shows them (``00000000a80425fb``)."""
    return f"{sum(1 << c for c in set(caps)):016x}"


def no_new_privs() -> None:
    """Set ``no_new_privs``: exec can never grant privileges again (set-uid bits, file
    capabilities), inherited by every child; it cannot be unset."""
    _call_prctl("set no_new_privs", _PR_SET_NO_NEW_PRIVS, 1)


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for i in range(2):  # version 3: two 32-bit words per set, low word first
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise LaunchError(f"cannot set the container's capabilities: {os.strerror(err)}")


def restrict(keep: Iterable[int], *, uid_changes: bool) -> None:
    """Reduce this process to the capabilities ``keep``, then set ``no_new_privs``.

    Called in the container's child before the user switch (see the module's
    docstring); ``uid_changes`` says the caller will then call setgroups/setgid/setuid,
    which need CAP_SETGID/CAP_SETUID in the effective set even when ``keep`` lacks them.
    A capability in ``keep`` that lamina itself does not hold is a :class:`LaunchError`
    (the kernel cannot give it), rather than a container silently weaker than asked.
    """
    keep = frozenset(keep)
    last = last_capability()
    have = bounding_set()
    missing = sorted(c for c in keep if c <= last and c not in have)
    if missing:
        names = ", ".join(NAMES.get(c, str(c)) for c in missing)
        raise LaunchError(
            f"lamina itself does not hold {names}, so the container cannot get it",
            hint="run lamina with that capability, or leave it out (--cap-drop)")
    for cap in range(last + 1):
        if cap not in keep:
            _call_prctl(f"drop {NAMES.get(cap, cap)} from the bounding set",
                        _PR_CAPBSET_DROP, cap)
    _call_prctl("clear the ambient capabilities", _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    mask = sum(1 << c for c in keep if c <= last)
    if uid_changes:  # gone with the switch to a non-zero uid, and not in the bounding set
        mask |= (1 << NUMBERS["SETUID"]) | (1 << NUMBERS["SETGID"])
    _capset(mask, mask, 0)
    no_new_privs()
