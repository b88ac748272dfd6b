"""``-u NAME|UID[:GROUP|GID]`` resolved by the container's own /etc/passwd and /etc/group.

Never the host's NSS: the names belong to the image. The files are the image's, so
hostile: read at most :data:`MAX_FILE` bytes, lines that do not parse are skipped,
bytes that are not UTF-8 are replaced. Called in the container's process after
``pivot_root``, so paths resolve inside the container's root and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ..errors import ContainerError

MAX_FILE = 4 * 1024 * 1024


class User(NamedTuple):
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary
    home: str


def _entries(path: str, fields: int) -> list[list[str]]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE)
    except OSError:
        return []
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) >= fields and not line.startswith("#"):
            out.append(parts)
    return out


def _number(text: str) -> int | None:
    if text.isdigit() and int(text) < 2**32 - 1:
        return int(text)
    return None


def resolve_user(spec: str, *, passwd: str = "/etc/passwd",
                 group: str = "/etc/group") -> User:
    """Docker's rules: a name must exist; a number need not; the group defaults to the user's."""
    user_part, _, group_part = (spec or "0").partition(":")
    users = _entries(passwd, 7)
    uid = _number(user_part)
    entry = next((u for u in users if (u[0] == user_part if uid is None
                                       else _number(u[2]) == uid)), None)
    if uid is None:
        if entry is None or _number(entry[2]) is None:
            raise ContainerError(
                f"unable to find user {user_part}: no matching entries in the container's "
                "/etc/passwd", hint="give a user the image has, or a numeric uid[:gid]")
        uid = _number(entry[2])
    assert uid is not None
    gid = _number(entry[3]) if entry else None
    home = entry[5] if entry else "/"
    name = entry[0] if entry else None
    groups_file = _entries(group, 4)
    if group_part:
        gid = _number(group_part)
        if gid is None:
            found = next((g for g in groups_file if g[0] == group_part), None)
            if found is None or _number(found[2]) is None:
                raise ContainerError(
                    f"unable to find group {group_part}: no matching entries in the "
                    "container's /etc/group", hint="give a group the image has, or a number")
            gid = _number(found[2])
    if gid is None:
        gid = 0  # a uid the image does not name, or an entry whose gid is junk
    supplementary = tuple(sorted({
        n for g in groups_file
        if name is not None and name in g[3].split(",") and (n := _number(g[2])) is not None
    }))
    return User(uid, gid, supplementary, home or "/")


def resolve_groups(names: Sequence[str], *, group: str = "/etc/group") -> tuple[int, ...]:
    """``--group-add``: each a group of the container's /etc/group, or a number."""
    gids = []
    groups_file = _entries(group, 4)
    for name in names:
        gid = _number(name)
        if gid is None:
            found = next((g for g in groups_file if g[0] == name), None)
            gid = _number(found[2]) if found is not None else None
            if gid is None:
                raise ContainerError(
                    f"unable to find group {name}: no matching entries in the container's "
                    "/etc/group", hint="give a group the image has, or a number")
        gids.append(gid)
    return tuple(gids)
