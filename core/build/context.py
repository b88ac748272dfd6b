"""Where COPY and ADD read from: the build context, or another stage's or image's root.

A :class:`SourceTree` answers three questions for the build: which paths a source pattern
names (:meth:`~SourceTree.resolve`), what a copy of them would hold (:meth:`~SourceTree.walk`,
entry by entry, for :mod:`.copy`), and a digest of that (:meth:`~SourceTree.digest`, the
content part of a cache key). Docker's (BuildKit's) rules:

- A pattern is relative to the tree's root; a leading ``/`` and a trailing ``/`` mean
  nothing. Its first component holding ``*``, ``?`` or ``[`` starts the wildcard part,
  matched component by component with Go's ``filepath.Match`` (``\\`` escapes; ``*`` never
  crosses ``/``); the part before it is a plain path. A glob that matches nothing names
  nothing (BuildKit allows empty wildcards); a plain path that does not exist is an error.
- Symlinks are followed to find what a source names, and copied as symlinks beneath it.
- The build context is refused, not clamped, where a path would leave it: a pattern with
  ``..`` above the root, or a symlink that is absolute or climbs above the root. A
  root filesystem (``COPY --from``) resolves its symlinks as if it were ``/`` (``..``
  stops at the root, absolute targets start there), never against the host.
- ``.dockerignore``: an excluded file does not exist for COPY; an excluded directory
  exists only while an exception re-includes something beneath it, which is what BuildKit's
  context transfer sends.

Everything is opened relative to directory fds with ``O_NOFOLLOW``: no path string is
checked and then used. Regular files are opened ``O_NONBLOCK`` and checked by ``fstat``,
so a fifo planted in an image never blocks the build.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from ..errors import BuildError
from .dockerignore import Dockerignore
from .globs import match_regex

#: symlinks followed while resolving one path (Linux's limit too)
MAX_SYMLINKS = 40
#: xattrs a copy keeps (and the digest sees): the ones an image may carry
KEPT_XATTR_PREFIXES = ("user.", "security.capability")

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_CHUNK = 1 << 20


class Entry(NamedTuple):
    """One thing a copy takes: ``rel`` is its path beneath the copied source ("" for the
    source itself), ``dir_fd`` and ``name`` open it (valid until the walk moves on),
    ``st`` its lstat, ``link`` a symlink's target, ``real`` its path inside the tree."""

    rel: str
    dir_fd: int
    name: str
    st: os.stat_result
    link: str | None
    real: str


class _Found(NamedTuple):
    parent_fd: int  # owned by the caller
    name: str
    real: tuple[str, ...]
    st: os.stat_result


def has_wildcards(component: str) -> bool:
    """Whether a pattern component is a glob (``*``, ``?``, ``[`` not escaped by ``\\``)."""
    i = 0
    while i < len(component):
        if component[i] == "\\":
            i += 2
            continue
        if component[i] in "*?[":
            return True
        i += 1
    return False


def glob_regex(component: str) -> re.Pattern[str] | None:
    """Go's ``filepath.Match`` for one component as a regex; None for a bad pattern
    (BuildKit ignores the error: a bad pattern matches nothing)."""
    source = match_regex(component)
    return None if source is None else re.compile(source, re.DOTALL)


class SourceTree:
    """A directory COPY/ADD reads from: the context (with its .dockerignore) or a root
    filesystem (another stage's or an image's, mounted read-only by the engine)."""

    def __init__(self, path: Path, *, is_context: bool, ignore: Dockerignore | None) -> None:
        self.path = Path(path)
        self.is_context = is_context
        self.ignore = ignore if ignore is not None and ignore.patterns else None
        #: content hashes by (dev, ino, size, mtime, ctime): one read per file per build
        self._hashes: dict[tuple[int, ...], str] = {}

    @classmethod
    def context(cls, path: Path, ignore: Dockerignore | None = None) -> SourceTree:
        """The build context at ``path``; ``ignore`` hides what .dockerignore excludes."""
        return cls(path, is_context=True, ignore=ignore)

    @classmethod
    def rootfs(cls, path: Path) -> SourceTree:
        """A root filesystem: owners kept, symlinks resolved inside it."""
        return cls(path, is_context=False, ignore=None)

    def __repr__(self) -> str:
        return f"SourceTree.{'context' if self.is_context else 'rootfs'}({str(self.path)!r})"

    @property
    def what(self) -> str:
        return "the build context" if self.is_context else f"the source root {self.path}"

    # -- patterns ------------------------------------------------------------------------

    def components(self, pattern: str) -> list[str]:
        """The cleaned components of ``pattern``; ``..`` above the context is refused."""
        parts: list[str] = []
        for part in pattern.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    if self.is_context:
                        raise BuildError(
                            f"{pattern!r} is outside the build context",
                            hint="COPY and ADD see only the context's files: move the file "
                            "into the context, or give a larger context directory")
                    continue  # a root filesystem: '..' stops at '/'
                parts.pop()
            else:
                parts.append(part)
        return parts

    def resolve(self, pattern: str, *, exclude: Dockerignore | None = None) -> list[str]:
        """The paths (relative to the tree, "." for its root) that ``pattern`` names.

        A plain path must exist (a BuildError names it); a glob may match nothing, and
        ``exclude`` (``--exclude``) drops the matches whose wildcard part it matches. Each
        path is as matched: a symlink is followed when copied, not here.
        """
        parts = self.components(pattern)
        cut = next((i for i, p in enumerate(parts) if has_wildcards(p)), None)
        root_fd = self._open_root()
        try:
            if cut is None:
                found = self._follow(root_fd, parts, pattern)
                if found is None:
                    raise self._not_found(pattern)
                os.close(found.parent_fd)
                return ["/".join(parts) or "."]
            matches = self._glob(root_fd, parts[:cut], parts[cut:], pattern)
        finally:
            os.close(root_fd)
        if exclude is None:
            return matches
        depth = len(parts) - cut
        return [m for m in matches if not exclude.excluded("/".join(m.split("/")[-depth:]))]

    def _glob(self, root_fd: int, base: list[str], rest: list[str], pattern: str) -> list[str]:
        found = self._follow(root_fd, base, pattern)
        if found is None:
            raise self._not_found(pattern, "/".join(base))
        regexes = [glob_regex(p) for p in rest]
        matches: list[str] = []
        if not stat.S_ISDIR(found.st.st_mode) or None in regexes:
            os.close(found.parent_fd)
            return matches
        top = self._open_dir(found)
        frontier = [(top, found.real)]
        try:
            for depth, regex in enumerate(regexes):
                assert regex is not None
                last = depth == len(regexes) - 1
                nxt: list[tuple[int, tuple[str, ...]]] = []
                for fd, real in frontier:
                    for name in sorted(os.listdir(fd)):
                        if not regex.fullmatch(name):
                            continue
                        st = os.lstat(name, dir_fd=fd)
                        rel = (*real, name)
                        if not self._visible(fd, name, rel, st):
                            continue
                        if last:
                            matches.append("/".join(rel))
                        elif stat.S_ISDIR(st.st_mode):  # filepath.Walk never enters symlinks
                            nxt.append((os.open(name, _DIR, dir_fd=fd), rel))
                    os.close(fd)
                frontier = nxt
        finally:
            for fd, _ in frontier:
                os.close(fd)
        return matches

    def _not_found(self, pattern: str, part: str | None = None) -> BuildError:
        where = f"{part!r} of {pattern!r}" if part and part != pattern else repr(pattern)
        hint = ("check the path relative to the context's root, and that .dockerignore "
                "does not exclude it" if self.is_context else
                "check the path inside the stage or image given with --from")
        return BuildError(f"{where}: not found in {self.what}", hint=hint)

    # -- resolving inside the tree -------------------------------------------------------

    def _open_root(self) -> int:
        try:
            return os.open(self.path, _DIR & ~os.O_NOFOLLOW)
        except OSError as exc:
            raise BuildError(f"cannot open {self.what}: {exc.strerror}",
                             hint="check that the directory exists") from None

    def _open_dir(self, found: _Found) -> int:
        try:
            return os.open(found.name, _DIR, dir_fd=found.parent_fd)
        finally:
            os.close(found.parent_fd)

    def _follow(self, root_fd: int, parts: Sequence[str], pattern: str) -> _Found | None:
        """What ``parts`` names, every symlink followed inside the tree; None if missing
        or invisible. The context refuses a symlink that leaves it."""
        queue = list(parts)
        stack = [os.dup(root_fd)]
        real: list[str] = []
        hops = 0
        via: tuple[str, str] | None = None  # the last symlink followed, for the message
        try:
            while queue:
                name = queue.pop(0)
                if name in ("", "."):
                    continue
                if name == "..":
                    if real:
                        real.pop()
                        os.close(stack.pop())
                    elif self.is_context:
                        raise self._escapes(pattern, *(via or (None, None)))
                    continue
                try:
                    st = os.lstat(name, dir_fd=stack[-1])
                except (FileNotFoundError, NotADirectoryError):
                    return None
                except OSError as exc:
                    if exc.errno == errno.ENAMETOOLONG:
                        return None
                    raise
                rel = (*real, name)
                if stat.S_ISLNK(st.st_mode):
                    if self.ignore is not None and self.ignore.excluded("/".join(rel)):
                        return None
                    hops += 1
                    if hops > MAX_SYMLINKS:
                        raise BuildError(f"{pattern!r}: too many levels of symbolic links "
                                         f"in {self.what}", hint="remove the symlink loop")
                    target = os.readlink(name, dir_fd=stack[-1])
                    via = ("/".join(rel), target)
                    if target.startswith("/"):
                        if self.is_context:
                            raise self._escapes(pattern, "/".join(rel), target)
                        while len(stack) > 1:
                            os.close(stack.pop())
                        real.clear()
                    queue[:0] = target.split("/")
                    continue
                if not self._visible(stack[-1], name, rel, st, final=not queue):
                    return None
                if not queue:
                    return _Found(os.dup(stack[-1]), name, rel, st)
                if not stat.S_ISDIR(st.st_mode):
                    return None
                stack.append(os.open(name, _DIR, dir_fd=stack[-1]))
                real.append(name)
            if real:  # the path ended on '..' (or a symlink to it) below the root
                return _Found(os.dup(stack[-2]), real[-1], tuple(real), os.fstat(stack[-1]))
            return _Found(os.dup(root_fd), ".", (), os.fstat(stack[-1]))
        finally:
            for fd in stack:
                os.close(fd)

    def _escapes(self, pattern: str, link: str | None = None,
                 target: str | None = None) -> BuildError:
        via = f" through the symlink {link} -> {target}" if link else ""
        return BuildError(
            f"{pattern!r} leads outside the build context{via}",
            hint="COPY and ADD never follow a symlink out of the context: copy the file it "
            "points to into the context instead")

    def _visible(self, dir_fd: int, name: str, rel: tuple[str, ...], st: os.stat_result,
                 *, final: bool = True) -> bool:
        """Whether .dockerignore lets the build see ``rel`` (an excluded directory only
        while something beneath it is re-included)."""
        if self.ignore is None:
            return True
        path = "/".join(rel)
        if not self.ignore.excluded(path):
            return True
        if not stat.S_ISDIR(st.st_mode) or self.ignore.prunable(path):
            return False
        if not final:
            return True  # what lies beneath decides
        fd = os.open(name, _DIR, dir_fd=dir_fd)
        try:
            return self._any_included(fd, path)
        finally:
            os.close(fd)

    def _any_included(self, fd: int, path: str) -> bool:
        assert self.ignore is not None
        todo = [(os.dup(fd), path)]
        try:
            while todo:
                dfd, dpath = todo.pop()
                try:
                    for name in os.listdir(dfd):
                        child = f"{dpath}/{name}"
                        if not self.ignore.excluded(child):
                            return True
                        st = os.lstat(name, dir_fd=dfd)
                        if stat.S_ISDIR(st.st_mode) and not self.ignore.prunable(child):
                            todo.append((os.open(name, _DIR, dir_fd=dfd), child))
                finally:
                    os.close(dfd)
            return False
        finally:
            for dfd, _ in todo:
                os.close(dfd)

    # -- what a copy takes ---------------------------------------------------------------

    def walk(self, match: str, *, exclude: Dockerignore | None = None,
             pattern: str | None = None) -> Iterator[Entry]:
        """The entries a copy of ``match`` (a :meth:`resolve` result) takes: the source
        itself (followed if a symlink), then, for a directory, everything beneath it in
        name order, parents before children, symlinks not followed. ``exclude``
        (``--exclude``) is matched against paths beneath the source. Each entry's fd is
        valid until the next one is asked for."""
        pattern = match if pattern is None else pattern
        root_fd = self._open_root()
        try:
            found = self._follow(root_fd, self.components(match), pattern)
            if found is None:
                raise self._not_found(pattern, match)
            top_real = "/".join(found.real)
            try:
                yield Entry("", found.parent_fd, found.name, found.st, None, top_real)
                if not stat.S_ISDIR(found.st.st_mode):
                    return
                top_fd = os.open(found.name, _DIR, dir_fd=found.parent_fd)
            finally:
                os.close(found.parent_fd)
            yield from self._walk_dir(top_fd, top_real, exclude)
        finally:
            os.close(root_fd)

    def _walk_dir(self, top_fd: int, top_real: str,
                  exclude: Dockerignore | None) -> Iterator[Entry]:
        # a frame: (fd, rel prefix, names left (reversed), the directory's entry while an
        # exclusion keeps it back until something beneath it is included)
        frames: list[list] = [[top_fd, "", sorted(os.listdir(top_fd), reverse=True), None]]
        ignore = self.ignore
        prefix = top_real + "/" if top_real else ""
        try:
            while frames:
                frame = frames[-1]
                fd, base, names = frame[0], frame[1], frame[2]
                if not names:
                    os.close(fd)
                    frames.pop()
                    continue
                name = names.pop()
                rel = base + name
                st = os.lstat(name, dir_fd=fd)
                is_dir = stat.S_ISDIR(st.st_mode)
                held = False
                for matcher, path in ((ignore, prefix + rel), (exclude, rel)):
                    if matcher is not None and matcher.excluded(path):
                        if not is_dir or matcher.prunable(path):
                            break
                        held = True
                else:
                    link = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
                    entry = Entry(rel, fd, name, st, link, prefix + rel)
                    if not held:
                        for parent in frames:  # directories kept back: now they count
                            if parent[3] is not None:
                                yield parent[3]
                                parent[3] = None
                        yield entry
                    if is_dir:
                        child = os.open(name, _DIR, dir_fd=fd)
                        frames.append([child, rel + "/", sorted(os.listdir(child), reverse=True),
                                       entry if held else None])
        finally:
            for frame in frames:
                os.close(frame[0])

    # -- the cache key -------------------------------------------------------------------

    def digest(self, patterns: Sequence[str], *, exclude: Sequence[str] = ()) -> str:
        """``sha256:<hex>`` of what a COPY of ``patterns`` would copy: names, types,
        permission bits, owners (a root filesystem's; the context's are always root),
        symlink targets, device numbers, hardlinks, kept xattrs and file bytes; never
        times, which Docker's cache ignores too."""
        sha = hashlib.sha256()
        matcher = Dockerignore.parse("\n".join(exclude)) if exclude else None
        links: dict[tuple[int, int], str] = {}
        for pattern in patterns:
            sha.update(b"P\0" + os.fsencode(pattern) + b"\0")
            for match in self.resolve(pattern, exclude=matcher):
                sha.update(b"M\0" + os.fsencode(match) + b"\0")
                for entry in self.walk(match, exclude=matcher, pattern=pattern):
                    sha.update(self._entry_record(entry, links))
        return "sha256:" + sha.hexdigest()

    def _entry_record(self, entry: Entry, links: dict[tuple[int, int], str]) -> bytes:
        st = entry.st
        if not entry.rel and stat.S_ISDIR(st.st_mode):
            return b"T\0"  # a copied directory's own owner and mode are not copied
        owner = b"" if self.is_context else f"{st.st_uid}:{st.st_gid}".encode()
        head = b"\0".join((b"E", os.fsencode(entry.rel), b"%o" % st.st_mode, owner))
        fmt = stat.S_IFMT(st.st_mode)
        if fmt != stat.S_IFDIR and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in links:
                return head + b"\0L\0" + os.fsencode(links[key]) + b"\0"
            links[key] = entry.rel
        if fmt == stat.S_IFLNK:
            return head + b"\0S\0" + os.fsencode(entry.link or "") + b"\0"
        if fmt in (stat.S_IFCHR, stat.S_IFBLK):
            return head + b"\0D\0%d\0" % st.st_rdev
        if fmt == stat.S_IFREG:
            return head + b"\0F\0" + self._file_hash(entry).encode() + b"\0"
        if fmt == stat.S_IFDIR:
            fd = os.open(entry.name, _DIR, dir_fd=entry.dir_fd)
            try:
                return head + b"\0X\0" + _xattr_record(fd) + b"\0"
            finally:
                os.close(fd)
        return head + b"\0"

    def _file_hash(self, entry: Entry) -> str:
        st = entry.st
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known = self._hashes.get(key)
        if known is not None:
            return known
        fd = open_file(entry)
        try:
            sha = hashlib.sha256()
            while chunk := os.read(fd, _CHUNK):
                sha.update(chunk)
            value = sha.hexdigest() + ":" + _xattr_record(fd).hex()
        finally:
            os.close(fd)
        self._hashes[key] = value
        return value


def open_file(entry: Entry) -> int:
    """A read fd of a regular file entry; never blocks on a fifo swapped in for it."""
    fd = os.open(entry.name, _READ, dir_fd=entry.dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_ino != entry.st.st_ino:
        os.close(fd)
        raise BuildError(f"{entry.real or '.'} changed while being read",
                         hint="do not change the build context during a build")
    os.set_blocking(fd, True)
    return fd


def kept_xattrs(fd: int) -> list[tuple[str, bytes]]:
    """The xattrs of ``fd`` a copy keeps, sorted; [] where the filesystem has none."""
    try:
        names = os.listxattr(fd)
    except OSError:
        return []
    out = []
    for name in sorted(names):
        if name.startswith(KEPT_XATTR_PREFIXES):
            try:
                out.append((name, os.getxattr(fd, name)))
            except OSError:
                continue
    return out


def _xattr_record(fd: int) -> bytes:
    return b"".join(os.fsencode(n) + b"=" + v.hex().encode() + b";" for n, v in kept_xattrs(fd))
