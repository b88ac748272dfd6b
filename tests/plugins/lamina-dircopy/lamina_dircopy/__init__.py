"""A complete minimal lamina driver: every layer is a directory copy of its parent.

It writes only what the contract requires (support check, create, remove,
exists, mount, unmount) and leaves changes, diff and apply to the core.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lamina.core.driver import Capabilities, Driver
from lamina.core.errors import LayerExists, LayerNotFound
from lamina.core.host.mounts import bind_readonly, detach, is_mountpoint
from lamina.core.host.treecopy import copy_tree, remove_tree
from lamina.core.plugins.hookspec import hookimpl


class DirCopyDriver(Driver):
    name = "dircopy"
    description = "example third-party driver: plain directory copies"
    capabilities = Capabilities(hardlinks_survive_copy_up=True)

    def _dir(self, layer_id: str) -> Path:
        return self.home / "layers" / layer_id

    def _mnt(self, layer_id: str) -> Path:
        return self.home / "mnt" / layer_id

    @classmethod
    def check_support(cls, root: Path) -> str | None:
        if os.geteuid() != 0:
            return "needs root for read-only bind mounts"
        return None

    def create(self, layer_id: str, parents: Sequence[str], *, writable: bool) -> None:
        if self.exists(layer_id):
            raise LayerExists(layer_id, f"layer {layer_id} exists")
        (self.home / "layers").mkdir(exist_ok=True)
        if not parents:
            self._dir(layer_id).mkdir(mode=0o755)
            os.chmod(self._dir(layer_id), 0o755)
        elif not self.exists(parents[0]):
            raise LayerNotFound(parents[0], f"parent layer {parents[0]} does not exist")
        else:
            copy_tree(self._dir(parents[0]), self._dir(layer_id))

    def remove(self, layer_id: str) -> None:
        if not self.exists(layer_id):
            raise LayerNotFound(layer_id, f"layer {layer_id} does not exist")
        self.unmount(layer_id)
        remove_tree(self._dir(layer_id))

    def exists(self, layer_id: str) -> bool:
        return self._dir(layer_id).is_dir()

    def mount(self, layer_id: str, parents: Sequence[str], *, readonly: bool) -> Path:
        if not self.exists(layer_id):
            raise LayerNotFound(layer_id, f"layer {layer_id} does not exist")
        if not readonly:
            return self._dir(layer_id)
        target = self._mnt(layer_id)
        target.mkdir(parents=True, exist_ok=True)
        bind_readonly(self._dir(layer_id), target)
        return target

    def unmount(self, layer_id: str) -> None:
        target = self._mnt(layer_id)
        if is_mountpoint(target):
            detach(target)
        if target.exists():
            target.rmdir()


@hookimpl
def lamina_register_drivers(registry) -> None:
    registry.register(DirCopyDriver)
