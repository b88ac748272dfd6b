"""Entry points of the installed distributions, read straight from their metadata files.

Every lamina command looks up the ``lamina.drivers`` group. ``importlib.metadata``
answers correctly but costs ~20 ms a start (it imports ``email``, ``zipfile``,
``csv``... and parses each distribution's whole metadata): a fifth of a quick
command. Where entry points live is fixed by the packaging specification: an
INI-style ``entry_points.txt`` in each ``<name>-<version>.dist-info`` (or
``.egg-info``) directory of a ``sys.path`` directory. This module reads those files
the way ``importlib.metadata.entry_points`` does (Python 3.11 to 3.13): the
directories of ``sys.path`` in order, their metadata directories in listing order,
the first distribution of a normalised name wins, the entries of a group in file order.

Whatever it does not read itself it leaves to ``importlib.metadata``: a zip file on
``sys.path``, a non-string ``sys.path`` entry, or an import hook on ``sys.meta_path``
that finds distributions of its own (``find_distributions``). A package installed in
any way ``pip`` installs is found exactly as before.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from importlib import import_module
from typing import Any

#: ``module``, ``module:attr.attr`` and optional ``[extras]`` (the packaging syntax)
_VALUE_RE = r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$"
_METADATA_DIR_SUFFIXES = (".dist-info", ".egg-info")


class EntryPoint:
    """One ``name = value`` line of a group, and the distribution that declares it."""

    __slots__ = ("_dist", "group", "name", "value")

    def __init__(self, name: str, value: str, group: str, dist: Any = None) -> None:
        self.name = name
        self.value = value
        self.group = group
        #: the metadata directory (a path string), an importlib.metadata
        #: Distribution (fallback), or None
        self._dist = dist

    def __repr__(self) -> str:
        return f"EntryPoint(name={self.name!r}, value={self.value!r}, group={self.group!r})"

    def load(self) -> Any:
        """Import the module the value names and return it, or the attribute it names."""
        match = re.match(_VALUE_RE, self.value)
        if match is None:
            raise ValueError(
                f"entry point {self.name!r} has an invalid value {self.value!r}: "
                "expected module or module:attribute"
            )
        obj: Any = import_module(match.group("module"))
        for attr in filter(None, (match.group("attr") or "").split(".")):
            obj = getattr(obj, attr)
        return obj

    @property
    def distribution(self) -> str | None:
        """``"<Name> <Version>"`` from the distribution's metadata (as ``pip list`` shows it).

        ``None`` when the entry point was not read from a distribution.
        """
        dist = self._dist
        if dist is None:
            return None
        if isinstance(dist, str):
            name, version = _name_and_version(dist)
        else:
            name, version = dist.name, dist.version
        return f"{name} {version}"


def entry_points(group: str) -> list[EntryPoint]:
    """Every installed entry point of ``group``, in ``importlib.metadata``'s order."""
    try:
        meta_dirs = list(_metadata_dirs()) if _plain_path_finder_only() else None
    except _NeedsImportlib:
        meta_dirs = None
    if meta_dirs is None:
        return _from_importlib_metadata(group)
    found: list[EntryPoint] = []
    seen: set[str] = set()
    for name, meta_dir in meta_dirs:
        if name in seen:
            continue  # an earlier distribution of that name shadows this one
        seen.add(name)
        text = _read(os.path.join(meta_dir, "entry_points.txt"))
        if text:
            found.extend(
                EntryPoint(key, value, group, meta_dir)
                for key, value in parse_entry_points(text, group)
            )
    return found


def distribution_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed.

    Read from the header of its METADATA, the distribution ``importlib.metadata``
    would find (``lamina --version``).
    """
    key = _normalize(name)
    try:
        if _plain_path_finder_only():
            for found, meta_dir in _metadata_dirs():
                if found == key:
                    return _name_and_version(meta_dir)[1]
            return None
    except _NeedsImportlib:
        pass
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def parse_entry_points(text: str, group: str) -> Iterator[tuple[str, str]]:
    """``(name, value)`` of each entry of ``[group]`` in an ``entry_points.txt``.

    Blank lines and ``#`` comments are skipped, as importlib.metadata does; a line
    without ``=`` (which importlib.metadata fails on) is skipped too.
    """
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
            continue
        if section == group:
            key, eq, value = line.partition("=")
            if eq:
                yield key.strip(), value.strip()


# --- what importlib.metadata would search -----------------------------------------------------


def _plain_path_finder_only() -> bool:
    """Whether only the standard path finder finds distributions.

    Other finders on ``sys.meta_path`` (an editable install's, say) find modules only.
    """
    from importlib.machinery import PathFinder

    return not any(
        finder is not PathFinder and getattr(finder, "find_distributions", None)
        for finder in sys.meta_path
    )


class _NeedsImportlib(Exception):
    """A ``sys.path`` entry that only importlib.metadata reads (a zip file, an egg)."""


def _metadata_dirs() -> Iterator[tuple[str, str]]:
    """``(normalised name, path)`` of the metadata directories on ``sys.path``, in
    importlib.metadata's search order.

    Within one ``sys.path`` directory, importlib.metadata groups the directories by
    normalised name, in listing order; the first one of a name is the one it uses.
    """
    for entry in sys.path:
        if not isinstance(entry, str):
            raise _NeedsImportlib
        root = entry or "."
        try:
            children = os.listdir(root)
        except NotADirectoryError:
            raise _NeedsImportlib from None
        except OSError:
            continue
        if root.lower().endswith(".egg"):
            raise _NeedsImportlib  # an unpacked egg: its metadata is named by its content
        by_name: dict[str, list[str]] = {}
        for child in children:
            if child.lower().endswith(_METADATA_DIR_SUFFIXES):
                if not child.endswith(_METADATA_DIR_SUFFIXES):
                    raise _NeedsImportlib  # "X.DIST-INFO": named by its content there too
                name = _normalize(child.rpartition(".")[0].partition("-")[0])
                by_name.setdefault(name, []).append(os.path.join(entry, child))
        for name, paths in by_name.items():
            for path in paths:
                yield name, path


def _normalize(name: str) -> str:
    """PEP 503 normalisation with dashes as underscores (importlib.metadata's key)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _name_and_version(meta_dir: str) -> tuple[str | None, str | None]:
    """``Name`` and ``Version`` from the header of METADATA (or PKG-INFO)."""
    text = _read(os.path.join(meta_dir, "METADATA")) or _read(os.path.join(meta_dir, "PKG-INFO"))
    name = version = None
    for line in (text or "").splitlines():
        if not line.strip():
            break  # the header ends at the first blank line; the description follows
        key, colon, value = line.partition(":")
        if not colon:
            continue
        key = key.strip().lower()
        if key == "name" and name is None:
            name = value.strip()
        elif key == "version" and version is None:
            version = value.strip()
    return name, version


def _from_importlib_metadata(group: str) -> list[EntryPoint]:
    import importlib.metadata

    return [
        EntryPoint(ep.name, ep.value, ep.group, ep.dist)
        for ep in importlib.metadata.entry_points(group=group)
    ]
