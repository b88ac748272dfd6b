"""The store's metadata database (SQLite, WAL) and its schema migrations.

SQLite because several lamina processes use one store at once: WAL lets
readers run beside one writer, and ``BEGIN IMMEDIATE`` serialises writers
across processes without a lock server.

Migrations are a list; ``MIGRATIONS[n]`` brings the schema from version n to
n + 1. A database newer than this lamina is refused instead of being guessed at.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ..errors import MetadataCorrupt, NoSpace, StoreError, host_error

MIGRATIONS: list[str] = [
    # 0 -> 1: layers, their mount references, and room for images and containers
    """
    CREATE TABLE layers (
        id          TEXT PRIMARY KEY,
        parent      TEXT REFERENCES layers(id),
        driver      TEXT NOT NULL,
        writable    INTEGER NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('incomplete', 'ready', 'removing')),
        owner       TEXT,              -- process holding an incomplete/removing layer
        diff_id     TEXT,              -- sha256:<hex> of the uncompressed layer tar
        size        INTEGER,           -- uncompressed tar bytes applied
        created     REAL NOT NULL,
        created_ns  INTEGER            -- when the driver finished creating it
    );
    CREATE INDEX layers_parent ON layers(parent);
    CREATE INDEX layers_diff_id ON layers(diff_id);
    CREATE TABLE mounts (
        layer_id    TEXT NOT NULL REFERENCES layers(id),
        holder      TEXT NOT NULL,     -- 'user' or a process identity
        path        TEXT NOT NULL,
        readonly    INTEGER NOT NULL
    );
    CREATE INDEX mounts_layer ON mounts(layer_id);
    CREATE TABLE images (
        id          TEXT PRIMARY KEY,  -- sha256:<hex> of the config
        top_layer   TEXT REFERENCES layers(id),
        created     REAL NOT NULL
    );
    CREATE TABLE containers (
        id          TEXT PRIMARY KEY,
        image       TEXT REFERENCES images(id),
        layer       TEXT REFERENCES layers(id),
        created     REAL NOT NULL
    );
    """,
    # 1 -> 2: images (core/images/store.py): what an image is made of, its names and
    # the manifest digests it was pulled by
    """
    ALTER TABLE images ADD COLUMN manifest TEXT;        -- digest of its manifest blob
    ALTER TABLE images ADD COLUMN manifest_type TEXT;
    ALTER TABLE images ADD COLUMN layer_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE images ADD COLUMN size INTEGER NOT NULL DEFAULT 0;  -- its layers, uncompressed
    ALTER TABLE images ADD COLUMN config_created TEXT;  -- the config's "created"
    CREATE TABLE image_layers (
        image_id    TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        position    INTEGER NOT NULL,  -- 0 is the base
        layer_id    TEXT NOT NULL REFERENCES layers(id),  -- the ChainID's hex
        diff_id     TEXT NOT NULL,
        blob        TEXT,              -- digest of the layer as distributed, if known
        media_type  TEXT,
        blob_size   INTEGER,
        PRIMARY KEY (image_id, position)
    );
    CREATE INDEX image_layers_layer ON image_layers(layer_id);
    CREATE INDEX image_layers_blob ON image_layers(blob);
    CREATE TABLE image_names (
        name        TEXT PRIMARY KEY,  -- registry/repository:tag, in full
        image_id    TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        created     REAL NOT NULL
    );
    CREATE INDEX image_names_image ON image_names(image_id);
    CREATE TABLE image_digests (
        repository  TEXT NOT NULL,     -- registry/repository
        digest      TEXT NOT NULL,     -- of the manifest (or index) it was pulled by
        image_id    TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        PRIMARY KEY (repository, digest)
    );
    CREATE INDEX image_digests_image ON image_digests(image_id);
    """,
    # 2 -> 3: containers (core/containers/) and the addresses their networks lease
    # (core/network/)
    """
    ALTER TABLE containers ADD COLUMN name TEXT;
    ALTER TABLE containers ADD COLUMN spec TEXT NOT NULL DEFAULT '{}';  -- JSON, see ContainerSpec
    ALTER TABLE containers ADD COLUMN state TEXT NOT NULL DEFAULT 'created'
        CHECK (state IN ('created', 'running', 'exited', 'removing'));
    ALTER TABLE containers ADD COLUMN pid INTEGER;        -- of the container's init, while running
    ALTER TABLE containers ADD COLUMN process TEXT;   -- its process_identity (boot:pid:start)
    ALTER TABLE containers ADD COLUMN exit_code INTEGER;
    ALTER TABLE containers ADD COLUMN oom_killed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE containers ADD COLUMN started REAL;
    ALTER TABLE containers ADD COLUMN finished REAL;
    CREATE UNIQUE INDEX containers_name ON containers(name);
    CREATE INDEX containers_image ON containers(image);
    CREATE INDEX containers_layer ON containers(layer);
    CREATE TABLE network_addresses (
        network      TEXT NOT NULL,    -- the bridge's name
        address      TEXT NOT NULL,    -- an IPv4 address in its subnet
        container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
        PRIMARY KEY (network, address),
        UNIQUE (network, container_id)
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


#: SQLite's answers for a file that is damaged or not a database at all
_CORRUPT_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB

#: SQLite's answers when it cannot grow a file: the database, its log or its -shm index
_DISK_FULL = {"SQLITE_FULL", "SQLITE_IOERR_SHMSIZE"}


class FullDiskSnapshot(sqlite3.Connection):
    """The database opened read-only without its -wal and -shm files: the disk is full.

    On a full disk sqlite cannot size the shared-memory index that WAL mode needs,
    even to read. A store nobody writes has everything in the main file (the last
    connection to close checkpoints the log), so reading that file alone answers
    ``ls`` and ``info``; every write (:func:`transaction`) is refused with
    :class:`NoSpace`. The next open after space is freed is a normal one.
    """

    path: Path


def is_present(path: Path) -> bool:
    """Whether a database file with content is at ``path``.

    SQLite takes a missing or zero-byte file for a new, empty database; the
    store must tell those apart from a real one before opening it.
    """
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """Open the metadata database at ``path``, check it, and migrate it.

    With ``create`` a missing file is made (the caller decided the root is new);
    without it a missing file is an error and nothing is created. A damaged file
    is a :class:`MetadataCorrupt` error, found at open by ``PRAGMA quick_check``
    (about 0.5 ms for a small store) rather than by whichever query first reads
    the damaged page. On a full disk an existing database is opened as a
    :class:`FullDiskSnapshot`.
    """
    mode = "rwc" if create else "rw"
    db = None
    try:
        db = sqlite3.connect(
            f"file:{_uri_path(path)}?mode={mode}",
            uri=True,
            timeout=60,
            isolation_level=None,
            check_same_thread=False,
        )
        db.row_factory = sqlite3.Row
        # synchronous first: a new database's switch to WAL is a rollback-journal
        # transaction, which syncs once less (of four) in NORMAL than in the default FULL
        db.execute("PRAGMA synchronous=NORMAL")
        _switch_to_wal(db)
        # keep the write-ahead log small: checkpoint often and truncate it after,
        # so metadata costs kilobytes per layer, not a growing log
        db.execute("PRAGMA wal_autocheckpoint=32")
        db.execute("PRAGMA journal_size_limit=65536")
        db.execute("PRAGMA foreign_keys=ON")
        problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            detail = problems[0].replace("*** in database main ***", "").strip()
            raise _corrupt(path, detail.replace("\n", "; "))
        migrate(db, path)
    except BaseException as exc:
        if db is not None:
            db.close()
        if not isinstance(exc, sqlite3.DatabaseError):
            raise
        if getattr(exc, "sqlite_errorcode", None) in _CORRUPT_CODES:
            raise _corrupt(path, str(exc)) from None
        if getattr(exc, "sqlite_errorname", None) in _DISK_FULL:
            if is_present(path):
                return _snapshot(path, exc)
            raise _no_space(path) from exc
        raise StoreError(
            f"cannot open the metadata database {path}: {exc}",
            hint="check that the store root is writable and not on a network filesystem",
        ) from exc
    return db


def _switch_to_wal(db: sqlite3.Connection, patience: float = 60.0) -> None:
    """``PRAGMA journal_mode=WAL``, waiting while another process does the same.

    Two processes opening a new database at once: the mode switch needs the file
    to itself, and SQLite answers "database is locked" at once instead of calling
    the busy handler that every other statement waits in.
    """
    import time

    deadline = time.monotonic() + patience
    delay = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _uri_path(path: Path) -> str:
    """``path`` for a ``file:`` URI (what urllib.parse.quote would do, without its import)."""
    return str(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _corrupt(path: Path, detail: str) -> MetadataCorrupt:
    return MetadataCorrupt(f"the metadata database {path} is corrupt ({detail})")


def _snapshot(path: Path, cause: sqlite3.Error) -> FullDiskSnapshot:
    """The main file alone, when it is the whole truth; else :class:`NoSpace`."""
    wal = path.with_name(path.name + "-wal")
    db = sqlite3.connect(f"file:{_uri_path(path)}?mode=ro&immutable=1", uri=True, timeout=60,
                         isolation_level=None, check_same_thread=False,
                         factory=FullDiskSnapshot)
    try:
        # a log with content holds changes the main file lacks (a writer died, or
        # could not checkpoint on the full disk): reading without it would lie
        current = (
            not (wal.exists() and wal.stat().st_size > 0)
            and db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        )
    except sqlite3.Error:
        current = False
    if not current:
        db.close()
        raise _no_space(path) from cause
    db.row_factory = sqlite3.Row
    db.path = path
    return db


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION; refuse a database from a newer lamina."""
    with transaction(db):
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store at {path.parent} has schema version {version}, newer than this "
                f"lamina understands ({SCHEMA_VERSION})",
                hint="upgrade lamina, or use another --root",
            )
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {step + 1}")


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that takes the database write lock at once.

    ``BEGIN IMMEDIATE`` makes read-check-write sequences (create a layer
    unless it exists) atomic across processes. A write the full disk refuses is
    rolled back and raised as :class:`NoSpace`.
    """
    if isinstance(db, FullDiskSnapshot):
        raise _no_space(db.path)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorname", None) not in _DISK_FULL:
            raise
        file = db.execute("PRAGMA database_list").fetchone()["file"]
        raise _no_space(Path(file)) from exc


def _no_space(path: Path) -> NoSpace:
    return host_error(
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "record the change in", path,
        hint="free space on the store's filesystem (or use a --root on a larger one), then "
        "run the command again",
    )
