"""The container store: each container's record, writable layer and files.

It shares the layer store's database (the ``containers`` table) and lock. A
container is one row plus one writable layer on its image's init layer,
plus a directory ``<root>/containers/<id>/`` with what its runs produce (the log,
the ``hosts``, ``hostname`` and ``resolv.conf`` files it sees).

Contracts:
- :meth:`create` makes the writable layer first, on the image's init layer (the
  launcher's mount points; made at the image's first container, shared by all of them,
  removed with the image: :func:`~lamina.core.images.store.init_layer_id`), and the
  row in the transaction that makes that layer ready: a failure or a SIGKILL leaves
  both or neither (an incomplete layer, which the next open removes).
- State moves ``created -> running -> exited -> running ...``; only the process that
  started a run (its monitor) records its end. A row says ``running`` while its
  monitor lives: :meth:`stale` finds the rows whose monitor is gone (a monitor killed
  with SIGKILL takes its container with it) so the next command can clean up.
- :meth:`remove` refuses a running container; the row goes in the transaction that
  marks the layer removing (a crash after it leaves the layer to the next open).
- Any unique prefix of an id (at least one hex digit) or the exact name finds one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sqlite3
import time
from pathlib import Path
from typing import NamedTuple

from ..errors import (
    ContainerError,
    ContainerInUse,
    ContainerNotFound,
    LaminaError,
    LayerExists,
    LayerNotFound,
)
from ..host.locks import is_alive
from ..host.treecopy import remove_tree
from ..images.store import init_layer_id
from ..layers import metadata
from ..layers.store import Store
from .spec import ContainerSpec

_ADJECTIVES = (
    "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry",
    "nifty", "proud", "quirky", "sharp", "swift", "tender", "upbeat", "vivid", "witty", "zealous",
)
_NAMES = (
    "babbage", "curie", "darwin", "euler", "fermat", "galois", "hopper", "kepler", "lovelace",
    "meitner", "noether", "pascal", "ritchie", "shannon", "thompson", "turing", "volta", "wozniak",
)


class Container(NamedTuple):
    id: str
    name: str
    image: str
    layer: str
    created: float
    spec: ContainerSpec
    state: str
    pid: int | None  # the container's first process, in the host's pid namespace
    process: str | None  # its monitor's process_identity: "running" lasts while it lives
    exit_code: int | None
    oom_killed: bool
    started: float | None
    finished: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Container:
        return cls(row["id"], row["name"], row["image"], row["layer"], row["created"],
                   ContainerSpec.from_json(row["spec"]), row["state"], row["pid"],
                   row["process"], row["exit_code"], bool(row["oom_killed"]), row["started"],
                   row["finished"])

    @property
    def running(self) -> bool:
        return self.state == "running"


class ContainerStore:
    """Containers over one layer store (same root, database and lock)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def _db(self) -> sqlite3.Connection:
        return self.store.db

    def directory(self, container_id: str) -> Path:
        """Where a container's log and generated /etc files live."""
        return self.store.root / "containers" / container_id

    # -- reading ----------------------------------------------------------------------

    def get(self, ref: str) -> Container:
        """The container with this name, id, or unique id prefix."""
        row = self._db.execute("SELECT * FROM containers WHERE name = ? OR id = ?",
                               (ref, ref)).fetchone()
        if row is None and ref and all(c in "0123456789abcdef" for c in ref):
            rows = self._db.execute(
                "SELECT * FROM containers WHERE id >= ? AND id < ? LIMIT 2",
                (ref, ref + "\uffff")).fetchall()
            if len(rows) > 1:
                raise ContainerError(f"container id prefix {ref!r} is ambiguous",
                                     hint="give more digits of the id, or the name")
            row = rows[0] if rows else None
        if row is None:
            raise ContainerNotFound(f"no such container: {ref}",
                                    hint="list containers with `lamina ps -a`")
        return Container.from_row(row)

    def containers(self) -> list[Container]:
        """Every container, newest first."""
        return [Container.from_row(r) for r in self._db.execute(
            "SELECT * FROM containers WHERE spec != '{}' ORDER BY created DESC, id")]

    def sizes(self, found: list[Container]) -> dict[str, tuple[int, int]]:
        """Each container's (own changes, its image's size) in bytes, by id: Docker's
        SizeRw, and SizeRootFs less SizeRw. The changes are the driver's ``diff_size`` of
        the writable layer (overlay: its upper directory; others compare with the image)."""
        from ..images.store import ImageStore

        images = ImageStore(self.store)
        sizes = {}
        for c in found:
            try:
                own = self.store.diff_size(c.layer)
            except LaminaError:
                own = 0
            try:
                base = images.image(c.image).size if c.image else 0
            except LaminaError:
                base = 0
            sizes[c.id] = (own, base or 0)
        return sizes

    def stale(self) -> list[Container]:
        """Containers recorded as running whose monitor is gone (and so their process)."""
        return [c for c in self.containers() if c.running and not monitor_alive(c.process)]

    # -- writing ----------------------------------------------------------------------

    def create(self, spec: ContainerSpec, top_layer: str | None, name: str | None = None,
               *, layer_options: dict[str, str] | None = None) -> Container:
        """Record a container of ``spec`` with a new writable layer on ``top_layer``."""
        if name is not None:
            _check_name(name)
            if self._db.execute("SELECT 1 FROM containers WHERE name = ?", (name,)).fetchone():
                raise ContainerInUse(f"the container name {name!r} is already in use",
                                     hint="remove that container (lamina rm) or choose "
                                     "another --name")
        container_id = os.urandom(32).hex()

        def insert(db: sqlite3.Connection) -> None:
            nonlocal name
            if name is None:
                name = self._free_name()
            db.execute(
                "INSERT INTO containers (id, image, layer, created, name, spec, state)"
                " VALUES (?, ?, ?, ?, ?, ?, 'created')",
                (container_id, spec.image, container_id, time.time(), name, spec.to_json()))

        # the row is written in the transaction that makes the layer ready: a create
        # killed in between left a ready writable layer no container recorded
        try:
            self.store.create_layer(self._init_layer(top_layer), writable=True,
                                    layer_id=container_id, options=layer_options or None,
                                    record=insert)
        except sqlite3.IntegrityError:
            raise ContainerInUse(f"the container name {name!r} is already in use",
                                 hint="choose another --name") from None
        self.directory(container_id).mkdir(parents=True, mode=0o700, exist_ok=True)
        return self.get(container_id)

    def _free_name(self) -> str:
        taken = {r[0] for r in self._db.execute("SELECT name FROM containers")}
        for _ in range(100):
            name = f"{_pick(_ADJECTIVES)}_{_pick(_NAMES)}"
            if name not in taken:
                return name
        return f"{_pick(_ADJECTIVES)}_{_pick(_NAMES)}_{os.urandom(3).hex()}"

    def mark_running(self, container_id: str, pid: int, process: str) -> None:
        self._update(container_id, state="running", pid=pid, process=process,
                     started=time.time(), exit_code=None, oom_killed=0, finished=None)

    def mark_exited(self, container_id: str, exit_code: int, *, oom_killed: bool = False) -> None:
        self._update(container_id, state="exited", pid=None, process=None, exit_code=exit_code,
                     oom_killed=int(oom_killed), finished=time.time())

    def rename(self, container_id: str, name: str) -> None:
        """Give the container ``name`` (Docker's ``rename``); its old name is free then."""
        _check_name(name)
        try:
            self._update(container_id, name=name)
        except sqlite3.IntegrityError:
            raise ContainerInUse(f"the container name {name!r} is already in use",
                                 hint="remove that container (lamina rm) or choose another "
                                 "name") from None

    def set_spec(self, container_id: str, spec: ContainerSpec) -> None:
        """Replace the container's spec (``update``: its limits and restart policy)."""
        self._update(container_id, spec=spec.to_json())

    def _update(self, container_id: str, **values: object) -> None:
        columns = ", ".join(f"{k} = ?" for k in values)
        with self.store.lock, metadata.transaction(self._db):
            self._db.execute(f"UPDATE containers SET {columns} WHERE id = ?",
                             (*values.values(), container_id))

    def remove(self, container_id: str) -> None:
        """Forget a container that is not running and remove its layer and files."""
        container = self.get(container_id)
        if container.running and monitor_alive(container.process):
            raise ContainerInUse(
                f"container {container.name} is running",
                hint=f"stop it first (lamina stop {container.name}) or force with rm -f")

        def forget(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM containers WHERE id = ?", (container.id,))

        with self.store.lock:
            # checked under the lock before the record goes (the record holds the layer
            # by a foreign key): a failure leaves the container to retry rm with
            if self.store.mount_count(container.layer):
                raise ContainerInUse(
                    f"container {container.name}'s root filesystem is still mounted",
                    hint=f"its monitor is ending it: retry, or lamina rm -f {container.name}")
            # its files before its record: a remove killed in between left a directory
            # no container owned; a start makes it again
            with contextlib.suppress(LaminaError):
                remove_tree(self.directory(container.id))
            # the record goes in the transaction that marks the layer removing: a remove
            # killed after it left a writable layer no container recorded; now the
            # next open finishes the remove
            self.store.remove_layer(container.layer, record=forget)
        with contextlib.suppress(LayerNotFound):  # the init layer of its own an older one had
            self.store.remove_layer(hashlib.sha256(f"{container.layer}-init".encode()).hexdigest())

    def _init_layer(self, top_layer: str | None) -> str:
        """The image's init layer, made if it is not there yet.

        Several starts may want it at once: one makes it, the others wait for it to be
        ready (or, when its maker died, recover the store and make it again).
        """
        layer_id = init_layer_id(top_layer)
        deadline = time.monotonic() + 60
        while True:
            try:
                layer = self.store.layer(layer_id)
            except LayerNotFound:
                try:
                    return self.store.apply_layer(io.BytesIO(_init_tar()), top_layer,
                                                  layer_id=layer_id).id
                except LayerExists:
                    continue  # another start made it at the same moment
            if layer.state == "ready":
                return layer_id
            if time.monotonic() > deadline:
                raise ContainerError(f"the image's init layer {layer_id} is not ready after "
                                     "60 s", hint="run `lamina system repair`, then retry")
            self.store.recover()  # an init layer whose maker died goes
            time.sleep(0.01)


def _pick(words: tuple[str, ...]) -> str:
    """A random word (``secrets``/``random`` would cost a start ~1.5 ms of imports)."""
    return words[int.from_bytes(os.urandom(4), "big") % len(words)]


def _init_tar() -> bytes:
    """The init layer: the mount points the launcher needs, as Docker's ``-init`` layer.

    Made once per container, under its writable layer, so that ``diff`` and ``commit``
    do not see the empty /etc/hosts the launcher binds a file onto, and so that an
    image whose /dev, /proc or /sys is a symlink gets a plain directory there instead.
    """
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in INIT_DIRECTORIES:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name in INIT_FILES:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(b""))
    return out.getvalue()


INIT_DIRECTORIES = ("dev", "dev/pts", "dev/shm", "proc", "sys", "etc")
INIT_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf")


def monitor_alive(identity: str | None) -> bool:
    """Whether the monitor named by ``identity`` runs (a zombie is dead: it runs nothing)."""
    if not identity or not is_alive(identity):
        return False
    try:
        with open(f"/proc/{identity.split(':')[1]}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except OSError:
        return False


def _check_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}", name):
        raise ContainerError(f"invalid container name {name!r}",
                             hint="names are [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128 characters")

