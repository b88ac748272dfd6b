"""Applying a layer tar straight into an overlay layer's ``diff/`` directory, unmounted.

The core's applier (:mod:`lamina.core.layertar.apply`) does the safe path resolution
and the entries; this module gives it overlay's deletion records and makes
the upper directory look, before each entry, as the kernel's copy-up would
have made it in a mounted layer:

- a parent directory that only a lower layer has is created in ``diff/``
  with the lower directory's owner, mode, xattrs and mtime (not opaque, so
  it still merges), instead of the applier's fresh 0755 directory;
- a lower symlink on the way (``var/run -> /run``) is copied up so the
  applier follows it exactly as it would in the merged tree;
- a hardlink whose target only a lower layer has gets the target copied up
  first (as the kernel does: the copy leaves the lower inode's other names);
- ``.wh.name`` becomes a 0/0 character device when a lower layer shows
  ``name`` (nothing is recorded for a name nothing below has), the opaque
  marker sets ``trusted.overlay.opaque=y``, and a directory the layer makes
  where it deleted a lower entry is made opaque, so nothing of the deleted
  tree shows through it.

Without a parent the tar goes into ``diff/`` as into any directory: there is
nothing below to hide or copy.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import IO, ClassVar

from lamina.core.driver import ApplyResult
from lamina.core.errors import DriverError, LaminaError
from lamina.core.host.treecopy import remove_at
from lamina.core.layers.changes import read_xattrs
from lamina.core.layertar import apply as core_apply
from lamina.core.layertar.apply import MergedWhiteouts, apply_tar
from lamina.core.layertar.reader import DIR, HARDLINK, TarEntry

from .stack import OPAQUE_XATTR, LayerStack, copy_metadata, is_whiteout

MAX_SYMLINK_HOPS = core_apply.MAX_SYMLINK_HOPS
_WHITEOUT_DEV = os.makedev(0, 0)


class NothingBelow:
    """Whiteouts of a layer without parent: there is nothing to hide."""

    create_parents: ClassVar[bool] = False

    def whiteout(self, dir_fd: int, name: str) -> None:
        pass

    def opaque(self, dir_fd: int, dir_path: str) -> None:
        pass


def _rel(root: str, dir_fd: int) -> str:
    """The path of an open directory relative to the layer root."""
    path = os.readlink(f"/proc/self/fd/{dir_fd}")
    if path == root:
        return ""
    if not path.startswith(root + "/"):
        raise DriverError(f"a directory of the layer resolved outside it: {path}")
    return path[len(root) + 1 :]


def _set_opaque(dir_fd: int, name: str | None = None) -> None:
    fd = os.open(name or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        os.setxattr(fd, OPAQUE_XATTR, b"y")
    finally:
        os.close(fd)


class OverlayWhiteouts:
    """Deletions as overlay records them in an upper directory."""

    create_parents: ClassVar[bool] = False

    def __init__(self, root: str, stack: LayerStack, mine: set[str]) -> None:
        self.root = root
        self.stack = stack  # the upper first, then the lowers
        self.mine = mine
        self.merged = MergedWhiteouts(mine)
        #: paths whited out, to make a directory the layer puts there opaque
        self.whited: set[str] = set()

    def whiteout(self, dir_fd: int, name: str) -> None:
        rel = _rel(self.root, dir_fd)
        path = f"{rel}/{name}" if rel else name
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            remove_at(dir_fd, name)
        self.stack.forget()
        if self.stack.lookup(path) is None:
            return  # nothing below shows that name
        os.mknod(name, stat.S_IFCHR | 0o000, _WHITEOUT_DEV, dir_fd=dir_fd)
        self.whited.add(path)

    def opaque(self, dir_fd: int, dir_path: str) -> None:
        # what this layer did not make in that directory goes (copied-up parents, records)
        self.merged.opaque(dir_fd, dir_path)
        _set_opaque(dir_fd)
        self.stack.forget()

    def finish(self, root_fd: int) -> None:
        """A directory made where the layer deleted a lower entry hides that entry's tree."""
        for path in sorted(self.whited):
            with contextlib.suppress(OSError):
                st = os.stat(path, dir_fd=root_fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    parent, _, name = path.rpartition("/")
                    pfd = os.open(parent or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                                  dir_fd=root_fd)
                    try:
                        _set_opaque(pfd, name)
                    finally:
                        os.close(pfd)


def _copy_data(src_fd: int, dst_fd: int, size: int) -> None:
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src_fd, dst_fd, size - done)
            if n == 0:
                break
            done += n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    os.lseek(src_fd, done, os.SEEK_SET)
    os.lseek(dst_fd, done, os.SEEK_SET)
    while chunk := os.read(src_fd, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst_fd, view) :]


class _CopyUp:
    """Brings lower entries into the upper directory before the applier needs them."""

    def __init__(self, root: str, stack: LayerStack) -> None:
        self.root = root
        self.stack = stack
        #: directories known to exist in the upper (reset when anything is removed)
        self.ready: set[str] = {""}

    def _upper(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def dirs(self, parts: list[str]) -> str | None:
        """Make the directory ``parts`` resolvable in the upper as in the merged tree.

        Returns its real (symlink-free) path, or None when the merged tree has
        no directory there (the applier then does what it does anyway).
        """
        real: list[str] = []
        todo = list(reversed(parts))
        hops = 0
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if real:
                    real.pop()
                continue
            path = "/".join((*real, name))
            if path in self.ready:
                real.append(name)
                continue
            try:
                st = os.lstat(self._upper(path))
            except FileNotFoundError:
                found = self.stack.lookup(path)
                if found is None or found[0] == 0:
                    return None
                st = found[1]
                src = f"{self.stack.layers[found[0]]}/{path}"
                if stat.S_ISDIR(st.st_mode):
                    self._mkdir(path, src, st)
                elif stat.S_ISLNK(st.st_mode):
                    self._symlink(path, src, st)
                else:
                    return None
            except NotADirectoryError:
                return None
            if stat.S_ISDIR(st.st_mode):
                self.ready.add(path)
                real.append(name)
            elif stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    return None
                target = os.readlink(self._upper(path))
                todo.extend(reversed(target.split("/")))
                if target.startswith("/"):
                    real = []
            else:
                return None
        return "/".join(real)

    def _mkdir(self, path: str, src: str, st: os.stat_result) -> None:
        os.mkdir(self._upper(path), 0o700)
        fd = os.open(self._upper(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            copy_metadata(src, fd, st)
        finally:
            os.close(fd)

    def _symlink(self, path: str, src: str, st: os.stat_result) -> None:
        dst = self._upper(path)
        os.symlink(os.readlink(src), dst)
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def file(self, parts: list[str]) -> None:
        """Copy up the non-directory ``parts`` (a hardlink target) if only a lower has it."""
        real = self.dirs(parts[:-1])
        if real is None:
            return
        path = f"{real}/{parts[-1]}" if real else parts[-1]
        if os.path.lexists(self._upper(path)):
            return
        found = self.stack.lookup(path)
        if found is None or found[0] == 0:
            return
        index, st = found
        src = f"{self.stack.layers[index]}/{path}"
        dst = self._upper(path)
        if stat.S_ISREG(st.st_mode):
            sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | os.O_CLOEXEC, 0o600)
                try:
                    _copy_data(sfd, dfd, st.st_size)
                    copy_metadata(src, dfd, st)
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)
        elif stat.S_ISLNK(st.st_mode):
            self._symlink(path, src, st)
        elif not stat.S_ISDIR(st.st_mode):
            os.mknod(dst, st.st_mode, st.st_rdev)
            os.chown(dst, st.st_uid, st.st_gid)
            os.chmod(dst, stat.S_IMODE(st.st_mode))
            for key, value in read_xattrs(src).items():
                os.setxattr(dst, key, value, follow_symlinks=False)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def replaced_whiteout_parent(self, parts: list[str]) -> None:
        """A path below a whited-out name: make that name a fresh opaque directory.

        ``.wh.foo`` then ``foo/bar`` without a ``foo/`` entry means a new
        ``foo`` (the applier would make it implicitly over nothing).
        """
        for i in range(1, len(parts)):
            path = "/".join(parts[:i])
            try:
                st = os.lstat(self._upper(path))
            except (FileNotFoundError, NotADirectoryError):
                return
            if is_whiteout(st):
                os.unlink(self._upper(path))
                os.mkdir(self._upper(path), 0o755)
                os.chmod(self._upper(path), 0o755)
                os.setxattr(self._upper(path), OPAQUE_XATTR, b"y")
                return
            if not stat.S_ISDIR(st.st_mode):
                return


def apply_layer(stream: IO[bytes], upper: Path, lowers: list[Path]) -> ApplyResult:
    """Apply an uncompressed layer tar into ``upper`` over ``lowers`` (top-most first)."""
    if not lowers:
        return apply_tar(stream, upper, whiteouts=NothingBelow())
    root = os.path.realpath(upper)
    stack = LayerStack([root, *lowers])
    copy_up = _CopyUp(root, stack)
    made: list[OverlayWhiteouts] = []

    def whiteouts_for(mine: set[str]) -> OverlayWhiteouts:
        made.append(OverlayWhiteouts(root, stack, mine))
        return made[-1]

    # the core's applier with overlay's whiteouts and a copy-up step before each entry
    return core_apply.apply_tar_with(
        stream,
        Path(root),
        whiteouts_for=whiteouts_for,
        before=lambda entry: _prepare(entry, copy_up, stack),
        after=lambda root_fd: made[-1].finish(root_fd),
    )


def _prepare(entry: TarEntry, copy_up: _CopyUp, stack: LayerStack) -> None:
    parts = core_apply.clean_path(entry.path)
    if not parts:
        return
    name = parts[-1]
    if parts[0].startswith(core_apply.AUFS_META_PREFIX) and parts != [core_apply.OPAQUE_MARKER]:
        return
    is_whiteout_entry = name.startswith(core_apply.WHITEOUT_PREFIX)
    if is_whiteout_entry or (entry.kind != DIR and "/".join(parts) in copy_up.ready):
        # a whiteout or a non-directory may remove directories: cached state goes
        copy_up.ready = {""}
        stack.forget()
    if not is_whiteout_entry:
        copy_up.replaced_whiteout_parent(parts)
    copy_up.dirs(parts[:-1])
    if entry.kind == HARDLINK:
        with contextlib.suppress(LaminaError):
            target = core_apply.clean_path(entry.linkname)
            if target:
                copy_up.file(target)
