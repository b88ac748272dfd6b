"""Volumes: directories the store keeps for containers, outliving them (Docker's
``local`` volumes).

A volume is ``<root>/volumes/<name>/``: its files in ``_data`` (what containers see,
bound at their mount point) and ``volume.json`` (when it was made, its labels,
whether it is anonymous). Named volumes come from ``volume create`` or from the
first ``run -v NAME:/path``; anonymous ones (a 64-hex name) from ``-v /path`` and
the image's ``VOLUME``\\s, and go with their container when it is removed with ``-v``
or ``--rm``. A new, empty volume takes what the image has at its mount point (the
container's side copies it, core/cli/volume.py), as Docker's does.

Contracts:
- :meth:`VolumeStore.create` is atomic (a directory made aside, then renamed): a
  crash leaves a whole volume or none; an existing name is returned as it is.
- :meth:`VolumeStore.remove` refuses a volume a container uses (running or not), as
  Docker's; the users are found in the containers' specs.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import ContainerError, LaminaError, VolumeInUse, VolumeNotFound, host_error
from .spec import VOLUME_NAME, Volume, anonymous_name, check_volume_name

if TYPE_CHECKING:
    from ..layers.store import Store
    from .store import Container

META = "volume.json"
DATA = "_data"


class VolumeInfo(NamedTuple):
    name: str
    created: float
    labels: dict[str, str]
    anonymous: bool
    path: Path  #: its files, as containers see them


class VolumeStore:
    """The volumes of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = store.root / "volumes"

    def path(self, name: str) -> Path:
        """The volume's files (what a container sees at its mount point)."""
        return self.root / name / DATA

    def get(self, name: str) -> VolumeInfo:
        try:
            meta = json.loads((self.root / name / META).read_text())
        except FileNotFoundError:
            raise VolumeNotFound(f"no such volume: {name}",
                                 hint="list volumes with `lamina volume ls`") from None
        except (OSError, ValueError) as exc:
            raise ContainerError(f"volume {name} is damaged: {exc}",
                                 hint=f"remove it with lamina volume rm {name}") from None
        return VolumeInfo(name, float(meta.get("created", 0)), dict(meta.get("labels", {})),
                          bool(meta.get("anonymous")), self.path(name))

    def volumes(self) -> list[VolumeInfo]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(self.root)):
                if VOLUME_NAME.fullmatch(name):
                    with contextlib.suppress(LaminaError):
                        found.append(self.get(name))
        return found

    def create(self, name: str | None = None, *, labels: dict[str, str] | None = None,
               anonymous: bool = False) -> tuple[VolumeInfo, bool]:
        """The volume ``name`` (a new anonymous one without), made if missing; whether it
        was made now."""
        if name is None:
            name, anonymous = anonymous_name(), True
        check_volume_name(name)
        with contextlib.suppress(VolumeNotFound):
            return self.get(name), False
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{name}-{os.getpid()}"
        try:
            (tmp / DATA).mkdir(mode=0o755, parents=True)
            (tmp / META).write_text(json.dumps({"created": time.time(), "labels": labels or {},
                                                "anonymous": anonymous}))
            try:
                os.rename(tmp, self.root / name)
            except OSError as exc:
                if (self.root / name / META).exists():  # made meanwhile by another command
                    return self.get(name), False
                raise host_error(exc, "create the volume", self.root / name) from None
        except OSError as exc:
            raise host_error(exc, "create the volume", self.root / name) from None
        finally:
            if tmp.exists():
                from ..host.treecopy import remove_tree

                remove_tree(tmp)
        return self.get(name), True

    def size(self, name: str) -> int:
        """Bytes of the volume's files (a hardlinked file counted once)."""
        total = 0
        seen: set[tuple[int, int]] = set()
        for dirpath, _, filenames in os.walk(self.path(name)):
            for filename in filenames:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, filename))
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += st.st_size
        return total

    def users(self, name: str) -> list[str]:
        """The names of the containers that use the volume."""
        from .store import ContainerStore

        return [c.name for c in ContainerStore(self.store).containers()
                if any(v.kind == "volume" and v.source == name for v in c.spec.volumes)]

    def remove(self, name: str) -> None:
        """Remove the volume and its files; refused while a container uses it."""
        self.get(name)
        users = self.users(name)
        if users:
            raise VolumeInUse(f"volume {name} is in use by container {', '.join(users)}",
                              hint="remove the container first (lamina rm)")
        from ..host.treecopy import remove_tree

        retired = self.root / f".rm-{name}-{os.getpid()}"
        try:
            os.rename(self.root / name, retired)  # gone at once, even if a delete fails
        except OSError as exc:
            raise host_error(exc, "remove the volume", self.root / name) from None
        remove_tree(retired)

    def remove_anonymous(self, container: Container) -> None:
        """Remove the anonymous volumes of a container that is gone (``rm -v``, ``--rm``)."""
        for v in container.spec.volumes:
            if v.kind == "volume" and v.options == "anonymous":
                with contextlib.suppress(VolumeNotFound, VolumeInUse):
                    self.remove(v.source)

    def binds(self, volumes: Sequence[Volume]) -> tuple[Volume, ...]:
        """``volumes`` with each of the store's as the bind mount of its files that the
        launcher makes."""
        return tuple(Volume("bind", v.target, str(self.path(v.source)), v.readonly)
                     if v.kind == "volume" else v for v in volumes)

    def sweep(self) -> None:
        """Finish what a killed create or remove left (``.tmp-``/``.rm-`` directories)."""
        from ..host.treecopy import remove_tree

        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.root):
                if name.startswith((".tmp-", ".rm-")):
                    pid = name.rsplit("-", 1)[-1]
                    if not (pid.isdigit() and os.path.exists(f"/proc/{pid}")):
                        with contextlib.suppress(LaminaError, OSError):
                            remove_tree(self.root / name)


def as_dict(info: VolumeInfo, *, mountpoint: bool = True) -> dict[str, Any]:
    """Docker's ``volume inspect`` shape."""
    from datetime import UTC, datetime

    created = datetime.fromtimestamp(info.created, UTC).isoformat().replace("+00:00", "Z")
    entry: dict[str, Any] = {"CreatedAt": created, "Driver": "local", "Labels": info.labels,
                             "Name": info.name, "Options": {}, "Scope": "local"}
    if mountpoint:
        entry["Mountpoint"] = str(info.path)
    if info.anonymous:
        entry["Labels"] = {**info.labels, "com.docker.volume.anonymous": ""}
    return entry
