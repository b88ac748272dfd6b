"""The btrfs driver: a layer is a subvolume, a child layer a snapshot of its parent.

Creating a child costs one metadata operation instead of a copy, and a
finished image layer becomes a read-only snapshot, so the kernel itself
refuses writes to it. Layout under ``home``::

    subvolumes/<id>    the layer's subvolume (a snapshot of the parent's); its
                       presence is what makes the layer exist
    subvolumes/.tmp-<id>-<8 hex>   a create or a remove in progress: made under
                       this name and renamed into place last; renamed back to
                       it first on remove. A crash leaves only debris that the
                       next create or remove of that id deletes
    mnt/<id>           a read-only bind of a *writable* subvolume, only when
                       such a layer is asked for read-only
    qgroups-pending    qgroups of deleted subvolumes the kernel would not drop
                       yet (the subvolume is still being cleaned); retried later

The parent graph and each layer's ``writable`` flag are the core's: they
arrive as arguments. ``btrfsutil`` is imported only when a btrfs driver is
used: lamina must start without it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any, ClassVar

from lamina.core.driver import Capabilities, Change, Driver, LayerViews, Option
from lamina.core.errors import (
    ConfigError,
    DriverError,
    DriverNotSupported,
    LayerOptionError,
)
from lamina.core.host import mounts
from lamina.core.host.fsinfo import filesystem_magic, filesystem_type
from lamina.core.host.treecopy import remove_tree, retire

from . import ioctl
from .size import parse_size

if TYPE_CHECKING:  # the diff paths load only when used: start-up of every command pays
    from lamina.core.layers.changes import TreeDiff

BTRFS_MAGIC = 0x9123683E
INSTALL_HINT = "pip install 'lamina[btrfs]' (needs libbtrfsutil-dev: apt-get install -y " \
    "libbtrfsutil-dev btrfs-progs)"
#: set to a file path to check every native change list against the generic
#: walk (a mismatch raises) and log one line per comparison there
VERIFY_ENV = "LAMINA_BTRFS_VERIFY_NATIVE"


def load_btrfsutil() -> ModuleType:
    """Import ``btrfsutil`` on first use, or say how to install it."""
    try:
        import btrfsutil
    except ImportError as exc:
        raise DriverNotSupported(
            "btrfs", f"the btrfsutil Python module is not importable ({exc})",
            hint=INSTALL_HINT,
        ) from exc
    return btrfsutil


def _util_error(what: str, exc: Exception) -> DriverError:
    return DriverError(f"btrfs: {what}: {exc}",
                       hint="check `dmesg` and `btrfs filesystem show` for the filesystem's state")


class BtrfsDriver(Driver):
    """Layers as btrfs subvolumes and snapshots; quotas with qgroups; native changes."""

    name: ClassVar[str] = "btrfs"
    description: ClassVar[str] = (
        "subvolume per layer, snapshot per child; qgroup quotas; needs a btrfs root"
    )
    capabilities: ClassVar[Capabilities] = Capabilities(
        root_mode=0o755,
        rename_lower_dir=True,
        hardlinks_survive_copy_up=True,  # a snapshot shares inodes; nothing is copied up
        quota=True,
        layer_quota=True,
        sparse_files=True,
        subsecond_mtime=True,
        native_diff=True,
        max_depth=1_000_000,  # a snapshot is independent of its parent's depth
        needs_root=True,
    )
    options: ClassVar[Mapping[str, Option]] = {
        "size": Option(
            str,
            'most bytes a writable layer may add, like "10G" (a qgroup exclusive limit); '
            "switches quotas on for the whole filesystem",
        ),
        "native_changes": Option(
            bool, "list a layer's changes from btrfs generation numbers (false: walk both trees)",
            True,
        ),
    }
    layer_options: ClassVar[Mapping[str, Option]] = {
        "size": Option(
            str,
            'most bytes this writable layer may add, like "10G" (a qgroup exclusive limit, '
            "in place of the driver's size option); switches quotas on for the whole "
            "filesystem",
        ),
    }

    def __init__(self, home: Path, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(home, options)
        self.util = load_btrfsutil()
        self.subvolumes = self.home / "subvolumes"
        self.mounts = self.home / "mnt"
        for path in (self.subvolumes, self.mounts):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.size: int | None = (
            None if self.config["size"] is None else parse_size(self.config["size"])
        )
        #: how changes were computed: "native" or "generic: <why>", newest last
        self.change_log: list[str] = []

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        given = dict(options)
        if isinstance(given.get("size"), int) and not isinstance(given["size"], bool):
            given["size"] = str(given["size"])
        result = super().validate_options(given)
        if result["size"] is not None:
            parse_size(result["size"], what="option 'size' of driver 'btrfs'")
        return result

    # -- support ---------------------------------------------------------------

    @classmethod
    def check_support(cls, root: Path) -> str | None:
        if os.geteuid() != 0:
            return "btrfs needs root: snapshots, tree searches and quotas are privileged"
        magic = filesystem_magic(root)
        if magic != BTRFS_MAGIC:
            return f"{root} is on {filesystem_type(root)}, not btrfs"
        try:
            load_btrfsutil()
        except DriverNotSupported as exc:
            return f"{exc.reason}: {INSTALL_HINT}"
        if not os.access(root, os.W_OK | os.X_OK):
            return f"{root} is not writable"
        return None

    # -- paths and state -------------------------------------------------------------

    def _subvol(self, layer_id: str) -> Path:
        return self.subvolumes / layer_id

    def _debris(self, layer_id: str) -> list[Path]:
        """Half-made or half-removed subvolumes of ``layer_id`` (exactly ``.tmp-<id>-<8 hex>``)."""
        pattern = re.compile(re.escape(f".tmp-{layer_id}-") + "[0-9a-f]{8}")
        with os.scandir(self.subvolumes) as it:
            return [self.subvolumes / e.name for e in it if pattern.fullmatch(e.name)]

    @contextlib.contextmanager
    def _fd(self, path: Path) -> Iterator[int]:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)

    # -- the contract ----------------------------------------------------------------

    def exists(self, layer_id: str) -> bool:
        return self._subvol(layer_id).is_dir()

    def create(
        self,
        layer_id: str,
        parents: Sequence[str],
        *,
        writable: bool,
        options: Mapping[str, str] | None = None,
    ) -> None:
        self._check_create(layer_id, parents)
        size = self._layer_size(layer_id, writable, options) if options else self.size
        self._clear_debris(layer_id)
        tmp = self.subvolumes / f".tmp-{layer_id}-{os.urandom(4).hex()}"
        try:
            if not parents:
                self.util.create_subvolume(tmp)
                os.chmod(tmp, self.capabilities.root_mode)
            else:
                self.util.create_snapshot(self._subvol(parents[0]), tmp)
            if writable and size is not None:
                self._limit(tmp, size)
            os.rename(tmp, self._subvol(layer_id))  # the layer exists from here on
        except BaseException as exc:
            # leave nothing behind, so the same id can be created again
            with contextlib.suppress(DriverError, OSError, self.util.BtrfsUtilError):
                self._delete_subvolume(tmp)
            if isinstance(exc, self.util.BtrfsUtilError):
                raise _util_error(f"cannot create layer {layer_id!r}", exc) from exc
            raise

    def finalize(self, layer_id: str, *, writable: bool) -> None:
        """Make a finished read-only layer a read-only subvolume: the kernel refuses writes."""
        self._check_open()
        if not self.exists(layer_id):
            raise self._not_found(layer_id)
        if not writable:
            try:
                self.util.set_subvolume_read_only(self._subvol(layer_id), True)
            except self.util.BtrfsUtilError as exc:
                raise _util_error(f"cannot make layer {layer_id!r} read-only", exc) from exc

    def remove(self, layer_id: str) -> None:
        self._check_open()
        path = self._subvol(layer_id)
        if not (
            os.path.lexists(path)
            or os.path.lexists(self.mounts / layer_id)
            or self._debris(layer_id)
        ):
            raise self._not_found(layer_id)
        self.unmount(layer_id)
        if os.path.lexists(path):  # the layer stops existing here; the rest is debris
            retire(path, self.subvolumes / f".tmp-{layer_id}-{os.urandom(4).hex()}")
        self._clear_debris(layer_id)

    def _clear_debris(self, layer_id: str) -> None:
        """Delete half-made or half-removed subvolumes of ``layer_id`` (not the layer)."""
        self.unmount(layer_id)
        for path in self._debris(layer_id):
            self._delete_subvolume(path)

    def mount(self, layer_id: str, parents: Sequence[str], *, readonly: bool) -> Path:
        self._check_open()
        if not self.exists(layer_id):
            raise self._not_found(layer_id)
        path = self._subvol(layer_id)
        if not readonly or self.util.get_subvolume_read_only(path):
            return path  # the subvolume is the tree; a read-only one refuses writes itself
        # a writable subvolume asked for read-only: a read-only bind of it
        point = self.mounts / layer_id
        if mounts.is_mountpoint(point):
            if _is_readonly_view_of(path, point):
                return point
            mounts.detach(point)
        point.mkdir(mode=0o700, exist_ok=True)
        mounts.bind_readonly(path, point)
        return point

    def unmount(self, layer_id: str) -> None:
        mounts.release_mount_point(self.mounts / layer_id)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError, DriverError):
                self.reap_qgroups()
        super().close()

    # -- deleting subvolumes and their qgroups --------------------------------------

    def _delete_subvolume(self, path: Path) -> None:
        """Delete ``path`` with every subvolume a container made inside it, and their qgroups."""
        if not os.path.lexists(path):
            return
        util = self.util
        if not util.is_subvolume(path):
            remove_tree(path)  # never made by us as a plain directory, but finish the job
            return
        with self._fd(self.home) as fd:
            quotas = ioctl.quota_enabled(fd)
        ids = []
        if quotas:
            ids = [util.subvolume_id(path)]
            ids += [sub_id for _, sub_id in util.SubvolumeIterator(path)]
        try:
            util.delete_subvolume(path, recursive=True)
        except util.BtrfsUtilError:
            # a read-only subvolume cannot lose its nested subvolumes' entries:
            # clear the flag on it and below, then delete again
            for nested, _ in util.SubvolumeIterator(path, post_order=False):
                util.set_subvolume_read_only(path / nested, False)
            util.set_subvolume_read_only(path, False)
            try:
                util.delete_subvolume(path, recursive=True)
            except util.BtrfsUtilError as exc:
                raise _util_error(f"cannot delete subvolume {path}", exc) from exc
        if ids:
            self._queue_qgroups(ids)
            self.reap_qgroups()

    def _queue_qgroups(self, ids: list[int]) -> None:
        with open(self.home / "qgroups-pending", "a") as f:
            f.write("".join(f"{i}\n" for i in ids))

    def reap_qgroups(self) -> int:
        """Destroy the qgroups of deleted subvolumes the kernel has finished dropping.

        Returns how many are still waiting (their subvolumes are still being
        cleaned up; a later remove or close retries).
        """
        pending_file = self.home / "qgroups-pending"
        try:
            pending = {int(x) for x in pending_file.read_text().split()}
        except FileNotFoundError:
            return 0
        left = set()
        with self._fd(self.home) as fd:
            for subvol_id in sorted(pending):
                usage = ioctl.qgroup_usage(fd, subvol_id)
                if usage is None:
                    continue  # gone already: the kernel drops it with its subvolume
                if usage != (0, 0):
                    # the subvolume's extents are not all dropped yet: deleting the
                    # qgroup now would leave the quota accounting inconsistent
                    left.add(subvol_id)
                    continue
                try:
                    ioctl.qgroup_destroy(fd, subvol_id)
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        left.add(subvol_id)
                    elif exc.errno != errno.ENOENT:
                        raise
        tmp = pending_file.with_name(f".qgroups-pending-{os.getpid()}")
        if left:
            tmp.write_text("".join(f"{i}\n" for i in sorted(left)))
            os.rename(tmp, pending_file)
        else:
            pending_file.unlink(missing_ok=True)
        return len(left)

    # -- quotas -------------------------------------------------------------------------

    def _limit(self, path: Path, size: int | None) -> None:
        with self._fd(path) as fd:
            try:
                if size is not None and not ioctl.quota_enabled(fd):
                    ioctl.quota_enable(fd)
                    (self.home / "quota-enabled-by-lamina").write_text(
                        time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
                if size is None and not ioctl.quota_enabled(fd):
                    return
                ioctl.qgroup_limit(fd, max_excl=size)
            except OSError as exc:
                raise DriverError(
                    f"cannot set a quota on {path}: {exc.strerror}",
                    hint="quotas need btrfs qgroups: check `btrfs qgroup show` on the filesystem",
                ) from exc

    def _layer_size(
        self, layer_id: str, writable: bool, options: Mapping[str, str]
    ) -> int | None:
        """The quota of a new layer: its own ``size`` option, else the driver's."""
        if "size" not in options:
            return self.size
        if not writable:
            raise LayerOptionError(
                layer_id, f"a size for layer {layer_id!r}, which is read-only",
                hint="a size limits what a writable (container) layer may add")
        try:
            return parse_size(options["size"], what="the layer's size")
        except ConfigError as exc:
            raise LayerOptionError(layer_id, str(exc), hint=exc.hint) from None

    def set_quota(self, layer_id: str, size: int | str | None) -> None:
        """Limit what an existing ``layer_id`` may add to ``size`` bytes (``None``: no limit).

        What ``create(..., options={"size": ...})`` sets at creation, changed later.
        The limit is a qgroup exclusive limit: bytes the layer's subvolume does not
        share with its parent.
        """
        self._check_open()
        if not self.exists(layer_id):
            raise self._not_found(layer_id)
        limit = None if size is None else parse_size(size, what="quota size")
        self._limit(self._subvol(layer_id), limit)

    # -- status ---------------------------------------------------------------------------

    def status(self) -> list[tuple[str, str]]:
        import subprocess  # only `lamina info` needs it: not every command's start-up
        from importlib.metadata import PackageNotFoundError, version

        try:
            progs = subprocess.run(["btrfs", "--version"], capture_output=True, text=True,
                                   timeout=10).stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            progs = "not installed (apt-get install -y btrfs-progs)"
        try:
            library = f"btrfsutil {version('btrfsutil')}"
        except PackageNotFoundError:
            library = "btrfsutil (version unknown)"
        with self._fd(self.home) as fd:
            flags = ioctl.quota_status(fd)
        marker = self.home / "quota-enabled-by-lamina"
        if flags is None:
            quota_text = "off"
        else:
            quota_text = "on"
            if marker.exists():
                quota_text += f" (switched on by lamina {marker.read_text().strip()} for 'size')"
            if flags & ioctl.QGROUP_STATUS_FLAG_INCONSISTENT:
                quota_text += "; accounting inconsistent, limits not enforced until " \
                    "`btrfs quota rescan` finishes"
        limit = self.config["size"] or "none"
        return [
            ("Backing Filesystem", filesystem_type(self.home)),
            ("Btrfs Progs", progs),
            ("Library", library),
            ("Quotas", quota_text),
            ("Writable Layer Size", limit),
            ("Native Changes", "on" if self.config["native_changes"] else "off"),
            ("Layers", str(sum(1 for p in self.subvolumes.iterdir()
                               if not p.name.startswith(".")))),
        ]

    # -- changes from generation numbers ------------------------------------------------

    def _tree_diff(
        self, layer_id: str, parents: Sequence[str], lower: Path | None, upper: Path,
        views: LayerViews,
    ) -> TreeDiff:
        """The layer's changes: natively where that is exact, else by walking both trees."""
        from lamina.core.layers.changes import diff_trees

        from .native import NativeUnavailable, native_tree_diff

        since = views.created_ns(layer_id)
        root_mode = self.capabilities.root_mode
        found = None
        if not parents or lower is None:
            why = "no parent"
        elif not self.config["native_changes"]:
            why = "native_changes = false"
        else:
            try:
                found = native_tree_diff(
                    self.util, self._subvol(layer_id), self._subvol(parents[0]), lower, upper,
                    root_mode=root_mode, since_ns=since,
                )
                why = ""
            except NativeUnavailable as exc:
                why = str(exc)
        verify = os.environ.get(VERIFY_ENV)
        if found is not None and verify:
            generic = diff_trees(lower, upper, root_mode=root_mode, since_ns=since)
            if generic.kinds != found.kinds:
                raise DriverError(
                    f"native changes of {layer_id} differ from the generic walk: "
                    f"native {sorted((p, k.value) for p, k in found.kinds.items())} "
                    f"generic {sorted((p, k.value) for p, k in generic.kinds.items())}",
                    hint="a btrfs driver bug: set native_changes = false meanwhile",
                )
        self.change_log.append("native" if found is not None else f"generic: {why}")
        if verify:
            with open(verify, "a") as log:
                log.write(self.change_log[-1] + "\n")
        if found is None:
            found = diff_trees(lower, upper, root_mode=root_mode, since_ns=since)
        return found

    def changes(self, layer_id: str, parents: Sequence[str], views: LayerViews) -> list[Change]:
        from lamina.core.layers.changes import viewed_layers

        with viewed_layers(views, layer_id, parents) as (lower, upper):
            return self._tree_diff(layer_id, parents, lower, upper, views).changes()

    def diff(
        self, layer_id: str, parents: Sequence[str], out: IO[bytes], views: LayerViews
    ) -> int:
        from lamina.core.layers.changes import viewed_layers
        from lamina.core.layertar.export import write_layer_tar

        with viewed_layers(views, layer_id, parents) as (lower, upper):
            found = self._tree_diff(layer_id, parents, lower, upper, views)
            return write_layer_tar(out, upper, found.changes(), stats=found.stats)

    def diff_size(self, layer_id: str, parents: Sequence[str], views: LayerViews) -> int:
        from lamina.core.layers.changes import viewed_layers

        with viewed_layers(views, layer_id, parents) as (lower, upper):
            return self._tree_diff(layer_id, parents, lower, upper, views).content_size()


def _is_readonly_view_of(source: Path, point: Path) -> bool:
    try:
        src, dst = os.stat(source), os.stat(point)
        readonly = bool(os.statvfs(point).f_flag & os.ST_RDONLY)
    except OSError:
        return False
    return readonly and (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino)


__all__ = ["BtrfsDriver", "load_btrfsutil"]
