"""The layer store: one root directory, its metadata, its blobs and one driver.

The store owns everything that is the same for every driver: layer ids and
the parent graph, the ``incomplete`` -> ``ready`` -> ``removing`` life cycle,
counted mounts, crash recovery, and the observer hooks. The driver is asked
only for storage work (:mod:`lamina.core.driver`), and is handed a layer's
ancestors (:meth:`Store.parents`) wherever it needs them, so it keeps no
parent graph of its own.

Crash safety, in short: a layer is recorded ``incomplete`` (with the owning
process) before the driver touches the disk and marked ``ready`` only after
its content is complete; a remove marks ``removing`` first. Mount references
name their holder: ``user`` for ``lamina layer mount`` (kept until ``layer
unmount``), or the process that mounted for its own work. Opening a store
finishes or undoes whatever a dead process left: incomplete and removing
layers are removed, dead holders' references dropped, and any mount under the
root that no live reference explains is detached.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from . import metadata, mounts
from .blobs import BlobStore
from .driver import ApplyResult, Change, Driver
from .errors import (
    InvalidLayerId,
    LaminaError,
    LayerExists,
    LayerHasChildren,
    LayerIncomplete,
    LayerInUse,
    LayerNotFound,
    NotMounted,
    StoreClosed,
    StoreError,
)
from .locks import FileLock, boot_id, is_alive, process_identity

LAYER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
USER_HOLDER_PREFIX = "user:"


class Layer(NamedTuple):
    """A layer as the store records it.

    A named tuple, not a dataclass: a fifth of the cost to define at import, which
    every command pays.
    """

    id: str
    parent: str | None
    driver: str
    writable: bool
    state: str
    diff_id: str | None
    size: int | None
    created: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Layer:
        return cls(
            id=row["id"],
            parent=row["parent"],
            driver=row["driver"],
            writable=bool(row["writable"]),
            state=row["state"],
            diff_id=row["diff_id"],
            size=row["size"],
            created=row["created"],
        )


def check_layer_id(layer_id: str) -> str:
    """Return ``layer_id`` if it is safe as a file name and an id, else raise."""
    if not isinstance(layer_id, str) or not LAYER_ID_RE.match(layer_id):
        raise InvalidLayerId(
            str(layer_id),
            f"invalid layer id {layer_id!r}",
            hint="ids are 1-128 characters of letters, digits, '_', '.' and '-', "
            "starting with a letter or digit",
        )
    return layer_id


def default_root() -> Path:
    """``/var/lib/lamina`` for root, else ``$XDG_DATA_HOME/lamina``."""
    if os.geteuid() == 0:
        return Path("/var/lib/lamina")
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "lamina"


def ensure_root(root: Path) -> Path:
    """Create ``root`` mode 0700 (other users must not traverse it), return it resolved."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if root.stat().st_mode & 0o077:
            os.chmod(root, 0o700)
    except OSError as exc:
        raise StoreError(
            f"cannot create the store root {root}: {exc.strerror}",
            hint="choose a writable --root, or run as root for /var/lib/lamina",
        ) from exc
    return root.resolve()


class Store:
    """Layers of one driver under one root.

    Use as a context manager or call :meth:`close`. Closing twice is fine;
    any operation after close raises :class:`StoreClosed`.
    """

    def __init__(self, root: Path, driver: Driver, *, hooks: Any = None) -> None:
        self.root = ensure_root(root)
        self.driver = driver
        self.hooks = hooks
        self.blobs = BlobStore(self.root)
        self._lock = FileLock(self.root / "lock")
        self._db = metadata.connect(self.root / "lamina.db")
        self._me = process_identity()
        self._user_holder = USER_HOLDER_PREFIX + boot_id()
        self._closed = False
        self.recover()

    # -- life cycle -----------------------------------------------------------------

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release this process's own mount references and close. Idempotent."""
        if self._closed:
            return
        try:
            with self._lock:
                for row in self._db.execute(
                    "SELECT DISTINCT layer_id FROM mounts WHERE holder = ?", (self._me,)
                ).fetchall():
                    while self._release(row["layer_id"], self._me):
                        pass
        finally:
            self._closed = True
            self._db.close()
            self.driver.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed", hint="open it again to keep working")

    def recover(self) -> list[str]:
        """Undo what dead processes left behind; return a line per action taken."""
        actions: list[str] = []
        with self._lock:
            for row in self._db.execute(
                "SELECT holder, layer_id FROM mounts WHERE holder != ?", (self._user_holder,)
            ).fetchall():
                holder = row["holder"]
                stale = (
                    holder != self._user_holder
                    if holder.startswith(USER_HOLDER_PREFIX)
                    else not is_alive(holder)
                )
                if stale:
                    self._release(row["layer_id"], holder)
                    actions.append(f"released a mount of {row['layer_id']} held by {holder}")
            for row in self._db.execute(
                "SELECT id, owner, state FROM layers WHERE state != 'ready' AND driver = ?",
                (self.driver.name,),
            ).fetchall():
                if row["owner"] and is_alive(row["owner"]):
                    continue
                self._discard(row["id"])
                actions.append(f"removed {row['state']} layer {row['id']}")
            known = {
                os.path.realpath(r["path"])
                for r in self._db.execute("SELECT path FROM mounts").fetchall()
            }
            for point in mounts.mounts_under(self.root):
                if point not in known:
                    mounts.detach(Path(point))
                    actions.append(f"detached stray mount {point}")
        return actions

    # -- queries ----------------------------------------------------------------------

    def layer(self, layer_id: str) -> Layer:
        """The layer ``layer_id`` of this store's driver, in any state."""
        self._check_open()
        row = self._db.execute(
            "SELECT * FROM layers WHERE id = ? AND driver = ?",
            (check_layer_id(layer_id), self.driver.name),
        ).fetchone()
        if row is None:
            raise LayerNotFound(
                layer_id,
                f"no layer {layer_id!r} in driver {self.driver.name!r}",
                hint="`lamina layer ls` lists the layers",
            )
        return Layer.from_row(row)

    def layers(self) -> list[Layer]:
        """Every ready layer of this store's driver, oldest first."""
        self._check_open()
        rows = self._db.execute(
            "SELECT * FROM layers WHERE driver = ? AND state = 'ready' ORDER BY created, id",
            (self.driver.name,),
        ).fetchall()
        return [Layer.from_row(r) for r in rows]

    def children(self, layer_id: str) -> list[str]:
        rows = self._db.execute("SELECT id FROM layers WHERE parent = ?", (layer_id,))
        return [r["id"] for r in rows.fetchall()]

    def mount_count(self, layer_id: str) -> int:
        """How many references hold the layer's mount (all holders)."""
        return self._db.execute(
            "SELECT count(*) FROM mounts WHERE layer_id = ?", (layer_id,)
        ).fetchone()[0]

    def chain(self, layer_id: str) -> list[str]:
        """The layer and its ancestors, the layer first."""
        return [layer_id, *self.parents(layer_id)]

    def parents(self, layer_id: str) -> list[str]:
        """The ancestors of ``layer_id``, nearest first: what the driver is handed.

        One recursive query however deep the chain (a 500-layer image is one
        round trip, not 500).
        """
        self._check_open()
        rows = self._db.execute(
            "WITH RECURSIVE up(id, parent, depth) AS ("
            " SELECT id, parent, 0 FROM layers WHERE id = ? AND driver = ?"
            " UNION ALL"
            " SELECT l.id, l.parent, up.depth + 1 FROM layers l JOIN up ON l.id = up.parent"
            ") SELECT id FROM up ORDER BY depth",
            (check_layer_id(layer_id), self.driver.name),
        ).fetchall()
        if not rows:
            self.layer(layer_id)  # raises LayerNotFound
        return [r[0] for r in rows[1:]]

    # -- creating and removing -------------------------------------------------------

    def create_layer(
        self, parent: str | None = None, *, writable: bool = False, layer_id: str | None = None
    ) -> Layer:
        """Create an empty layer on ``parent``; it is ready at once."""
        layer_id, _ = self._begin(parent, writable, layer_id, empty=True)
        return self.layer(layer_id)

    def apply_layer(
        self,
        stream: IO[bytes],
        parent: str | None = None,
        *,
        writable: bool = False,
        layer_id: str | None = None,
    ) -> Layer:
        """Create a layer on ``parent`` from a layer tar (plain, gzip or zstd).

        On any failure, KeyboardInterrupt included, the layer is removed again;
        a SIGKILL leaves an incomplete layer that the next open removes.
        """
        from .compression import open_layer_stream  # the tar path: not for every command

        layer_id, parents = self._begin(parent, writable, layer_id)
        try:
            started = time.monotonic()
            result: ApplyResult = self.driver.apply(
                layer_id, parents, open_layer_stream(stream), _Views(self)
            )
            self._release_all_mine(layer_id)
            self.driver.finalize(layer_id, writable=writable)
            self._finish(layer_id, diff_id=result.diff_id, size=result.size)
        except BaseException:
            self._abort(layer_id)
            raise
        self._notify(
            "lamina_layer_applied",
            layer_id=layer_id,
            diff_id=result.diff_id,
            size=result.size,
            seconds=time.monotonic() - started,
        )
        return self.layer(layer_id)

    def remove_layer(self, layer_id: str) -> None:
        """Remove a ready, unmounted layer without children."""
        started = time.monotonic()
        with self._lock:
            layer = self.layer(layer_id)
            if layer.state == "incomplete":
                raise LayerIncomplete(
                    layer_id,
                    f"layer {layer_id} is still being written by another process",
                    hint="wait for it to finish, or for the next start to clean it up",
                )
            kids = self.children(layer_id)
            if kids:
                raise LayerHasChildren(
                    layer_id,
                    f"layer {layer_id} has {len(kids)} child layer(s): {', '.join(kids[:3])}",
                    hint="remove the children first",
                )
            if self.mount_count(layer_id):
                raise LayerInUse(
                    layer_id,
                    f"layer {layer_id} is mounted",
                    hint=f"unmount it first: lamina layer unmount {layer_id}",
                )
            with metadata.transaction(self._db):
                self._db.execute(
                    "UPDATE layers SET state = 'removing', owner = ? WHERE id = ?",
                    (self._me, layer_id),
                )
            self._discard(layer_id)
        self._notify("lamina_layer_removed", layer_id=layer_id, seconds=time.monotonic() - started)

    # -- mounting -------------------------------------------------------------------------

    def mount(self, layer_id: str, *, holder: str | None = None) -> Path:
        """Take a mount reference on a ready layer and return its tree's path.

        Counted: every call needs one :meth:`unmount`. The default holder is
        the user (kept until unmounted, across processes); pass
        ``holder=store.process_holder`` for a reference dropped at close.
        """
        self._check_open()
        with self._lock:
            layer = self.layer(layer_id)
            if layer.state != "ready":
                raise LayerIncomplete(
                    layer_id,
                    f"layer {layer_id} is {layer.state} and cannot be mounted",
                    hint="its content is not complete; apply it again",
                )
            return self._take(layer_id, holder or self._user_holder, readonly=not layer.writable)

    def unmount(self, layer_id: str, *, holder: str | None = None) -> None:
        """Drop one mount reference; the last one unmounts."""
        self._check_open()
        with self._lock:
            self.layer(layer_id)
            if not self._release(layer_id, holder or self._user_holder):
                raise NotMounted(
                    layer_id,
                    f"layer {layer_id} is not mounted",
                    hint="`lamina layer ls` shows which layers are mounted",
                )

    @property
    def process_holder(self) -> str:
        """The holder name for references that die with this process."""
        return self._me

    # -- content ------------------------------------------------------------------------------

    def changes(self, layer_id: str) -> list[Change]:
        self._ready(layer_id)
        return self.driver.changes(layer_id, self.parents(layer_id), _Views(self))

    def diff(self, layer_id: str, out: IO[bytes]) -> int:
        self._ready(layer_id)
        return self.driver.diff(layer_id, self.parents(layer_id), out, _Views(self))

    def diff_size(self, layer_id: str) -> int:
        self._ready(layer_id)
        return self.driver.diff_size(layer_id, self.parents(layer_id), _Views(self))

    # -- internals -------------------------------------------------------------------------------

    def _ready(self, layer_id: str) -> Layer:
        self._check_open()
        layer = self.layer(layer_id)
        if layer.state != "ready":
            raise LayerIncomplete(layer_id, f"layer {layer_id} is {layer.state}")
        return layer

    def _begin(
        self, parent: str | None, writable: bool, layer_id: str | None, *, empty: bool = False
    ) -> tuple[str, list[str]]:
        """Record an incomplete layer and have the driver create it; return its id and parents.

        With ``empty`` the layer is finalized and marked ready in the same step
        (one metadata write instead of two: a layer costs little on disk).
        """
        self._check_open()
        layer_id = os.urandom(32).hex() if layer_id is None else check_layer_id(layer_id)
        started = time.monotonic()
        with self._lock:
            parents: list[str] = []
            if parent is not None:
                self._ready(parent)
                parents = [parent, *self.parents(parent)]
            try:
                with metadata.transaction(self._db):
                    self._db.execute(
                        "INSERT INTO layers (id, parent, driver, writable, state, owner, created)"
                        " VALUES (?, ?, ?, ?, 'incomplete', ?, ?)",
                        (layer_id, parent, self.driver.name, int(writable), self._me, time.time()),
                    )
            except sqlite3.IntegrityError:
                raise LayerExists(
                    layer_id,
                    f"layer {layer_id!r} exists already",
                    hint="choose another id, or remove the existing layer first",
                ) from None
            try:
                if self.driver.exists(layer_id):
                    # debris of an earlier crash the metadata no longer knows about
                    self.driver.remove(layer_id)
                self.driver.create(layer_id, parents, writable=writable)
                created = time.time_ns()
                if empty:
                    self.driver.finalize(layer_id, writable=writable)
                with metadata.transaction(self._db):
                    self._db.execute(
                        "UPDATE layers SET created_ns = ? WHERE id = ?", (created, layer_id)
                    )
                    if empty:
                        self._finish(layer_id, diff_id=None, size=0)
            except BaseException:
                with contextlib.suppress(LaminaError):
                    if self.driver.exists(layer_id):  # created, but not recorded
                        self.driver.remove(layer_id)
                with metadata.transaction(self._db):
                    self._db.execute("DELETE FROM layers WHERE id = ?", (layer_id,))
                raise
        self._notify(
            "lamina_layer_created",
            layer_id=layer_id,
            parent=parent,
            writable=writable,
            seconds=time.monotonic() - started,
        )
        return layer_id, parents

    def _finish(self, layer_id: str, *, diff_id: str | None, size: int) -> None:
        """Mark the layer ready (inside the caller's transaction if there is one)."""
        with contextlib.ExitStack() as stack:
            if not self._db.in_transaction:
                stack.enter_context(metadata.transaction(self._db))
            self._db.execute(
                "UPDATE layers SET state = 'ready', owner = NULL, diff_id = ?, size = ?"
                " WHERE id = ?",
                (diff_id, size, layer_id),
            )

    def _abort(self, layer_id: str) -> None:
        with self._lock:
            self._discard(layer_id)

    def _discard(self, layer_id: str) -> None:
        """Drop every reference, unmount, delete the driver's data and the row."""
        refs = self._db.execute(
            "SELECT holder FROM mounts WHERE layer_id = ?", (layer_id,)
        ).fetchall()
        for row in refs:
            self._release(layer_id, row["holder"])
        if self.driver.exists(layer_id):
            self.driver.remove(layer_id)
        with metadata.transaction(self._db):
            self._db.execute("DELETE FROM layers WHERE id = ?", (layer_id,))

    def _take(self, layer_id: str, holder: str, *, readonly: bool) -> Path:
        """Add a reference (under the lock); mount for the first one."""
        row = self._db.execute(
            "SELECT path FROM mounts WHERE layer_id = ? LIMIT 1", (layer_id,)
        ).fetchone()
        if row is not None:
            path = Path(row["path"])
        else:
            started = time.monotonic()
            path = self.driver.mount(layer_id, self.parents(layer_id), readonly=readonly)
            self._notify(
                "lamina_layer_mounted",
                layer_id=layer_id,
                path=str(path),
                seconds=time.monotonic() - started,
            )
        with metadata.transaction(self._db):
            self._db.execute(
                "INSERT INTO mounts (layer_id, holder, path, readonly) VALUES (?, ?, ?, ?)",
                (layer_id, holder, str(path), int(readonly)),
            )
        return path

    def _release(self, layer_id: str, holder: str) -> bool:
        """Drop one reference of ``holder`` (under the lock); unmount after the last.

        Returns whether a reference was dropped.
        """
        with metadata.transaction(self._db):
            cur = self._db.execute(
                "DELETE FROM mounts WHERE rowid = (SELECT rowid FROM mounts"
                " WHERE layer_id = ? AND holder = ? LIMIT 1)",
                (layer_id, holder),
            )
            dropped = cur.rowcount > 0
            left = self._db.execute(
                "SELECT count(*) FROM mounts WHERE layer_id = ?", (layer_id,)
            ).fetchone()[0]
        if dropped and left == 0:
            started = time.monotonic()
            self.driver.unmount(layer_id)
            self._notify(
                "lamina_layer_unmounted", layer_id=layer_id, seconds=time.monotonic() - started
            )
        return dropped

    def _release_all_mine(self, layer_id: str) -> None:
        with self._lock:
            while self._release(layer_id, self._me):
                pass

    def _notify(self, hook: str, **kwargs: Any) -> None:
        if self.hooks is not None:
            getattr(self.hooks, hook)(driver=self.driver.name, **kwargs)


class _Views:
    """The store's counted mounts offered to a driver's generic operations."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @contextlib.contextmanager
    def view(self, layer_id: str) -> Iterator[Path]:
        store = self.store
        with store._lock:
            layer = store._ready(layer_id)
            path = store._take(layer_id, store._me, readonly=not layer.writable)
        try:
            yield path
        finally:
            with store._lock:
                store._release(layer_id, store._me)

    def created_ns(self, layer_id: str) -> int | None:
        row = self.store._db.execute(
            "SELECT created_ns FROM layers WHERE id = ?", (layer_id,)
        ).fetchone()
        return None if row is None else row["created_ns"]

    @contextlib.contextmanager
    def populate(self, layer_id: str) -> Iterator[Path]:
        store = self.store
        with store._lock:
            layer = store.layer(layer_id)
            if layer.state != "incomplete":
                raise LayerInUse(layer_id, f"layer {layer_id} is {layer.state}, not being filled")
            path = store._take(layer_id, store._me, readonly=False)
        try:
            yield path
        finally:
            with store._lock:
                store._release(layer_id, store._me)
