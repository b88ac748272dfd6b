"""The fuse-overlayfs driver: overlay layers mounted by the fuse-overlayfs program.

Layers are stored the way the kernel's overlay driver stores them, but
mounted in user space, which works where the kernel's overlay does not:
on top of another overlay (a lamina store inside a container whose root is
an overlay), and in nested setups. Layout under ``home``::

    layers/<id>/diff/     the layer's own content (the upper directory)
    layers/<id>/work/     fuse-overlayfs' work directory
    layers/<id>/merged/   mount point of the combined tree
    layers/<id>/wrote     a writable mount ran since diff/ was cleaned (see _forget_origins)
    layers/.tmp-<id>-<hex>/ a create in progress (debris if the process died)
    layers/.rm-<id>-<hex>/  a remove in progress (finished by the next remove)
    empty/                the lower directory of a base layer's writable mount

A layer exists once ``layers/<id>`` does: create builds the whole directory
under a temporary name and renames it, remove renames it away before
deleting, so a crash leaves either a whole layer or debris that the next
create or remove of that id clears. The parent chain is not stored: the
core hands ``mount`` the layer's ancestors.

Mounts: a read-only mount is ``lowerdir=`` the layer's ``diff`` and its
parents' (no upper: fuse-overlayfs answers EROFS, and the mount is ``ro``);
a writable mount adds ``upperdir=diff``. fuse-overlayfs itself records
deletions in ``diff/`` (as root: 0/0 character devices and the
``trusted.overlay.opaque`` xattr, the kernel's format). ``apply`` of a base
layer writes the tar straight into ``diff/``; a child layer is filled
through a writable mount (see :meth:`FuseOverlayDriver.apply` for why).
``changes``, ``diff`` and ``diff_size`` are the core's generic ones, which
compare mounted trees: correct whatever fuse-overlayfs wrote into
``diff/``, at the cost of walking the whole tree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

from lamina.core.driver import ApplyResult, Capabilities, Driver, LayerViews
from lamina.core.errors import DriverError, LayerExists, LayerNotFound, StoreClosed
from lamina.core.host import mounts
from lamina.core.host.fsinfo import filesystem_type
from lamina.core.host.treecopy import remove_tree
from lamina.core.layertar.apply import apply_tar

from . import fuse

#: made before a writable mount, removed once fuse-overlayfs' origin marks are gone from diff/
WROTE = "wrote"
#: where fuse-overlayfs' copy-up records the lower path a file came from
ORIGIN_XATTR = "user.fuseoverlayfs.origin"


class FuseOverlayDriver(Driver):
    """Overlay layers (diff/work/merged per layer) mounted with fuse-overlayfs."""

    name: ClassVar[str] = "fuse-overlayfs"
    description: ClassVar[str] = (
        "overlay layers mounted in user space by fuse-overlayfs; works on top of overlay"
    )
    capabilities: ClassVar[Capabilities] = Capabilities(
        root_mode=0o755,
        rename_lower_dir=False,  # rename(2) of a lower directory fails with EXDEV (mv copies)
        # a writable mount copies every name of a hardlinked lower file up itself, as one
        # inode: fuse-overlayfs copies only the name it is reached through
        hardlinks_survive_copy_up=True,
        # its copyup() makes a new symlink and sets no times, and leaves the parent
        # directory's mtime changed (fuse-overlayfs 1.10 and upstream)
        copy_up_keeps_mtimes=False,
        # it makes directories, fifos, devices and symlinks (and files where a whiteout
        # was) in its work directory and chowns them to the caller: no setgid inheritance
        setgid_dirs_inherit_group=False,
        quota=False,
        sparse_files=False,
        subsecond_mtime=True,
        native_diff=False,
        max_depth=500,
        needs_root=True,  # /dev/fuse, whiteout devices and trusted.* xattrs in diff/
    )

    def __init__(self, home: Path, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(home, options)
        self.layers = self.home / "layers"
        self.empty = self.home / "empty"
        self.layers.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.empty.mkdir(mode=0o755, exist_ok=True)

    # -- support -----------------------------------------------------------------------

    @classmethod
    def check_support(cls, root: Path) -> str | None:
        """Mount a real two-layer stack under ``root``, delete through it, check the upper."""
        if fuse.program() is None:
            return "fuse-overlayfs is not installed (apt-get install fuse-overlayfs)"
        if os.geteuid() != 0:
            return "the fuse-overlayfs driver needs root (/dev/fuse, whiteout devices)"
        try:
            os.close(os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC))
        except OSError as exc:
            return f"/dev/fuse is not usable: {exc.strerror} (load the fuse module)"
        try:
            probe = Path(tempfile.mkdtemp(prefix=".fuse-overlayfs-probe-", dir=root))
        except OSError as exc:
            return f"cannot write to {root}: {exc.strerror}"
        try:
            return cls._probe(probe)
        finally:
            with contextlib.suppress(DriverError, OSError):
                fuse.unmount(probe / "merged")
            remove_tree(probe)

    @staticmethod
    def _probe(probe: Path) -> str | None:
        """Write through a writable mount, then read the result back as a read-only stack."""
        for sub in ("lower", "upper", "work", "merged"):
            (probe / sub).mkdir()
        (probe / "lower" / "gone").write_bytes(b"")
        (probe / "lower" / "dir").mkdir()
        try:
            fuse.mount(probe / "merged", ["lower"], upper="upper", work="work", cwd=probe)
        except DriverError as exc:
            return str(exc)
        try:
            os.unlink(probe / "merged" / "gone")
            (probe / "merged" / "dir" / "new").write_bytes(b"x")
        except OSError as exc:
            return f"writing through a fuse-overlayfs mount failed: {exc.strerror}"
        finally:
            fuse.unmount(probe / "merged")
        try:
            fuse.mount(probe / "merged", ["upper", "lower"], cwd=probe)
        except DriverError as exc:
            return str(exc)
        try:
            seen = sorted(os.listdir(probe / "merged")), os.listdir(probe / "merged" / "dir")
        finally:
            fuse.unmount(probe / "merged")
        if seen != (["dir"], ["new"]):
            return f"fuse-overlayfs on {filesystem_type(probe)} lost a deletion or a write"
        return None

    # -- paths and state ----------------------------------------------------------------

    def _dir(self, layer_id: str) -> Path:
        return self.layers / layer_id

    def _check_open(self) -> None:
        if self.closed:
            raise StoreClosed(f"the fuse-overlayfs driver on {self.home} is closed",
                              hint="open the store again to keep working with it")

    def _not_found(self, layer_id: str) -> LayerNotFound:
        return LayerNotFound(layer_id, f"fuse-overlayfs layer {layer_id!r} does not exist",
                             hint="`lamina layer ls` lists the layers")

    def _debris(self, layer_id: str) -> list[Path]:
        """Half-made or half-removed copies of ``layer_id`` (``.tmp-``/``.rm-<id>-<8 hex>``)."""
        pattern = re.compile(r"\.(tmp|rm)-" + re.escape(layer_id) + r"-[0-9a-f]{8}")
        with os.scandir(self.layers) as it:
            return [self.layers / e.name for e in it if pattern.fullmatch(e.name)]

    @staticmethod
    def _lowers(parents: Sequence[str]) -> list[str]:
        """The parents' diff directories, nearest first, relative to ``layers/``."""
        return [f"{p}/diff" for p in parents]

    def _delete(self, path: Path) -> None:
        """Unmount what a crash left in ``path``, then delete it; never through a mount."""
        merged = path / "merged"
        if os.path.lexists(merged):
            fuse.unmount(merged)
        left = mounts.mounts_under(path, include_self=True)
        if left:
            raise DriverError(f"refusing to delete through a mount at {left[0]}",
                              hint=f"unmount {left[0]} first, then retry")
        remove_tree(path)

    # -- the contract ---------------------------------------------------------------------

    def exists(self, layer_id: str) -> bool:
        return self._dir(layer_id).is_dir()

    def create(self, layer_id: str, parents: Sequence[str], *, writable: bool) -> None:
        self._check_open()
        if self.exists(layer_id):
            raise LayerExists(layer_id, f"fuse-overlayfs layer {layer_id!r} exists already",
                              hint="remove it first or choose another id")
        if parents and not self.exists(parents[0]):
            raise LayerNotFound(
                parents[0], f"parent layer {parents[0]!r} of {layer_id!r} does not exist",
                hint="create the parent first; `lamina layer ls` lists the layers")
        if len(parents) + 1 > self.capabilities.max_depth:
            raise DriverError(
                f"layer {layer_id!r} would be {len(parents) + 1} layers deep; "
                f"fuse-overlayfs mounts at most {self.capabilities.max_depth}",
                hint="flatten the image (export the merged tree as one layer)")
        for path in self._debris(layer_id):
            self._delete(path)
        tmp = self.layers / f".tmp-{layer_id}-{os.urandom(4).hex()}"
        try:
            tmp.mkdir(mode=0o700)
            (tmp / "diff").mkdir()
            if not parents:
                os.chmod(tmp / "diff", self.capabilities.root_mode)
            else:
                self._inherit_root(self._dir(parents[0]) / "diff", tmp / "diff")
            (tmp / "work").mkdir(mode=0o700)
            (tmp / "merged").mkdir(mode=0o700)
            os.rename(tmp, self._dir(layer_id))
        except BaseException:
            with contextlib.suppress(DriverError, OSError):
                remove_tree(tmp)
            raise

    @staticmethod
    def _inherit_root(parent_diff: Path, diff: Path) -> None:
        """Give a child's ``diff/`` the parent's root metadata.

        An overlay shows the top-most layer's root directory, so an empty
        child must carry what its parent shows (case 14: a root chmod
        holds through later layers). The opaque marker stays behind.
        """
        st = os.lstat(parent_diff)
        os.chown(diff, st.st_uid, st.st_gid)
        os.chmod(diff, stat.S_IMODE(st.st_mode))
        for name in os.listxattr(parent_diff):
            if not name.startswith("trusted.overlay."):
                os.setxattr(diff, name, os.getxattr(parent_diff, name))
        os.utime(diff, ns=(st.st_atime_ns, st.st_mtime_ns))

    def remove(self, layer_id: str) -> None:
        self._check_open()
        final = self._dir(layer_id)
        debris = self._debris(layer_id)
        if not os.path.lexists(final) and not debris:
            raise self._not_found(layer_id)
        if os.path.lexists(final):
            merged = final / "merged"
            if os.path.lexists(merged):
                fuse.unmount(merged)
            left = mounts.mounts_under(final, include_self=True)
            if left:
                raise DriverError(f"refusing to delete through a mount at {left[0]}",
                                  hint=f"unmount {left[0]} first, then remove {layer_id!r} again")
            gone = self.layers / f".rm-{layer_id}-{os.urandom(4).hex()}"
            os.rename(final, gone)  # the layer stops existing here, atomically
            debris.append(gone)
        for path in debris:
            self._delete(path)

    def mount(self, layer_id: str, parents: Sequence[str], *, readonly: bool) -> Path:
        self._check_open()
        if not self.exists(layer_id):
            raise self._not_found(layer_id)
        layer = self._dir(layer_id)
        merged = layer / "merged"
        if mounts.is_mountpoint(merged):
            self.unmount(layer_id)  # left by a crash; we do not know how it was mounted
        lower = self._lowers(parents)
        if readonly:
            fuse.mount(merged, [f"{layer_id}/diff", *lower], cwd=self.layers)
        else:
            self._mount_writable(layer_id, lower)
        try:
            mistaken = _look_up_everything(merged)
            if not readonly:
                todo = _copy_up_plan(merged, layer / "diff",
                                     [self.layers / d for d in lower], mistaken)
                if todo:  # fuse-overlayfs would copy these up wrong: do it first
                    fuse.unmount(merged)
                    _copy_up(layer / "diff", todo)
                    self._mount_writable(layer_id, lower)
                    _look_up_everything(merged)
        except BaseException:
            self.unmount(layer_id)
            raise
        return merged

    def _mount_writable(self, layer_id: str, lower: list[str]) -> None:
        """Mount with ``diff/`` as the upper directory, marking it for :func:`_forget_origins`."""
        (self._dir(layer_id) / WROTE).touch()
        fuse.mount(self._dir(layer_id) / "merged",
                   lower or [os.path.relpath(self.empty, self.layers)],
                   upper=f"{layer_id}/diff", work=f"{layer_id}/work", cwd=self.layers)

    def unmount(self, layer_id: str) -> None:
        """Unmount; after a writable mount, clear fuse-overlayfs' origin marks from ``diff/``.

        The marker file survives a crash, so the next mount's clean-up of the
        stale mount clears them then.
        """
        layer = self._dir(layer_id)
        if os.path.lexists(layer / "merged"):
            fuse.unmount(layer / "merged")
        if os.path.lexists(layer / WROTE):
            _forget_origins(layer / "diff")
            os.unlink(layer / WROTE)

    # -- apply ------------------------------------------------------------------------------

    def apply(self, layer_id: str, parents: Sequence[str], stream: IO[bytes],
              views: LayerViews) -> ApplyResult:
        """A base layer: extract straight into ``diff/``; a child: the core's generic apply.

        Without parents ``diff/`` is the whole tree, so the core's applier
        with its default whiteouts (which delete, here nothing) is exact and
        skips FUSE for the usually largest layer of an image. A child goes
        through a writable mount: where a tar's whiteout or a path component
        lands depends on the lower layers (a parent that is a file below, a
        symlink below, a directory this tar both hides and fills), and the
        mount resolves all of that the way fuse-overlayfs will show it.
        """
        self._check_open()
        if not self.exists(layer_id):
            raise self._not_found(layer_id)
        if parents:
            return super().apply(layer_id, parents, stream, views)
        return apply_tar(stream, self._dir(layer_id) / "diff")

    # -- facts -------------------------------------------------------------------------------

    def status(self) -> list[tuple[str, str]]:
        with os.scandir(self.layers) as it:
            count = sum(1 for e in it if not e.name.startswith("."))
        return [
            ("Backing Filesystem", filesystem_type(self.home)),
            ("fuse-overlayfs", fuse.version()),
            ("Whiteouts", "written by fuse-overlayfs (0/0 devices, trusted.overlay.opaque)"),
            ("Native Diff", "false (the core's generic diff of mounted trees)"),
            ("Native Apply", "base layers (into diff/); children through a mount"),
            ("Layers", str(count)),
        ]



def _forget_origins(diff: Path) -> None:
    """Remove the ``user.fuseoverlayfs.origin`` xattr from every file and directory in ``diff``.

    fuse-overlayfs' copy-up marks the upper copy with the lower path it came
    from, and a later mount gives the copy the lower file's inode number
    through it, but only while the copy's parent directory reaches down to
    that lower layer. So the names of one upper file get different inode
    numbers when they sit in directories that reach down to different
    depths: after ``ln b c/a`` in a writable layer, where ``b`` was a lower
    file and ``c`` a new directory, the next mount shows ``b`` and ``c/a``
    as two files (case 44 found it; the link is kept on disk, but every
    diff of the mount loses it). Without the mark fuse-overlayfs numbers an
    upper file by its own inode, as it does every file made in the upper
    directory. Called after unmounting, when nothing writes to ``diff``.
    """
    pending = [os.fspath(diff)]
    while pending:
        with os.scandir(pending.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif not entry.is_file(follow_symlinks=False):
                    continue  # no user.* xattrs on symlinks and special files
                try:
                    os.removexattr(entry.path, ORIGIN_XATTR, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                        raise DriverError(
                            f"cannot clear fuse-overlayfs' origin mark of {entry.path}: "
                            f"{exc.strerror}",
                            hint="check that the store's filesystem is writable, then "
                            "mount and unmount the layer again") from exc


def _look_up_everything(root: Path) -> list[tuple[str, os.stat_result]]:
    """``lstat`` every entry below ``root`` (iteratively, following nothing).

    fuse-overlayfs reports a file's ``st_nlink`` from the names of it that it
    has looked up so far: a reader that meets one name of a hardlinked pair
    in another directory first sees ``st_nlink == 1`` (a tar of the tree, an
    export, a tree comparison all lose the link). Looking everything up once
    right after mounting makes the counts exact, at the cost of one walk of
    the tree per mount (its first user; later users share the mount).

    Returns the entries that fuse-overlayfs would copy up wrong (paths
    relative to ``root``; see :func:`_copy_up_plan`): those
    :func:`_copied_up_wrong` names, and every name of a regular file the
    tree shows under more than one name (the same ``st_ino``).

    fuse-overlayfs 1.10's copy-up (and upstream's) copies only the name a
    hardlinked lower file was reached through into the upper directory,
    marked with a ``user.fuseoverlayfs.origin`` xattr naming the lower path;
    the other names stay below. The mount keeps serving all names as one
    inode, so it looks right until it is unmounted: then the upper
    directory holds the new content under one name and the old under the
    others, and the next mount, which maps the copy back to the lower inode
    through its origin, shows whichever name it looks up first (the old
    content and mtime under both names, as case 44 found). No mount option
    changes that. A writable mount therefore copies every name up itself,
    as one new inode: fuse-overlayfs then finds an ordinary hardlinked upper
    file and writes to it in place.
    """
    mistaken = []
    first: dict[int, str] = {}  # a regular file's inode -> the first name met of it
    linked: set[int] = set()  # inodes met under a second name
    base = len(os.fspath(root)) + 1
    pending = [os.fspath(root)]
    while pending:
        with os.scandir(pending.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)
                if _copied_up_wrong(st):
                    mistaken.append((entry.path[base:], st))
                elif stat.S_ISREG(st.st_mode):
                    name = first.setdefault(st.st_ino, entry.path[base:])
                    if name != entry.path[base:]:
                        linked.add(st.st_ino)
                        mistaken.append((entry.path[base:], st))
    for ino in linked:  # the first name, with the count now exact
        mistaken.append((first[ino], os.lstat(os.path.join(root, first[ino]))))
    return mistaken


def _copied_up_wrong(st: os.stat_result) -> bool:
    """Whether fuse-overlayfs 1.10's copy-up (and upstream's) would change this entry.

    - a fifo, device or socket: copied by reading it into a new *regular*
      file (an empty one; the kernel, which cached a fifo, then says EIO);
    - a directory with setuid or setgid: made with mkdir(2), which drops both;
    - a setuid or setgid file not owned by 0:0: made, then fchown-ed, which
      clears both.

    The kernel's overlay copies all of them up as they are. Hardlinked
    files are found by :func:`_look_up_everything`: ``st_nlink`` is exact
    only once every name was looked up.
    """
    fmt = stat.S_IFMT(st.st_mode)
    if fmt in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
        return True
    if not st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        return False
    return fmt == stat.S_IFDIR or (fmt == stat.S_IFREG and (st.st_uid, st.st_gid) != (0, 0))


@dataclasses.dataclass(frozen=True)
class _Entry:
    """What a copy-up must recreate of one entry of the merged tree."""

    path: str
    st: os.stat_result
    xattrs: dict[str, bytes]
    #: where a regular file's data is (the top-most lower layer that has the path)
    source: Path | None = None


def _copy_up_plan(merged: Path, diff: Path, lowers: list[Path],
                  mistaken: list[tuple[str, os.stat_result]]) -> list[_Entry]:
    """Of the entries :func:`_look_up_everything` returns, those only lower layers hold.

    A writable mount copies them up itself, exactly as the merged tree shows
    them and before fuse-overlayfs can: the tree, and so every diff, stays
    the same, and fuse-overlayfs then finds them in the upper directory.
    Directories above them that ``diff/`` lacks come too (an upper directory
    without the opaque marker merges with the lower ones, as in the kernel's
    format). Returned parents first; read from the mount, made after
    unmounting it.
    """
    todo: dict[str, _Entry] = {}
    for path, st in mistaken:
        if path in todo or os.path.lexists(diff / path):
            continue  # the upper directory's own: what the mount shows
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in todo and not os.path.lexists(diff / parent):
                todo[parent] = _entry(merged, parent, os.lstat(merged / parent))
        source = None
        if stat.S_ISREG(st.st_mode):  # the top-most one: a whiteout would hide it
            source = next(d / path for d in lowers if os.path.lexists(d / path))
        todo[path] = _entry(merged, path, st, source)
    return sorted(todo.values(), key=lambda e: e.path.count("/"))


def _entry(merged: Path, path: str, st: os.stat_result, source: Path | None = None) -> _Entry:
    full = os.fspath(merged / path)
    names = [n for n in os.listxattr(full, follow_symlinks=False)
             if not n.startswith("trusted.overlay.")]  # never an opaque marker
    return _Entry(path, st, {n: os.getxattr(full, n, follow_symlinks=False) for n in names},
                  source)


def _copy_up(diff: Path, todo: list[_Entry]) -> None:
    """Make the entries of :func:`_copy_up_plan` in ``diff`` (the mount is gone).

    Names of one hardlinked file stay one inode, as fuse-overlayfs keeps
    them. Directories get their times last, after their children are made.
    """
    planned = {e.path for e in todo}
    kept = {}  # directories diff/ had that get new entries: their times stay
    for e in todo:
        parent = e.path.rpartition("/")[0]
        if parent not in planned and parent not in kept:
            st = os.lstat(diff / parent)
            kept[parent] = (st.st_atime_ns, st.st_mtime_ns)
    made: dict[int, str] = {}  # the mount's inode -> the first name made of it
    for e in todo:
        full = os.fspath(diff / e.path)
        if stat.S_ISDIR(e.st.st_mode):
            os.mkdir(full, 0o700)
        elif e.st.st_ino in made and e.st.st_nlink > 1:
            os.link(made[e.st.st_ino], full)
            continue
        elif e.source is not None:
            shutil.copyfile(e.source, full)
            made[e.st.st_ino] = full
        else:
            os.mknod(full, stat.S_IFMT(e.st.st_mode) | 0o600, e.st.st_rdev)
            made[e.st.st_ino] = full
        os.chown(full, e.st.st_uid, e.st.st_gid)
        os.chmod(full, stat.S_IMODE(e.st.st_mode))  # after chown, which clears setuid
        for name, value in e.xattrs.items():
            os.setxattr(full, name, value)
    for e in reversed(todo):
        os.utime(diff / e.path, ns=(e.st.st_atime_ns, e.st.st_mtime_ns))
    for parent, times in kept.items():
        os.utime(diff / parent, ns=times)
