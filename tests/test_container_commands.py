"""Docker's everyday container commands beyond run and stop: restart, rename, port and top,
through the real CLI on real containers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_root
from conftest import until as _until
from containersite import IMAGE, Site, busybox_site

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
    finally:
        site("rm", "-f", "web")
