"""Docker's everyday container commands beyond run and stop: restart, rename, port and top,
through the real CLI on real containers."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import needs_root
from conftest import until as _until
from containersite import IMAGE, Site, busybox_site
from test_containers import _Reader

pytestmark = needs_root


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Site]:
    yield from busybox_site(tmp_path_factory.mktemp("commands") / "store", busybox_tar)


def _pid(site: Site, name: str) -> int:
    return int(site.out("inspect", "-f", "{{.State.Pid}}", name))


def test_restart_stops_and_starts_again_on_the_same_layer(site: Site) -> None:
    site("run", "-d", "--network", "none", "--name", "again", IMAGE, "sh", "-c",
         "echo run >> /count; trap 'exit 0' TERM; while true; do sleep 0.1; done")
    first = _pid(site, "again")
    assert site.out("restart", "-t", "5", "again") == "again\n"
    second = _pid(site, "again")
    assert second != first
    assert site.out("inspect", "-f", "{{.State.Running}}", "again").strip() == "true"
    assert site.out("exec", "again", "cat", "/count") == "run\nrun\n"
    # a stopped container is started; a missing one is an error, the others still go
    site("stop", "-t", "5", "again")
    done = site("restart", "nosuch", "again", check=False)
    assert done.returncode != 0 and b"nosuch" in done.stderr
    assert done.stdout == b"again\n"
    assert site.out("exec", "again", "cat", "/count") == "run\nrun\nrun\n"
    site("rm", "-f", "again")


def test_rename_moves_the_name_and_keeps_the_container(site: Site) -> None:
    cid = site.out("create", "--name", "before", IMAGE, "true").strip()
    site("create", "--name", "taken", IMAGE, "true")
    assert site("rename", "before", "after").stdout == b""
    assert site.out("inspect", "-f", "{{.Id}} {{.Name}}", "after").split() == [cid, "/after"]
    assert site("inspect", "before", check=False).returncode != 0
    for new, words in (("taken", b"already in use"), ("after", b"has that name already"),
                       ("no spaces", b"invalid container name")):
        refused = site("rename", "after", new, check=False)
        assert refused.returncode != 0 and words in refused.stderr, refused.stderr
    site("create", "--name", "before", IMAGE, "true")  # the old name is free again
    site("rm", "after", "before", "taken")


def test_top_lists_the_containers_processes_only(site: Site) -> None:
    site("run", "-d", "--network", "none", "--name", "busy", IMAGE, "sh", "-c",
         "sleep 1001 & while true; do sleep 0.1; done")
    try:
        _until(lambda: "sleep 1001" in site.out("top", "busy"))
        rows = site.out("top", "busy").splitlines()
        assert rows[0].split()[:3] == ["UID", "PID", "PPID"]
        commands = [row.split(None, 7)[7] for row in rows[1:]]
        assert commands[0].startswith("sh -c sleep 1001")
        assert "sleep 1001" in commands
        assert not any("lamina" in c or "pytest" in c for c in commands)
        # ps's own options; an exec'd process is in the container too (exec -d: the
        # command returns while it runs; one that cannot start is an error still)
        assert site("exec", "-d", "busy", "sleep", "1002").stdout == b""
        missing = site("exec", "-d", "busy", "nosuchcommand", check=False)
        assert missing.returncode == 127 and b"nosuchcommand" in missing.stderr
        _until(lambda: "sleep 1002" in site.out("top", "busy", "-o", "pid,args"))
        pid_args = site.out("top", "busy", "-o", "pid,args").splitlines()
        assert pid_args[0].split() == ["PID", "COMMAND"]
        assert str(_pid(site, "busy")) in [row.split()[0] for row in pid_args[1:]]
        refused = site("top", "busy", "-o", "args", check=False)
        assert refused.returncode != 0 and b"no PID column" in refused.stderr
    finally:
        site("rm", "-f", "busy")
    stopped = site("top", "busy", check=False)
    assert stopped.returncode != 0


def test_port_lists_published_ports_of_a_running_container(
        tmp_path: Path, busybox_tar: Path, host_netns: list[str]) -> None:
    site = Site(tmp_path / "store", tuple(host_netns))
    site("import", str(busybox_tar), IMAGE)
    site("run", "-d", "--name", "web", "-p", "8080:80", "-p", "127.0.0.1:9090:90/udp", IMAGE,
         "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")
    try:
        assert site.out("port", "web").splitlines() == ["80/tcp -> 0.0.0.0:8080",
                                                       "90/udp -> 127.0.0.1:9090"]
        assert site.out("port", "web", "80") == "0.0.0.0:8080\n"
        assert site.out("port", "web", "80/tcp") == "0.0.0.0:8080\n"
        assert site.out("port", "web", "90/udp") == "127.0.0.1:9090\n"
        for wrong, words in (("90", b"no public port 90/tcp"), ("80/sctp", b"invalid port")):
            refused = site("port", "web", wrong, check=False)
            assert refused.returncode != 0 and words in refused.stderr
        site("stop", "web")
        assert site.out("port", "web") == ""  # as Docker's: only while it runs
        # no host port: a free one of Docker's range, for -p 70 and for -P's exposed ports
        # an exposed port lamina cannot publish (sctp) stops neither a run nor -P
        site("import", "-c", "EXPOSE 53/udp 8000 132/sctp", str(busybox_tar), "exposing:1")
        assert site.out("run", "--rm", "--network", "none", "exposing:1", "echo", "ran") == \
            "ran\n"
        site("run", "-d", "--name", "anyport", "-p", "70", "-P", "--expose", "9000",
             "-p", "8081:8000", "exposing:1", "sleep", "60")
        shown = dict(line.split(" -> ") for line in site.out("port", "anyport").splitlines())
        assert sorted(shown) == ["53/udp", "70/tcp", "8000/tcp", "9000/tcp"]
        assert shown["8000/tcp"] == "0.0.0.0:8081"  # -p wins over -P
        chosen = {key: int(value.rpartition(":")[2]) for key, value in shown.items()
                  if key != "8000/tcp"}
        assert all(32768 <= port <= 60999 for port in chosen.values())
        assert len(set(chosen.values())) == 3
        ports = json.loads(site.out("inspect", "-f", "{{json .NetworkSettings.Ports}}",
                                    "anyport"))
        assert ports["70/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": str(chosen["70/tcp"])}]
        assert f"0.0.0.0:{chosen['70/tcp']}->70/tcp" in site.out(
            "ps", "--format", "{{.Ports}}", "--filter", "name=anyport")
        # the port really forwards: a listener in the container answers on it (reached
        # at the bridge's address, from the test's network namespace)
        site("exec", "-d", "anyport", "sh", "-c", "echo hello | nc -l -p 70")
        time.sleep(0.3)
        client = ("import socket; c = socket.create_connection(('10.87.0.1', "
                  f"{chosen['70/tcp']}), timeout=5); print(c.makefile().readline(), end='')")
        answer = subprocess.run([*host_netns, sys.executable, "-c", client],
                                capture_output=True, text=True, timeout=20)
        assert answer.stdout == "hello\n", answer.stderr
    finally:
        site("rm", "-f", "web", "anyport")


# -- cp -----------------------------------------------------------------------------------


@pytest.fixture
def running(site: Site, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A running container with /data (a file, a tree, a symlink to /) and a volume."""
    volume = tmp_path / "volume"
    volume.mkdir()
    site("run", "-d", "--network", "none", "--name", "files", "-v", f"{volume}:/vol", IMAGE,
         "sh", "-c", "mkdir -p /data/sub && echo hello > /data/f && echo deep > /data/sub/x "
         "&& ln -s / /data/escape && ln -s /etc/passwd /data/pw && chown 7:8 /data/f "
         "&& touch /ready; trap 'exit 0' TERM; while true; do sleep 0.1; done")
    _until(lambda: site("exec", "files", "test", "-e", "/ready", check=False).returncode == 0)
    yield "files", volume
    site("rm", "-f", "files")


def test_cp_out_of_a_container_by_dockers_rules(site: Site, running: tuple[str, Path],
                                                tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    done = site("cp", "files:/data", str(out))  # an existing directory: copied into it
    assert done.stderr.startswith(b"Successfully copied ")
    assert (out / "data/f").read_text() == "hello\n"
    assert (out / "data/sub/x").read_text() == "deep\n"
    assert os.readlink(out / "data/escape") == "/"  # a symlink is copied as one
    assert (out / "data/f").stat().st_uid == 0  # the invoking user's, without -a
    site("cp", "-q", "files:/data/f", str(out / "renamed"))  # a new name: the file as it
    assert (out / "renamed").read_text() == "hello\n"
    site("cp", "-a", "files:/data/f", str(out / "owned"))
    assert ((out / "owned").stat().st_uid, (out / "owned").stat().st_gid) == (7, 8)
    site("cp", "files:/data/.", str(out / "contents"))  # a new directory of its contents
    assert sorted(os.listdir(out / "contents")) == ["escape", "f", "pw", "sub"]
    site("cp", "-L", "files:/data/pw", str(out / "passwd"))  # the link's target, the
    assert (out / "passwd").read_text().startswith("root:x:0:0:")  # container's own
    # paths resolve inside the container: its /etc/hostname, never the host's
    site("cp", "files:/data/escape/etc/hostname", str(out / "hostname"))
    assert (out / "hostname").read_text() == site.out("exec", "files", "cat", "/etc/hostname")
    for source, dest, words in (
            ("files:/nosuch", str(out), b"no such file or directory in container files"),
            ("files:/data/escape/etc/shadow", str(out), b"no such file"),
            ("files:/data", str(out / "renamed"), b"cannot copy the directory"),
            ("files:/data/f", str(out / "missing") + "/", b"does not exist"),
            ("files:/data/f", str(out / "no/such/dir/f"), b"no such directory on this host"),
            (str(out), str(out / "x"), b"exactly one of"),
            ("files:/data", "files:/tmp", b"exactly one of")):
        refused = site("cp", source, dest, check=False)
        assert refused.returncode != 0 and words in refused.stderr, (source, refused.stderr)
        assert b"Traceback" not in refused.stderr


def test_cp_into_a_container_stays_inside_it(site: Site, running: tuple[str, Path],
                                             tmp_path: Path) -> None:
    _, volume = running
    src = tmp_path / "src"
    (src / "tree/sub").mkdir(parents=True)
    (src / "tree/a").write_text("one\n")
    (src / "tree/sub/b").write_text("two\n")
    os.symlink("/etc/hostname", src / "tree/link")
    os.chown(src / "tree/a", 1234, 5678)
    (src / "file").write_text("file\n")
    site("cp", str(src / "tree"), "files:/data/")
    assert site.out("exec", "files", "cat", "/data/tree/a", "/data/tree/sub/b") == "one\ntwo\n"
    assert site.out("exec", "files", "readlink", "/data/tree/link") == "/etc/hostname\n"
    assert site.out("exec", "files", "stat", "-c", "%u:%g", "/data/tree/a") == "0:0\n"
    site("cp", "-a", str(src / "tree"), "files:/kept")  # a new name; owners kept
    assert site.out("exec", "files", "stat", "-c", "%u:%g", "/kept/a") == "1234:5678\n"
    site("cp", f"{src}/tree/.", "files:/data/sub")  # the contents, merged
    assert site.out("exec", "files", "ls", "/data/sub").split() == ["a", "link", "sub", "x"]
    # through the container's symlink to its /: the container's /tmp, not the host's
    site("cp", str(src / "file"), "files:/data/escape/tmp/lamina-cp-escape")
    assert site.out("exec", "files", "cat", "/tmp/lamina-cp-escape") == "file\n"
    assert not os.path.exists("/tmp/lamina-cp-escape")
    # a volume is part of the container's view
    site("cp", str(src / "file"), "files:/vol/")
    assert (volume / "file").read_text() == "file\n"
    # a tar on stdin, unpacked into a directory; a tar of a path on stdout
    packed = subprocess.run(["tar", "-C", str(src), "-c", "file"], capture_output=True,
                            check=True).stdout
    site("cp", "-", "files:/data/escape/home", input=packed)
    assert site.out("exec", "files", "cat", "/home/file") == "file\n"
    listing = subprocess.run(["tar", "-t"], input=site("cp", "files:/data/sub", "-").stdout,
                             capture_output=True, check=True).stdout.decode().split()
    assert sorted(listing) == ["sub/", "sub/a", "sub/link", "sub/sub/", "sub/sub/b", "sub/x"]
    (src / ".wh.hidden").write_text("x")
    for source, dest, words in (
            (str(src / "tree"), "files:/data/f", b"cannot copy the directory"),
            (str(src / "file"), "files:/nodir/", b"does not exist"),
            (str(src / "file"), "files:/no/such/dir", b"no such directory in container"),
            (str(src / "nosuch"), "files:/tmp", b"no such file or directory on this host"),
            ("-", "files:/data/f", b"no such directory in container"),
            (str(src / ".wh.hidden"), "files:/tmp", b"names beginning with .wh.")):
        refused = site("cp", source, dest, check=False, input=b"")
        assert refused.returncode != 0 and words in refused.stderr, (source, refused.stderr)


def test_cp_with_a_stopped_container(site: Site, tmp_path: Path) -> None:
    site("create", "--name", "parked", IMAGE, "true")
    (tmp_path / "in").write_text("parked\n")
    site("cp", str(tmp_path / "in"), "parked:/etc/in")
    site("cp", "parked:/etc/in", str(tmp_path / "out"))
    assert (tmp_path / "out").read_text() == "parked\n"
    assert site.out("diff", "parked").splitlines() == ["C /etc", "A /etc/in"]
    site("rm", "parked")  # its layer was unmounted again: rm works


def test_export_flattens_the_container_without_its_volumes(
        site: Site, running: tuple[str, Path], tmp_path: Path) -> None:
    _, volume = running
    (volume / "in-volume").write_text("not exported\n")
    site("exec", "files", "rm", "/bin/true")
    site("export", "-o", str(tmp_path / "files.tar"), "files")
    names = subprocess.run(["tar", "-tf", str(tmp_path / "files.tar")], capture_output=True,
                           check=True, text=True).stdout.split()
    assert {"data/f", "data/sub/x", "bin/busybox", "vol/", "proc/"} <= set(names)
    assert "bin/true" not in names and "vol/in-volume" not in names
    assert not [n for n in names if n.startswith(("proc/", "sys/")) and n not in ("proc/",
                                                                                 "sys/")]
    # what docker export | docker import does: one layer, the container's tree
    site("import", str(tmp_path / "files.tar"), "flat:1")
    assert site.out("run", "--rm", "--network", "none", "flat:1", "cat", "/data/f") == "hello\n"
    refused = site("run", "--rm", "--network", "none", "flat:1", "true", check=False)
    assert refused.returncode == 127
    site("rmi", "flat:1")
    # to standard output too; never to a terminal, never a half file
    streamed = site("export", "files").stdout
    with tarfile.open(fileobj=io.BytesIO(streamed)) as archive:
        assert {m.name + ("/" if m.isdir() else "") for m in archive} == set(names)
    missing = site("export", "-o", str(tmp_path / "nope.tar"), "nosuch", check=False)
    assert missing.returncode != 0 and not (tmp_path / "nope.tar").exists()


# -- run's other Docker flags --------------------------------------------------------------


def _cap_eff(site: Site, *flags: str) -> int:
    status = site.out("run", "--rm", "--network", "none", *flags, IMAGE, "cat",
                      "/proc/self/status")
    (line,) = [x for x in status.splitlines() if x.startswith("CapEff:")]
    return int(line.split()[1], 16)


def test_cap_add_and_cap_drop(site: Site) -> None:
    from lamina.core.launcher.capabilities import DEFAULT_CAPABILITIES, NUMBERS

    default = sum(1 << n for n in DEFAULT_CAPABILITIES)
    assert _cap_eff(site) == default
    assert _cap_eff(site, "--cap-add", "NET_ADMIN") == default | 1 << NUMBERS["NET_ADMIN"]
    assert _cap_eff(site, "--cap-drop", "chown") == default & ~(1 << NUMBERS["CHOWN"])
    assert _cap_eff(site, "--cap-drop", "ALL", "--cap-add", "CAP_KILL") == 1 << NUMBERS["KILL"]
    # an exec'd process gets the container's set too
    site("run", "-d", "--network", "none", "--name", "capped", "--cap-drop", "ALL", IMAGE,
         "sleep", "60")
    try:
        status = site.out("exec", "capped", "cat", "/proc/self/status")
        assert "CapEff:\t0000000000000000" in status
    finally:
        site("rm", "-f", "capped")
    refused = site("run", "--rm", "--cap-add", "NOPE", IMAGE, "true", check=False)
    assert refused.returncode == 125 and b"unknown capability" in refused.stderr


def test_add_host_mount_and_stop_settings(site: Site, tmp_path: Path) -> None:
    hosts = site.out("run", "--rm", "--network", "none", "--add-host", "db:10.1.2.3",
                     "--add-host", "six=[fd00::1]", IMAGE, "cat", "/etc/hosts")
    assert hosts.splitlines()[-2:] == ["10.1.2.3\tdb", "fd00::1\tsix"]
    for wrong in ("db:nowhere", "bad name:10.0.0.1"):
        refused = site("run", "--rm", "--add-host", wrong, IMAGE, "true", check=False)
        assert refused.returncode == 125 and b"--add-host" in refused.stderr
    (tmp_path / "shared").write_text("from host\n")
    ran = site("run", "--rm", "--network", "none",
               "--mount", f"type=bind,source={tmp_path},target=/h,readonly",
               "--mount", "type=tmpfs,target=/t,tmpfs-size=1m",
               "--mount", "type=volume,source=mounted,target=/v", IMAGE, "sh", "-c",
               "cat /h/shared; touch /h/x 2>/dev/null || echo ro; df -k /t | tail -1; "
               "echo kept > /v/f")
    lines = ran.stdout.decode().splitlines()
    assert lines[:2] == ["from host", "ro"] and lines[2].split()[1] == "1024"
    assert site.out("run", "--rm", "--network", "none", "-v", "mounted:/v", IMAGE, "cat",
                    "/v/f") == "kept\n"
    site("volume", "rm", "mounted")
    for wrong, words in (("type=bind,source=rel,target=/x", b"absolute source"),
                         ("type=nfs,target=/x", b"not bind, volume or tmpfs"),
                         ("type=volume,target=rel", b"absolute path"),
                         ("type=volume,target=/x,bogus=1", b"not a field")):
        refused = site("run", "--rm", "--mount", wrong, IMAGE, "true", check=False)
        assert refused.returncode == 125 and words in refused.stderr, refused.stderr
    # the container's stop signal and timeout are what stop uses when not told
    site("run", "-d", "--network", "none", "--name", "stubborn", "--stop-signal", "USR1",
         "--stop-timeout", "1", IMAGE, "sh", "-c",
         "trap 'echo usr1' USR1; while true; do sleep 0.1; done")
    try:
        assert site.out("inspect", "-f", "{{.Config.StopSignal}}", "stubborn") == "SIGUSR1\n"
        started = time.monotonic()
        site("stop", "stubborn")  # USR1 is trapped: SIGKILL after 1 s, not 10
        assert time.monotonic() - started < 8
        assert site.out("wait", "stubborn") == "137\n"
        assert site.out("logs", "stubborn") == "usr1\n"
    finally:
        site("rm", "-f", "stubborn")


def _runs(site: Site, name: str) -> int:
    return site.out("logs", name).count("run\n")


def test_restart_policies(site: Site) -> None:
    # on-failure:2: the first run and two restarts, then it stays exited
    site("run", "-d", "--network", "none", "--name", "failing", "--restart", "on-failure:2",
         IMAGE, "sh", "-c", "echo run; exit 3")
    # wait waits through the restarts (Docker's: a restarting container still runs)
    assert site.out("wait", "failing") == "3\n"
    assert _runs(site, "failing") == 3
    assert site.out("inspect", "-f", "{{.State.Status}}", "failing") == "exited\n"
    time.sleep(1)  # the back-off's next step would have come by now
    assert _runs(site, "failing") == 3
    assert site.out("inspect", "-f", "{{.RestartCount}} {{.State.ExitCode}} "
                    "{{.HostConfig.RestartPolicy.Name}}", "failing") == "2 3 on-failure\n"
    # on-failure does not restart a success
    site("run", "-d", "--network", "none", "--name", "fine", "--restart", "on-failure",
         IMAGE, "sh", "-c", "echo run")
    _until(lambda: site.out("inspect", "-f", "{{.State.Status}}", "fine") == "exited\n")
    time.sleep(0.5)
    assert _runs(site, "fine") == 1
    # always: again and again, until stop; start brings it back, kill ends it too
    site("run", "-d", "--network", "none", "--name", "always", "--restart", "always",
         IMAGE, "sh", "-c", "echo run; sleep 0.2")
    _until(lambda: _runs(site, "always") >= 3)
    site("stop", "-t", "1", "always")
    stopped = _runs(site, "always")
    time.sleep(1)
    assert _runs(site, "always") == stopped
    site("start", "always")
    _until(lambda: _runs(site, "always") >= stopped + 2)
    site("kill", "always")
    _until(lambda: site.out("inspect", "-f", "{{.State.Status}}", "always") == "exited\n")
    killed = _runs(site, "always")
    time.sleep(1)
    assert _runs(site, "always") == killed
    site("rm", "-f", "failing", "fine", "always")
    for flags, words in ((["--restart", "sometimes"], b"invalid --restart"),
                         (["--restart", "on-failure:x"], b"invalid --restart"),
                         (["--restart", "always", "--rm"], b"cannot go together")):
        refused = site("run", *flags, IMAGE, "true", check=False)
        assert refused.returncode == 125 and words in refused.stderr


def test_a_container_waiting_to_restart_shows_restarting(site: Site) -> None:
    # exit 1 at once, again and again: the back-off doubles from 0.1 s and soon lasts
    site("run", "-d", "--network", "none", "--name", "flapping", "--restart", "always",
         IMAGE, "sh", "-c", "echo run; exit 1")

    def state() -> str:
        return site.out("inspect", "-f",
                        "{{.State.Status}} {{.State.Restarting}} {{.State.Running}}", "flapping")

    _until(lambda: _runs(site, "flapping") >= 5 and state() == "restarting true true\n")
    assert site.out("ps", "--filter", "status=restarting", "--format", "{{.Names}}") == \
        "flapping\n"
    assert site.out("ps", "-a", "--filter", "name=flapping", "--format",
                    "{{.State}} {{.Status}}").startswith("restarting Restarting (1) ")
    refused = site("rm", "flapping", check=False)
    assert refused.returncode != 0 and b"is restarting" in refused.stderr
    # stop ends the back-off at once: exited, and no run after it
    began = time.monotonic()
    site("stop", "flapping")
    assert time.monotonic() - began < 3
    assert state() == "exited false false\n"
    runs = _runs(site, "flapping")
    time.sleep(1)
    assert _runs(site, "flapping") == runs and state() == "exited false false\n"
    # kill of a restarting one ends its back-off (nothing to signal), as Docker's
    site("start", "flapping")
    _until(lambda: state() == "restarting true true\n")
    assert site.out("kill", "flapping") == "flapping\n"
    assert state() == "exited false false\n"
    # rm -f of a restarting one: removed, and its monitor does not bring it back
    site("start", "flapping")
    _until(lambda: state() == "restarting true true\n")
    site("rm", "-f", "flapping")
    assert site("inspect", "flapping", check=False).returncode != 0
    assert "flapping" not in site.out("ps", "-a", "--format", "{{.Names}}")


def test_sizes_of_containers(site: Site) -> None:
    site("run", "--network", "none", "--name", "writer", IMAGE, "sh", "-c",
         "head -c 100000 /dev/zero > /big")
    (row,) = [r for r in json.loads(site.out("ps", "-a", "-s", "--format", "json"))
              if r["Names"] == "writer"]
    image_size = json.loads(site.out("images", "--format", "json"))
    (base,) = [i["Size"] for i in image_size if i["Repository"] == "bb"]
    assert 100_000 <= row["SizeRw"] < 120_000
    assert row["SizeRootFs"] == row["SizeRw"] + base
    table = site.out("ps", "-a", "-s").splitlines()
    assert table[0].split()[-1] == "SIZE"
    assert "(virtual" in next(line for line in table if "writer" in line)
    df = json.loads(site.out("system", "df", "--format", "json"))
    (mine,) = [c for c in df["containers"] if c["name"] == "writer"]
    assert mine["size"] == row["SizeRw"] and mine["state"] == "exited"
    (line,) = [r for r in site.out("system", "df").splitlines() if r.startswith("Containers")]
    assert line.split()[1] == str(len(df["containers"]))
    site("rm", "writer")


def test_system_prune_removes_what_nothing_uses(tmp_path: Path, busybox_tar: Path) -> None:
    gen = busybox_site(tmp_path / "store", busybox_tar)
    site = next(gen)
    try:
        site("run", "-d", "--network", "none", "--name", "busy", IMAGE, "sleep", "60")
        site("run", "--network", "none", "--name", "done", "-v", "/scratch", IMAGE,
             "sh", "-c", "head -c 300000 /dev/zero > /junk")
        site("import", str(busybox_tar), "spare:1")
        site("tag", "spare:1", "spare:2")
        untagged = site.out("import", str(busybox_tar)).strip()  # the same layer, no name
        volume = site.out("inspect", "-f", "{{(index .Mounts 0).Name}}", "done").strip()
        done = site.out("inspect", "-f", "{{.Id}}", "done").strip()
        site("network", "create", "unused-net")  # a record only: no bridge until used
        out = site.out("system", "prune", "-f")
        # the stopped container goes (with its 300 KB), the running one and names stay
        assert out.startswith(f"Deleted Containers:\n{done}\n\nDeleted Networks:\n"
                              "unused-net\n\n")
        assert site.out("ps", "-a", "--format", "{{.Names}}") == "busy\n"
        assert f"deleted: {untagged}" in out
        assert re.fullmatch(r"Total reclaimed space: 30\d(\.\d+)? kB", out.splitlines()[-1])
        assert volume in site.out("volume", "ls", "-q")  # volumes only with --volumes
        assert {"spare:1", "spare:2"} <= set(site.out("images", "--format",
                                                      "{{.Repository}}:{{.Tag}}").split())
        # -a: every image no container uses; --volumes: anonymous volumes too
        out = site.out("system", "prune", "-a", "--volumes", "-f")
        assert "untagged: spare:1" in out and "untagged: spare:2" in out
        assert f"Deleted Volumes:\n{volume}\n" in out
        assert site.out("images", "--format", "{{.Repository}}").split() == [IMAGE.split(":")[0]]
        assert site.out("volume", "ls", "-q") == ""
        # nothing left to take: only the total
        assert site.out("system", "prune", "-a", "--volumes") == "Total reclaimed space: 0 B\n"
    finally:
        site("rm", "-f", *site.out("ps", "-a", "-q").split(), check=False)
        gen.close()


def test_prune_filters_until_and_labels(tmp_path: Path, busybox_tar: Path) -> None:
    gen = busybox_site(tmp_path / "store", busybox_tar)
    site = next(gen)
    try:
        for name, labels in (("dev", ["tier=dev"]), ("prod", ["tier=prod"]), ("plain", [])):
            site("create", "--name", name, *(a for v in labels for a in ("--label", v)),
                 IMAGE, "true")

        def left() -> list[str]:
            return sorted(site.out("ps", "-a", "--format", "{{.Names}}").split())

        site("container", "prune", "--filter", "label=tier=dev")
        assert left() == ["plain", "prod"]
        site("container", "prune", "--filter", "label!=tier")
        assert left() == ["prod"]
        site("container", "prune", "--filter", "until=1h")  # made just now: not before
        assert left() == ["prod"]
        site("container", "prune", "--filter", f"until={time.time() + 60:.0f}")
        assert left() == []
        # images: by the config's labels and time
        site("import", "-c", "LABEL keep=yes", str(busybox_tar), "kept:1")
        site("import", "-c", "LABEL keep=no", str(busybox_tar), "gone:1")
        out = site.out("image", "prune", "-a", "--filter", "label=keep=no")
        assert "untagged: gone:1" in out and "kept" not in out
        assert site.out("image", "prune", "-a", "--filter", "until=1h") == \
            "Total reclaimed space: 0 B\n"  # made just now: not before an hour ago
        assert site.out("images", "--format", "{{.Repository}}", "kept") == "kept\n"
        # volumes: by label only (Docker's have no until)
        site("volume", "create", "--label", "team=a", "va")
        site("volume", "create", "vb")
        assert site.out("volume", "prune", "-a", "--filter", "label=team") == \
            "Deleted Volumes:\nva\n\nTotal reclaimed space: 0 B\n"
        for command, words in ((["volume", "prune", "--filter", "until=1h"], b"invalid filter"),
                               (["container", "prune", "--filter", "until=soon"],
                                b"invalid until filter"),
                               (["image", "prune", "--filter", "colour=red"], b"invalid filter"),
                               (["system", "prune", "--filter", "until=1h",
                                 "--filter", "until=2h"], b"more than one until")):
            refused = site(*command, check=False)
            assert refused.returncode == 1 and words in refused.stderr, refused.stderr
            assert b"Traceback" not in refused.stderr
    finally:
        site("rm", "-f", *site.out("ps", "-a", "-q").split(), check=False)
        gen.close()


def test_stats_shows_cpu_memory_and_processes(site: Site) -> None:
    site("run", "-d", "--network", "none", "--name", "spinning", IMAGE, "sh", "-c",
         "while :; do :; done")
    # ~30 MB held by a shell, three processes, and lo traffic that is not counted
    site("run", "-d", "--network", "none", "--name", "holding", "-m", "256m", IMAGE, "sh",
         "-c", "x=$(head -c 30000000 /dev/zero | tr '\\0' a); sleep 60 & sleep 60 & "
         "ping -c 3 -i 0.2 127.0.0.1 >/dev/null; wait")
    site("create", "--name", "resting", IMAGE, "true")
    _until(lambda: "sleep 60" in site.out("top", "holding"))
    time.sleep(0.7)  # the pings are done
    shown = site.out("stats", "--no-stream", "-a", "--format",
                     "{{.Name}}|{{.CPUPerc}}|{{.MemUsage}}|{{.MemPerc}}|{{.NetIO}}|{{.PIDs}}")
    rows = {line.split("|")[0]: line.split("|")[1:] for line in shown.splitlines()}
    cpu, memory, _, net, pids = rows["spinning"]
    assert 60 <= float(cpu.rstrip("%")) <= 150 and pids == "1"  # one busy CPU
    cpu, memory, percent, net, pids = rows["holding"]
    used, limit = memory.split(" / ")
    assert limit == "256 MiB" and used.endswith(" MiB") and 28 <= float(used[:-4]) < 100
    assert 10 <= float(percent.rstrip("%")) < 40
    assert pids == "3" and net == "0 B / 0 B"  # lo's traffic is not the container's I/O
    assert rows["resting"] == ["0.00%", "0 B / 0 B", "0.00%", "0 B / 0 B", "0"]
    # by name; a missing one is an error, the others still shown
    done = site("stats", "--no-stream", "--format", "{{json .}}", "nosuch", "spinning",
                check=False)
    assert done.returncode == 1 and b"nosuch" in done.stderr
    assert json.loads(done.stdout)["Name"] == "spinning"
    site("rm", "-f", "spinning", "holding", "resting")


def _count(site: Site, name: str) -> int:
    """The container's counter; 0 while the shell rewrites it (``>`` empties it first)."""
    return int(site.out("exec", name, "cat", "/count").strip() or 0)


@pytest.mark.parametrize("limits", [[], ["-m", "128m"]], ids=["no-cgroup", "with-limits"])
def test_pause_freezes_every_process_until_unpause(site: Site, limits: list[str]) -> None:
    from lamina.core.launcher import monitor, pause
    from lamina.core.launcher.cgroups import Hierarchies

    assert monitor.PAUSED_GROUP == pause.MARKER  # the teardown finds what pause leaves

    try:
        site("run", "-d", "--network", "none", "--name", "ticking", *limits, IMAGE, "sh", "-c",
             "trap 'exit 0' TERM; (while :; do sleep 0.05; done) & "
             "i=0; while :; do i=$((i+1)); echo $i > /count; sleep 0.05; done")
        cid = site.out("inspect", "-f", "{{.Id}}", "ticking").strip()
        _until(lambda: _count(site, "ticking") > 2)
        assert site.out("pause", "ticking") == "ticking\n"
        frozen_at = site.out("cp", "ticking:/count", "-")
        time.sleep(0.5)
        assert site.out("cp", "ticking:/count", "-") == frozen_at  # nothing ran meanwhile
        assert site.out("ps", "--filter", "status=paused", "--format",
                        "{{.Names}} {{.State}} {{.Status}}").startswith("ticking paused Up ")
        assert site.out("ps", "--format", "{{.Status}}").rstrip().endswith("(Paused)")
        assert site.out("inspect", "-f", "{{.State.Status}} {{.State.Paused}} {{.State.Running}}",
                        "ticking") == "paused true true\n"
        for command, words in ((["exec", "ticking", "true"], b"is paused"),
                               (["pause", "ticking"], b"already paused")):
            refused = site(*command, check=False)
            assert refused.returncode != 0 and words in refused.stderr, refused.stderr
        assert site.out("unpause", "ticking") == "ticking\n"
        before = _count(site, "ticking")
        _until(lambda: _count(site, "ticking") > before + 2)  # on again
        refused = site("unpause", "ticking", check=False)
        assert refused.returncode != 0 and b"is not paused" in refused.stderr
        # stop of a paused container: its signal is delivered at once, not at an unpause
        site("pause", "ticking")
        began = time.monotonic()
        site("stop", "-t", "20", "ticking")
        assert time.monotonic() - began < 5
        assert site.out("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}",
                        "ticking") == "exited 0\n"
        # the group a pause made went with the container
        found = Hierarchies.discover()
        roots = [*found.v1.values(), *([found.unified] if found.unified else [])]
        assert not any((root / "lamina" / cid).exists() for root in roots)
        # a stopped one cannot be paused; kill -s KILL ends a paused one
        refused = site("pause", "ticking", check=False)
        assert refused.returncode != 0 and b"is not running" in refused.stderr
        site("start", "ticking")
        site("pause", "ticking")
        site("kill", "ticking")
        _until(lambda: site.out("inspect", "-f", "{{.State.Status}}", "ticking") == "exited\n")
        site("rm", "ticking")
    finally:
        site("rm", "-f", "ticking", check=False)


def test_dns_shm_ulimit_cpu_shares_and_cidfile(site: Site, tmp_path: Path) -> None:
    from lamina.core.launcher.cgroups import Hierarchies

    cidfile = tmp_path / "cid"
    site("run", "-d", "--network", "none", "--name", "tuned", "--dns", "9.9.9.9",
         "--dns", "2001:db8::53", "--dns-search", "example.com", "--dns-option", "ndots:2",
         "--shm-size", "16m", "--ulimit", "nofile=512:1024", "--cpu-shares", "512",
         "--cidfile", str(cidfile), IMAGE, "sleep", "60")
    cid = site.out("inspect", "-f", "{{.Id}}", "tuned").strip()
    assert cidfile.read_text() == cid
    resolv = site.out("exec", "tuned", "cat", "/etc/resolv.conf").splitlines()
    assert [line for line in resolv if line.split()[0] in ("nameserver", "search", "options")] \
        == ["nameserver 9.9.9.9", "nameserver 2001:db8::53", "search example.com",
            "options ndots:2"]
    assert site.out("exec", "tuned", "df", "-k", "/dev/shm").split()[-5] == "16384"
    # the limits hold for the first process and for what exec starts
    assert site.out("exec", "tuned", "sh", "-c", "ulimit -n; ulimit -Hn") == "512\n1024\n"
    pid = site.out("inspect", "-f", "{{.State.Pid}}", "tuned").strip()
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert re.search(r"Max open files\s+512\s+1024\s", limits)
    where = Hierarchies.discover().where("cpu")
    if where is not None:  # v2's cpu.weight is the shares mapped as runc maps them
        name, expected = ("cpu.shares", "512") if where[0] == "v1" else ("cpu.weight", "20")
        assert (where[1] / "lamina" / cid / name).read_text().strip() == expected
    host = json.loads(site.out("inspect", "-f", "{{json .HostConfig}}", "tuned"))
    assert (host["Dns"], host["DnsSearch"], host["DnsOptions"], host["ShmSize"],
            host["Ulimits"], host["CpuShares"]) == (
        ["9.9.9.9", "2001:db8::53"], ["example.com"], ["ndots:2"], 16 << 20,
        [{"Name": "nofile", "Soft": 512, "Hard": 1024}], 512)
    # the id file is there: a second container refused before anything is made
    count = len(site.out("ps", "-a", "-q").split())
    refused = site("run", "--cidfile", str(cidfile), IMAGE, "true", check=False)
    assert refused.returncode == 125 and b"exists already" in refused.stderr
    assert len(site.out("ps", "-a", "-q").split()) == count
    site("rm", "-f", "tuned")
    for flags, words in ((["--dns", "resolver"], b"not an IP address"),
                         (["--ulimit", "files=10"], b"invalid --ulimit"),
                         (["--ulimit", "nofile=20:10"], b"soft limit is above"),
                         (["--shm-size", "lots"], b"invalid --shm-size"),
                         (["--memory-swap", "1g"], b"needs a memory limit"),
                         (["--cpu-shares", "1"], b"out of range")):
        refused = site("run", "--network", "none", *flags, IMAGE, "true", check=False)
        assert refused.returncode == 125 and words in refused.stderr, (flags, refused.stderr)
    # a limit the kernel refuses: a clear error at start, exit 125
    refused = site("run", "--network", "none", "--ulimit", "nofile=5000000000", IMAGE, "true",
                   check=False)
    assert refused.returncode == 125 and b"--ulimit nofile" in refused.stderr


def _health(site: Site, name: str) -> str:
    return site.out("inspect", "-f", "{{.State.Health.Status}}", name).strip()


def _watchers(site: Site) -> int:
    """The health watchers of this site's containers (each has its container's id in its
    argv; a check it is starting is its clone until it execs: not counted)."""
    ids = [i.encode() for i in site.out("ps", "-a", "-q", "--no-trunc").split()]

    def watcher(pid: str) -> bool:
        line = _cmdline(pid)
        return b"healthwatch" in line and any(i in line for i in ids)

    def parent(pid: str) -> str:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1]
        except (OSError, IndexError):
            return "0"

    return sum(1 for pid in os.listdir("/proc")
               if pid.isdigit() and watcher(pid) and not watcher(parent(pid)))


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_health_checks_as_dockers(site: Site, busybox_tar: Path) -> None:
    site("run", "-d", "--network", "none", "--name", "checked", "--health-cmd",
         "echo probing; test -e /ok", "--health-interval", "100ms", "--health-retries", "2",
         IMAGE, "sleep", "60")
    _until(lambda: _health(site, "checked") == "unhealthy")
    assert site.out("ps", "--format", "{{.Status}}", "--filter", "name=^checked$") \
        .rstrip().endswith("(unhealthy)")
    site("exec", "checked", "touch", "/ok")
    _until(lambda: _health(site, "checked") == "healthy")
    assert site.out("ps", "--filter", "health=healthy", "--format", "{{.Names}}") == \
        "checked\n"
    state = json.loads(site.out("inspect", "-f", "{{json .State.Health}}", "checked"))
    assert state["FailingStreak"] == 0 and 1 <= len(state["Log"]) <= 5
    assert state["Log"][-1]["ExitCode"] == 0 and state["Log"][-1]["Output"] == "probing\n"
    # the image's HEALTHCHECK, its timeout killing a check that runs too long
    site("import", "-c", "HEALTHCHECK --interval=200ms --timeout=150ms --retries=1 CMD sleep 5",
         str(busybox_tar), "slowcheck:1")
    site("run", "-d", "--network", "none", "--name", "slow", "slowcheck:1", "sleep", "60")
    _until(lambda: _health(site, "slow") == "unhealthy")
    log = json.loads(site.out("inspect", "-f", "{{json .State.Health.Log}}", "slow"))
    assert log[0]["ExitCode"] == -1 and "exceeded timeout (150ms)" in log[0]["Output"]
    # failures in the start period do not count; --no-healthcheck drops the image's
    site("run", "-d", "--network", "none", "--name", "warming", "--health-cmd", "false",
         "--health-interval", "100ms", "--health-start-interval", "100ms",
         "--health-start-period", "30s", "--health-retries", "1", IMAGE, "sleep", "60")
    time.sleep(1)
    assert _health(site, "warming") == "starting"
    assert site.out("ps", "--format", "{{.Status}}", "--filter", "name=^warming$") \
        .rstrip().endswith("(health: starting)")
    site("run", "-d", "--network", "none", "--name", "unchecked", "--no-healthcheck",
         "slowcheck:1", "sleep", "60")
    assert "Health" not in site.out("inspect", "-f", "{{json .State}}", "unchecked")
    assert site.out("ps", "--filter", "health=none", "--format", "{{.Names}}").split() == \
        ["unchecked"]
    ids = site.out("ps", "-q", "--no-trunc").split()
    assert _watchers(site) == 3
    site("rm", "-f", "checked", "slow", "warming", "unchecked")
    assert not any(any(i.encode() in _cmdline(pid) for i in ids)
                   for pid in os.listdir("/proc") if pid.isdigit())  # each went with it
    for flags, words in ((["--health-interval", "1us"], b"invalid health check interval"),
                         (["--health-retries", "-1"], b"invalid --health-retries"),
                         (["--no-healthcheck", "--health-cmd", "true"], b"cannot go together")):
        refused = site("run", "--network", "none", *flags, IMAGE, "true", check=False)
        assert refused.returncode == 125 and words in refused.stderr, (flags, refused.stderr)


def test_attach_prints_what_comes_and_exits_with_the_container(site: Site) -> None:
    site("run", "-d", "--network", "none", "--name", "speaker", IMAGE, "sh", "-c",
         "echo before; sleep 1; echo after; echo oops >&2; exit 7")
    time.sleep(0.4)
    attached = site("attach", "speaker", check=False)
    assert (attached.returncode, attached.stdout, attached.stderr) == (7, b"after\n",
                                                                       b"oops\n")
    refused = site("attach", "speaker", check=False)
    assert refused.returncode != 0 and b"not running" in refused.stderr
    # Ctrl-C reaches the container (its trap ends it); --sig-proxy=false leaves it running
    site("run", "-d", "--network", "none", "--name", "trapper", IMAGE, "sh", "-c",
         "trap 'echo got INT; exit 3' INT; while :; do sleep 0.1; done")
    for proxy, code in (("false", None), ("true", 3)):
        attach = subprocess.Popen(site.cmd("attach", "--sig-proxy", proxy, "trapper"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1)
        attach.send_signal(2)
        out, _ = attach.communicate(timeout=20)
        running = site.out("inspect", "-f", "{{.State.Running}}", "trapper").strip()
        if code is None:
            assert attach.returncode != 0 and running == "true"
        else:
            assert (attach.returncode, out) == (code, b"got INT\n")
            _until(lambda: site.out("inspect", "-f", "{{.State.Running}}",
                                    "trapper") == "false\n")
    site("rm", "-f", "speaker", "trapper")


def _attach_on_a_pty(site: Site, *args: str) -> tuple[int, int]:
    pid, fd = pty.fork()
    if pid == 0:
        cmd = site.cmd("attach", *args)
        os.execv(cmd[0], cmd)
    import fcntl
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    return pid, fd


def _exit_code(pid: int, fd: int) -> int:
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status)


def test_detached_tty_attach_types_into_it_and_detaches(site: Site) -> None:
    """``run -dit`` then ``attach``: the shell gets what is typed, at our window's size;
    a second client sees the same output; Ctrl-P Ctrl-Q leaves it running; its exit
    ends the attach with its status."""
    site("run", "-dit", "--network", "none", "--name", "box", IMAGE, "sh")
    pid, fd = _attach_on_a_pty(site, "box")
    seen = _Reader(fd)
    watcher = subprocess.Popen(site.cmd("attach", "--no-stdin", "box"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    os.write(fd, b"echo $((6*7)); stty size\r")
    assert seen.until(b"42\r\n40 100"), seen.data
    os.write(fd, b"\x10\x11")  # Ctrl-P Ctrl-Q
    assert _exit_code(pid, fd) == 0
    assert site.out("inspect", "-f", "{{.State.Running}}", "box") == "true\n"
    # another detach sequence; a key of it typed alone reaches the shell
    pid, fd = _attach_on_a_pty(site, "--detach-keys", "q,q", "box")
    seen = _Reader(fd)
    time.sleep(0.5)
    os.write(fd, b"echo q$((1+1))\r")  # q not followed by q: it goes on
    assert seen.until(b"q2\r\n"), seen.data
    os.write(fd, b"qq")
    assert _exit_code(pid, fd) == 0
    pid, fd = _attach_on_a_pty(site, "box")
    time.sleep(0.5)
    os.write(fd, b"exit 4\r")
    assert _exit_code(pid, fd) == 4
    out, err = watcher.communicate(timeout=20)
    assert watcher.returncode == 4 and b"42\r\n40 100" in out, (out, err)
    assert site.out("inspect", "-f", "{{.State.ExitCode}}", "box") == "4\n"
    # without a terminal, stdin cannot be attached to a tty (Docker's refusal)
    site("start", "box")
    refused = site("attach", "box", check=False)
    assert refused.returncode != 0 and b"the input device is not a TTY" in refused.stderr
    bad = site("attach", "--detach-keys", "ctrl-1", "box", check=False)
    assert bad.returncode != 0 and b"invalid detach key 'ctrl-1'" in bad.stderr
    site("rm", "-f", "box")


def test_detached_stdin_stays_open_for_attach(site: Site) -> None:
    """``run -di``: stdin is kept open (``cat`` does not end at once); an attach without a
    terminal feeds it lines; the end of our input leaves the container's open."""
    site("run", "-di", "--network", "none", "--name", "reader", IMAGE, "sh", "-c",
         "read a; echo \"got $a\"; read b; echo \"and $b\" >&2; read c; exit 6")
    time.sleep(0.5)
    assert site.out("inspect", "-f", "{{.State.Running}}", "reader") == "true\n"
    feeder = subprocess.Popen(site.cmd("attach", "reader"), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert feeder.stdin is not None
    time.sleep(0.5)
    feeder.stdin.write(b"hello\n")
    feeder.stdin.flush()
    time.sleep(0.3)
    feeder.stdin.write(b"world\n")
    feeder.stdin.close()  # our end: the container still waits for its third line
    feeder.stdin = None  # (communicate, below, would flush it)
    time.sleep(0.5)
    assert feeder.poll() is None
    assert site.out("inspect", "-f", "{{.State.Running}}", "reader") == "true\n"
    last = subprocess.run(site.cmd("attach", "reader"), input=b"bye\n",
                          capture_output=True, timeout=20, check=False)
    out, err = feeder.communicate(timeout=20)
    assert (feeder.returncode, out, err) == (6, b"got hello\n", b"and world\n")
    assert last.returncode == 6
    assert site.out("logs", "reader") == "got hello\n"
    site("rm", "reader")


def _ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def test_system_boot_starts_what_the_policies_say_after_a_reboot(site: Site) -> None:
    """A reboot (here: every monitor SIGKILLed, which takes its container with it), then
    ``system boot``, as examples/lamina-boot.service runs it: Docker's daemon start."""
    unit = (Path(__file__).parent.parent / "examples" / "lamina-boot.service").read_text()
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_start.split()[1:] == ["system", "boot"]
    forever = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"]
    cases = {  # name: (flags, what happens before the reboot, started at boot)
        "b-always": (["--restart", "always"], "run", True),
        "b-always-stopped": (["--restart", "always"], "stop", True),
        "b-unless": (["--restart", "unless-stopped"], "run", True),
        "b-unless-stopped": (["--restart", "unless-stopped"], "stop", False),
        "b-failure": (["--restart", "on-failure"], "run", True),
        "b-failure-ok": (["--restart", "on-failure"], "exit0", False),
        "b-none": ([], "run", False),
        "b-created": (["--restart", "always"], "create", False),
    }
    for name, (flags, before, _) in cases.items():
        if before == "create":
            site("create", "--network", "none", "--name", name, *flags, IMAGE, *forever)
        elif before == "exit0":
            site("run", "-d", "--network", "none", "--name", name, *flags, IMAGE, "true")
        else:
            site("run", "-d", "--network", "none", "--name", name, *flags, IMAGE, *forever)
            if before == "stop":
                site("stop", name)
    _until(lambda: site.out("inspect", "-f", "{{.State.Status}}", "b-failure-ok")
           == "exited\n")
    monitors = [_ppid(_pid(site, name)) for name, (_, before, _) in cases.items()
                if before == "run"]
    for pid in monitors:
        os.kill(pid, 9)
    _until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in monitors))
    started = site.out("system", "boot").split()
    assert sorted(started) == sorted(n for n, (_, _, up) in cases.items() if up)
    for name, (_, before, up) in cases.items():
        state = site.out("inspect", "-f", "{{.State.Status}}", name).strip()
        assert state == ("running" if up else "created" if before == "create"
                         else "exited"), (name, state)
    assert site.out("system", "boot") == ""  # once they run, nothing more to start
    site("rm", "-f", *cases)


def test_device_and_privileged_give_the_hosts_devices(site: Site, tmp_path: Path,
                                                     secret_device: str) -> None:
    """``--device`` binds a host node (or a directory of them) where the container asks;
    ``--privileged`` gives every host device, every capability lamina holds, a writable
    /sys and nodes that open; permissions lamina cannot enforce are refused."""
    device = secret_device
    plain = tmp_path / "plain-file"
    plain.write_bytes(b"not a device")
    try:
        run = ("run", "--rm", "--network", "none")
        assert site.out(*run, "--device", f"{device}:/dev/xvdc:rwm", IMAGE,
                        "head", "-c", "6", "/dev/xvdc") == "SECRET"
        assert site.out(*run, "--device", device, IMAGE, "head", "-c", "6", device) == "SECRET"
        if os.path.exists("/dev/net/tun"):  # a directory: every node below it
            listed = site.out(*run, "--device", "/dev/net", IMAGE, "ls", "/dev/net")
            assert listed.split() == sorted(os.listdir("/dev/net"))
        for bad, words in ((f"{device}:r", b"cannot give a device with permissions 'r'"),
                           ("/nonexistent", b"No such file or directory"),
                           (str(plain), b"is not a device")):
            refused = site(*run, "--device", bad, IMAGE, "true", check=False)
            assert refused.returncode == 125 and words in refused.stderr, refused.stderr
        bounding = next(line for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("CapBnd:")).split()[1]
        out = site.out(*run, "--privileged", IMAGE, "sh", "-c",
                       f"head -c 6 {device}; echo; grep CapEff /proc/self/status; "
                       "grep ' /sys ' /proc/mounts; mknod /made b "
                       f"{os.major(os.stat(device).st_rdev)} {os.minor(os.stat(device).st_rdev)}"
                       " && head -c 6 /made")
        lines = out.splitlines()
        assert lines[0] == "SECRET" and lines[1].split()[1] == bounding, out
        assert " rw," in lines[2] and lines[3] == "SECRET", out
        site("run", "-d", "--network", "none", "--name", "priv", "--privileged",
             "--device", f"{device}:/dev/xvdc", IMAGE, "sleep", "30")
        assert site.out("inspect", "-f", "{{.HostConfig.Privileged}} {{json "
                        ".HostConfig.Devices}}", "priv") == (
            'true [{"CgroupPermissions":"rwm","PathInContainer":"/dev/xvdc",'
            f'"PathOnHost":"{device}"}}]\n')
        assert bounding in site.out("exec", "priv", "grep", "CapEff", "/proc/self/status")
    finally:
        site("rm", "-f", "priv", check=False)


def test_group_add_reaches_run_and_exec(site: Site) -> None:
    """``--group-add`` (a number, a name of the image's /etc/group) gives every process of
    the container, exec'd ones too, those supplementary groups; an unknown name is an
    error at its start, as Docker's."""
    site("run", "-d", "--network", "none", "--name", "grouped", "--group-add", "777",
         "--group-add", "nogroup", "-u", "nobody", IMAGE, "sleep", "30")
    assert site.out("exec", "grouped", "id", "-G").split() == ["65534", "777"]
    assert site.out("exec", "-u", "root", "grouped", "id", "-G").split() == [
        "0", "777", "65534"]
    assert site.out("inspect", "-f", "{{json .HostConfig.GroupAdd}}",
                    "grouped") == '["777","nogroup"]\n'
    site("rm", "-f", "grouped")
    bad = site("run", "--rm", "--network", "none", "--group-add", "wheel", IMAGE, "true",
               check=False)
    assert bad.returncode == 125 and b"unable to find group wheel" in bad.stderr


def _in_netns(site: Site, host_netns: list[str]) -> Callable[..., subprocess.CompletedProcess]:
    """``site``'s lamina run inside the test's network namespace (``check``: exit 0)."""
    def lamina(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*host_netns, *site.cmd(*args)], capture_output=True,
                              timeout=60)
        if check:
            assert proc.returncode == 0, proc.stderr.decode()
        return proc

    return lamina


def test_user_networks_resolve_names_and_are_isolated(site: Site,
                                                     host_netns: list[str]) -> None:
    """``network create``, then ``run --network NAME``: the containers on it reach each
    other by name (their /etc/hosts kept current as they come and go), not those of
    another network or of the default bridge; ``rm`` refuses a network in use; ``rm`` and
    ``prune`` take the bridge and its rules away. All inside a network namespace the
    test made."""
    lamina = _in_netns(site, host_netns)
    def out(*args: str) -> str:
        return lamina(*args).stdout.decode()

    def nft() -> str:
        return subprocess.run([*host_netns, "nft", "list", "ruleset"], capture_output=True,
                              text=True).stdout

    net_id = out("network", "create", "--label", "tier=app", "appnet").strip()
    out("network", "create", "--subnet", "10.99.0.0/24", "othernet")
    refused = lamina("network", "create", "appnet", check=False)
    assert refused.returncode != 0 and b"already exists" in refused.stderr
    overlap = lamina("network", "create", "--subnet", "10.99.0.128/25", "x", check=False)
    assert overlap.returncode != 0 and b"overlaps" in overlap.stderr
    names = out("network", "ls", "--format", "{{.Name}} {{.Driver}}").splitlines()
    assert names == ["bridge bridge", "host host", "none null", "appnet bridge",
                     "othernet bridge"]
    for wanted, shown in ((["type=custom"], "appnet othernet"), (["label=tier=app"], "appnet"),
                          (["name=net", "driver=bridge"], "appnet othernet"),
                          (["name=bridge", "name=host"], "bridge host"),
                          (["type=builtin", "driver=null"], "none")):
        flags = [f for w in wanted for f in ("--filter", w)]
        assert out("network", "ls", *flags, "--format", "{{.Name}}").split() == \
            shown.split(), wanted
    assert out("network", "ls", "--filter", "name=appnet", "--format",
               "{{.Labels}} {{.Internal}}") == "tier=app false\n"
    try:
        out("run", "-d", "--name", "web", "--network", net_id[:12], IMAGE, "sh", "-c",
            "while true; do echo pong | nc -l -p 80; done")
        # a container that starts later finds web by name, and web finds it
        client = out("run", "--rm", "--name", "client", "--network", "appnet", IMAGE, "sh",
                     "-c", "echo ping | nc -w 5 web 80; "
                     "grep -c client /etc/hosts; true")  # itself: not in its block
        assert client.splitlines()[:2] == ["pong", "0"], client
        out("run", "-d", "--name", "peer", "--network", "appnet", "--network-alias", "db",
            IMAGE, "sleep", "60")
        assert out("exec", "web", "ping", "-c", "1", "-W", "2", "peer").count("1 packets "
                                                                             "received") == 1
        assert "1 packets received" in out("exec", "web", "ping", "-c", "1", "-W", "2", "db")
        hosts = out("exec", "web", "cat", "/etc/hosts")
        assert "peer" in hosts and "client" not in hosts  # the one that left is gone
        assert out("ps", "--filter", "network=appnet", "--format", "{{.Names}}").split() == [
            "peer", "web"]
        assert out("ps", "--filter", f"network={net_id}", "-q").count("\n") == 2
        no_alias = lamina("run", "--rm", "--network-alias", "x", IMAGE, "true", check=False)
        assert no_alias.returncode == 125 and b"only supported for user-defined" in \
            no_alias.stderr
        details = json.loads(out("network", "inspect", "appnet"))[0]
        assert details["Labels"] == {"tier": "app"}
        addresses = {c["Name"]: c["IPv4Address"].split("/")[0]
                     for c in details["Containers"].values()}
        assert set(addresses) == {"web", "peer"}
        # Docker's way to read a container's address
        assert out("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} "
                   "{{.Aliases}}{{end}}", "peer") == f"{addresses['peer']} [db]\n"
        # isolated: from another network and from the default bridge, not even by address
        for network in ("othernet", "bridge"):
            probe = lamina("run", "--rm", "--network", network, IMAGE, "sh", "-c",
                           f"echo ping | nc -w 2 {addresses['web']} 80", check=False)
            assert probe.stdout == b"", (network, probe.stdout)
        unknown = lamina("run", "--rm", "--network", "nosuchnet", IMAGE, "true",
                         check=False)
        assert unknown.returncode == 125 and b"network nosuchnet not found" in unknown.stderr
        busy = lamina("network", "rm", "appnet", check=False)
        assert busy.returncode != 0 and b"has active endpoints (" in busy.stderr
        bridge = details["Options"]["com.docker.network.bridge.name"]
        assert f"isolation-{bridge}" in nft()
    finally:
        lamina("rm", "-f", "web", "peer", check=False)
    out("create", "--name", "later", "--network", "appnet", IMAGE, "true")
    assert out("network", "rm", "appnet") == "appnet\n"  # a stopped container: no endpoint
    orphan = lamina("start", "later", check=False)  # as Docker's: refused, still created
    assert orphan.returncode != 0 and b"network appnet not found" in orphan.stderr
    assert out("inspect", "-f", "{{.State.Status}}", "later") == "created\n"
    lamina("rm", "later")
    assert out("network", "prune") == "Deleted Networks:\nothernet\n"
    assert out("network", "ls", "-q").count("\n") == 3  # the pre-defined ones
    links = subprocess.run([*host_netns, "ip", "-o", "link"], capture_output=True, text=True)
    assert "lm-" not in links.stdout and f"-{bridge}" not in nft()
    assert lamina("network", "rm", "bridge", check=False).returncode != 0


def test_sysctls_of_the_containers_own_namespaces(site: Site) -> None:
    """``--sysctl``: net.* and the IPC settings reach the container's namespaces and not
    the host's; others, net.* with the host's network, and unknown names are refused."""
    host = {name: Path(f"/proc/sys/{name}").read_text() for name in
            ("net/core/somaxconn", "kernel/shmmax")}
    out = site.out("run", "--rm", "--network", "none", "--sysctl", "net.core.somaxconn=1234",
                   "--sysctl", "kernel.shmmax=12345678", IMAGE, "cat",
                   "/proc/sys/net/core/somaxconn", "/proc/sys/kernel/shmmax")
    assert out.split() == ["1234", "12345678"]
    assert {name: Path(f"/proc/sys/{name}").read_text() for name in host} == host
    for flags, words in ((["--sysctl", "kernel.hostname=x"], b"is not allowed"),
                         (["--network", "host", "--sysctl", "net.core.somaxconn=1"],
                          b"not allowed in the host's network namespace"),
                         (["--sysctl", "net.core.somaxconn"], b"invalid --sysctl"),
                         (["--sysctl", "net.core.nosuch=1"], b"cannot set sysctl net.core")):
        refused = site("run", "--rm", *(["--network", "none"] if "host" not in flags else []),
                       *flags, IMAGE, "true", check=False)
        assert refused.returncode == 125 and words in refused.stderr, (flags, refused.stderr)
    site("create", "--network", "none", "--name", "tuned", "--sysctl", "net.core.somaxconn=99",
         IMAGE, "true")
    assert site.out("inspect", "-f", "{{json .HostConfig.Sysctls}}", "tuned") == \
        '{"net.core.somaxconn":"99"}\n'
    site("rm", "tuned")


def test_ps_last_and_latest_and_exec_privileged(site: Site) -> None:
    """``ps -n N`` and ``ps -l``: the containers made last, newest first, in any state;
    ``exec --privileged``: the command gets every capability lamina holds."""
    before = set(site.out("ps", "-aq").split())
    made = [site.out("create", "--network", "none", IMAGE, "true").strip()[:12]
            for _ in range(3)]
    site("run", "-d", "--network", "none", "--name", "capped", "--cap-drop", "ALL", IMAGE,
         "sleep", "30")
    capped = site.out("inspect", "-f", "{{.Id}}", "capped").strip()[:12]
    assert site.out("ps", "-l", "-q") == f"{capped}\n"
    assert site.out("ps", "-n", "3", "-q").split() == [capped, made[2], made[1]]
    assert site.out("ps", "-n", "0", "-q") == ""
    bounding = next(line for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("CapBnd:")).split()[1]
    plain = site.out("exec", "capped", "grep", "CapEff", "/proc/self/status").split()[1]
    privileged = site.out("exec", "--privileged", "capped", "grep", "CapEff",
                          "/proc/self/status").split()[1]
    assert (plain, privileged) == ("0000000000000000", bounding)
    site("rm", "-f", "capped", *made)
    assert set(site.out("ps", "-aq").split()) == before


def test_an_internal_network_has_no_way_out(site: Site, host_netns: list[str]) -> None:
    """``network create --internal``: its containers reach each other by name, but have
    no default route and nothing is forwarded off its bridge; ports cannot be published."""
    lamina = _in_netns(site, host_netns)
    lamina("network", "create", "--internal", "closed")
    lamina("network", "create", "open")
    try:
        lamina("run", "-d", "--name", "inner", "--network", "closed", IMAGE, "sh", "-c",
               "while true; do echo pong | nc -l -p 80; done")
        lamina("run", "-d", "--name", "outer", "--network", "open", IMAGE, "sh", "-c",
               "while true; do echo pong | nc -l -p 80; done")
        outer = json.loads(lamina("network", "inspect", "open").stdout)[0]
        outer_ip = next(iter(outer["Containers"].values()))["IPv4Address"].split("/")[0]
        probe = lamina("run", "--rm", "--network", "closed", IMAGE, "sh", "-c",
                       "echo ping | nc -w 5 inner 80; ip route; "
                       f"echo ping | nc -w 2 {outer_ip} 80 || echo unreachable")
        lines = probe.stdout.decode().splitlines()
        assert lines[0] == "pong" and lines[-1] == "unreachable", lines
        assert not any(line.startswith("default") for line in lines), lines
        assert json.loads(lamina("network", "inspect", "closed").stdout)[0]["Internal"]
        refused = lamina("run", "--rm", "--network", "closed", "-p", "8081:80", IMAGE, "true",
                         check=False)
        assert refused.returncode == 125 and b"internal network closed" in refused.stderr
    finally:
        lamina("rm", "-f", "inner", "outer", check=False)
        lamina("network", "rm", "closed", "open")


def test_ip_gives_a_fixed_address_on_a_user_network(site: Site,
                                                    host_netns: list[str]) -> None:
    """``--ip``: that address on the user network (refused taken, outside the subnet, or
    on the default bridge)."""
    lamina = _in_netns(site, host_netns)
    lamina("network", "create", "--subnet", "10.98.0.0/24", "fixed")
    try:
        lamina("run", "-d", "--name", "pinned", "--network", "fixed", "--ip", "10.98.0.50",
               IMAGE, "sleep", "60")
        before = set(lamina("ps", "-aq").stdout.decode().split())
        shown = lamina("exec", "pinned", "ip", "-4", "-o", "addr", "show", "eth0")
        assert " 10.98.0.50/24 " in shown.stdout.decode()
        taken = lamina("run", "--rm", "--network", "fixed", "--ip", "10.98.0.50", IMAGE,
                       "true", check=False)
        assert taken.returncode != 0 and b"already in use" in taken.stderr
        for flags, words in ((["--network", "fixed", "--ip", "10.97.0.5"],
                              b"not a container's address of subnet 10.98.0.0/24"),
                             (["--network", "fixed", "--ip", "10.98.0.1"], b"gateway"),
                             (["--ip", "10.87.0.9"], b"user defined networks only")):
            refused = lamina("run", "--rm", *flags, IMAGE, "true", check=False)
            assert refused.returncode == 125 and words in refused.stderr, refused.stderr
        assert set(lamina("ps", "-aq").stdout.decode().split()) == before  # none left
    finally:
        lamina("rm", "-f", "pinned", check=False)
        lamina("network", "rm", "fixed")


def test_system_reset_takes_the_networks_bridges_too(tmp_path: Path, busybox_tar: Path,
                                                     host_netns: list[str]) -> None:
    """``system reset`` removes what a user network made outside the root: its bridge and
    its nftables chains, then the default network's bridge (no container uses it any
    more) and lamina's table, empty by then (in a network namespace the test made)."""
    gen = busybox_site(tmp_path / "store", busybox_tar)
    site = next(gen)
    try:
        def lamina(*args: str) -> str:
            return _in_netns(site, host_netns)(*args).stdout.decode()

        lamina("network", "create", "doomed")
        lamina("run", "--rm", "--network", "doomed", IMAGE, "true")  # its bridge is made
        bridge = json.loads(lamina("network", "inspect", "doomed"))[0]["Options"][
            "com.docker.network.bridge.name"]

        def present() -> tuple[bool, bool]:
            links = subprocess.run([*host_netns, "ip", "-o", "link"], capture_output=True,
                                   text=True).stdout
            rules = subprocess.run([*host_netns, "nft", "list", "ruleset"],
                                   capture_output=True, text=True).stdout
            return f" {bridge}:" in links, f"isolation-{bridge}" in rules

        lamina("run", "--rm", IMAGE, "true")  # the default network's bridge is made

        def default_present() -> tuple[bool, bool]:
            links = subprocess.run([*host_netns, "ip", "-o", "link"], capture_output=True,
                                   text=True).stdout
            tables = subprocess.run([*host_netns, "nft", "list", "tables"],
                                    capture_output=True, text=True).stdout
            return " lamina0:" in links, "table ip lamina" in tables

        assert present() == (True, True) and default_present() == (True, True)
        out = lamina("system", "reset", "--force")
        assert "removed the bridge and rules of network doomed" in out
        assert "removed the default network's bridge lamina0 and its rules" in out, out
        assert "removed lamina's nftables table" in out, out
        assert present() == (False, False) and default_present() == (False, False)
    finally:
        with contextlib.suppress(StopIteration):
            next(gen)


def test_system_reset_leaves_a_default_bridge_another_store_uses(
        tmp_path: Path, busybox_tar: Path, host_netns: list[str]) -> None:
    """An interface on the default bridge that is not this store's (another root's
    container, here a veth the test attaches): reset leaves the bridge and the table."""
    gen = busybox_site(tmp_path / "store", busybox_tar)
    site = next(gen)
    try:
        lamina = _in_netns(site, host_netns)
        lamina("run", "--rm", IMAGE, "true")  # the default network's bridge is made
        for command in (["ip", "link", "add", "lmx-other", "type", "veth", "peer", "name",
                         "lmx-peer"], ["ip", "link", "set", "lmx-other", "master", "lamina0"]):
            subprocess.run([*host_netns, *command], check=True)
        out = lamina("system", "reset", "--force").stdout.decode()
        assert "left the default network's bridge lamina0: 1 interface(s) still use it " \
               "(lmx-other)" in out, out
        links = subprocess.run([*host_netns, "ip", "-o", "link"], capture_output=True,
                               text=True).stdout
        tables = subprocess.run([*host_netns, "nft", "list", "tables"], capture_output=True,
                                text=True).stdout
        assert " lamina0:" in links and "table ip lamina" in tables
    finally:
        subprocess.run([*host_netns, "ip", "link", "del", "lmx-other"], capture_output=True)
        with contextlib.suppress(StopIteration):
            next(gen)


def test_containers_started_at_once_on_a_network_all_know_each_other(
        site: Site, host_netns: list[str]) -> None:
    """Four starts at once on one user network: each one's /etc/hosts ends up naming the
    three others (the blocks are rewritten under the store's write lock)."""
    def lamina(*args: str) -> subprocess.Popen:
        return subprocess.Popen([*host_netns, *site.cmd(*args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def wait(proc: subprocess.Popen) -> str:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    wait(lamina("network", "create", "busy-net"))
    names = [f"crowd{n}" for n in range(4)]
    try:
        for proc in [lamina("run", "-d", "--name", name, "--network", "busy-net", IMAGE,
                            "sleep", "60") for name in names]:
            wait(proc)
        for name in names:
            hosts = wait(lamina("exec", name, "cat", "/etc/hosts"))
            block = hosts.partition("# lamina: the containers of network busy-net")[2]
            assert sorted(w for w in block.split() if w.startswith("crowd")) == sorted(
                n for n in names if n != name), hosts
    finally:
        wait(lamina("rm", "-f", *names))
        wait(lamina("network", "rm", "busy-net"))


def test_ipc_and_uts_of_the_host(site: Site, tmp_path: Path) -> None:
    """``--ipc host``: the host's IPC namespace and its /dev/shm; ``--uts host``: the host's
    name; the IPC sysctls and --hostname then refused, as Docker's."""
    marker = Path("/dev/shm") / f"lamina-test-{os.getpid()}"
    marker.write_text("from the host\n")
    try:
        script = "cat /dev/shm/" + marker.name + "; hostname; readlink /proc/self/ns/ipc"
        shared = site.out("run", "--rm", "--network", "none", "--ipc", "host", "--uts",
                          "host", IMAGE, "sh", "-c", script).splitlines()
        assert shared == ["from the host", os.uname().nodename,
                          os.readlink("/proc/self/ns/ipc")]
        own = site("run", "--rm", "--network", "none", IMAGE, "sh", "-c", script,
                   check=False).stdout.decode().splitlines()
        assert own[-2] != os.uname().nodename and own[-1] != shared[-1], own
        assert "from the host" not in own
    finally:
        marker.unlink()
    for flags, words in ((["--ipc", "host", "--sysctl", "kernel.shmmax=1"],
                          b"not allowed in the host's IPC namespace"),
                         (["--uts", "host", "-h", "x"], b"conflicting options")):
        refused = site("run", "--rm", "--network", "none", *flags, IMAGE, "true", check=False)
        assert refused.returncode == 125 and words in refused.stderr, refused.stderr


def test_update_changes_limits_at_once_and_the_restart_policy(site: Site) -> None:
    from lamina.core.launcher.cgroups import Hierarchies

    site("run", "-d", "--network", "none", "--name", "grown", IMAGE, "sh", "-c",
         "echo run; sleep 2; exit 1")
    cid = site.out("inspect", "-f", "{{.Id}}", "grown").strip()
    pid = int(site.out("inspect", "-f", "{{.State.Pid}}", "grown"))
    # no limits at its start: no cgroup; the update makes one and moves it in
    assert site.out("update", "--memory", "32m", "--pids-limit", "20",
                    "--restart", "on-failure:1", "grown") == "grown\n"
    found = Hierarchies.discover()
    for controller, name, value in (("memory", "memory.limit_in_bytes", "33554432"),
                                    ("pids", "pids.max", "20")):
        where = found.where(controller)
        if where is None:
            continue
        if where[0] == "v2":
            name = {"memory": "memory.max"}.get(controller, name)
        group = where[1] / "lamina" / cid
        assert (group / name).read_text().strip() == value
        assert pid in {int(p) for p in (group / "cgroup.procs").read_text().split()}
    assert site.out("inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}} "
                    "{{.HostConfig.RestartPolicy.Name}}", "grown") == "33554432 20 on-failure\n"
    # the new policy holds for the monitor already running it: one restart, then exited
    assert site.out("wait", "grown") == "1\n"
    assert _runs(site, "grown") == 2
    for flags, words in (([], b"at least one flag"), (["--memory", "1m"], b"minimum of 6MB"),
                         (["--memory-swap", "1g", "--memory", "0"], b"needs a memory limit"),
                         (["--restart", "sometimes"], b"invalid --restart")):
        refused = site("update", *flags, "grown", check=False)
        assert refused.returncode != 0 and words in refused.stderr, (flags, refused.stderr)
    site("rm", "grown")
    roots = [*found.v1.values(), *([found.unified] if found.unified else [])]
    assert not any((root / "lamina" / cid).exists() for root in roots)


def test_init_runs_the_command_under_tini(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    from lamina.core.containers import spec
    from lamina.core.errors import ContainerError

    shown = site.out("run", "--rm", "--network", "none", "--init", IMAGE, "sh", "-c",
                     "(sleep 0.1 &); sleep 0.5; ps -o pid,stat,args")
    rows = [line.split(None, 2) for line in shown.splitlines()[1:]]
    assert rows[0][0] == "1" and rows[0][2].startswith("/dev/init -- sh -c")
    assert not any("Z" in row[1] for row in rows)  # the orphan was reaped
    # the init passes SIGTERM on: a sleep under it stops at once (as PID 1 it would not)
    site("run", "-d", "--network", "none", "--init", "--name", "inited", IMAGE, "sleep", "60")
    began = time.monotonic()
    site("stop", "inited")
    assert time.monotonic() - began < 3
    assert site.out("inspect", "-f", "{{.HostConfig.Init}} {{.State.ExitCode}}",
                    "inited") == "true 143\n"
    assert site.out("diff", "inited") == ""  # its mount point is on /dev, not in the layer
    site("rm", "inited")
    monkeypatch.setattr(spec, "INIT_BINARIES", ("/nonexistent/tini",))
    with pytest.raises(ContainerError, match="needs an init binary") as error:
        spec.find_init()
    assert "apt-get install tini" in (error.value.hint or "")
