"""The overlay driver: OverlayFS layers up to the kernel's 500-layer limit, with native diffs.

Layout under ``home``::

    <id>/diff/       the layer's own content: the upper dir of a writable
                     mount, a lower dir of every mount of its children
    <id>/work/       overlay's work dir (same filesystem as diff/)
    <id>/merged/     mount point of the layer's combined tree
    <id>/link        the layer's short name (:func:`short_name`)
    l/<short>        symlink to ``../<id>/diff``: short lower paths for mounts
    .tmp-<id>-<hex>/ a create in progress, or a remove in progress (debris)
    features.json    what the kernel writes with the mount options in use

A layer exists when ``<id>/link`` does: a create builds everything in a
temporary directory and renames it into place last; a remove renames the
layer away first, then deletes. Whatever a crash leaves is found by the
layer id and cleared by the next create or remove of that id.

The parent chain is the core's: ``mount`` and the native paths are handed
the layer's ancestors, and a lower's short name is computed from its id, so
a mount of 500 layers reads no file per lower.

Mounts use the new mount API with one ``lowerdir+`` per lower, so a chain of
500 layers mounts (Docker stops at 128); without ``lowerdir+`` the legacy
``mount(2)`` with ``l/`` short paths is used and its depth limit reported.
A read-only layer without parent is a read-only bind mount of its ``diff/``
(overlay needs two lowers without an upper); a writable layer without
parent is its ``diff/`` itself, as nothing lies below it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

from lamina.core.driver import (
    ApplyResult,
    Capabilities,
    Change,
    Driver,
    LayerViews,
    Option,
)
from lamina.core.errors import (
    ConfigError,
    DriverError,
)
from lamina.core.host import mounts
from lamina.core.host.fsinfo import filesystem_type
from lamina.core.host.locks import UNKNOWN_BOOT, boot_id
from lamina.core.host.treecopy import remove_tree, retire

from . import mountapi, support

if TYPE_CHECKING:  # the tar paths load only when used: start-up of every command pays
    from . import nativediff

SHORT_LEN = 26
FEATURES_FILE = "features.json"


def short_name(layer_id: str) -> str:
    """The layer's name under ``l/``: the first 26 hex digits of the id's sha256.

    Derived, not stored, so a mount computes its lowers' names from the
    chain the core hands it. 104 bits: :meth:`OverlayDriver.create` refuses
    the (never yet seen) case of two ids sharing one.
    """
    return hashlib.sha256(layer_id.encode()).hexdigest()[:SHORT_LEN]


class OverlayDriver(Driver):
    """OverlayFS layers: diff dirs stacked at mount time, deletions as whiteouts."""

    name: ClassVar[str] = "overlay"
    description: ClassVar[str] = (
        "OverlayFS: layers stacked at mount time, up to 500 deep, native diff and apply"
    )
    capabilities: ClassVar[Capabilities] = Capabilities(
        root_mode=0o755,
        # a lower directory renames only with redirect_dir, which a native diff cannot read
        rename_lower_dir=False,
        # index=off, as every engine mounts: copy-up gives the written name its own inode
        hardlinks_survive_copy_up=False,
        quota=False,
        sparse_files=True,
        subsecond_mtime=True,
        native_diff=True,
        max_depth=mountapi.KERNEL_MAX_LOWERS,
        needs_root=True,
    )
    options: ClassVar[Mapping[str, Option]] = {
        "mountopt": Option(
            str,
            "extra mount options, comma separated: mount flags (nodev, nosuid, noexec, "
            "noatime) and overlay options (metacopy=on, redirect_dir=on, volatile, ...)",
            "",
        ),
        "mount_api": Option(
            str,
            "how stacks are mounted: 'auto' (fsopen with one lowerdir+ per layer when the "
            "kernel has it, Linux 6.8+), 'new' (always that) or 'legacy' (mount(2) with "
            "short paths; about 130 layers)",
            "auto",
        ),
    }

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        result = super().validate_options(options)
        mountapi.parse_mountopt(result["mountopt"] or "")
        if result["mount_api"] not in ("auto", "new", "legacy"):
            raise ConfigError(
                f"option 'mount_api' of driver 'overlay' is {result['mount_api']!r}",
                hint="choose 'auto', 'new' or 'legacy'",
            )
        return result

    def __init__(self, home: Path, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(home, options)
        self.home = self.home.resolve()
        self.links = self.home / "l"
        self.links.mkdir(mode=0o700, exist_ok=True)
        self.mount_options = mountapi.parse_mountopt(self.config["mountopt"] or "")
        api = self.config["mount_api"]
        if api == "auto":
            self.legacy = not mountapi.lowerdir_plus_supported()
        else:
            self.legacy = api == "legacy"
            if not self.legacy and not mountapi.lowerdir_plus_supported():
                raise ConfigError(
                    "mount_api = 'new' but this kernel's overlay has no lowerdir+ (Linux 6.8+)",
                    hint="use mount_api = 'auto' or 'legacy'",
                )
        self._features: support.Features | None = None

    # -- support ---------------------------------------------------------------------------

    @classmethod
    def check_support(cls, root: Path) -> str | None:
        return support.unsupported_reason(Path(root))

    # -- paths and state -------------------------------------------------------------------

    def _dir(self, layer_id: str) -> Path:
        return self.home / layer_id

    def diff_dir(self, layer_id: str) -> Path:
        """The layer's own content directory (its upper dir)."""
        return self.home / layer_id / "diff"

    def _temporaries(self, layer_id: str) -> list[Path]:
        pattern = re.compile(re.escape(f".tmp-{layer_id}-") + "[0-9a-f]{8}")
        with os.scandir(self.home) as it:
            return [self.home / e.name for e in it if pattern.fullmatch(e.name)]

    def lower_dirs(self, parents: Sequence[str]) -> list[Path]:
        """The diff dirs of ``parents`` (a layer's ancestors, top-most first)."""
        home = os.fspath(self.home)
        return [Path(f"{home}/{parent}/diff") for parent in parents]

    # -- create and remove -------------------------------------------------------------------

    def exists(self, layer_id: str) -> bool:
        return (self._dir(layer_id) / "link").is_file()

    def create(self, layer_id: str, parents: Sequence[str], *, writable: bool) -> None:
        self._check_create(layer_id, parents)
        self._clear_debris(layer_id)
        if len(parents) + 1 > mountapi.KERNEL_MAX_LOWERS:
            raise DriverError(
                f"layer {layer_id!r} would be {len(parents) + 1} layers deep; overlay "
                f"mounts at most {mountapi.KERNEL_MAX_LOWERS}",
                hint="squash the image into fewer layers",
            )
        tmp = self.home / f".tmp-{layer_id}-{os.urandom(4).hex()}"
        short = short_name(layer_id)
        link = self.links / short
        target = f"../{layer_id}/diff"
        made_link = False
        try:
            tmp.mkdir(mode=0o700)
            for name in ("diff", "work", "merged"):
                (tmp / name).mkdir(mode=0o700)
            diff = tmp / "diff"
            if not parents:
                os.chmod(diff, self.capabilities.root_mode)
            else:
                # the merged root is the top layer's root: start as the parent's
                self._copy_root(self.diff_dir(parents[0]), diff)
            try:
                os.symlink(target, link)
                made_link = True
            except FileExistsError:
                if os.readlink(link) != target:
                    raise DriverError(
                        f"layer {layer_id!r} has the short name {short} of another layer "
                        f"({os.readlink(link)})",
                        hint="create the layer under another id",
                    ) from None
            (tmp / "link").write_text(short + "\n")
            os.rename(tmp, self._dir(layer_id))
        except BaseException:
            with contextlib.suppress(OSError, DriverError):
                if made_link:
                    link.unlink(missing_ok=True)
                remove_tree(tmp)
            raise

    @staticmethod
    def _copy_root(src: Path, dst: Path) -> None:
        st = os.lstat(src)
        fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            from .stack import copy_metadata

            copy_metadata(os.fspath(src), fd, st)
        finally:
            os.close(fd)

    def _clear_debris(self, layer_id: str) -> None:
        """Delete half-made or half-removed copies of ``layer_id`` and its short link."""
        for path in self._temporaries(layer_id):
            for point in mounts.mounts_under(path, include_self=True):
                mounts.detach(Path(point))
            remove_tree(path)
        if not os.path.lexists(self._dir(layer_id)):
            link = self.links / short_name(layer_id)
            with contextlib.suppress(FileNotFoundError):
                if os.readlink(link) == f"../{layer_id}/diff":  # never another id's
                    link.unlink()

    def remove(self, layer_id: str) -> None:
        self._check_open()
        final = self._dir(layer_id)
        if not os.path.lexists(final) and not self._temporaries(layer_id):
            raise self._not_found(layer_id)
        if os.path.lexists(final):  # the layer stops existing here; the rest is debris
            self.unmount(layer_id)
            retire(final, self.home / f".tmp-{layer_id}-{os.urandom(4).hex()}")
        self._clear_debris(layer_id)

    # -- mounting ----------------------------------------------------------------------------

    def mount(self, layer_id: str, parents: Sequence[str], *, readonly: bool) -> Path:
        self._check_open()
        if not self.exists(layer_id):
            raise self._not_found(layer_id)
        layer = self._dir(layer_id)
        diff = layer / "diff"
        shorts = [f"l/{short_name(parent)}" for parent in parents]
        if not shorts and not readonly:
            return diff  # nothing below: the layer's own directory is its tree
        point = layer / "merged"
        point.mkdir(mode=0o700, exist_ok=True)
        # a mount left by a crash, maybe with other options: umount2 answers "not
        # mounted" in one syscall, where asking the mount table first reads all of
        # /proc/self/mountinfo (0.09 ms here, +1.2 ms per mounted 500-layer stack)
        mounts.detach(point)
        if not shorts:
            mounts.bind_readonly(diff, point)
            return point
        if readonly:  # the layer's own diff is the top-most lower
            spec = mountapi.OverlaySpec([diff], options=self.mount_options, readonly=True)
            names = [f"{layer_id}/diff"]
        else:
            spec = mountapi.OverlaySpec([], diff, layer / "work", self.mount_options)
            names = []
            if self.mount_options.get("volatile") is not None:
                self._volatile_ready(layer_id)
        if self.legacy:  # mount(2): paths relative to home, from a child that chdirs there
            names += shorts
            mountapi.mount_legacy(spec, names, self.home, point)
        else:
            # "<home>/l/<short>": the kernel follows the links. Their "<home>/<id>/diff"
            # targets would save it ~0.5 ms of lookups at 500 layers, but every lower path
            # is shown in /proc/self/mountinfo, and the kernel rebuilds that line on each
            # read of the table: per mounted 500-layer stack 34 KB and +1.2 ms a read with
            # the links, 55 KB and +1.9 ms with the ids (docs/performance.md)
            home = os.fsencode(self.home) + b"/"
            spec.lowers += [home + short.encode() for short in shorts]
            mountapi.mount_new_api(spec, point)
        return point

    def _volatile_ready(self, layer_id: str) -> None:
        """Let a ``volatile`` layer mount again, unless the system went down while it was.

        A volatile mount never syncs, so the kernel leaves ``work/work/incompat/volatile``
        and refuses the next mount (EINVAL) until someone vouches for the upper directory.
        It is intact when this boot made the marker (the page cache still holds every
        write): the marker is removed. After a reboot the layer may have lost writes: that
        is an error, never silently mounted. The boot that mounts is written down first.
        """
        layer = self._dir(layer_id)
        marker = layer / "work" / "work" / "incompat" / "volatile"
        record = layer / "volatile-boot"
        boot = boot_id()
        if os.path.lexists(marker):
            try:
                mounted_in = record.read_text().strip()
            except FileNotFoundError:
                mounted_in = ""
            if mounted_in != boot or boot == UNKNOWN_BOOT:
                raise DriverError(
                    f"layer {layer_id} was mounted with the overlay option 'volatile' when "
                    "the system went down: writes to it may be lost",
                    hint=f"remove the layer (lamina layer rm {layer_id}) and make it again",
                )
            remove_tree(marker)
        tmp = layer / "volatile-boot.tmp"
        tmp.write_text(boot + "\n")
        os.rename(tmp, record)

    def unmount(self, layer_id: str) -> None:
        point = self._dir(layer_id) / "merged"
        if not os.path.lexists(point):
            return
        mounts.detach(point)
        if mounts.is_mountpoint(point):
            raise DriverError(
                f"{point} is still mounted after detaching it",
                hint="something mounted over it again; unmount it by hand and retry",
            )

    def mounted_paths(self) -> list[Path]:
        return [self.home]

    # -- what the kernel does ------------------------------------------------------------------

    def features(self) -> support.Features:
        """Whether redirect/metacopy xattrs get written here; probed once, cached in home."""
        if self._features is not None:
            return self._features
        key = {
            "kernel": os.uname().release,
            "mountopt": self.mount_options.text,
            "legacy": self.legacy,
        }
        cache = self.home / FEATURES_FILE
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(cache.read_text())
            if data["key"] == key:
                self._features = support.Features(**data["features"])
                return self._features
        found = support.probe_features(self.home, self.mount_options, self.legacy)
        tmp = cache.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "features": found.as_dict()}) + "\n")
        os.rename(tmp, cache)
        self._features = found
        return found

    def max_depth(self) -> int:
        """The deepest chain that mounts with the mount method in use."""
        if self.legacy:
            return mountapi.legacy_max_lowers(self.home, self.mount_options)
        return mountapi.KERNEL_MAX_LOWERS

    def status(self) -> list[tuple[str, str]]:
        features = self.features()
        dtype = support.supports_d_type(self.home)
        how = (
            "legacy mount(2), lowerdir= of l/ short paths (one page)"
            if self.legacy
            else "new mount API: fsopen + one fsconfig lowerdir+ per layer"
        )
        native = "true" if features.native_diff else f"false ({features.why_not_native()})"
        count = sum(1 for p in self.home.iterdir() if (p / "link").is_file())
        return [
            ("Backing Filesystem", filesystem_type(self.home)),
            ("Supports d_type", str(dtype).lower()),
            ("Native Overlay Diff", native),
            ("Using metacopy", str(features.metacopy).lower()),
            ("Max Depth", str(self.max_depth())),
            ("Deep Stacks", how),
            ("Mount Options", ",".join(filter(None, ["index=off", self.mount_options.text]))),
            ("Layers", str(count)),
        ]

    # -- content ---------------------------------------------------------------------------------

    def _native(self, layer_id: str, parents: Sequence[str]) -> nativediff.NativeDiff:
        from . import nativediff

        return nativediff.layer_changes(
            self.diff_dir(layer_id), self.lower_dirs(parents),
            root_mode=self.capabilities.root_mode,
        )

    def changes(self, layer_id: str, parents: Sequence[str], views: LayerViews) -> list[Change]:
        if not self.features().native_diff:
            return super().changes(layer_id, parents, views)
        self._check_layer(layer_id)
        return self._native(layer_id, parents).found.changes()

    def diff(
        self, layer_id: str, parents: Sequence[str], out: IO[bytes], views: LayerViews
    ) -> int:
        if not self.features().native_diff:
            return super().diff(layer_id, parents, out, views)
        self._check_layer(layer_id)
        from . import nativediff

        return nativediff.write_native_diff(
            out, self.diff_dir(layer_id), self._native(layer_id, parents)
        )

    def diff_size(self, layer_id: str, parents: Sequence[str], views: LayerViews) -> int:
        if not self.features().native_diff:
            return super().diff_size(layer_id, parents, views)
        self._check_layer(layer_id)
        return self._native(layer_id, parents).found.content_size()

    def apply(
        self, layer_id: str, parents: Sequence[str], stream: IO[bytes], views: LayerViews
    ) -> ApplyResult:
        self._check_layer(layer_id)
        from . import nativeapply

        return nativeapply.apply_layer(stream, self.diff_dir(layer_id), self.lower_dirs(parents))

    def _check_layer(self, layer_id: str) -> None:
        self._check_open()
        if not self.exists(layer_id):
            raise self._not_found(layer_id)
