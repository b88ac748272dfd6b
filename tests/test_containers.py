"""Containers, end to end through the real CLI, with every driver this machine has.

A busybox-static image is imported into a store per driver (btrfs on a real loop
filesystem); each test runs real containers in real namespaces and checks what the
process inside sees and what the store keeps afterwards: no mount, no layer, no row
left behind that the user did not ask for.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LAMINA, needs_root, run_lamina
from conftest import until as _until

from lamina.core.host import mounts
from lamina.core.images.store import is_init_layer

pytestmark = needs_root
IMAGE = "bb:1"


class Site:
    def __init__(self, root: Path, driver: str) -> None:
        self.root = root
        self.driver = driver

    def __call__(self, *args: str, check: bool = True, input: bytes | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
        return run_lamina("--driver", self.driver, *args, root=self.root, check=check,
                          input=input, timeout=timeout)

    def out(self, *args: str) -> str:
        return self(*args).stdout.decode()

    def cmd(self, *args: str) -> list[str]:
        return [*LAMINA, "--root", str(self.root), "--driver", self.driver, *args]


@pytest.fixture(scope="module", params=["vfs", "overlay", "btrfs"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
         busybox_tar: Path) -> Iterator[Site]:
    base = tmp_path_factory.mktemp(f"containers-{request.param}")
    if request.param == "btrfs":
        from lamina.conformance.backing import BackingUnavailable, backing_filesystem

        pytest.importorskip("btrfsutil", reason="pip install 'lamina[btrfs]'")
        try:
            with backing_filesystem("btrfs", base / "fs", size_mb=256) as fs:
                yield from _site(fs.path / "store", "btrfs", busybox_tar)
        except BackingUnavailable as exc:
            pytest.skip(str(exc))
        return
    yield from _site(base / "store", request.param, busybox_tar)


def _site(root: Path, driver: str, busybox_tar: Path) -> Iterator[Site]:
    s = Site(root, driver)
    s("import", "-c", 'CMD ["sh"]', "-c", "ENV GREETING=hello", str(busybox_tar), IMAGE)
    yield s
    s("container", "prune", "-f")
    leftover = mounts.mounts_under(root)
    for point in leftover:
        mounts.detach(Path(point))
    assert not leftover, f"mounts leaked: {leftover}"
    layers = json.loads(s.out("layer", "ls", "--format", "json"))
    # the image's layer and the init layer its containers shared, nothing else
    assert len(layers) <= 2, f"layers left besides the image's: {layers}"
    assert all(is_init_layer(layer["id"], layer["parent"]) for layer in layers
               if layer["parent"] is not None), layers
    s("rmi", IMAGE)  # takes the init layer with it
    assert json.loads(s.out("layer", "ls", "--format", "json")) == []


def test_exit_status_output_and_rm(site: Site) -> None:
    proc = site("run", "--rm", "--network", "none", IMAGE, "sh", "-c",
                "echo out; echo err >&2; exit 3", check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, b"out\n", b"err\n")
    assert site.out("ps", "-a", "-q") == ""


def test_missing_and_unexecutable_commands_give_dockers_codes(site: Site) -> None:
    missing = site("run", "--rm", "--network", "none", IMAGE, "no-such-command", check=False)
    assert missing.returncode == 127
    assert b'"no-such-command": executable file not found' in missing.stderr
    assert b"Traceback" not in missing.stderr
    directory = site("run", "--rm", "--network", "none", IMAGE, "/etc", check=False)
    assert directory.returncode == 126
    assert site.out("ps", "-a", "-q") == ""


def test_environment_user_workdir_and_hostname(site: Site, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("FROM_FILE=1\n# a comment\n")
    out = site.out("run", "--rm", "--network", "none", "-e", "A=b", "--env-file", str(env_file),
                   "-u", "nobody", "-w", "/work/dir", "--hostname", "box", IMAGE, "sh", "-c",
                   "echo $GREETING $A $FROM_FILE; id; pwd; hostname; echo $HOME")
    assert out.splitlines() == ["hello b 1", "uid=65534(nobody) gid=65534(nogroup)",
                                "/work/dir", "box", "/"]
    numeric = site.out("run", "--rm", "--network", "none", "-u", "1234:5678", IMAGE, "id")
    assert numeric.strip() == "uid=1234 gid=5678"
    unknown = site("run", "--rm", "--network", "none", "-u", "nosuchuser", IMAGE, "id",
                   check=False)
    assert unknown.returncode == 125
    assert b"unable to find user nosuchuser" in unknown.stderr


def test_the_containers_view_of_the_machine(site: Site) -> None:
    out = site.out("run", "--rm", "--network", "none", IMAGE, "sh", "-c",
                   "echo pid=$$; ls /dev | tr '\\n' ' '; echo; cat /proc/mounts; "
                   "ip link 2>/dev/null | grep -c '^[0-9]'; "
                   "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status")
    lines = out.splitlines()
    assert lines[0] == "pid=1"
    for node in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx"):
        assert node in lines[1].split()
    mounted = {line.split()[1]: line.split()[3].split(",") for line in lines[2:]
               if line.count(" ") >= 5}
    assert "ro" in mounted["/sys"]
    assert "ro" in mounted["/proc/sys"]
    assert "/proc/kcore" in mounted or not Path("/proc/kcore").exists()
    assert {"nosuid", "nodev", "noexec"} <= set(mounted["/proc"])


def test_read_only_root_volumes_and_tmpfs(site: Site, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in").write_text("from host\n")
    out = site("run", "--rm", "--network", "none", "--read-only", "-v", f"{data}:/data",
               "-v", f"{data}:/ro:ro", "--tmpfs", "/scratch", IMAGE, "sh", "-c",
               "cat /data/in; echo new > /data/out; echo x > /scratch/f && echo tmpfs-ok; "
               "touch /ro/no 2>/dev/null || echo ro-refused; "
               "touch /rootfile 2>/dev/null || echo root-refused", check=False)
    assert out.stdout.decode().splitlines() == ["from host", "tmpfs-ok", "ro-refused",
                                                "root-refused"]
    assert (data / "out").read_text() == "new\n"


def test_detached_logs_exec_stop_and_wait(site: Site) -> None:
    cid = site.out("run", "-d", "--network", "none", "--name", "web", IMAGE, "sh", "-c",
                   "echo started; trap 'echo bye; exit 7' TERM; "
                   "while true; do sleep 0.1; done").strip()
    assert len(cid) == 64
    try:
        ps = json.loads(site.out("ps", "--format", "json"))
        assert [(c["Names"], c["State"]) for c in ps] == [("web", "running")]
        assert site.out("exec", "web", "sh", "-c", "echo $GREETING; echo $$").split()[0] == "hello"
        site("exec", "web", "sh", "-c", "echo changed > /tmp/f; rm /bin/true")
        assert site.out("diff", "web").splitlines() == ["C /bin", "D /bin/true", "C /tmp",
                                                        "A /tmp/f"]
        assert site("exec", "web", "sh", "-c", "exit 4", check=False).returncode == 4
        _until(lambda: "started" in site.out("logs", "web"))
        site("stop", "-t", "5", "web")
        assert site.out("wait", "web").strip() == "7"
        assert site.out("logs", "web") == "started\nbye\n"
        ps = json.loads(site.out("ps", "-a", "--format", "json"))
        assert ps[0]["Status"].startswith("Exited (7)")
        # started again: the same writable layer, the file still there
        site("start", "web")
        assert site.out("exec", "web", "cat", "/tmp/f") == "changed\n"
        refused = site("rm", "web", check=False)
        assert refused.returncode != 0 and b"is running" in refused.stderr
    finally:
        site("rm", "-f", "web")
    assert site.out("ps", "-a", "-q") == ""


def test_pid_one_gets_signals_the_cli_gets(site: Site) -> None:
    proc = subprocess.Popen(site.cmd("run", "--rm", "--network", "none", IMAGE, "sh", "-c",
                                     "trap 'echo got-term; exit 9' TERM; echo ready; "
                                     "while true; do sleep 0.1; done"),
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 9
    assert proc.stdout.read() == b"got-term\n"


def test_sigkill_of_the_monitor_leaves_nothing_running(site: Site) -> None:
    proc = subprocess.Popen(site.cmd("run", "--network", "none", "--name", "victim", IMAGE,
                                     "sh", "-c", "echo ready; sleep 1000"),
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.kill()
    proc.wait()
    ps = json.loads(site.out("ps", "-a", "--format", "json"))
    assert [(c["Names"], c["State"], c["ExitCode"]) for c in ps] == [("victim", "exited", 255)]
    site("rm", "victim")
    assert not mounts.mounts_under(site.root)


def test_interactive_shell_on_a_pty(site: Site) -> None:
    pid, fd = pty.fork()
    if pid == 0:
        cmd = site.cmd("run", "--rm", "-it", "--network", "none", IMAGE, "sh")
        os.execv(cmd[0], cmd)
    import fcntl
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 91, 0, 0))
    seen = _Reader(fd)
    assert seen.until(b"# "), seen.data
    os.write(fd, b"echo $((6*7)); stty size; tty; sleep 30 &\r")
    assert seen.until(b"42\r\n33 91\r\n/dev/pts/0"), seen.data
    os.write(fd, b"jobs\r")
    assert seen.until(b"Running"), seen.data
    os.write(fd, b"exit 5\r")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 5


class _Reader:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = b""

    def until(self, token: bytes, timeout: float = 20) -> bool:
        end = time.monotonic() + timeout
        while token not in self.data and time.monotonic() < end:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    self.data += os.read(self.fd, 4096)
                except OSError:
                    break
        return token in self.data


def test_containers_share_the_images_init_layer_and_prune_reclaims_it(site: Site) -> None:
    one = site("create", "--network", "none", IMAGE, "true").stdout.decode().strip()
    two = site("create", "--network", "none", IMAGE, "true").stdout.decode().strip()
    layers = {lay["id"]: lay for lay in json.loads(site.out("layer", "ls", "--format", "json"))}
    init = layers[one]["parent"]
    assert layers[two]["parent"] == init and is_init_layer(init, layers[init]["parent"])
    assert init not in site.out("prune")  # containers stand on it
    site("rm", one, two)
    assert f"Deleted layer: {init}" in site.out("prune")
    assert site("run", "--rm", "--network", "none", IMAGE, "echo", "again").stdout == b"again\n"


def test_names_are_unique_and_errors_are_clear(site: Site) -> None:
    site("create", "--network", "none", "--name", "one", IMAGE, "true")
    try:
        again = site("create", "--network", "none", "--name", "one", IMAGE, "true", check=False)
        assert again.returncode == 125
        assert b"already in use" in again.stderr
        missing = site("start", "nosuch", check=False)
        assert missing.returncode == 1 and b"no such container: nosuch" in missing.stderr
        bad = site("run", "-p", "80:x", IMAGE, check=False)  # refused before any network
        assert bad.returncode != 0 and b"invalid port '80:x'" in bad.stderr
        # no network to publish on: refused before anything is made
        bad = site("run", "--network", "none", "-p", "80", IMAGE, check=False)
        assert bad.returncode == 125 and b"--network none" in bad.stderr
        assert site.out("ps", "-a", "--format", "{{.Names}}") == "one\n"
        # the container's writable layer is not removed from under it
        layer = json.loads(site.out("inspect", "one"))[0]["Id"]
        refused = site("layer", "rm", layer, check=False)
        assert refused.returncode == 1 and b"writable layer of container one" in refused.stderr
        assert site.out("ps", "-a", "-q").split() == [layer[:12]]
    finally:
        site("rm", "one")


# -- limits, hardening -----------------------------------------------------------------


def test_limits_stop_a_memory_hog_and_a_fork_bomb(site: Site) -> None:
    hog = site("run", "--name", "hog", "--network", "none", "-m", "16m", IMAGE, "sh", "-c",
               "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived", check=False)
    assert hog.returncode == 137 and b"survived" not in hog.stdout
    assert json.loads(site.out("inspect", "hog"))[0]["State"]["OOMKilled"] is True
    site("rm", "hog")
    bomb = site.out("run", "--rm", "--network", "none", "--pids-limit", "10", IMAGE, "sh", "-c",
                    "(for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do "
                    "sleep 5 & done) 2>/dev/null; set -- /proc/[0-9]*; echo $#")
    assert int(bomb.strip()) <= 10
    small = site("run", "--rm", "--network", "none", "-m", "1m", IMAGE, "true", check=False)
    assert small.returncode == 125 and b"below the minimum" in small.stderr


def test_no_node_a_container_makes_opens_a_host_device(site: Site, tmp_path: Path,
                                                      secret_device: str) -> None:
    """A container keeps CAP_MKNOD (as Docker's), so it can make a node of the host's
    disk: on the image's root, /tmp, /dev, a tmpfs, a volume, below a mount inside a
    volume, or find one in a bound host /dev. None of them opens (nodev everywhere but
    devpts, the standard nodes bound from the host's); without that the container reads
    the disk (here a loop device holding a secret)."""
    device = secret_device
    volume, below = tmp_path / "volume", tmp_path / "volume" / "below"
    below.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(below)], check=True)
    try:
        rdev = os.stat(device).st_rdev
        node = f"b {os.major(rdev)} {os.minor(rdev)}"
        os.mknod(below / "disk", 0o600 | 0o060000, rdev)  # S_IFBLK, made by the host
        script = (f"for d in / /tmp /dev /dev/shm /t /v; do mknod $d/disk {node} && "
                  "echo made $d; head -c 6 $d/disk; done; head -c 6 /v/below/disk; "
                  f"head -c 6 /hostdev/{os.path.basename(device)}; "
                  "echo x > /dev/null && head -c 2 /dev/zero | wc -c")
        proc = site("run", "--rm", "--network", "none", "--tmpfs", "/t", "-v",
                    f"{volume}:/v", "-v", "/dev:/hostdev", IMAGE, "sh", "-c", script)
        out = proc.stdout.decode()
        assert out.count("made ") == 6, (out, proc.stderr)
        assert "SECRET" not in out, out
        assert out.splitlines()[-1].strip() == "2", out  # the standard nodes work
        assert proc.stderr.decode().count("Permission denied") == 8, proc.stderr  # nodev
    finally:
        subprocess.run(["umount", str(below)], check=False)


def test_capabilities_no_new_privs_and_seccomp(site: Site) -> None:
    status = site.out("run", "--rm", "--network", "none", IMAGE, "grep", "-E",
                      "^(CapEff|CapBnd|CapInh|CapAmb|NoNewPrivs|Seccomp):", "/proc/self/status")
    fields = dict(line.split(":\t") for line in status.splitlines())
    assert fields == {"CapEff": "00000000a80425fb", "CapBnd": "00000000a80425fb",
                      "CapInh": "0000000000000000", "CapAmb": "0000000000000000",
                      "NoNewPrivs": "1", "Seccomp": "2"}
    user = site.out("run", "--rm", "--network", "none", "-u", "1000", IMAGE, "grep", "CapEff",
                    "/proc/self/status")
    assert user.split() == ["CapEff:", "0000000000000000"]
    # unshare(CLONE_NEWNS) needs CAP_SYS_ADMIN, and the filter refuses it too: EPERM
    blocked = site("run", "--rm", "--network", "none", IMAGE, "unshare", "-m", "true",
                   check=False)
    assert blocked.returncode != 0 and b"Operation not permitted" in blocked.stderr
    unconfined = site.out("run", "--rm", "--network", "none", "--security-opt",
                          "seccomp=unconfined", IMAGE, "grep", "^Seccomp:", "/proc/self/status")
    assert unconfined.split() == ["Seccomp:", "0"]


# -- hostile images ----------------------------------------------------------------------


def _hostile_image(site: Site, busybox_tar: Path, tmp_path: Path, name: str,
                   change: object, *changes: str) -> str:
    """busybox with ``change(tree)`` applied, imported as ``name``."""
    import tarfile

    tree = tmp_path / f"tree-{name}"
    tree.mkdir()
    with tarfile.open(busybox_tar) as tar:
        tar.extractall(tree, filter="fully_trusted")
    change(tree)  # type: ignore[operator]
    out = tmp_path / f"{name}.tar"
    subprocess.run(["tar", "-C", str(tree), "--numeric-owner", "-cf", str(out), "."], check=True)
    extra = [a for c in changes for a in ("-c", c)]
    site("import", *extra, str(out), f"hostile/{name}:1")
    return f"hostile/{name}:1"


def test_system_directories_planted_as_symlinks_are_neutralised(site: Site, busybox_tar: Path,
                                                                tmp_path: Path) -> None:
    sentinel = tmp_path / "outside"
    sentinel.mkdir()
    (sentinel / "keep").write_text("host data\n")

    def plant(tree: Path) -> None:
        for name in ("dev", "proc", "sys"):
            path = tree / name
            if path.is_dir():
                path.rmdir()
        (tree / "dev").symlink_to("/")
        (tree / "proc").symlink_to(str(sentinel))
        (tree / "sys").symlink_to("../../../../..")

    image = _hostile_image(site, busybox_tar, tmp_path, "symlinks", plant)
    out = site.out("run", "--rm", "--network", "none", image, "sh", "-c",
                   "cat /proc/self/comm; ls /dev/null; echo x > /dev/pwned && echo wrote")
    assert out.splitlines() == ["cat", "/dev/null", "wrote"]
    assert sorted(p.name for p in sentinel.iterdir()) == ["keep"]
    assert not Path("/pwned").exists()
    site("rmi", image)


def test_volume_target_planted_as_a_symlink_stays_inside(site: Site, busybox_tar: Path,
                                                         tmp_path: Path) -> None:
    host_target = tmp_path / "host-target"
    host_target.mkdir()
    volume = tmp_path / "volume"
    volume.mkdir()

    def plant(tree: Path) -> None:
        (tree / "data").symlink_to(str(host_target))
        (tree / "etc" / "passwd").write_bytes(b"\xff\xfe\x00junk\n" * 600000
                                              + b"app:x:1500:1500::/home/app:/bin/sh\n")

    image = _hostile_image(site, busybox_tar, tmp_path, "plant", plant,
                           "WORKDIR ../../../..", 'ENTRYPOINT ["/etc"]')
    out = site.out("run", "--rm", "--network", "none", "--entrypoint", "", "-v",
                   f"{volume}:/data", image, "sh", "-c", "echo in > /data/f; pwd")
    # the mount went where the symlink points *inside* the root, never to the host path
    assert list(host_target.iterdir()) == []
    assert out.strip() == "/"
    assert (volume / "f").read_text() == "in\n"
    # a huge passwd with binary junk: read up to its cap, no crash, a clear error
    user = site("run", "--rm", "--network", "none", "--entrypoint", "", "-u", "app", image,
                "id", check=False)
    assert user.returncode == 125 and b"unable to find user app" in user.stderr
    # an entrypoint that is a directory: Docker's 126
    entry = site("run", "--rm", "--network", "none", image, check=False)
    assert entry.returncode == 126 and b"Traceback" not in entry.stderr
    site("rmi", image)


def test_commit_then_run_the_committed_image(site: Site) -> None:
    site("run", "--name", "builder", "--network", "none", IMAGE, "sh", "-c",
         "echo hi > /greeting; rm /bin/ls; mkdir -p /srv/app")
    image = site.out("commit", "-m", "my change", "-c", 'CMD ["cat", "/greeting"]',
                     "builder", "committed:1").strip()
    assert image.startswith("sha256:")
    site("rm", "builder")
    assert site.out("run", "--rm", "--network", "none", "committed:1") == "hi\n"
    # the launcher's mount points are not part of the image
    out = site.out("run", "--rm", "--network", "none", "committed:1", "sh", "-c",
                   "test -e /bin/ls || echo ls-gone; test -d /srv/app && echo dir-kept")
    assert out.splitlines() == ["ls-gone", "dir-kept"]
    history = json.loads(site.out("history", "--format", "json", "committed:1"))
    assert history[0]["Comment"] == "my change"
    assert "rm /bin/ls" in history[0]["CreatedBy"]
    site("rmi", "committed:1")


# -- bridge networks ----------------------------------------------------------------------
# lamina runs inside a network namespace the test makes (nsenter into a sleeping holder),
# so the bridge, the veths and the nftables table it sets up never touch the host's
# (the fixture host_netns, in conftest.py).


def test_two_containers_talk_over_the_bridge_and_a_port_is_published(
        site: Site, host_netns: list[str]) -> None:
    def lamina(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*host_netns, *site.cmd(*args)], capture_output=True, timeout=60)
        if check:
            assert proc.returncode == 0, proc.stderr.decode()
        return proc

    server = lamina("run", "-d", "--name", "server", "-p", "8080:80", IMAGE, "sh", "-c",
                    "while true; do echo pong | nc -l -p 80; done").stdout.decode().strip()
    try:
        address = json.loads(lamina("inspect", server).stdout)[0]
        inner = lamina("exec", "server", "sh", "-c",
                       "ip -4 addr show eth0 | sed -n 's/.*inet \\([0-9.]*\\).*/\\1/p'")
        ip = inner.stdout.decode().strip()
        assert ip.startswith("10.87."), (address, ip)
        settings = address["NetworkSettings"]  # Docker's fields for the default bridge
        assert (settings["IPAddress"], settings["Networks"]["bridge"]["IPAddress"]) == (ip, ip)
        # a second container reaches the first by its address on the bridge
        client = lamina("run", "--rm", IMAGE, "sh", "-c", f"echo ping | nc -w 5 {ip} 80")
        assert client.stdout == b"pong\n"
        # the host side reaches the published port on its own loopback address
        host = subprocess.run([*host_netns, "busybox", "nc", "-w", "5", "127.0.0.1", "8080"],
                              input=b"ping\n", capture_output=True, timeout=30)
        assert host.stdout == b"pong\n", host.stderr
        taken = lamina("run", "--rm", "-p", "8080:80", IMAGE, "true", check=False)
        assert taken.returncode != 0 and b"8080" in taken.stderr
    finally:
        lamina("rm", "-f", "server")
    rules = subprocess.run([*host_netns, "nft", "list", "table", "ip", "lamina"],
                           capture_output=True, text=True).stdout
    assert "dnat to" not in rules and "published" in rules
    veths = subprocess.run([*host_netns, "ip", "-o", "link"], capture_output=True, text=True)
    assert "lmv" not in veths.stdout


# 200 runs in parallel (distinct addresses while in use, nothing left) and SIGKILL at any
# moment of run, start, stop and commit: tests/test_container_crashes.py


# -- per-container storage options ----------------------------------------------------------
# last in the file: quotas, once switched on, stay on for the whole btrfs filesystem


def test_storage_opt_size_is_the_writable_layers_quota(site: Site) -> None:
    fill = "dd if=/dev/zero of=/fill bs=1M count=24 conv=fsync 2>&1; echo status=$?"
    if site.driver != "btrfs":
        refused = site("run", "--rm", "--network", "none", "--storage-opt", "size=8M", IMAGE,
                       "true", check=False)
        assert refused.returncode == 125, refused.stderr
        assert b"size" in refused.stderr and b"hint: " in refused.stderr
        assert site.out("ps", "-a", "-q") == ""
        return
    limited = site("run", "--rm", "--network", "none", "--storage-opt", "size=8M", IMAGE,
                   "sh", "-c", fill)
    assert b"status=1" in limited.stdout and b"quota" in limited.stdout.lower(), limited.stdout
    free = site("run", "--rm", "--network", "none", IMAGE, "sh", "-c", fill)
    assert b"status=0" in free.stdout, free.stdout
    bad = site("run", "--rm", "--network", "none", "--storage-opt", "size=lots", IMAGE, "true",
               check=False)
    assert bad.returncode == 125 and b"10G" in bad.stderr


def test_forced_rmi_of_an_image_a_container_uses_untags_it_only(site: Site,
                                                                busybox_tar: Path) -> None:
    site("import", "-c", 'CMD ["echo", "still here"]', str(busybox_tar), "local/forced:1")
    ident = json.loads(site.out("inspect", "local/forced:1"))[0]["Id"]
    site("create", "--name", "forced-user", "--network", "none", "local/forced:1")
    refused = site("rmi", "local/forced:1", check=False)
    assert refused.returncode == 1 and b"is used by container" in refused.stderr
    # Docker's -f: the names go, the image stays (dangling) while a container uses it
    forced = site("rmi", "-f", "local/forced:1")
    assert forced.stdout.decode() == "Untagged: local/forced:1\n"
    rows = json.loads(site.out("images", "--format", "json", "-f", "dangling=true"))
    assert [r["ID"] for r in rows] == [ident]
    # the name no longer means its image: ps shows the image's id, as Docker's
    shown = site.out("ps", "-a", "-f", "name=^forced-user$", "--format", "{{.Image}}")
    assert shown == ident[7:19] + "\n"
    # nameless and in use: nothing -f may take, said so
    again = site("rmi", "-f", ident, check=False)
    assert again.returncode == 1 and b"has no names" in again.stderr
    assert site.out("start", "-a", "forced-user") == "still here\n"
    site("rm", "forced-user")
    assert f"deleted: {ident}" in site.out("image", "prune")
    assert ident not in site.out("images", "-q", "--no-trunc")


def test_ps_and_inspect_format_templates(site: Site) -> None:
    site("create", "--name", "formatted", "--network", "none", IMAGE, "sh", "-c", "exit 4")
    site("start", "-a", "formatted", check=False)
    out = site.out("ps", "-a", "--format", "{{.Names}} {{.State}} {{.Command}}")
    assert 'formatted exited "sh -c exit 4"' in out.splitlines()
    table = site.out("container", "ls", "-a", "--format", r"table {{.Names}}\t{{.Status}}")
    assert table.splitlines()[0].split() == ["NAMES", "STATUS"]
    assert any(line.startswith("formatted ") and "Exited (4)" in line
               for line in table.splitlines())
    assert site.out("inspect", "-f", "{{.State.ExitCode}} {{.Name}}", "formatted") \
        == "4 /formatted\n"
    site("rm", "formatted")


def test_ps_filters_as_dockers(site: Site) -> None:
    site("create", "--name", "filt-ok", "--network", "none", IMAGE, "true")
    site("create", "--name", "filt-bad", "--label", "role=batch", "--network", "none", IMAGE,
         "sh", "-c", "exit 3")
    site("create", "--name", "filt-new", "--network", "none", IMAGE, "true")
    site("start", "-a", "filt-ok")
    site("start", "-a", "filt-bad", check=False)

    def names(*filters: str) -> set[str]:
        args = [a for f in filters for a in ("-f", f)]
        return set(site.out("ps", "-a", "--format", "{{.Names}}", *args).split()) & {
            "filt-ok", "filt-bad", "filt-new"}

    assert names("status=exited") == {"filt-ok", "filt-bad"}
    assert names("status=created") == {"filt-new"}
    assert names("exited=3") == {"filt-bad"}
    assert names("exited=0", "exited=3") == {"filt-ok", "filt-bad"}  # alternatives
    assert names("name=^filt-(ok|new)$") == {"filt-ok", "filt-new"}
    assert names("label=role") == names("label=role=batch") == {"filt-bad"}
    assert names("status=exited", "label=role=other") == set()  # keys all hold
    assert names(f"ancestor={IMAGE}") == {"filt-ok", "filt-bad", "filt-new"}
    ident = site.out("ps", "-a", "-q", "--no-trunc", "-f", "name=filt-new").strip()
    assert names(f"id={ident[:8]}") == {"filt-new"}
    bad = site("ps", "-f", "status=sleepy", check=False)
    assert bad.returncode != 0 and b"invalid status filter" in bad.stderr
    for name in ("filt-ok", "filt-bad", "filt-new"):
        site("rm", name)
