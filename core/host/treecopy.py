"""Copying and deleting whole directory trees, exactly and safely.

The vfs driver makes every layer a full copy of its parent, so this copy must
keep everything a container image can hold: hardlinks, symlinks (never
followed), device nodes, fifos, sockets, xattrs of every namespace,
ownership, setuid/setgid/sticky modes, sparse holes and nanosecond times.
Everything is done relative to open directory descriptors so a symlink
swapped in mid-copy can never redirect a read or a write.

File data goes through the cheapest path the filesystems offer: a reflink
(``FICLONE``, shares the blocks), else ``copy_file_range`` (an in-kernel
copy), else plain reads and writes. When a path is refused (EXDEV, EOPNOTSUPP,
...) for one pair of filesystems the refusal is remembered for the rest of the
copy, so the failed attempt is paid once, not once per file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from ..errors import DriverError, host_error
from .mounts import mounts_under

#: ioctl number of FICLONE (_IOW(0x94, 9, int)): share the source's extents
FICLONE = 0x40049409

#: errnos meaning "this copy method does not work between these filesystems"
_FALLBACK_ERRNOS = frozenset(
    {errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.ETXTBSY, errno.ENOTTY}
)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

#: chunk of the user-space copy; also the largest single copy_file_range call
_CHUNK = 1 << 20
_BIG = 1 << 30

#: names of the copy methods, in order of preference
METHODS = ("reflink", "copy_file_range", "plain")


class CopyStats:
    """What :func:`copy_tree` copied; ``methods`` counts files per data path."""

    def __init__(self) -> None:
        self.directories = 0
        self.files = 0
        self.symlinks = 0
        self.hardlinks = 0
        self.specials = 0
        self.bytes = 0
        self.methods: dict[str, int] = dict.fromkeys(METHODS, 0)

    @property
    def method(self) -> str:
        """The data path used for most files (``"none"`` when no file had data)."""
        best = max(METHODS, key=lambda m: self.methods[m])
        return best if self.methods[best] else "none"


def _listxattr_fd(fd: int) -> list[str]:
    try:
        return os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENOSYS):
            return []
        raise


def _copy_xattrs_fd(src: int, dst: int) -> None:
    for name in _listxattr_fd(src):
        os.setxattr(dst, name, os.getxattr(src, name))


def _copy_xattrs_path(src: str, dst: str) -> None:
    # symlinks and special files cannot be opened for f*xattr: go through
    # /proc/self/fd/<dirfd>/<name>, whose last component is not followed
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENOSYS):
            return
        raise
    for name in names:
        value = os.getxattr(src, name, follow_symlinks=False)
        os.setxattr(dst, name, value, follow_symlinks=False)


class _Copier:
    """State of one copy_tree call: hardlink map and refused copy methods."""

    def __init__(self, src: Path, dst_root_fd: int) -> None:
        self.src = src
        self.dst_root_fd = dst_root_fd
        self.dst_dev = os.fstat(dst_root_fd).st_dev
        self.links: dict[tuple[int, int], str] = {}
        self.no_reflink: set[int] = set()
        self.no_copy_range: set[int] = set()
        self.stats = CopyStats()

    # -- file data ------------------------------------------------------------

    def copy_data(self, fin: int, fout: int, st: os.stat_result) -> str:
        """Copy the content of ``fin`` into the empty ``fout``; returns the method used."""
        dev = st.st_dev
        if dev not in self.no_reflink:
            try:
                fcntl.ioctl(fout, FICLONE, fin)
            except OSError as exc:
                if exc.errno not in _FALLBACK_ERRNOS:
                    raise
                self.no_reflink.add(dev)
            else:
                return "reflink"
        size = st.st_size
        sparse = st.st_blocks * 512 < size
        if dev not in self.no_copy_range:
            try:
                if sparse:
                    self._copy_sparse(fin, fout, size, True)
                else:
                    copied = 0
                    copy_range = os.copy_file_range
                    while copied < size:
                        n = copy_range(fin, fout, min(size - copied, _BIG), copied, copied)
                        if n == 0:
                            break
                        copied += n
            except OSError as exc:
                if exc.errno not in _FALLBACK_ERRNOS:
                    raise
                self.no_copy_range.add(dev)
                os.ftruncate(fout, 0)
            else:
                return "copy_file_range"
        if sparse:
            self._copy_sparse(fin, fout, size, False)
        else:
            _copy_plain(fin, fout, 0, size)
        return "plain"

    def finish_file(self, fin: int, fout: int, st: os.stat_result) -> str | None:
        """Data, owner, mode, xattrs and times of one regular file; closes both fds.

        The order matters: writing data and chown both clear setuid bits and
        ``security.capability``, so mode and xattrs come after them, and
        times last.
        """
        try:
            try:
                method = self.copy_data(fin, fout, st) if st.st_size else None
                os.fchown(fout, st.st_uid, st.st_gid)
                os.fchmod(fout, st.st_mode & 0o7777)
                for xname in _listxattr_fd(fin):
                    os.setxattr(fout, xname, os.getxattr(fin, xname))
                os.utime(fout, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fout)
        finally:
            os.close(fin)
        return method

    @staticmethod
    def _copy_sparse(fin: int, fout: int, size: int, copy_range: bool) -> None:
        # copy only the data extents; the holes between them stay holes
        offset = 0
        while offset < size:
            try:
                data = os.lseek(fin, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            hole = min(os.lseek(fin, data, os.SEEK_HOLE), size)
            if copy_range:
                pos = data
                while pos < hole:
                    n = os.copy_file_range(fin, fout, hole - pos, pos, pos)
                    if n == 0:
                        break
                    pos += n
            else:
                _copy_plain(fin, fout, data, hole)
            offset = hole
        os.ftruncate(fout, size)

    # -- the walk ---------------------------------------------------------------

    def run(self, src_fd: int, dst_fd: int, root_st: os.stat_result) -> None:
        """Copy the children of ``src_fd`` into ``dst_fd``, depth first, without recursion.

        A frame is (source fd, destination fd, relative path, pending entries,
        the directory's stat). A directory's own metadata is applied when its
        last child is done, so its mtime is final and a default ACL on it
        cannot leak into copied children.
        """
        stack = [(src_fd, dst_fd, "", os.listdir(src_fd), root_st)]
        close = os.close
        try:
            self._walk(stack, src_fd)
        finally:
            for sfd, dfd, _, _, _ in stack:
                if sfd != src_fd:
                    close(sfd)
                    close(dfd)

    def _walk(self, stack: list, src_fd: int) -> None:
        S_IFMT = stat.S_IFMT
        S_IFREG, S_IFDIR, S_IFLNK = stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK
        lstat, open_, close, mkdir = os.lstat, os.open, os.close, os.mkdir
        fchown, fchmod, utime, link = os.fchown, os.fchmod, os.utime, os.link
        links, stats, dst_root_fd = self.links, self.stats, self.dst_root_fd
        finish_file, methods = self.finish_file, self.stats.methods
        while stack:
            sfd, dfd, rel, names, dst_st = stack[-1]
            descended = False
            name = ""
            try:
                while names:
                    name = names.pop()
                    st = lstat(name, dir_fd=sfd)
                    fmt = S_IFMT(st.st_mode)
                    if fmt == S_IFDIR:
                        mkdir(name, 0o700, dir_fd=dfd)
                        csfd = open_(name, _DIR_FLAGS, dir_fd=sfd)
                        try:
                            cdfd = open_(name, _DIR_FLAGS, dir_fd=dfd)
                        except BaseException:
                            close(csfd)
                            raise
                        stack.append((csfd, cdfd, f"{rel}{name}/", os.listdir(csfd), st))
                        stats.directories += 1
                        descended = True
                        break
                    if st.st_nlink > 1:
                        key = (st.st_dev, st.st_ino)
                        first = links.get(key)
                        if first is not None:
                            link(first, name, src_dir_fd=dst_root_fd, dst_dir_fd=dfd,
                                 follow_symlinks=False)
                            stats.hardlinks += 1
                            continue
                        links[key] = rel + name
                    if fmt == S_IFREG:
                        fin = open_(name, _READ_FLAGS, dir_fd=sfd)
                        try:
                            fout = open_(name, _CREATE_FLAGS, 0o600, dir_fd=dfd)
                        except BaseException:
                            close(fin)
                            raise
                        method = finish_file(fin, fout, st)
                        if method:
                            methods[method] += 1
                        stats.files += 1
                        stats.bytes += st.st_size
                    elif fmt == S_IFLNK:
                        os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
                        self._finish_node(sfd, dfd, name, st, chmod=False)
                        stats.symlinks += 1
                    else:
                        os.mknod(name, fmt | 0o600, st.st_rdev, dir_fd=dfd)
                        self._finish_node(sfd, dfd, name, st, chmod=True)
                        stats.specials += 1
                if descended:
                    continue
                # all children done: the directory's own metadata, times last
                name = ""
                fchown(dfd, dst_st.st_uid, dst_st.st_gid)
                fchmod(dfd, dst_st.st_mode & 0o7777)
                _copy_xattrs_fd(sfd, dfd)
                utime(dfd, ns=(dst_st.st_atime_ns, dst_st.st_mtime_ns))
            except OSError as exc:
                where = self.src / rel / name if name else self.src / rel
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise host_error(exc, "copy", where) from exc
                raise DriverError(
                    f"cannot copy {where}: {exc.strerror or exc}",
                    hint="check that the destination filesystem supports this entry "
                    "(xattrs, device nodes) and has free space",
                ) from exc
            stack.pop()
            if sfd != src_fd:
                close(sfd)
                close(dfd)

    def _finish_node(self, sfd: int, dfd: int, name: str, st: os.stat_result,
                     *, chmod: bool) -> None:
        """Owner, mode, xattrs and times of a symlink or special file (by name)."""
        os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
        if chmod:  # a node we just made, not a symlink: fchmodat is safe
            os.chmod(name, st.st_mode & 0o7777, dir_fd=dfd)
        _copy_xattrs_path(f"/proc/self/fd/{sfd}/{name}", f"/proc/self/fd/{dfd}/{name}")
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd,
                 follow_symlinks=False)


def _copy_plain(fin: int, fout: int, start: int, end: int) -> None:
    """User-space copy of bytes [start, end) at the same offsets."""
    pos = start
    while pos < end:
        chunk = os.pread(fin, min(_CHUNK, end - pos), pos)
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            n = os.pwrite(fout, view, pos)
            pos += n
            view = view[n:]


def copy_tree(src: Path, dst: Path) -> CopyStats:
    """Copy the directory ``src`` to ``dst``, which must not exist yet.

    ``dst``'s parent must exist; ``dst`` is created with ``src``'s owner,
    mode, xattrs and times. Nothing is followed: a symlink is copied as a
    symlink with its target verbatim. On failure the partial ``dst`` is
    deleted again and a :class:`DriverError` names the entry that failed.
    """
    src, dst = Path(src), Path(dst)
    try:
        src_fd = os.open(src, _DIR_FLAGS)
    except OSError as exc:
        raise DriverError(
            f"cannot copy {src}: {exc.strerror}",
            hint="the source of a tree copy must be an existing directory (not a symlink)",
        ) from exc
    try:
        root_st = os.fstat(src_fd)
        try:
            os.mkdir(dst, 0o700)
        except OSError as exc:
            raise DriverError(
                f"cannot create copy destination {dst}: {exc.strerror}",
                hint="the destination must not exist and its parent must",
            ) from exc
        try:
            dst_fd = os.open(dst, _DIR_FLAGS)
            try:
                copier = _Copier(src, dst_fd)
                copier.run(src_fd, dst_fd, root_st)
            finally:
                os.close(dst_fd)
        except BaseException:
            # the original error matters more than cleanup debris
            with contextlib.suppress(DriverError, OSError):
                remove_tree(dst)
            raise
    finally:
        os.close(src_fd)
    return copier.stats


def probe_copy_method(directory: Path) -> str:
    """The data path a copy within ``directory``'s filesystem takes.

    Makes two small files in ``directory`` and removes them again.
    """
    directory = Path(directory)
    base = f".lamina-probe-{os.getpid()}-{os.urandom(4).hex()}"
    src, dst = directory / f"{base}.a", directory / f"{base}.b"
    try:
        src.write_bytes(b"x" * 4096)
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            try:
                fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
                return "reflink"
            except OSError as exc:
                if exc.errno not in _FALLBACK_ERRNOS:
                    raise
            try:
                os.copy_file_range(fin.fileno(), fout.fileno(), 4096, 0, 0)
                return "copy_file_range"
            except OSError as exc:
                if exc.errno not in _FALLBACK_ERRNOS:
                    raise
            return "plain"
    finally:
        for path in (src, dst):
            path.unlink(missing_ok=True)


# --- deleting -------------------------------------------------------------------


def _refuse_mount(where: str | Path) -> DriverError:
    return DriverError(
        f"refusing to delete through a mount at {where}",
        hint=f"unmount {where} first (umount -l), then retry",
    )


def retire(path: Path, debris: Path) -> None:
    """Make the tree ``path`` stop existing in one step, to be deleted later as ``debris``.

    What a driver's ``remove`` does first: the rename is atomic, so a crash leaves
    either the whole layer or debris that the next create or remove of its id clears.
    Refuses while anything is mounted inside (never delete through a mount).
    """
    inside = mounts_under(path, include_self=True)
    if inside:
        raise _refuse_mount(inside[0])
    os.rename(path, debris)


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything below it; a missing ``path`` is fine.

    Refuses with a :class:`DriverError` before deleting anything when a mount
    lies at or below ``path`` (the mount table knows bind mounts that a device
    comparison misses), and again mid-way if a directory turns out to be on
    another device. The walk itself is :func:`remove_at`.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DriverError(f"cannot delete {path}: {exc.strerror}") from exc
    if stat.S_ISDIR(st.st_mode):
        found = mounts_under(path, include_self=True)
        if found:
            raise _refuse_mount(found[-1])
    parent_fd = os.open(path.parent, _DIR_FLAGS)
    try:
        remove_at(parent_fd, path.name)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise _refuse_mount(path) from exc
        raise DriverError(f"cannot delete {path}: {exc.strerror}") from exc
    finally:
        os.close(parent_fd)


def remove_at(dir_fd: int, name: str) -> None:
    """Delete ``name`` under ``dir_fd`` and everything below it, following nothing.

    Iterative (no recursion limit on deep trees); each directory is opened with
    ``O_NOFOLLOW`` relative to its parent's fd, so a symlink is removed, never
    entered. Raises FileNotFoundError when ``name`` does not exist, and
    :class:`DriverError` before descending into another filesystem (a mount
    below a layer is never emptied through it).
    """
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except IsADirectoryError:
        pass
    top = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    stack: list[tuple[int, str, list[str]]] = [(top, name, [])]
    try:
        device = os.fstat(dir_fd).st_dev
        _same_device(top, device, name)
        stack[-1][2].extend(os.listdir(top))
        while stack:
            fd, _, names = stack[-1]
            if names:
                child = names.pop()
                try:
                    os.unlink(child, dir_fd=fd)
                except IsADirectoryError:
                    sub = os.open(child, _DIR_FLAGS, dir_fd=fd)
                    try:
                        _same_device(sub, device, child)
                        stack.append((sub, child, os.listdir(sub)))
                    except BaseException:
                        os.close(sub)
                        raise
                except FileNotFoundError:
                    pass
                continue
            fd, dirname, _ = stack.pop()
            os.close(fd)
            os.rmdir(dirname, dir_fd=stack[-1][0] if stack else dir_fd)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _same_device(fd: int, device: int, name: str) -> None:
    if os.fstat(fd).st_dev != device:
        raise DriverError(
            f"refusing to delete {name!r}: it is on another filesystem (a mount point)",
            hint=f"unmount what is mounted at {name!r} first (umount -l), then retry",
        )
