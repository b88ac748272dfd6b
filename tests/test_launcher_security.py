"""The container child's hardening on real processes: capabilities, seccomp, fds.

Each test forks a child, applies a piece as the launcher will just before exec, then
execs a real program (the static busybox, or the kernel's own /proc/self/status read
by it) or makes real system calls, and checks what the kernel says.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Sequence

import pytest

from lamina.core.errors import LaunchError
from lamina.core.launcher import capabilities, fds, seccomp
from lamina.core.launcher.capabilities import DEFAULT_CAPABILITIES, NUMBERS

BUSYBOX = "/bin/busybox"
DOCKER_MASK = "00000000a80425fb"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: capabilities are dropped from root"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="needs busybox-static"),
]


def run_child(prepare: Callable[[], None], argv: Sequence[str] | None = None) -> tuple[int, str]:
    """Fork; in the child run ``prepare`` then exec ``argv`` (or exit 0); (status, output).

    An exception in the child is printed to the output and gives exit status 99.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.dup2(write, 1)
            os.dup2(write, 2)
            # pytest's capture replaced sys.stdout/err with files of its own
            sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            prepare()
            if argv is not None:
                os.execv(argv[0], list(argv))
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def status_fields(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def switch_user(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def cap(name: str) -> int:
    return NUMBERS[name]


# -- capabilities --------------------------------------------------------------------


def test_the_default_set_is_dockers() -> None:
    assert len(DEFAULT_CAPABILITIES) == 14
    assert capabilities.format_mask(DEFAULT_CAPABILITIES) == DOCKER_MASK


@pytest.mark.parametrize("spelling", ["CAP_NET_ADMIN", "NET_ADMIN", "net_admin", "cap_net_admin"])
def test_capability_names_are_read_as_docker_reads_them(spelling: str) -> None:
    assert capabilities.parse_capability(spelling) == {cap("NET_ADMIN")}


def test_all_is_every_capability_lamina_holds() -> None:
    every = capabilities.parse_capability("ALL")
    assert every == capabilities.parse_capability("all") == capabilities.bounding_set()
    assert every >= DEFAULT_CAPABILITIES


@pytest.mark.parametrize("name", ["CAP_FOO", "NET-ADMIN", "", "CAP_"])
def test_an_unknown_capability_is_a_clear_error(name: str) -> None:
    with pytest.raises(LaunchError, match="unknown capability") as raised:
        capabilities.parse_capability(name)
    assert "NET_ADMIN" in (raised.value.hint or "")


def test_root_in_the_container_has_dockers_set_and_no_new_privs() -> None:
    code, out = run_child(
        lambda: capabilities.restrict(DEFAULT_CAPABILITIES, uid_changes=False),
        [BUSYBOX, "cat", "/proc/self/status"])
    assert code == 0, out
    fields = status_fields(out)
    assert fields["Uid"].split()[0] == "0"
    for name in ("CapPrm", "CapEff", "CapBnd"):
        assert fields[name] == DOCKER_MASK, name
    assert fields["CapInh"] == fields["CapAmb"] == "0000000000000000"
    assert fields["NoNewPrivs"] == "1"


def test_a_non_root_user_has_no_capabilities_and_dockers_bounding_set() -> None:
    def prepare() -> None:
        capabilities.restrict(DEFAULT_CAPABILITIES, uid_changes=True)
        switch_user(1000, 1000)

    code, out = run_child(prepare, [BUSYBOX, "cat", "/proc/self/status"])
    assert code == 0, out
    fields = status_fields(out)
    assert fields["Uid"].split() == ["1000"] * 4
    assert fields["Gid"].split() == ["1000"] * 4
    for name in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert fields[name] == "0000000000000000", name
    assert fields["CapBnd"] == DOCKER_MASK
    assert fields["NoNewPrivs"] == "1"


def test_the_user_switch_works_with_setuid_dropped() -> None:
    """--cap-drop SETUID,SETGID -u 1000: the switch still happens, the caps are gone."""
    keep = DEFAULT_CAPABILITIES - {cap("SETUID"), cap("SETGID")}

    def prepare() -> None:
        capabilities.restrict(keep, uid_changes=True)
        switch_user(1000, 1000)

    code, out = run_child(prepare, [BUSYBOX, "cat", "/proc/self/status"])
    assert code == 0, out
    fields = status_fields(out)
    assert fields["Uid"].split()[0] == "1000"
    assert fields["CapEff"] == "0000000000000000"
    assert fields["CapBnd"] == capabilities.format_mask(keep)


def test_without_uid_changes_a_dropped_setuid_forbids_the_switch() -> None:
    """The flag is what makes the previous test work: restrict() drops what it is told."""
    keep = DEFAULT_CAPABILITIES - {cap("SETUID"), cap("SETGID")}

    def prepare() -> None:
        capabilities.restrict(keep, uid_changes=False)
        switch_user(1000, 1000)

    code, out = run_child(prepare)
    assert code == 99
    assert "PermissionError" in out


def test_root_keeps_an_added_capability_and_loses_a_dropped_one() -> None:
    """A real use of a capability: raising priority needs CAP_SYS_NICE (not in Docker's set)."""
    nice = [BUSYBOX, "sh", "-c", "renice -n -5 -p $$"]
    code, out = run_child(lambda: capabilities.restrict(DEFAULT_CAPABILITIES, uid_changes=False),
                          nice)
    assert code != 0 and "ermission denied" in out, out
    code, out = run_child(
        lambda: capabilities.restrict(DEFAULT_CAPABILITIES | {cap("SYS_NICE")}, uid_changes=False),
        nice)
    assert code == 0, out


def test_inherited_ambient_and_inheritable_capabilities_are_cleared() -> None:
    """A launcher that inherited ambient caps must not pass them on to a non-root user."""
    def prepare() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        header = capabilities._Header(capabilities._LINUX_CAPABILITY_VERSION_3, 0)
        data = (capabilities._Data * 2)()
        assert libc.capget(ctypes.byref(header), data) == 0
        data[0].inheritable |= 1 << cap("CHOWN")
        assert libc.capset(ctypes.byref(header), data) == 0
        assert libc.prctl(47, 2, cap("CHOWN"), 0, 0) == 0  # PR_CAP_AMBIENT_RAISE
        capabilities.restrict(DEFAULT_CAPABILITIES, uid_changes=True)
        switch_user(1000, 1000)

    code, out = run_child(prepare, [BUSYBOX, "cat", "/proc/self/status"])
    assert code == 0, out
    fields = status_fields(out)
    for name in ("CapInh", "CapAmb", "CapEff", "CapPrm"):
        assert fields[name] == "0000000000000000", name


def test_a_capability_lamina_lacks_is_a_clear_error() -> None:
    def prepare() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.prctl(24, cap("SYS_TIME"), 0, 0, 0) == 0  # PR_CAPBSET_DROP
        try:
            capabilities.restrict(DEFAULT_CAPABILITIES | {cap("SYS_TIME")}, uid_changes=False)
        except LaunchError as e:
            print(f"LaunchError: {e} / {e.hint}", flush=True)
            os._exit(3)

    code, out = run_child(prepare)
    assert code == 3, out
    assert "CAP_SYS_TIME" in out and "--cap-drop" in out


def test_the_last_capability_is_found_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a new root before /proc is mounted, the kernel is asked instead."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        expected = int(f.read())
    real_open = open

    def no_proc(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)
    assert capabilities.last_capability() == expected


# -- seccomp -------------------------------------------------------------------------


def confined(caps: frozenset[int] = DEFAULT_CAPABILITIES, *,
             filter_caps: frozenset[int] | None = None) -> Callable[[], None]:
    """The child's last steps: capabilities, then the filter for ``filter_caps``."""
    built = seccomp.build_default(caps if filter_caps is None else filter_caps)

    def prepare() -> None:
        capabilities.restrict(caps, uid_changes=False)
        built.load()

    return prepare


def test_ordinary_programs_work_under_the_filter() -> None:
    code, out = run_child(confined(), [BUSYBOX, "sh", "-c",
                                       "echo ok; ls / >/dev/null && busybox cat /proc/self/status"])
    assert code == 0, out
    assert out.startswith("ok\n")
    assert status_fields(out)["Seccomp"] == "2"  # filter mode


def test_unshare_is_blocked_by_the_filter_not_only_by_capabilities() -> None:
    """With CAP_SYS_ADMIN held, unshare works unless the filter (built without it) blocks it."""
    with_admin = DEFAULT_CAPABILITIES | {cap("SYS_ADMIN")}
    unshare = [BUSYBOX, "unshare", "-m", BUSYBOX, "true"]
    code, out = run_child(lambda: capabilities.restrict(with_admin, uid_changes=False), unshare)
    assert code == 0, out
    code, out = run_child(confined(with_admin, filter_caps=DEFAULT_CAPABILITIES), unshare)
    assert code != 0 and "Operation not permitted" in out, out
    # the filter of a container holding CAP_SYS_ADMIN allows it, as Docker's does
    code, out = run_child(confined(with_admin), unshare)
    assert code == 0, out


def test_chroot_is_allowed_only_with_its_capability() -> None:
    chroot = [BUSYBOX, "chroot", "/", BUSYBOX, "true"]
    code, out = run_child(confined(), chroot)
    assert code == 0, out
    without = DEFAULT_CAPABILITIES - {cap("SYS_CHROOT")}
    code, out = run_child(
        confined(DEFAULT_CAPABILITIES, filter_caps=without), chroot)
    assert code != 0 and "Operation not permitted" in out, out


def _syscall_errno(name: str, *args: int) -> int:
    """Call ``name`` by number; 0 on success, else its errno."""
    number = seccomp._library().seccomp_syscall_resolve_name(name.encode())
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.syscall(ctypes.c_long(number), *(ctypes.c_ulong(a) for a in args))
    return 0 if result >= 0 else ctypes.get_errno()


def test_system_calls_under_the_filter() -> None:
    """Blocked calls fail with EPERM, conditional ones by their arguments, the rest work."""
    def prepare() -> None:
        confined(DEFAULT_CAPABILITIES | {cap("SYS_ADMIN")}, filter_caps=DEFAULT_CAPABILITIES)()
        results = {
            "keyctl": _syscall_errno("keyctl", 0, 0),  # KEYCTL_GET_KEYRING_ID
            "add_key": _syscall_errno("add_key", 0, 0, 0, 0, 0),
            "mount": _syscall_errno("mount", 0, 0, 0, 0, 0),
            "setns": _syscall_errno("setns", 0, 0),
            "personality_query": _syscall_errno("personality", 0xFFFFFFFF),
            "personality_no_aslr": _syscall_errno("personality", 0x0040000),
            "clone3": _syscall_errno("clone3", 0, 0),
            "getpid": _syscall_errno("getpid"),
        }
        for family in (socket.AF_UNIX, socket.AF_INET, 38, 40):  # 38 AF_ALG, 40 AF_VSOCK
            try:
                socket.socket(family, socket.SOCK_SEQPACKET if family == 38 else
                              socket.SOCK_STREAM).close()
                results[f"socket{family}"] = 0
            except OSError as e:
                results[f"socket{family}"] = e.errno or -1
        pid = os.fork()  # clone without namespace flags
        if pid == 0:
            os._exit(7)
        results["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        ran: list[bool] = []
        thread = threading.Thread(target=lambda: ran.append(True))  # clone3 ENOSYS -> clone
        thread.start()
        thread.join()
        results["thread"] = int(bool(ran))
        print(repr(results), flush=True)

    code, out = run_child(prepare)
    assert code == 0, out
    results = eval(out.strip().splitlines()[-1])
    assert results == {
        "keyctl": errno.EPERM, "add_key": errno.EPERM, "mount": errno.EPERM,
        "setns": errno.EPERM, "personality_query": 0, "personality_no_aslr": errno.EPERM,
        "clone3": errno.ENOSYS, "getpid": 0,
        f"socket{socket.AF_UNIX}": 0, f"socket{socket.AF_INET}": 0,
        "socket38": errno.EPERM, "socket40": errno.EPERM,
        "fork": 7, "thread": 1,
    }


def test_clone_with_a_namespace_flag_is_blocked() -> None:
    def prepare() -> None:
        confined(DEFAULT_CAPABILITIES | {cap("SYS_ADMIN")}, filter_caps=DEFAULT_CAPABILITIES)()
        # clone(CLONE_NEWUTS | SIGCHLD): would fork into a new UTS namespace
        result = _syscall_errno("clone", 0x04000000 | 17, 0, 0, 0, 0)
        print(f"clone={result}", flush=True)

    code, out = run_child(prepare)
    assert code == 0, out
    assert out.strip().splitlines()[-1] == f"clone={errno.EPERM}"


def test_a_32_bit_system_call_kills_the_process_without_compat() -> None:
    """Without compat the other ABI is not allowed but killed, never let through."""
    if os.uname().machine != "x86_64":
        pytest.skip("the int 0x80 ABI is x86-64's")
    libc = ctypes.CDLL(None)
    # getpid through int 0x80 (i386 number 20): mov eax,20; int 0x80; ret
    code = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"
    mmap = libc.mmap
    mmap.restype = ctypes.c_void_p
    mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                     ctypes.c_int, ctypes.c_long]
    page = mmap(None, 4096, 7, 0x22, -1, 0)  # rwx, private anonymous
    ctypes.memmove(page, code, len(code))
    int80 = ctypes.CFUNCTYPE(ctypes.c_int)(page)

    def run(compat: bool) -> Callable[[], None]:
        built = seccomp.build_default(DEFAULT_CAPABILITIES, compat=compat)

        def prepare() -> None:
            capabilities.restrict(DEFAULT_CAPABILITIES, uid_changes=False)
            built.load()
            print(f"pid={int80()}", flush=True)

        return prepare

    code_compat, out = run_child(run(True))
    assert code_compat == 0 and "pid=" in out, out
    killed, out = run_child(run(False))
    assert killed == -31, out  # SIGSYS


def test_the_filter_can_be_built_and_dropped_without_loading() -> None:
    """--security-opt seccomp=unconfined: nothing is loaded unless load() is called."""
    built = seccomp.build_default(DEFAULT_CAPABILITIES)
    built.release()
    built.release()  # idempotent
    with pytest.raises(ValueError):
        built.load()


def test_a_missing_libseccomp_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(seccomp, "_lib", None)
    monkeypatch.setattr(seccomp.ctypes, "CDLL", absent)
    with pytest.raises(LaunchError) as raised:
        seccomp.build_default(DEFAULT_CAPABILITIES)
    assert "libseccomp2" in (raised.value.hint or "")


# -- file descriptors ----------------------------------------------------------------


@pytest.fixture
def leaky_dir_fd():
    """A directory fd of the host opened without O_CLOEXEC, as a careless caller would."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    os.set_inheritable(fd, True)
    yield fd
    os.close(fd)


def test_a_host_directory_fd_leaks_without_closing(leaky_dir_fd: int) -> None:
    code, out = run_child(lambda: None, [BUSYBOX, "ls", "-l", f"/proc/self/fd/{leaky_dir_fd}"])
    assert code == 0 and out.rstrip().endswith("-> /"), out


@pytest.mark.parametrize("way", ["close_range", "proc"])
def test_every_fd_not_kept_is_closed(leaky_dir_fd: int, way: str) -> None:
    kept = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(kept, True)
    try:
        def prepare() -> None:
            if way == "proc":
                fds._close_range = None
            fds.close_other_fds({0, 1, 2, kept})

        code, out = run_child(prepare, [BUSYBOX, "ls", "-l", "/proc/self/fd"])
        assert code == 0, out
        targets = {line.split()[-3]: line.split()[-1] for line in out.splitlines()
                   if "->" in line}
        # ls's own listing fd is the lowest free one, so it can take a closed number
        own = [fd for fd, target in targets.items() if target.startswith("/proc/")]
        assert len(own) <= 1
        rest = {int(fd): target for fd, target in targets.items() if fd not in own}
        assert set(rest) == {0, 1, 2, kept}, out
        assert rest[kept] == "/dev/null"
        assert "/" not in rest.values()
    finally:
        os.close(kept)

