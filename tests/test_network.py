"""Container networks: none, host, bridge (veths, leased addresses, NAT, published ports).

Nothing here touches the machine's own network. Each test that needs one runs its
"host side" in a network namespace of its own: the test re-runs this file under
``unshare --net`` with a scenario's name (see ``__main__`` at the end), so the bridge,
the veths, the ``ip lamina`` nftables table and ip_forward all live and die with that
namespace. "Containers" there are ``unshare --net sleep`` processes, as a launcher's
child is a process in a network namespace of its own.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lamina.core.config import Config, parse_config
from lamina.core.errors import ConfigError, NetworkError
from lamina.core.network.addresses import BridgeNetwork, lease
from lamina.core.network.etcfiles import hosts_file, resolv_conf
from lamina.core.network.ports import PortMapping, parse_port

HERE = Path(__file__).resolve()
SUBNET = "10.201.0.0/24"  # private, chosen by the tests; only inside their namespaces
BRIDGE = "lmtest0"
SETTINGS = {"bridge": BRIDGE, "subnet": SUBNET, "dns": ["192.0.2.53"]}


# -- without a namespace: parsing, files, leases -------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("8080:80", PortMapping(8080, 80, "tcp", "")),
    ("8080:80/udp", PortMapping(8080, 80, "udp", "")),
    ("127.0.0.1:8080:80/tcp", PortMapping(8080, 80, "tcp", "127.0.0.1")),
    ("0.0.0.0:53:53/udp", PortMapping(53, 53, "udp", "")),
    # no host port: any free one, chosen when the container starts (Docker's -p 80)
    ("80", PortMapping(0, 80, "tcp", "")),
    ("53/udp", PortMapping(0, 53, "udp", "")),
    ("127.0.0.1::80", PortMapping(0, 80, "tcp", "127.0.0.1")),
])
def test_parse_port(text: str, expected: PortMapping) -> None:
    assert parse_port(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("80:", "not a port number"),
    ("1:2:3:4", "expected"),
    ("8080:80/sctp", "not tcp or udp"),
    ("0:80", "not a port number"),
    ("8080:65536", "not a port number"),
    ("x:80", "not a port number"),
    ("127.1:8080:80", "not an IPv4 address"),
    ("::1:8080:80", "expected"),
])
def test_parse_port_refuses(text: str, message: str) -> None:
    with pytest.raises(NetworkError, match=message) as info:
        parse_port(text)
    assert info.value.hint


def test_port_conflicts() -> None:
    any_8080 = parse_port("8080:80")
    assert any_8080.conflicts(parse_port("127.0.0.1:8080:81"))
    assert not any_8080.conflicts(parse_port("8080:80/udp"))
    assert not parse_port("127.0.0.1:8080:80").conflicts(parse_port("127.0.0.2:8080:80"))


def test_hosts_file() -> None:
    text = hosts_file("web", "10.87.0.2")
    assert text.startswith("127.0.0.1\tlocalhost\n")
    assert text.endswith("10.87.0.2\tweb\n")
    assert "web" not in hosts_file("web", None)
    from lamina.core.network.attachment import attach

    host = attach(None, "c0ffee", "host", 0, (), "web")
    assert host.hosts == Path("/etc/hosts").read_text()
    assert host.address is None


def test_resolv_conf_drops_loopback_nameservers(tmp_path: Path) -> None:
    host = tmp_path / "resolv.conf"
    host.write_text("search example.org\nnameserver 127.0.0.53\nnameserver ::1\n"
                    "options edns0\n")
    text = resolv_conf("bridge", ["8.8.8.8", "8.8.4.4"], str(host))
    assert text == ("search example.org\noptions edns0\nnameserver 8.8.8.8\n"
                    "nameserver 8.8.4.4\n")
    host.write_text("nameserver 192.0.2.1\nnameserver 127.0.0.1\n")
    assert resolv_conf("bridge", ["8.8.8.8"], str(host)) == "nameserver 192.0.2.1\n"
    assert resolv_conf("host", ["8.8.8.8"], str(host)) == host.read_text()


def test_network_config(tmp_path: Path) -> None:
    assert Config().network == {"bridge": "lamina0", "subnet": "10.87.0.0/16",
                                "dns": ["8.8.8.8", "8.8.4.4"]}
    path = tmp_path / "lamina.toml"
    path.write_text('[network]\nbridge = "br-lab"\nsubnet = "172.30.0.0/24"\n')
    config = parse_config(path)
    assert config.network["bridge"] == "br-lab"
    network = BridgeNetwork.from_settings(config.network)
    assert str(network.gateway) == "172.30.0.1"


@pytest.mark.parametrize(("table", "message"), [
    ('bridge = "a/b"', "not a valid interface name"),
    ('bridge = "br;x"', "not a valid interface name"),
    ('bridge = "waytoolongname01"', "not a valid interface name"),
    ('subnet = "10.87.0.1/16"', "host bits set"),
    ('subnet = "10.87.0.0/30"', "prefix of 8 to 29"),
    ('subnet = "fd00::/64"', "not an IPv4 subnet"),
    ('dns = ["dns.example"]', "not an IP address"),
    ("mtu = 1500", r"unknown key\(s\) in \[network\]"),
])
def test_network_config_refuses(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "lamina.toml"
    path.write_text(f"[network]\n{table}\n")
    with pytest.raises(ConfigError, match=message):
        parse_config(path)


def _database(path: Path) -> sqlite3.Connection:
    from lamina.core.layers import metadata

    db = metadata.connect(path)
    return db


def _record(db: sqlite3.Connection, container_id: str) -> None:
    """The minimal containers row an address lease refers to (its foreign key)."""
    from lamina.core.layers.metadata import transaction

    with transaction(db):
        db.execute("INSERT INTO containers(id, created) VALUES (?, ?)", (container_id, time.time()))


def test_lease_skips_gateway_and_fills_subnet(tmp_path: Path) -> None:
    from lamina.core.layers.metadata import transaction

    db = _database(tmp_path / "lamina.db")
    network = BridgeNetwork("lmtest", ipaddress.IPv4Network("10.9.0.0/29"))  # 6 hosts
    got = []
    for i in range(5):
        _record(db, f"c{i}")
        with transaction(db):
            got.append(lease(db, network, f"c{i}"))
    assert got == [f"10.9.0.{n}" for n in range(2, 7)]  # .0 network, .1 gateway, .7 broadcast
    with transaction(db):
        assert lease(db, network, "c3") == "10.9.0.5"  # the one it holds
    _record(db, "c5")
    with pytest.raises(NetworkError, match="no free address"), transaction(db):
        lease(db, network, "c5")
    with pytest.raises(sqlite3.IntegrityError), transaction(db):
        lease(db, BridgeNetwork("other", network.subnet), "not-recorded")


# -- inside a network namespace of the test's own ------------------------------------

needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None,
    reason="needs root and util-linux's unshare and nsenter (network namespaces)",
)


def run_scenario(name: str, tmp_path: Path, timeout: float = 120,
                 env: dict[str, str] | None = None) -> str:
    """Run scenario ``name`` in a new network namespace; its output, or fail with it."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    done = subprocess.run(["unshare", "--net", sys.executable, str(HERE), name, str(tmp_path)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise AssertionError(f"scenario {name} failed ({done.returncode}):\n"
                             f"{done.stdout}\n{done.stderr}")
    return done.stdout


@needs_netns
@pytest.mark.root
@pytest.mark.parametrize("scenario", [
    "two_containers_tcp",
    "published_port",
    "concurrent_attach",
    "detach_frees",
    "sweep_after_crash",
    "port_taken",
    "failed_attach_undone",
    "none_mode",
])
def test_bridge(scenario: str, tmp_path: Path) -> None:
    run_scenario(scenario, tmp_path)


@needs_netns
@pytest.mark.root
@pytest.mark.skipif(shutil.which("nft", path="/usr/sbin:/sbin:/usr/bin") is None,
                    reason="the nft program is not installed")
@pytest.mark.parametrize("scenario", ["detach_frees", "port_taken"])
def test_bridge_with_nft_program(scenario: str, tmp_path: Path) -> None:
    """The same through the ``nft`` program, lamina's fallback without libnftables."""
    run_scenario(scenario, tmp_path, env={"LAMINA_NFT": "program"})


@needs_netns
@pytest.mark.root
def test_attach_cost(tmp_path: Path) -> None:
    """Time a bridge attach + detach (pyroute2's import measured apart); printed with -s."""
    print(run_scenario("timing", tmp_path))


# -- the scenarios, run by ``python tests/test_network.py NAME DIR`` in a new netns ---


class Host:
    """The host side of a scenario: a store and "containers" in their own netns."""

    def __init__(self, root: Path) -> None:
        from lamina.core.engine import Engine
        from lamina.core.network.ifconfig import loopback_up

        loopback_up()  # a new namespace has lo down; the tests use 127.0.0.1
        self.store = Engine(Config(driver="vfs", root=root / "store")).open_store()
        self.procs: list[subprocess.Popen] = []

    def container(self) -> tuple[str, int]:
        """A recorded container id and a process in a network namespace of its own."""
        container_id = uuid.uuid4().hex + uuid.uuid4().hex
        _record(self.store.db, container_id)
        proc = subprocess.Popen(["unshare", "--net", "sleep", "300"])
        self.procs.append(proc)
        mine = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{proc.pid}/ns/net") == mine:  # until unshare(2) ran
            assert time.monotonic() < deadline, "unshare --net did not start"
            time.sleep(0.002)
        return container_id, proc.pid

    def attach(self, container_id: str, pid: int, ports: tuple[str, ...] = (),
               hostname: str = "c"):
        from lamina.core.network.attachment import attach

        return attach(self.store, container_id, "bridge", pid,
                      [parse_port(p) for p in ports], hostname, settings=SETTINGS)

    def leases(self) -> dict[str, str]:
        return {r[0]: r[1] for r in self.store.db.execute(
            "SELECT container_id, address FROM network_addresses")}

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.store.close()


def inside(pid: int, code: str) -> list[str]:
    """argv running Python ``code`` in process ``pid``'s network namespace."""
    return ["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", code]


ECHO_SERVER = """
import socket, sys
srv = socket.create_server(("0.0.0.0", {port}))
print("ready", flush=True)
conn, peer = srv.accept()
data = conn.recv(100)
conn.sendall(b"echo:" + data + b" from:" + peer[0].encode())
"""

CLIENT = """
import socket
c = socket.create_connection(("{address}", {port}), timeout=5)
c.sendall(b"hello")
print(c.recv(100).decode())
"""


def serve(host: Host, pid: int, port: int) -> subprocess.Popen:
    """An echo server on ``port`` in ``pid``'s namespace, killed with ``host``."""
    server = subprocess.Popen(inside(pid, ECHO_SERVER.format(port=port)),
                              stdout=subprocess.PIPE, text=True)
    host.procs.append(server)
    assert server.stdout.readline().strip() == "ready"
    return server


def connect(address: str, port: int) -> str:
    """From the host side: send "hello", the server's answer."""
    with socket.create_connection((address, port), timeout=5) as c:
        c.sendall(b"hello")
        return c.recv(100).decode()


def nft_table() -> str:
    return subprocess.run(["nft", "list", "table", "ip", "lamina"], capture_output=True,
                          text=True, check=True).stdout


def scenario_two_containers_tcp(root: Path) -> None:
    host = Host(root)
    try:
        a_id, a_pid = host.container()
        b_id, b_pid = host.container()
        a = host.attach(a_id, a_pid, hostname="alpha")
        b = host.attach(b_id, b_pid)
        assert a.address != b.address
        assert ipaddress.ip_address(a.address) in ipaddress.ip_network(SUBNET)
        assert a.gateway == "10.201.0.1" and a.prefixlen == 24
        assert a.hosts.endswith(f"{a.address}\talpha\n")
        assert "nameserver" in a.resolv_conf
        server = serve(host, a_pid, 5000)
        client = subprocess.run(inside(b_pid, CLIENT.format(address=a.address, port=5000)),
                                capture_output=True, text=True, timeout=10)
        assert client.stdout.strip() == f"echo:hello from:{b.address}", client
        server.wait(5)
        # the container's own view: eth0 with its address, lo up, a default route
        shown = subprocess.run(["nsenter", f"--net=/proc/{a_pid}/ns/net", "ip", "-4", "-o",
                                "addr"], capture_output=True, text=True).stdout
        assert any(line.split()[1] == "eth0" and f"inet {a.address}/24" in line
                   for line in shown.splitlines()), shown
        assert "inet 127.0.0.1/8" in shown, shown
        route = subprocess.run(["nsenter", f"--net=/proc/{a_pid}/ns/net", "ip", "route"],
                               capture_output=True, text=True).stdout
        assert "default via 10.201.0.1 dev eth0" in route, route
        table = nft_table()
        assert f"ip saddr {SUBNET} oifname != \"{BRIDGE}\" masquerade" in table, table
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    finally:
        host.close()


def scenario_published_port(root: Path) -> None:
    host = Host(root)
    try:
        c_id, c_pid = host.container()
        att = host.attach(c_id, c_pid, ("8080:80", "127.0.0.1:8081:81"))
        assert len(att.ports) == 2
        for port in (80, 81):
            server = serve(host, c_pid, port)
            # the host reaches a published port on its own addresses: the bridge's
            # (any address), 127.0.0.1 (route_localnet, masqueraded)
            target = ("10.201.0.1", 8080) if port == 80 else ("127.0.0.1", 8081)
            answer = connect(*target)
            assert answer.startswith("echo:hello from:"), answer
            server.wait(5)
        table = nft_table()
        assert table.count(f'comment "lamina {c_id} tcp') == 2, table
        # a published port on one address only: not on another of the host's
        with pytest.raises(OSError):
            connect("10.201.0.1", 8081)
    finally:
        host.close()


ATTACH_ONE = """
import sys, time
sys.path.insert(0, {tests!r})
from test_network import Host
host = Host(__import__("pathlib").Path({root!r}))
cid, pid = host.container()
while time.time() < {start}:
    time.sleep(0.001)
att = host.attach(cid, pid)
print(cid, att.address, flush=True)
sys.stdin.read()  # keep the container until the scenario has looked
host.close()
"""


def scenario_concurrent_attach(root: Path) -> None:
    host = Host(root)  # makes the store once, before the racers open it
    try:
        start = time.time() + 3
        racers = [
            subprocess.Popen([sys.executable, "-c", ATTACH_ONE.format(
                tests=str(HERE.parent), root=str(root), start=start)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(6)
        ]
        answers = [r.stdout.readline().split() for r in racers]
        leases = host.leases()
        for r in racers:
            r.stdin.close()
            assert r.wait(30) == 0
        assert all(len(a) == 2 for a in answers), answers
        addresses = [a[1] for a in answers]
        assert len(set(addresses)) == 6, addresses
        assert leases == {cid: address for cid, address in answers}
    finally:
        host.close()


def scenario_detach_frees(root: Path) -> None:
    from lamina.core.network.attachment import detach

    host = Host(root)
    try:
        keep_id, keep_pid = host.container()
        host.attach(keep_id, keep_pid, ("9000:80",))
        c_id, c_pid = host.container()
        att = host.attach(c_id, c_pid, ("9001:80", "9002:53/udp"))
        assert c_id in nft_table()
        detach(host.store, c_id)
        assert c_id not in nft_table()
        assert keep_id in nft_table()  # exactly that container's rules
        assert host.leases() == {keep_id: "10.201.0.2"}
        detach(host.store, c_id)  # idempotent
        # the freed address and ports are handed out again
        d_id, d_pid = host.container()
        again = host.attach(d_id, d_pid, ("9001:80",))
        assert again.address == att.address
    finally:
        host.close()


def scenario_sweep_after_crash(root: Path) -> None:
    from lamina.core.network.attachment import sweep
    from lamina.core.network.links import veth_name

    host = Host(root)
    try:
        live_id, live_pid = host.container()
        host.attach(live_id, live_pid, ("7000:80",))
        dead_id, dead_pid = host.container()
        host.attach(dead_id, dead_pid, ("7001:80",))
        # a crash: the lamina process is gone, and so is the container's process;
        # and a veth whose namespace outlived its container (held by a stray process)
        host.procs[1].kill()
        host.procs[1].wait()
        stray_id, stray_pid = host.container()
        subprocess.run(["ip", "link", "add", veth_name(stray_id), "type", "veth", "peer",
                        "name", "eth0", "netns", str(stray_pid)], check=True)
        actions = sweep(host.store, [live_id])
        assert host.leases() == {live_id: "10.201.0.2"}
        table = nft_table()
        assert dead_id not in table and live_id in table
        names = [n for _, n in socket.if_nameindex()]
        assert veth_name(stray_id) not in names
        assert veth_name(live_id) in names
        assert any("freed" in a for a in actions) and any("stray veth" in a for a in actions)
        assert sweep(host.store, [live_id]) == []  # nothing left to do
    finally:
        host.close()


def scenario_port_taken(root: Path) -> None:
    host = Host(root)
    try:
        a_id, a_pid = host.container()
        host.attach(a_id, a_pid, ("6000:80",))
        b_id, b_pid = host.container()
        with pytest.raises(NetworkError, match=rf"6000/tcp is already published by container "
                           rf"{a_id[:12]}") as info:
            host.attach(b_id, b_pid, ("127.0.0.1:6000:80",))
        assert info.value.hint
        listener = socket.create_server(("127.0.0.1", 6001))
        try:
            with pytest.raises(NetworkError, match="the host port is in use"):
                host.attach(b_id, b_pid, ("6001:80",))
        finally:
            listener.close()
        with pytest.raises(NetworkError, match="not an address of this host"):
            host.attach(b_id, b_pid, ("192.0.2.7:6002:80",))
        # nothing of the refused starts stayed: no lease, no rule, no veth
        assert b_id not in host.leases()
        assert b_id not in nft_table()
        assert not any(n.endswith(b_id[:12]) for _, n in socket.if_nameindex())
        # and the same container starts once the port is free
        host.attach(b_id, b_pid, ("6001:80",))
    finally:
        host.close()


def scenario_failed_attach_undone(root: Path) -> None:
    """A container whose namespace already has an eth0: refused, and nothing stays."""
    host = Host(root)
    try:
        c_id, c_pid = host.container()
        subprocess.run(["nsenter", f"--net=/proc/{c_pid}/ns/net", "ip", "link", "add", "eth0",
                        "type", "veth", "peer", "name", "other0"], check=True)
        with pytest.raises(NetworkError, match="cannot create the veth pair") as info:
            host.attach(c_id, c_pid, ("5555:80",))
        assert info.value.hint
        assert host.leases() == {}
        assert c_id not in nft_table()
        assert not any(n.startswith("lmv") for _, n in socket.if_nameindex())
    finally:
        host.close()


NONE_CHILD = """
import socket, sys
from lamina.core.network.ifconfig import loopback_up
loopback_up()
srv = socket.create_server(("127.0.0.1", 0))
c = socket.create_connection(srv.getsockname(), timeout=2)
assert "pyroute2" not in sys.modules
from lamina.core.network import attachment
att = attachment.attach(None, "c0ffee", "none", 0, (), "box")
assert att.address is None and "box" not in att.hosts
assert not [m for m in sys.modules if m.startswith("pyroute2") or m.endswith("network.links")]
print("ok")
"""


def scenario_none_mode(root: Path) -> None:
    done = subprocess.run(["unshare", "--net", sys.executable, "-c", NONE_CHILD],
                          capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "ok", done
    with pytest.raises(NetworkError, match="cannot be published with --network none"):
        from lamina.core.network.attachment import attach

        attach(None, "c0ffee", "none", 0, [parse_port("80:80")])


IMPORT_COST = """
import time
t = time.perf_counter()
from lamina.core.network import links
links._iproute()
print((time.perf_counter() - t) * 1000)
"""


def scenario_timing(root: Path) -> None:
    from lamina.core.network.attachment import detach

    imports = sorted(float(subprocess.run([sys.executable, "-c", IMPORT_COST],
                                          capture_output=True, text=True).stdout)
                     for _ in range(3))
    host = Host(root)
    try:
        costs = []
        for i in range(6):
            c_id, c_pid = host.container()
            t = time.perf_counter()
            host.attach(c_id, c_pid, ("8080:80",) if i % 2 else ())
            attached = time.perf_counter()
            detach(host.store, c_id)
            costs.append(((attached - t) * 1000, (time.perf_counter() - attached) * 1000))
        first, rest = costs[0], sorted(costs[1:])
        print(f"pyroute2 import (narrow): median {imports[1]:.1f} ms")
        print(f"first attach (imports included) {first[0]:.1f} ms, detach {first[1]:.1f} ms")
        print(f"later attach {rest[len(rest) // 2][0]:.1f} ms, detach "
              f"{sorted(c[1] for c in rest)[len(rest) // 2]:.1f} ms (medians)")
    finally:
        host.close()


if __name__ == "__main__":
    name, directory = sys.argv[1], Path(sys.argv[2])
    globals()[f"scenario_{name}"](directory)
