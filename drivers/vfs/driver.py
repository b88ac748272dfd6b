"""The vfs driver: every layer is a complete copy of its parent.

The slowest and largest driver, and the one that works everywhere: it needs
no kernel feature beyond bind mounts, so it is the reference the other
drivers are compared with. Layout under ``home``::

    dir/<id>/          the layer's whole tree (a copy of the parent's at create);
                       its presence is what makes the layer exist
    dir/.tmp-<id>-<8 hex>/   a create or a remove in progress (debris if the
                       process died)
    mnt/<id>/          mount point of the layer's read-only view

A create copies into a temporary directory and renames it into place last; a
remove renames the layer away first, then deletes. So a crash at any point
leaves either a whole layer or debris that the next create or remove of that
id clears. The parent graph is the core's: ``create`` is told the parent.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from lamina.core.driver import Capabilities, Driver
from lamina.core.errors import DriverError
from lamina.core.host import mounts
from lamina.core.host.fsinfo import filesystem_type
from lamina.core.host.treecopy import copy_tree, probe_copy_method, remove_tree, retire


class VfsDriver(Driver):
    """Layers as full directory copies; read-only views as read-only bind mounts."""

    name: ClassVar[str] = "vfs"
    description: ClassVar[str] = (
        "full copy of the parent per layer (reflink or in-kernel copy); works on any filesystem"
    )
    capabilities: ClassVar[Capabilities] = Capabilities(
        root_mode=0o755,
        rename_lower_dir=True,
        hardlinks_survive_copy_up=True,  # a full copy keeps links; nothing is copied up
        quota=False,
        sparse_files=True,
        subsecond_mtime=True,
        native_diff=False,
        max_depth=1_000_000,  # layers are independent copies: depth costs nothing at mount
        needs_root=True,
    )

    def __init__(self, home: Path, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(home, options)
        self.layers = self.home / "dir"
        self.mounts = self.home / "mnt"
        for path in (self.layers, self.mounts):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._copy_method: str | None = None

    # -- support ---------------------------------------------------------------

    @classmethod
    def check_support(cls, root: Path) -> str | None:
        if os.geteuid() != 0:
            return "vfs needs root: its read-only views are bind mounts"
        if not os.access(root, os.W_OK | os.X_OK):
            return f"{root} is not writable"
        return None

    # -- paths and state -------------------------------------------------------------

    def _dir(self, layer_id: str) -> Path:
        return self.layers / layer_id

    @staticmethod
    def _temporaries(directory: Path, layer_id: str) -> list[Path]:
        # exactly ".tmp-<id>-<8 hex>": the id "a" must not match debris of "a-b"
        pattern = re.compile(re.escape(f".tmp-{layer_id}-") + "[0-9a-f]{8}")
        with os.scandir(directory) as it:
            return [directory / e.name for e in it if pattern.fullmatch(e.name)]

    def _debris(self, layer_id: str) -> list[Path]:
        """Half-made copies of ``layer_id`` left by a process that died mid-create."""
        return self._temporaries(self.layers, layer_id)

    def _clear_debris(self, layer_id: str) -> None:
        """Remove the half-made or half-removed copies of ``layer_id`` (not the layer)."""
        for path in self._debris(layer_id):
            remove_tree(path)

    # -- the contract ----------------------------------------------------------------

    def exists(self, layer_id: str) -> bool:
        return self._dir(layer_id).is_dir()

    def create(self, layer_id: str, parents: Sequence[str], *, writable: bool) -> None:
        self._check_create(layer_id, parents)
        self.unmount(layer_id)  # a read-only view a crash left behind
        self._clear_debris(layer_id)
        tmp = self.layers / f".tmp-{layer_id}-{os.urandom(4).hex()}"
        try:
            if not parents:
                os.mkdir(tmp, 0o700)
                os.chmod(tmp, self.capabilities.root_mode)
            else:
                stats = copy_tree(self._dir(parents[0]), tmp)
                if stats.method != "none":
                    self._copy_method = stats.method
            os.rename(tmp, self._dir(layer_id))  # the layer exists from here on
        except BaseException:
            # leave nothing behind, so the same id can be created again
            with contextlib.suppress(DriverError, OSError):
                remove_tree(tmp)
            raise

    def remove(self, layer_id: str) -> None:
        self._check_open()
        final = self._dir(layer_id)
        if not (
            os.path.lexists(final)
            or os.path.lexists(self.mounts / layer_id)
            or self._debris(layer_id)
        ):
            raise self._not_found(layer_id)
        # never delete through a mount: make sure none is left before the
        # layer stops existing
        self.unmount(layer_id)
        if os.path.lexists(final):  # the layer stops existing here; the rest is debris
            retire(final, self.layers / f".tmp-{layer_id}-{os.urandom(4).hex()}")
        self._clear_debris(layer_id)

    def mount(self, layer_id: str, parents: Sequence[str], *, readonly: bool) -> Path:
        self._check_open()
        if not self.exists(layer_id):
            raise self._not_found(layer_id)
        source = self._dir(layer_id)
        if not readonly:
            return source  # writes go straight into the layer's own copy
        point = self.mounts / layer_id
        if mounts.is_mountpoint(point):
            if self._is_our_readonly_view(source, point):
                return point
            mounts.detach(point)  # left by a crash, maybe half made (still writable)
        point.mkdir(mode=0o700, exist_ok=True)
        mounts.bind_readonly(source, point)
        return point

    @staticmethod
    def _is_our_readonly_view(source: Path, point: Path) -> bool:
        try:
            src, dst = os.stat(source), os.stat(point)
            readonly = bool(os.statvfs(point).f_flag & os.ST_RDONLY)
        except OSError:
            return False
        return readonly and (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino)

    def unmount(self, layer_id: str) -> None:
        mounts.release_mount_point(self.mounts / layer_id)

    def mounted_paths(self) -> list[Path]:
        return [self.mounts]

    def status(self) -> list[tuple[str, str]]:
        method = self._copy_method
        if method is None:
            try:
                method = self._copy_method = probe_copy_method(self.layers)
            except OSError as exc:  # a full disk has no room for the probe's files
                method = f"unknown (cannot probe: {exc.strerror})"
        with os.scandir(self.layers) as it:
            count = sum(1 for e in it if not e.name.startswith("."))
        return [
            ("Backing Filesystem", filesystem_type(self.home)),
            ("Copy Method", method),
            ("Layers", str(count)),
        ]
