"""Looking paths up through a stack of layer directories the way overlayfs does.

The native diff and the native apply work on the layers' own directories
without a mount, so they need the kernel's lookup rules in user space: the
top-most entry of a path wins; a 0/0 character device is a whiteout (the path
does not exist); a directory merges with directories of the same path below
it until a layer's directory is opaque (``trusted.overlay.opaque=y``) or a
lower layer has a non-directory there. Lookups of directories are cached, so
walking many entries of one directory costs one lookup of the directory.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

OPAQUE_XATTR = "trusted.overlay.opaque"


def is_whiteout(st: os.stat_result) -> bool:
    """A 0/0 character device: how overlayfs records a deletion."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    """Whether the directory at ``path`` hides the layers below it."""
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.ENOENT):
            return False
        raise


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


class LayerStack:
    """Layer directories, top-most first, seen as one tree without mounting them."""

    def __init__(self, layers: list[Path | str]) -> None:
        self.layers = [os.fspath(p) for p in layers]
        #: directory path -> indexes of the layers whose directories merge there
        self._dirs: dict[str, list[int]] = {"": self._root_layers()}

    def _root_layers(self) -> list[int]:
        out = []
        for i, layer in enumerate(self.layers):
            out.append(i)
            if is_opaque(layer):
                break
        return out

    def forget(self) -> None:
        """Drop cached lookups (after the top layer changed)."""
        self._dirs = {"": self._root_layers()}

    def _full(self, index: int, path: str) -> str:
        return f"{self.layers[index]}/{path}" if path else self.layers[index]

    def merged_dirs(self, path: str) -> list[int] | None:
        """Indexes of the layers whose directory ``path`` merges, or None if not a directory."""
        hit = self._dirs.get(path)
        if hit is not None or path in self._dirs:
            return hit
        parent, _, _ = path.rpartition("/")
        active = self.merged_dirs(parent)
        result: list[int] | None = None
        if active is not None:
            found = self._lookup_in(active, path)
            if found is not None and stat.S_ISDIR(found[1].st_mode):
                result = []
                for i in active:
                    if i < found[0]:
                        continue
                    full = self._full(i, path)
                    st = found[1] if i == found[0] else _lstat(full)
                    if st is None:
                        continue
                    if not stat.S_ISDIR(st.st_mode):
                        break  # a non-directory (or whiteout) ends the merge
                    result.append(i)
                    if is_opaque(full):
                        break
        self._dirs[path] = result
        return result

    def _lookup_in(self, active: list[int], path: str) -> tuple[int, os.stat_result] | None:
        for i in active:
            st = _lstat(self._full(i, path))
            if st is None:
                continue
            if is_whiteout(st):
                return None
            return i, st
        return None

    def lookup(self, path: str) -> tuple[int, os.stat_result] | None:
        """The layer index and lstat of the entry the merged tree shows at ``path``."""
        if not path:
            return 0, os.lstat(self.layers[0])
        parent, _, _ = path.rpartition("/")
        active = self.merged_dirs(parent)
        if active is None:
            return None
        return self._lookup_in(active, path)

    def path_of(self, path: str) -> str | None:
        """The real path of what the merged tree shows at ``path``."""
        found = self.lookup(path)
        return None if found is None else self._full(found[0], path)

    def listdir(self, path: str) -> dict[str, tuple[int, os.stat_result]]:
        """The merged directory ``path``: name -> (layer index, lstat); whiteouts removed."""
        active = self.merged_dirs(path)
        out: dict[str, tuple[int, os.stat_result]] = {}
        hidden: set[str] = set()
        for i in active or ():
            try:
                with os.scandir(self._full(i, path)) as it:
                    for entry in it:
                        if entry.name in out or entry.name in hidden:
                            continue
                        st = entry.stat(follow_symlinks=False)
                        if is_whiteout(st):
                            hidden.add(entry.name)
                        else:
                            out[entry.name] = (i, st)
            except FileNotFoundError:
                continue
        return out


def copy_metadata(src: str, dst_fd: int, st: os.stat_result) -> None:
    """Give ``dst_fd`` the owner, mode, xattrs (overlay's own left out) and times of
    ``src``, whose stat is ``st``: what a copy-up of a directory keeps."""
    from lamina.core.layers.changes import read_xattrs

    os.fchown(dst_fd, st.st_uid, st.st_gid)
    os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
    for key, value in read_xattrs(src).items():
        os.setxattr(dst_fd, key, value)
    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
