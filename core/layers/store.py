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
driver's home that no live reference explains is detached. Mounting and
recording a reference happen under the store lock, which recovery holds too,
so a live process's new mount is never taken for a stray.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

from ..blobs.store import BlobStore
from ..driver import ApplyResult, Change, Driver
from ..errors import (
    AmbiguousLayerId,
    InvalidLayerId,
    LaminaError,
    LayerExists,
    LayerHasChildren,
    LayerIncomplete,
    LayerInUse,
    LayerNotFound,
    LayerOptionError,
    MetadataMissing,
    NoSpace,
    NotMounted,
    StoreClosed,
    StoreError,
)
from ..host import mounts
from ..host.locks import FileLock, boot_id, is_alive, process_identity
from . import metadata
from . import records as layer_records

#: the metadata database under the root
DB_NAME = "lamina.db"
#: entries of the root that hold no layer or blob: a new database forgets nothing in them
_NOT_DATA = frozenset({DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", "lock", "tmp"})
LAYER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: how many matching ids an ambiguous short id's error lists
AMBIGUOUS_SHOWN = 5
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


def stored_data(root: Path) -> list[str]:
    """The directories of ``root`` holding layers, layer records or blobs (not empty ones).

    What a new, empty database would orphan. A driver's home counts when anything
    but directories lies below it: a home a driver merely opened holds empty
    directories alone, while every layer leaves a file, link or device somewhere
    (and a layer record besides).
    """
    found = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        if entry.name in _NOT_DATA or entry.name.startswith("."):
            continue  # dot names: a driver's short-lived probes, never a home
        # files beside the database (lamina.db.corrupt-<time>, the lock) hold no layer
        if entry.is_dir(follow_symlinks=False) and _holds_non_directory(entry.path):
            found.append(entry.name)
    return found


def _holds_non_directory(path: str) -> bool:
    for _dirpath, dirnames, filenames in os.walk(path):
        if _dirpath == path:  # a driver's short-lived probes in its home are dot names
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            filenames = [f for f in filenames if not f.startswith(".")]
        if filenames:
            return True
        # os.walk lists symlinks to directories among dirnames: a symlink is data
        if any(os.path.islink(os.path.join(_dirpath, d)) for d in dirnames):
            return True
    return False


def check_metadata(root: Path) -> bool:
    """Whether ``root`` has a metadata database; raise if it was lost while data remains.

    A missing or zero-byte ``lamina.db`` is a new store only when the root holds
    nothing a new database would forget (:func:`stored_data`); otherwise the
    database was deleted or emptied, and making a new one would orphan every
    layer, so this raises :class:`MetadataMissing` instead.
    """
    path = root / DB_NAME
    if metadata.is_present(path):
        return True
    found = stored_data(root)
    if found:
        what = "is empty" if path.exists() else "is missing"
        raise MetadataMissing(
            f"the metadata database {path} {what}, but the store holds data: "
            f"{', '.join(f'{name}/' for name in found)}"
        )
    return False


def open_metadata(root: Path) -> sqlite3.Connection | None:
    """The store's metadata database, checked; None for a new root. Creates nothing.

    Raises like :func:`check_metadata` and :func:`metadata.connect` for lost or
    damaged metadata.
    """
    if not check_metadata(root):
        return None
    return metadata.connect(root / DB_NAME, create=False)


def recorded_drivers(db: sqlite3.Connection | None) -> list[str]:
    """The drivers the metadata has layer rows of (none for a new root)."""
    if db is None:
        return []
    return [r[0] for r in db.execute("SELECT DISTINCT driver FROM layers ORDER BY driver")]


class Store:
    """Layers of one driver under one root.

    Use as a context manager or call :meth:`close`. Closing twice is fine;
    any operation after close raises :class:`StoreClosed`.

    With ``readonly`` (``info``, ``layer ls``) the store creates nothing: not the
    root, not the database, not the lock file; a root without a database reads as
    a store without layers. Crash recovery runs only where it creates nothing: on
    an existing database, with a driver whose home exists. Creating or removing
    layers through a read-only store is a bug.
    """

    def __init__(
        self,
        root: Path,
        driver: Driver,
        *,
        hooks: Any = None,
        readonly: bool = False,
        db: sqlite3.Connection | None = None,
    ) -> None:
        """``db``: the root's database as :func:`open_metadata` opened it, to open it once."""
        self.root = Path(root).resolve() if readonly else ensure_root(root)
        self.driver = driver
        self.hooks = hooks
        self.readonly = readonly
        self.blobs = BlobStore(self.root)
        self._lock = FileLock(self.root / "lock")
        existing = db is not None or check_metadata(self.root)
        if db is not None:
            self._db = db
        elif existing:
            self._db = metadata.connect(self.root / DB_NAME, create=not readonly)
        elif readonly:
            self._db = metadata.connect(Path(":memory:"))  # no layers, and nothing made
        else:
            self._db = metadata.connect(self.root / DB_NAME)
        self._me = process_identity()
        self._user_holder = USER_HOLDER_PREFIX + boot_id()
        self._closed = False
        if not readonly or (existing and driver.home.is_dir()):
            with contextlib.suppress(NoSpace):  # what a full disk cannot record, the next open does
                self.recover()
        if not readonly and not layer_records.record_dir(self.root).is_dir():
            self._write_missing_records()

    # -- life cycle -----------------------------------------------------------------

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release this process's own mount references and close. Idempotent.

        References a full disk does not let go are a dead holder's once this
        process exits: the next open drops them.
        """
        if self._closed:
            return
        if self.readonly:
            self._closed = True
            self._db.close()
            self.driver.close()
            return
        try:
            with self._lock:
                for row in self._db.execute(
                    "SELECT DISTINCT layer_id FROM mounts WHERE holder = ?", (self._me,)
                ).fetchall():
                    while self._release(row["layer_id"], self._me):
                        pass
        except NoSpace:
            pass
        finally:
            self._closed = True
            self._db.close()
            self.driver.close()

    @property
    def db(self) -> sqlite3.Connection:
        """The metadata database, for the image store that shares it (core/images/store.py)."""
        self._check_open()
        return self._db

    @property
    def lock(self) -> FileLock:
        """The store's writer lock: held around every structural change of layers."""
        return self._lock

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed", hint="open it again to keep working")

    def recover(self) -> list[str]:
        """Undo what dead processes left behind; return a line per action taken."""
        actions: list[str] = []
        with self._lock:
            # unfinished layers first: on a full disk their data is what frees the
            # space that recording anything else needs
            for row in self._db.execute(
                "SELECT id, owner, state FROM layers WHERE state != 'ready' AND driver = ?",
                (self.driver.name,),
            ).fetchall():
                if row["owner"] and is_alive(row["owner"]):
                    continue
                self._discard(row["id"])
                actions.append(f"removed {row['state']} layer {row['id']}")
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
            known = {
                os.path.realpath(r["path"])
                for r in self._db.execute("SELECT path FROM mounts").fetchall()
            }
            # only the driver's home: elsewhere under the root other code mounts for a
            # moment without a record (drivers' support checks, a store nested in a
            # directory below the root), and a live process's mount is not a stray
            for point in mounts.mounts_under(self.driver.home):
                if point not in known:
                    mounts.detach(Path(point))
                    actions.append(f"detached stray mount {point}")
        return actions

    def _write_missing_records(self) -> None:
        """Give every ready layer its record (a store made before records existed)."""
        for row in self._db.execute("SELECT * FROM layers WHERE state = 'ready'").fetchall():
            layer_records.write(self.root, row)
        layer_records.record_dir(self.root).mkdir(mode=0o700, exist_ok=True)

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

    def resolve(self, id_or_prefix: str) -> str:
        """The full id of the layer that ``id_or_prefix`` names, as Docker resolves ids.

        A layer whose id is exactly ``id_or_prefix`` wins; else the one layer (of
        this store's driver, in any state) whose id starts with it. No match is
        :class:`LayerNotFound`, several are :class:`AmbiguousLayerId`. Only the
        command line needs this: the other methods take full ids.

        Ids are ASCII without ``%`` or ``_`` wildcards of their own, so the prefix is a
        range of the primary key: ``prefix <= id < prefix with its last character
        incremented`` (``LIKE`` is case-insensitive and would not use the index).
        """
        self._check_open()
        prefix = check_layer_id(id_or_prefix)
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = self._db.execute(
            "SELECT id FROM layers WHERE id >= ? AND id < ? AND driver = ? ORDER BY id LIMIT ?",
            (prefix, upper, self.driver.name, AMBIGUOUS_SHOWN + 1),
        ).fetchall()
        ids = [r["id"] for r in rows]
        if len(ids) == 1 or ids[:1] == [prefix]:  # the full id sorts first of its range
            return ids[0]
        if not ids:
            raise LayerNotFound(
                prefix,
                f"no layer {prefix!r} in driver {self.driver.name!r}",
                hint="`lamina layer ls` lists the layers",
            )
        count = self._db.execute(
            "SELECT count(*) FROM layers WHERE id >= ? AND id < ? AND driver = ?",
            (prefix, upper, self.driver.name),
        ).fetchone()[0]
        shown = ", ".join(i[:16] for i in ids[:AMBIGUOUS_SHOWN])
        more = ", ..." if count > AMBIGUOUS_SHOWN else ""
        raise AmbiguousLayerId(
            prefix,
            f"layer id {prefix!r} is ambiguous: {count} layers start with it ({shown}{more})",
            hint="give more characters of the id",
        )

    def layers(self) -> list[Layer]:
        """Every ready layer of this store's driver, oldest first."""
        self._check_open()
        rows = self._db.execute(
            "SELECT * FROM layers WHERE driver = ? AND state = 'ready' ORDER BY created, id",
            (self.driver.name,),
        ).fetchall()
        return [Layer.from_row(r) for r in rows]

    def layer_count(self, *, ready_only: bool = True) -> int:
        """How many layers this store's driver has (with ``ready_only=False``, also those
        being written or removed)."""
        self._check_open()
        return self._db.execute(
            "SELECT count(*) FROM layers WHERE driver = ?"
            + (" AND state = 'ready'" if ready_only else ""),
            (self.driver.name,),
        ).fetchone()[0]

    def children(self, layer_id: str) -> list[str]:
        rows = self._db.execute("SELECT id FROM layers WHERE parent = ?", (layer_id,))
        return [r["id"] for r in rows.fetchall()]

    def mount_count(self, layer_id: str) -> int:
        """How many references hold the layer's mount (all holders)."""
        return self._db.execute(
            "SELECT count(*) FROM mounts WHERE layer_id = ?", (layer_id,)
        ).fetchone()[0]

    def mount_counts(self) -> dict[str, int]:
        """How many references hold each mounted layer's mount (one query for a listing)."""
        self._check_open()
        rows = self._db.execute("SELECT layer_id, count(*) FROM mounts GROUP BY layer_id")
        return {layer_id: count for layer_id, count in rows.fetchall()}

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
        self,
        parent: str | None = None,
        *,
        writable: bool = False,
        layer_id: str | None = None,
        options: Mapping[str, str] | None = None,
        record: Callable[[sqlite3.Connection], None] | None = None,
    ) -> Layer:
        """Create an empty layer on ``parent``; it is ready at once.

        ``options`` are per-layer options for the driver (``--storage-opt size=10G``):
        a key the driver does not declare in ``layer_options`` is refused with
        :class:`LayerOptionError` before anything is made. ``record`` runs in the
        transaction that makes the layer ready (a container's row): a SIGKILL leaves
        both or an incomplete layer the next open removes, never a ready layer that
        nothing records; if it raises, the layer is removed again.
        """
        layer_id, _ = self._begin(parent, writable, layer_id, empty=True, options=options,
                                  record=record)
        return self.layer(layer_id)

    def apply_layer(
        self,
        stream: IO[bytes],
        parent: str | None = None,
        *,
        writable: bool = False,
        layer_id: str | None = None,
        verify: Callable[[ApplyResult], None] | None = None,
        record: Callable[[sqlite3.Connection], None] | None = None,
    ) -> Layer:
        """Create a layer on ``parent`` from a layer tar (plain, gzip or zstd).

        ``verify`` is called with the driver's result before the layer becomes
        ready: raising there (a diff id other than the image config's, a blob
        whose digest did not check out) removes the layer as any failure does.
        On any failure, KeyboardInterrupt included, the layer is removed again;
        a SIGKILL leaves an incomplete layer that the next open removes.
        ``record`` runs in the transaction, under the store lock, that makes the
        layer ready (a committed image's rows): a SIGKILL leaves both or that
        incomplete layer, never a ready layer that nothing records.
        """
        from ..layertar.compression import open_layer_stream  # the tar path: not for every command

        layer_id, parents = self._begin(parent, writable, layer_id)
        try:
            started = time.monotonic()
            result: ApplyResult = self.driver.apply(
                layer_id, parents, open_layer_stream(stream), _Views(self)
            )
            self._release_all_mine(layer_id)
            if verify is not None:
                verify(result)
            self.driver.finalize(layer_id, writable=writable)
            lock = self._lock if record is not None else contextlib.nullcontext()
            with lock, metadata.transaction(self._db):
                self._finish(layer_id, diff_id=result.diff_id, size=result.size)
                if record is not None:
                    record(self._db)
        except BaseException:
            # what went wrong is the first error; a full disk that will not record
            # the removal leaves the row incomplete for the next open to finish
            with contextlib.suppress(NoSpace):
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

    def remove_layer(
        self, layer_id: str, *, record: Callable[[sqlite3.Connection], None] | None = None
    ) -> None:
        """Remove a ready, unmounted layer without children.

        ``record`` runs first in the transaction that marks the layer ``removing`` (a
        container's row going): a SIGKILL leaves both or neither, and the next open
        finishes the remove, never a ready layer that nothing records.
        """
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
            image = self._db.execute(
                "SELECT image_id FROM image_layers WHERE layer_id = ? LIMIT 1", (layer_id,)
            ).fetchone()
            if image is not None:
                raise LayerInUse(
                    layer_id,
                    f"layer {layer_id} is a layer of image {image[0]}",
                    hint="remove the image instead (lamina rmi), which removes the layers "
                    "no other image uses",
                )
            with metadata.transaction(self._db):
                if record is not None:
                    record(self._db)
                container = self._db.execute(
                    "SELECT name FROM containers WHERE layer = ? LIMIT 1", (layer_id,)
                ).fetchone()
                if container is not None:
                    raise LayerInUse(
                        layer_id,
                        f"layer {layer_id} is the writable layer of container {container[0]}",
                        hint=f"remove the container instead: lamina rm {container[0]}",
                    )
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
        self,
        parent: str | None,
        writable: bool,
        layer_id: str | None,
        *,
        empty: bool = False,
        options: Mapping[str, str] | None = None,
        record: Callable[[sqlite3.Connection], None] | None = None,
    ) -> tuple[str, list[str]]:
        """Record an incomplete layer and have the driver create it; return its id and parents.

        With ``empty`` the layer is finalized and marked ready in the same step
        (one metadata write instead of two: a layer costs little on disk).
        """
        self._check_open()
        layer_id = os.urandom(32).hex() if layer_id is None else check_layer_id(layer_id)
        extra = self._layer_options(layer_id, options)
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
                self.driver.create(layer_id, parents, writable=writable, **extra)
                created = time.time_ns()
                if empty:
                    self.driver.finalize(layer_id, writable=writable)
                with metadata.transaction(self._db):
                    self._db.execute(
                        "UPDATE layers SET created_ns = ? WHERE id = ?", (created, layer_id)
                    )
                    if empty:
                        self._finish(layer_id, diff_id=None, size=0)
                    if record is not None:
                        record(self._db)
            except BaseException:
                with contextlib.suppress(LaminaError):
                    if self.driver.exists(layer_id):  # created, but not recorded
                        self.driver.remove(layer_id)
                layer_records.remove(self.root, layer_id)
                with contextlib.suppress(NoSpace), metadata.transaction(self._db):
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

    def _layer_options(
        self, layer_id: str, options: Mapping[str, str] | None
    ) -> dict[str, Any]:
        """The keyword arguments for :meth:`Driver.create`: ``options`` only when asked for,
        so a driver written before per-layer options existed keeps working."""
        if not options:
            return {}
        accepted = self.driver.layer_options
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            name = self.driver.name
            asked = ", ".join(unknown)
            if not accepted:
                raise LayerOptionError(
                    layer_id,
                    f"the {name} driver takes no per-layer options (asked for: {asked})",
                    hint="a writable layer's size (--storage-opt size=N) needs a driver with "
                    "layer quotas, such as btrfs; `lamina drivers` lists the drivers",
                )
            raise LayerOptionError(
                layer_id,
                f"the {name} driver has no per-layer option {asked}",
                hint=f"per-layer options of {name}: {', '.join(sorted(accepted))}",
            )
        for key, value in options.items():
            if not isinstance(value, str):
                raise LayerOptionError(
                    layer_id, f"per-layer option {key!r} must be a string, not {value!r}",
                    hint=accepted[key].help)
        return {"options": dict(options)}

    def _finish(self, layer_id: str, *, diff_id: str | None, size: int) -> None:
        """Write the layer's record and mark it ready (in the caller's transaction if any)."""
        with contextlib.ExitStack() as stack:
            if not self._db.in_transaction:
                stack.enter_context(metadata.transaction(self._db))
            row = dict(
                self._db.execute("SELECT * FROM layers WHERE id = ?", (layer_id,)).fetchone()
            )
            layer_records.write(self.root, {**row, "diff_id": diff_id, "size": size})
            self._db.execute(
                "UPDATE layers SET state = 'ready', owner = NULL, diff_id = ?, size = ?"
                " WHERE id = ?",
                (diff_id, size, layer_id),
            )

    def _abort(self, layer_id: str) -> None:
        with self._lock:
            self._discard(layer_id)

    def _discard(self, layer_id: str) -> None:
        """Unmount and delete the driver's data, then drop every reference and the row.

        Data before metadata: on a full disk the metadata write may need the
        space the layer held. Interrupted, the row stays and the next open
        discards again (unmount and remove finish half-done work).
        """
        if self.mount_count(layer_id):
            started = time.monotonic()
            self.driver.unmount(layer_id)
            self._notify(
                "lamina_layer_unmounted", layer_id=layer_id, seconds=time.monotonic() - started
            )
        if self.driver.exists(layer_id):
            self.driver.remove(layer_id)
        layer_records.remove(self.root, layer_id)
        with metadata.transaction(self._db):
            self._db.execute("DELETE FROM mounts WHERE layer_id = ?", (layer_id,))
            # a container whose layer was being removed (by a version that did not
            # refuse it) has lost its root: its record goes too, or no open succeeds
            self._db.execute("DELETE FROM containers WHERE layer = ?", (layer_id,))
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
        try:
            with metadata.transaction(self._db):
                self._db.execute(
                    "INSERT INTO mounts (layer_id, holder, path, readonly) VALUES (?, ?, ?, ?)",
                    (layer_id, holder, str(path), int(readonly)),
                )
        except NoSpace:
            if row is None:  # a mount no reference records would be a stray one
                self.driver.unmount(layer_id)
            raise
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
        with _releasing(store, layer_id):
            yield path

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
        with _releasing(store, layer_id):
            yield path


@contextlib.contextmanager
def _releasing(store: Store, layer_id: str) -> Iterator[None]:
    """Drop this process's reference after the block.

    When the block failed, its error is what the user must see: a release that a
    full disk refuses too is left to :meth:`Store.close` and the next open.
    """
    try:
        yield
    except BaseException:
        with contextlib.suppress(NoSpace), store._lock:
            store._release(layer_id, store._me)
        raise
    with store._lock:
        store._release(layer_id, store._me)
