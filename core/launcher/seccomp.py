"""Docker's default seccomp profile, through a small ctypes binding to libseccomp.

Capabilities decide what root may do; seccomp decides which system calls exist at all.
Most of the kernel's attack surface is in calls no container needs (``keyctl``,
``add_key``, ``kexec_load``, ``bpf``, ``userfaultfd``, new namespaces, mounts), so
Docker's default profile allows a list of ordinary calls and makes every other one fail
with ``EPERM``. A few are allowed only in part, as Docker does:

- ``clone`` without any namespace flag (a container cannot make namespaces), ``clone3``
  failing with ``ENOSYS`` instead (its flags are in memory a filter cannot read; glibc
  then falls back to ``clone``), and ``unshare``, ``setns``, ``mount`` and the new mount
  API only with CAP_SYS_ADMIN;
- ``personality`` with the few harmless personas only;
- ``socket`` for every address family except AF_ALG and AF_VSOCK;
- the calls of one capability (``chroot``, ``ptrace``, ``reboot``, ``settimeofday``,
  ``init_module``, ...) only when the container holds it.

The table below is moby's ``profiles/seccomp/default.json`` (its syscall names are
data, kept in step with moby by hand). A call this libseccomp does not know on this
architecture is skipped, as runc skips it.

Architectures: Docker's filter also covers the ones the CPU runs besides its own (x86
and x32 on x86-64, arm on arm64: its ``archMap``). That triples the filter and makes
building and loading it ~10 ms instead of ~2 ms here, so lamina covers them only when
asked (``compat=True``, for an image of such an architecture). Without them a system
call of another ABI (``int 0x80`` on x86-64) kills the process: stricter than Docker,
never looser.

Build the filter with :func:`build_default` before ``fork``/``pivot_root`` (libseccomp
is opened then, from the host's /usr/lib) and :meth:`Filter.load` it in the child as
the last step before exec: after it, the launcher itself can no longer mount or make
namespaces. Loading is optional (``--security-opt seccomp=unconfined`` skips it). The
load needs ``no_new_privs`` (set by :func:`lamina.core.launcher.capabilities.restrict`)
or CAP_SYS_ADMIN; libseccomp sets ``no_new_privs`` itself when it is not set yet.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable
from typing import NamedTuple

from lamina.core.errors import LaunchError
from lamina.core.launcher.capabilities import NUMBERS

# comparisons of struct scmp_arg_cmp (seccomp.h, enum scmp_compare)
NE, LT, LE, EQ, GE, GT, MASKED_EQ = range(1, 8)


class Rule(NamedTuple):
    """Calls allowed (or failed with ``errno``) when the conditions hold (Docker's fields)."""

    names: tuple[str, ...]
    #: None: allowed; else the call fails with this errno
    errno: int | None = None
    #: each (argument index, comparison, value, second value), all of them must hold;
    #: for MASKED_EQ the value is the mask and the second value what the masked bits equal
    args: tuple[tuple[int, int, int, int], ...] = ()
    #: applies only when the container holds all of these capabilities (Docker's includes)
    caps: tuple[str, ...] = ()
    #: skipped when the container holds any of these (Docker's excludes)
    unless_caps: tuple[str, ...] = ()
    #: applies only on these architectures (Docker's names: amd64, arm64, x86, ...)
    arches: tuple[str, ...] = ()
    unless_arches: tuple[str, ...] = ()
    #: applies only from this kernel version on
    min_kernel: tuple[int, int] | None = None


#: allowed for every container
ALLOWED: tuple[str, ...] = (
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat",
    "capget", "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime",
    "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "close",
    "close_range", "connect", "copy_file_range", "creat", "dup", "dup2", "dup3",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve",
    "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64",
    "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat",
    "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync",
    "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr", "fstat",
    "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64",
    "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake",
    "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32",
    "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid",
    "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32",
    "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt",
    "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr",
    "getxattrat", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup",
    "io_submit", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat",
    "listen", "listmount", "listxattr", "listxattrat", "llistxattr", "_llseek",
    "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise",
    "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret", "mincore",
    "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap",
    "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink",
    "mremap", "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock",
    "munlockall", "munmap", "name_to_handle_at", "nanosleep", "newfstatat",
    "_newselect", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect",
    "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2",
    "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv",
    "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages",
    "removexattr", "removexattrat", "rename", "renameat", "renameat2",
    "restart_syscall", "riscv_hwprobe", "rmdir", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select",
    "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send", "sendfile",
    "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid",
    "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer",
    "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32",
    "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address",
    "setuid", "setuid32", "setxattr", "setxattrat", "shmat", "shmctl", "shmdt",
    "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask",
    "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs",
    "statfs64", "statmount", "statx", "symlink", "symlinkat", "sync", "sync_file_range",
    "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate", "truncate64",
    "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "uretprobe", "utime",
    "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid",
    "waitpid", "write", "writev"
)

_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET

#: the profile's conditional rules, in its order
RULES: tuple[Rule, ...] = (
    Rule(("process_vm_readv", "process_vm_writev", "ptrace"), min_kernel=(4, 8)),
    Rule(("socket",), args=((0, LT, 38, 0),)),  # 38: AF_ALG
    Rule(("socket",), args=((0, EQ, 39, 0),)),
    Rule(("socket",), args=((0, GT, 40, 0),)),  # 40: AF_VSOCK
    *(Rule(("personality",), args=((0, EQ, persona, 0),))
      for persona in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)),  # linux, uname26, query
    Rule(("sync_file_range2", "swapcontext"), arches=("ppc64le",)),
    Rule(("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
          "cacheflush", "set_tls"), arches=("arm", "arm64")),
    Rule(("arch_prctl",), arches=("amd64", "x32")),
    Rule(("modify_ldt",), arches=("amd64", "x32", "x86")),
    Rule(("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
         arches=("s390", "s390x")),
    Rule(("riscv_flush_icache",), arches=("riscv64",)),
    Rule(("open_by_handle_at",), caps=("DAC_READ_SEARCH",)),
    Rule(("bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen",
          "fspick", "lookup_dcookie", "lsm_get_self_attr", "lsm_list_modules",
          "lsm_set_self_attr", "mount", "mount_setattr", "move_mount", "open_tree",
          "perf_event_open", "quotactl", "quotactl_fd", "setdomainname", "sethostname",
          "setns", "syslog", "umount", "umount2", "unshare"), caps=("SYS_ADMIN",)),
    Rule(("clone",), args=((0, MASKED_EQ, _NAMESPACE_FLAGS, 0),),
         unless_caps=("SYS_ADMIN",), unless_arches=("s390", "s390x")),
    Rule(("clone",), args=((1, MASKED_EQ, _NAMESPACE_FLAGS, 0),),  # s390 swaps clone's args
         arches=("s390", "s390x"), unless_caps=("SYS_ADMIN",)),
    Rule(("clone3",), errno=errno.ENOSYS, unless_caps=("SYS_ADMIN",)),
    Rule(("reboot",), caps=("SYS_BOOT",)),
    Rule(("chroot",), caps=("SYS_CHROOT",)),
    Rule(("delete_module", "init_module", "finit_module"), caps=("SYS_MODULE",)),
    Rule(("acct",), caps=("SYS_PACCT",)),
    Rule(("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
          "ptrace"), caps=("SYS_PTRACE",)),
    Rule(("iopl", "ioperm"), caps=("SYS_RAWIO",)),
    Rule(("settimeofday", "stime", "clock_settime", "clock_settime64"), caps=("SYS_TIME",)),
    Rule(("vhangup",), caps=("SYS_TTY_CONFIG",)),
    Rule(("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
         caps=("SYS_NICE",)),
    Rule(("syslog",), caps=("SYSLOG",)),
    Rule(("bpf",), caps=("BPF",)),
    Rule(("perf_event_open",), caps=("PERFMON",)),
)

#: uname's machine -> (Docker's name of it, libseccomp's names of the other ABIs it runs)
_ARCHES: dict[str, tuple[str, tuple[str, ...]]] = {
    "x86_64": ("amd64", ("x86", "x32")),
    "aarch64": ("arm64", ("arm",)),
    "s390x": ("s390x", ("s390",)),
    "ppc64le": ("ppc64le", ()),
    "riscv64": ("riscv64", ()),
    "loongarch64": ("loongarch64", ()),
    "i686": ("x86", ()),
    "armv7l": ("arm", ()),
}

_ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000
_ACT_KILL_PROCESS = 0x80000000
_FLTATR_ACT_BADARCH = 2  # what a call of an architecture not in the filter gets
_NR_SCMP_ERROR = -1


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


_lib: ctypes.CDLL | None = None


def _library() -> ctypes.CDLL:
    """libseccomp.so.2, opened once (dlopen by soname: no ``ctypes.util`` search)."""
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2")
        except OSError as e:
            raise LaunchError(
                f"cannot load the seccomp library: {e}",
                hint="install libseccomp2 (apt install libseccomp2), or run the container "
                     "with --security-opt seccomp=unconfined") from None
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.restype = None
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_arch_add.restype = ctypes.c_int
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_attr_set.restype = ctypes.c_int
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
        lib.seccomp_rule_add_array.restype = ctypes.c_int
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_load.restype = ctypes.c_int
        _lib = lib
    return _lib


class Filter:
    """A built filter, not yet in force: load it in the child, last before exec."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: int) -> None:
        self._ctx: int | None = ctx

    def load(self) -> None:
        """Put the filter in force for this process and every process it starts."""
        if self._ctx is None:
            raise ValueError("seccomp filter already released")
        rc = _library().seccomp_load(self._ctx)
        if rc < 0:
            raise LaunchError(f"cannot load the seccomp filter: {os.strerror(-rc)}",
                              hint="run with --security-opt seccomp=unconfined to do without")

    def release(self) -> None:
        """Free libseccomp's copy (the loaded filter stays in the kernel)."""
        if self._ctx is not None:
            _library().seccomp_release(self._ctx)
            self._ctx = None


def _kernel() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _applies(rule: Rule, held: set[str], arch: str) -> bool:
    if (rule.arches and arch not in rule.arches) or arch in rule.unless_arches:
        return False
    if not all(c in held for c in rule.caps) or any(c in held for c in rule.unless_caps):
        return False
    return rule.min_kernel is None or _kernel() >= rule.min_kernel


def build_default(capabilities: Iterable[int], *, compat: bool = False) -> Filter:
    """Docker's default profile for a container holding ``capabilities`` (its bounding set).

    ``compat`` also covers the other ABIs this CPU runs (see the module's docstring).
    """
    lib = _library()
    machine = os.uname().machine
    arch, other_abis = _ARCHES.get(machine, (machine, ()))
    by_number = {number: name for name, number in NUMBERS.items()}
    held = {by_number[c] for c in capabilities if c in by_number}
    ctx = lib.seccomp_init(_ACT_ERRNO | errno.EPERM)
    if not ctx:
        raise LaunchError("libseccomp could not start a filter (seccomp_init failed)")
    built = Filter(ctx)
    try:
        rc = lib.seccomp_attr_set(ctx, _FLTATR_ACT_BADARCH, _ACT_KILL_PROCESS)
        if rc < 0:
            raise LaunchError(f"libseccomp refused an attribute: {os.strerror(-rc)}")
        for name in other_abis if compat else ():
            token = lib.seccomp_arch_resolve_name(name.encode())
            rc = lib.seccomp_arch_add(ctx, token) if token else 0
            if rc < 0:
                raise LaunchError(f"libseccomp cannot filter {name}: {os.strerror(-rc)}")
        _add(lib, ctx, ALLOWED, _ACT_ALLOW, ())
        for rule in RULES:
            if _applies(rule, held, arch):
                action = _ACT_ALLOW if rule.errno is None else _ACT_ERRNO | rule.errno
                _add(lib, ctx, rule.names, action, rule.args)
    except BaseException:
        built.release()
        raise
    return built


def _add(lib: ctypes.CDLL, ctx: int, names: Iterable[str], action: int,
         args: tuple[tuple[int, int, int, int], ...]) -> None:
    array = (_ArgCmp * len(args))(*(_ArgCmp(*arg) for arg in args)) if args else None
    for name in names:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number == _NR_SCMP_ERROR:  # unknown to this libseccomp: skipped, as runc does
            continue
        rc = lib.seccomp_rule_add_array(ctx, action, number, len(args), array)
        if rc < 0:
            raise LaunchError(f"libseccomp refused the rule for {name}: {os.strerror(-rc)}")


def load_default(capabilities: Iterable[int], *, compat: bool = False) -> None:
    """Build Docker's default filter and load it: the child's last step before exec."""
    built = build_default(capabilities, compat=compat)
    try:
        built.load()
    finally:
        built.release()
