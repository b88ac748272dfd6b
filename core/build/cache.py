"""The build cache: which layer a build step made, by a key of everything that decides it.

A step's key (:func:`step_key`) hashes the layer the step starts from (its id is a
ChainID: it names the whole stack's content), the instruction as expanded, and the
state that decides what the step does: for a RUN the environment (ENV and the ARGs in
effect), working directory, user, shell and network; for a COPY or ADD the *content*
of what it copies (:meth:`~lamina.core.build.context.SourceTree.digest`: names, modes,
bytes, never times), its destination and flags. Two steps with one key make the same
layer, so a hit is reused whatever build or Dockerfile asked for it, and any change
(a file's content, a build arg a RUN sees, an earlier step) gives another key. Metadata
steps (LABEL, CMD, EXPOSE, ...) make no layer and are not keyed: they change no later
step's result, as in BuildKit.

An entry is a small JSON file, ``<root>/buildcache/<key>.json``, written atomically
after its layer is ready. A hit counts only while that layer is in the store and ready
(``prune`` removes layers no image uses, and with them the cache's use): an entry
without its layer is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any, NamedTuple

from ..errors import LayerNotFound
from ..layers.store import Store

#: changes whenever what a key covers changes: old entries then simply miss
KEY_VERSION = "lamina-build-1"


class CacheEntry(NamedTuple):
    layer_id: str  # the ChainID's hex of the layer the step made
    diff_id: str
    size: int  # of the layer tar


def step_key(parent: str | None, kind: str, **parts: Any) -> str:
    """The key of a step of ``kind`` ("run", "copy", "add") on layer ``parent``."""
    doc = {"v": KEY_VERSION, "parent": parent, "kind": kind, **parts}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


class BuildCache:
    """The entries under one store root."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.directory = store.root / "buildcache"

    def get(self, key: str) -> CacheEntry | None:
        """The entry of ``key`` whose layer is still in the store and ready, else None."""
        try:
            entry = CacheEntry(**json.loads((self.directory / f"{key}.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None  # never written, or damaged: a miss rebuilds and rewrites it
        try:
            layer = self.store.layer(entry.layer_id)
        except LayerNotFound:
            return None
        return entry if layer.state == "ready" else None

    def put(self, key: str, entry: CacheEntry) -> None:
        """Record ``entry`` (its layer ready); a failure to record only costs a later miss."""
        with contextlib.suppress(OSError):
            self.directory.mkdir(mode=0o700, exist_ok=True)
            part = self.directory / f".{key}.{os.getpid()}"
            part.write_text(json.dumps(entry._asdict()))
            os.replace(part, self.directory / f"{key}.json")

    def stamp(self, key: str, now: str) -> str:
        """The time first recorded under ``key``, or ``now`` recorded there (an image's
        creation time, kept so that an unchanged build gives the same image id)."""
        path = self.directory / f"{key}.time"
        with contextlib.suppress(OSError):
            recorded = path.read_text().strip()
            if recorded:
                return recorded
        with contextlib.suppress(OSError):
            self.directory.mkdir(mode=0o700, exist_ok=True)
            part = self.directory / f".{key}.{os.getpid()}"
            part.write_text(now)
            os.replace(part, path)
        return now

    def prune(self) -> int:
        """Remove entries whose layer is gone; how many."""
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for path in self.directory.glob("*.json"):
                if self.get(path.stem) is None:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed
