"""NAT for bridge networks: lamina's own nftables table, ``table ip lamina``.

::

    table ip lamina {
      chain prerouting {   # type nat hook prerouting priority dstnat
        fib daddr type local jump published }
      chain output {       # type nat hook output priority -100: the host's own connections
        fib daddr type local jump published }
      chain published {
        [ip daddr IP] tcp dport HOST dnat to ADDRESS:PORT comment "lamina ID tcp IP:HOST" ... }
      chain postrouting-BRIDGE {  # type nat hook postrouting priority srcnat
        ip saddr SUBNET oifname != BRIDGE masquerade    # containers out to the world
        ip saddr 127.0.0.0/8 oifname BRIDGE masquerade  # 127.0.0.1:PORT from the host
        ip saddr SUBNET oifname BRIDGE ct status dnat masquerade }  # container to published
    }

Everything but ``published`` is written whole in each set-up (flush, then add, in one
transaction), so set-ups at once and again are idempotent. Each rule of ``published``
belongs to one container: its comment names the container and the mapping, so tear-down
deletes exactly that container's rules by their handles, and a new mapping is checked
against those already there. The table is never touched by anything but lamina, and
nothing of anyone else's tables is touched.
"""

from __future__ import annotations

from collections.abc import Iterable

from .addresses import BridgeNetwork
from .networks import BRIDGE_PREFIX
from .nftables import NftablesError, NftablesMissing, listing, run
from .ports import PortMapping

TABLE = "ip lamina"
_TAG = "lamina"


def setup_script(network: BridgeNetwork) -> str:
    """The table, its chains and the network's masquerade rules: idempotent."""
    subnet, bridge = network.subnet, network.name
    post = f"postrouting-{bridge}"
    return f"""
add table {TABLE}
add chain {TABLE} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
add chain {TABLE} output {{ type nat hook output priority -100; policy accept; }}
add chain {TABLE} published
add chain {TABLE} {post} {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain {TABLE} prerouting
add rule {TABLE} prerouting fib daddr type local jump published
flush chain {TABLE} output
add rule {TABLE} output fib daddr type local jump published
flush chain {TABLE} {post}
add rule {TABLE} {post} ip saddr {subnet} oifname != "{bridge}" masquerade
add rule {TABLE} {post} ip saddr 127.0.0.0/8 oifname "{bridge}" masquerade
add rule {TABLE} {post} ip saddr {subnet} oifname "{bridge}" ct status dnat masquerade
"""


def isolation_script(network: BridgeNetwork, default_bridge: str) -> str:
    """Nothing forwarded from the network's bridge to another lamina network's, as
    Docker isolates its networks (a chain per bridge, written whole: idempotent)."""
    bridge = network.name
    chain = f"isolation-{bridge}"
    if network.internal:  # nowhere but its own bridge, either way
        others = [f'oifname != "{bridge}"']
    else:
        others = ([f'oifname "{BRIDGE_PREFIX}*" oifname != "{bridge}"']
                  + ([f'oifname "{default_bridge}"'] if bridge != default_bridge else []))
    rules = [f'iifname "{bridge}" {match} drop' for match in others]
    if network.internal:
        rules.append(f'oifname "{bridge}" iifname != "{bridge}" drop')
    return (f"add chain {TABLE} {chain} {{ type filter hook forward priority filter; "
            f"policy accept; }}\nflush chain {TABLE} {chain}\n"
            + "".join(f"add rule {TABLE} {chain} {rule}\n" for rule in rules))


def remove_network_script(bridge: str) -> str:
    """The chains of a removed network's bridge (each must exist: see :func:`chains`)."""
    return "".join(f"delete chain {TABLE} {chain}\n" for chain in chains()
                   if chain in (f"postrouting-{bridge}", f"isolation-{bridge}"))


#: the table's chains that no one network owns (see :func:`setup_script`)
SHARED_CHAINS = ("prerouting", "output", "published")


def remove_table_script() -> str:
    """The whole table, once no network's chain is left in it (``system reset``); empty
    while one is (another store's network, on the same host)."""
    found = chains()
    if not found or any(chain not in SHARED_CHAINS for chain in found):
        return ""
    return f"delete table {TABLE}\n"


def chains() -> list[str]:
    """The names of the chains of lamina's table (none when it is not there)."""
    return [obj["chain"]["name"] for obj in _listed(f"list table {TABLE}") if "chain" in obj]


def _listed(command: str) -> list[dict]:
    """``listing(command)``'s objects; none when nftables, the table or the chain is not
    there (nothing of lamina's to read yet)."""
    try:
        return listing(command)
    except NftablesMissing:
        return []
    except NftablesError as exc:
        if exc.missing:
            return []
        raise


def publish_script(container_id: str, address: str, ports: Iterable[PortMapping]) -> str:
    """Rules forwarding each host port to ``address``, tagged with the container."""
    lines = []
    for port in ports:
        match = f"ip daddr {port.host_ip} " if port.host_ip else ""
        lines.append(
            f"add rule {TABLE} published {match}{port.protocol} dport {port.host_port} "
            f"dnat to {address}:{port.container_port} "
            f'comment "{_TAG} {container_id} {port.protocol} {port.host_ip}:{port.host_port} '
            f'{port.container_port}"'
        )
    return "\n".join(lines) + "\n"


class PublishedRule:
    """One rule of ``published``: whose it is, what it maps, its handle."""

    __slots__ = ("container_id", "handle", "port")

    def __init__(self, container_id: str, port: PortMapping, handle: int) -> None:
        self.container_id = container_id
        self.port = port
        self.handle = handle


def published() -> list[PublishedRule]:
    """Every lamina rule in ``published`` (none when the table, or nftables, is not there)."""
    rules = []
    for obj in _listed(f"list chain {TABLE} published"):
        rule = obj.get("rule")
        parsed = _parse_comment(rule.get("comment", "")) if rule else None
        if parsed is not None:
            container_id, protocol, host_ip, host_port, container_port = parsed
            rules.append(PublishedRule(container_id,
                                       PortMapping(host_port, container_port, protocol,
                                                   host_ip),
                                       rule["handle"]))
    return rules


def _parse_comment(comment: str) -> tuple[str, str, str, int, int] | None:
    """The tag's fields; the container port is 0 in a rule written before it was there."""
    parts = comment.split(" ")
    if len(parts) not in (4, 5) or parts[0] != _TAG:
        return None
    host_ip, _, host_port = parts[3].rpartition(":")
    container_port = parts[4] if len(parts) == 5 else "0"
    if not host_port.isdigit() or not container_port.isdigit():
        return None
    return parts[1], parts[2], host_ip, int(host_port), int(container_port)


def delete_script(rules: Iterable[PublishedRule]) -> str:
    return "".join(f"delete rule {TABLE} published handle {r.handle}\n" for r in rules)


def unpublish(container_ids: set[str] | None = None, *, keep: set[str] | None = None) -> int:
    """Delete the rules of ``container_ids`` (or of every container not in ``keep``).

    Returns how many were deleted. Idempotent: rules already gone are not an error.
    """
    doomed = [
        r for r in published()
        if (container_ids is not None and r.container_id in container_ids)
        or (keep is not None and r.container_id not in keep)
    ]
    if doomed:
        run(delete_script(doomed))
    return len(doomed)
