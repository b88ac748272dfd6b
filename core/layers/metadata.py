"""The store's metadata database (SQLite, WAL) and its schema migrations.

SQLite because several lamina processes use one store at once: WAL lets
readers run beside one writer, and ``BEGIN IMMEDIATE`` serialises writers
across processes without a lock server.

Migrations are a list; ``MIGRATIONS[n]`` brings the schema from version n to
n + 1. A database newer than this lamina is refused instead of being guessed at.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ..errors import MetadataCorrupt, StoreError

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
]

SCHEMA_VERSION = len(MIGRATIONS)


#: SQLite's answers for a file that is damaged or not a database at all
_CORRUPT_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB


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
    the damaged page.
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
        db.execute("PRAGMA journal_mode=WAL")
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
        raise StoreError(
            f"cannot open the metadata database {path}: {exc}",
            hint="check that the store root is writable and not on a network filesystem",
        ) from exc
    return db


def _uri_path(path: Path) -> str:
    """``path`` for a ``file:`` URI (what urllib.parse.quote would do, without its import)."""
    return str(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _corrupt(path: Path, detail: str) -> MetadataCorrupt:
    return MetadataCorrupt(f"the metadata database {path} is corrupt ({detail})")


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
    unless it exists) atomic across processes.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    else:
        db.execute("COMMIT")
