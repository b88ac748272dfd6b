"""The storage driver contract.

A driver keeps layers: directories of files, each possibly built on one
parent, combined into one tree when mounted. The core (the store in
:mod:`lamina.core.layers.store`) decides ids, keeps the metadata, counts mounts,
recovers after crashes and calls the driver only for what is specific to a
storage technique.

The core owns the parent graph. Every method that needs a layer's lineage
is handed it as ``parents``: the ids of the layer's ancestors, nearest
first (``parents[0]`` is the parent, ``parents[-1]`` the base layer), empty
for a layer without parent. A driver never stores parent ids or chains of
its own: it keeps only what its storage needs per layer, and what makes a
layer exist must not depend on parent data. A driver subclasses :class:`Driver` and registers the
class through the ``lamina_register_drivers`` hook
(:mod:`lamina.core.plugins.hookspec`).

The least a driver writes: :meth:`Driver.check_support`, :meth:`Driver.create`,
:meth:`Driver.remove`, :meth:`Driver.exists`, :meth:`Driver.mount` and
:meth:`Driver.unmount`. Everything else (changes, diff, diff size, apply)
has a generic implementation in the core that works on mounted trees; a
driver may override any of them with a faster native path.

The conformance suite (:mod:`lamina.conformance`) checks every rule written
in the docstrings below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, NamedTuple

from .errors import ConfigError, LayerExists, LayerNotFound, StoreClosed
from .layers.changes import Change, ChangeKind
from .layers.views import LayerViews
from .layertar import ApplyResult

#: what a driver author imports from here (the values below are defined where they are
#: produced and re-exported, so that this contract needs nothing that needs it)
__all__ = [
    "ApplyResult",
    "Capabilities",
    "Change",
    "ChangeKind",
    "Driver",
    "LayerViews",
    "Option",
]

# --- values exchanged with drivers ---------------------------------------------


class Capabilities(NamedTuple):
    """What a driver promises; the conformance suite adapts to it.

    Every field is a promise checked by a conformance case: declare ``True``
    only for what the driver really does.
    """

    #: mode of the root directory of a new layer without parent
    root_mode: int = 0o755
    #: a lower-layer directory can be renamed in a writable layer (case 25)
    rename_lower_dir: bool = True
    #: hardlinks between lower files stay one inode after one name is written (case 27)
    hardlinks_survive_copy_up: bool = False
    #: a copy-up keeps the mtimes of a lower symlink it copies (chown -h, case 20) and of
    #: the parent directories it writes into (cases 20 and 44); kernel overlay does
    copy_up_keeps_mtimes: bool = True
    #: a new entry made through a writable mount inside a setgid directory takes the
    #: directory's group (and a new directory its setgid bit), as the kernel does (case 44)
    setgid_dirs_inherit_group: bool = True
    #: the ``size`` option is enforced with EDQUOT/ENOSPC (case 35)
    quota: bool = False
    #: the per-layer option ``size`` (``--storage-opt size=N``) limits what one writable
    #: layer may add, enforced with EDQUOT/ENOSPC (case 46); needs ``size`` in
    #: :attr:`Driver.layer_options`
    layer_quota: bool = False
    #: holes of sparse files stay holes in layers (case 31)
    sparse_files: bool = False
    #: sub-second mtimes are kept (case 40)
    subsecond_mtime: bool = True
    #: diff overrides the core's generic diff
    native_diff: bool = False
    #: deepest parent chain that mounts (the chain length, counting the layer)
    max_depth: int = 1000
    #: needs to run as root in the initial user namespace
    needs_root: bool = True


class Option(NamedTuple):
    """One key a driver accepts in its configuration table."""

    type: type
    help: str
    default: Any = None


# --- the base class -----------------------------------------------------------


class Driver:
    """Base class of every storage driver.

    A driver instance owns one directory, ``home`` (``<root>/<driver name>``),
    and nothing outside it except the mounts it makes. It may keep any files
    it needs there; the core never looks inside. It must survive being
    constructed again on the same home (restart persistence, case 9).

    Ids given to a driver are already validated by the core: they match
    ``[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`` and are safe as file names.

    Thread and process safety: the core serialises structural calls (create,
    remove, mount, unmount) for one store across processes. Reads of mounted
    trees may run concurrently.
    """

    #: the driver's name as users write it in the config (``driver = "vfs"``)
    name: ClassVar[str] = ""
    #: one line shown by ``lamina drivers``
    description: ClassVar[str] = ""
    #: promises the conformance suite checks
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: keys of the driver's configuration table ``[drivers.<name>]``
    options: ClassVar[Mapping[str, Option]] = {}
    #: keys of the per-layer options :meth:`create` accepts (``lamina run --storage-opt
    #: KEY=VALUE``; values are strings); none by default. ``size``: the most bytes a
    #: writable layer may add (declare ``capabilities.layer_quota`` with it)
    layer_options: ClassVar[Mapping[str, Option]] = {}

    def __init__(self, home: Path, options: Mapping[str, Any] | None = None) -> None:
        """Open the driver on ``home`` (created by the core, mode 0700).

        ``options`` come from the driver's config table and are validated
        with :meth:`validate_options` first; a driver that needs more setup
        raises :class:`~lamina.core.errors.DriverNotSupported` or
        :class:`~lamina.core.errors.DriverError` here.
        """
        self.home = Path(home)
        self.config = self.validate_options(options or {})
        self.closed = False

    # -- support ---------------------------------------------------------------

    @classmethod
    def check_support(cls, root: Path) -> str | None:
        """Say whether this driver can work with layers stored under ``root``.

        Returns ``None`` when it can, else a one-line reason a user can act on
        (``"overlay needs d_type: reformat xfs with -n ftype=1"``). Must not
        leave anything behind under ``root``. Must not raise for "cannot
        work here": only a real fault (a bug, I/O error) raises. ``root``
        exists when this is called. Every command calls it while others run:
        a test mount goes in ``root``, never in the driver's home, where a
        store's recovery detaches every mount it has no record of.
        """
        raise NotImplementedError

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check the config table's keys and types; return them with defaults.

        An unknown key is a :class:`ConfigError` listing the valid ones.
        """
        unknown = sorted(set(options) - set(cls.options))
        if unknown:
            valid = ", ".join(sorted(cls.options)) or "none"
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)} for driver {cls.name!r}",
                hint=f"valid options for {cls.name!r}: {valid}",
            )
        result: dict[str, Any] = {}
        for key, spec in cls.options.items():
            value = options.get(key, spec.default)
            if value is not None and not isinstance(value, spec.type):
                raise ConfigError(
                    f"option {key!r} of driver {cls.name!r} must be "
                    f"{spec.type.__name__}, not {type(value).__name__}",
                    hint=spec.help,
                )
            result[key] = value
        return result

    # -- what every driver writes ---------------------------------------------

    def create(
        self,
        layer_id: str,
        parents: Sequence[str],
        *,
        writable: bool,
        options: Mapping[str, str] | None = None,
    ) -> None:
        """Create an empty layer on ``parents`` (or on nothing, when empty).

        ``parents`` are the new layer's ancestors, nearest first (see the
        module docstring). A new layer shows exactly its parent's tree, or an
        empty root of mode ``capabilities.root_mode``. ``writable`` says
        whether mounts of the finished layer accept writes; a read-only layer
        is still filled once by the core (:meth:`apply`, or a ``populate``
        view) before it is finished (see :meth:`finalize`).

        ``options`` are per-layer options, only keys of :attr:`layer_options`
        (the store refuses any other key before calling, with
        :class:`~lamina.core.errors.LayerOptionError`). The store passes the
        keyword only when options were asked for, so a driver that declares
        none may leave it out of its signature. A value the driver cannot honour
        (a malformed size, a size on a read-only layer) is a
        :class:`~lamina.core.errors.LayerOptionError`.

        Must fail if ``layer_id`` exists (:class:`LayerExists`) or
        ``parents[0]`` does not (:class:`LayerNotFound`). If it fails it
        leaves nothing behind, so the same id can be created again; debris
        from a crash under this id must not make a later create fail.
        """
        raise NotImplementedError

    def remove(self, layer_id: str) -> None:
        """Delete the layer and everything stored for it.

        The core calls it only for an unmounted layer without children, and
        may call it again after a crash interrupted an earlier remove, so it
        must finish a half-done remove. Must fail with :class:`LayerNotFound`
        when nothing of the layer exists. Must never delete through a mount:
        if an unmount fails, raise and keep the data.
        """
        raise NotImplementedError

    def exists(self, layer_id: str) -> bool:
        """Whether the layer exists in this driver's home (no side effects)."""
        raise NotImplementedError

    def mount(self, layer_id: str, parents: Sequence[str], *, readonly: bool) -> Path:
        """Make the layer's combined tree available and return its path.

        ``parents`` are the layer's ancestors, nearest first, as at
        :meth:`create` (the core passes the same chain every time). The core
        counts mounts: it calls this for the first user only and
        :meth:`unmount` after the last one, so the driver need not count.
        With ``readonly`` every write below the path must fail (EROFS), which
        the suite checks by writing; without it writes land in this layer
        only, never in a parent. Must fail with :class:`LayerNotFound` for a
        layer that does not exist (or was removed).
        """
        raise NotImplementedError

    def unmount(self, layer_id: str) -> None:
        """Undo :meth:`mount`; the path need not exist afterwards.

        Detaches lazily if needed and retries while busy. Must not fail when
        the mount is already gone (a crash recovery calls it for mounts that
        may have vanished with a reboot).
        """
        raise NotImplementedError

    # -- optional -------------------------------------------------------------------

    def finalize(self, layer_id: str, *, writable: bool) -> None:
        """Called once when a layer's content is complete.

        ``writable`` is the flag the layer was created with (the core keeps
        it; the driver need not). A driver that makes finished read-only
        layers immutable (a btrfs read-only snapshot flag, say) does it here.
        Default: nothing.
        """

    def status(self) -> list[tuple[str, str]]:
        """Facts for ``lamina info``: ``(key, value)`` pairs of strings.

        They must name the filesystem ``home`` is on (case 11 looks for a key
        with "backing" or "filesystem" in it). Default: that fact alone; a driver that
        overrides it to add its own (d_type, native diff, ...) keeps it.
        """
        from .host.fsinfo import filesystem_type  # ctypes: only `lamina info` needs it

        return [("Backing Filesystem", filesystem_type(self.home))]

    def close(self) -> None:
        """Release what the driver holds. Idempotent: closing twice is fine."""
        self.closed = True

    # -- helpers for subclasses: the checks every driver makes the same way ----------

    def _check_open(self) -> None:
        """Raise :class:`StoreClosed` once :meth:`close` ran (operations after close fail)."""
        if self.closed:
            raise StoreClosed(
                f"the {self.name} driver on {self.home} is closed",
                hint="open the store again to keep working with it",
            )

    def _not_found(self, layer_id: str) -> LayerNotFound:
        return LayerNotFound(
            layer_id,
            f"{self.name} layer {layer_id!r} does not exist",
            hint="`lamina layer ls` lists the layers",
        )

    def _check_create(self, layer_id: str, parents: Sequence[str]) -> None:
        """The preconditions of :meth:`create`: open, a new id, an existing parent."""
        self._check_open()
        if self.exists(layer_id):
            raise LayerExists(
                layer_id,
                f"{self.name} layer {layer_id!r} exists already",
                hint="remove it first or choose another id",
            )
        if parents and not self.exists(parents[0]):
            raise LayerNotFound(
                parents[0],
                f"parent layer {parents[0]!r} of {layer_id!r} does not exist",
                hint="create the parent first; `lamina layer ls` lists the layers",
            )

    # -- generic, overridable ------------------------------------------------------

    def changes(
        self, layer_id: str, parents: Sequence[str], views: LayerViews
    ) -> list[Change]:
        """What changed in ``layer_id`` against its parent ``parents[0]`` (sorted by path).

        ``parents`` are the layer's ancestors, nearest first. A path is
        ADDED when the parent has no entry there, DELETED when the layer
        hides the parent's entry, MODIFIED when type, content, mode,
        owner, xattrs, mtime or link target differ; a directory whose
        entries changed is reported MODIFIED too. Default: compare the two
        mounted trees (:func:`lamina.core.layers.changes.compare_trees`).
        """
        from .layers.changes import generic_changes

        return generic_changes(layer_id, parents, views, root_mode=self.capabilities.root_mode)

    def diff(
        self, layer_id: str, parents: Sequence[str], out: IO[bytes], views: LayerViews
    ) -> int:
        """Write the layer's changes to ``out`` as an uncompressed OCI layer tar.

        Deletions become ``.wh.<name>`` entries; an opaque marker
        ``.wh..wh..opq`` is written only for a directory whose parent-side
        contents are hidden. Never writes 0/0 character devices or overlay
        xattrs. The same layer gives the same bytes every time
        (deterministic). Returns the number of bytes written.
        """
        from .layertar.export import generic_diff

        return generic_diff(
            layer_id, parents, out, views, root_mode=self.capabilities.root_mode
        )

    def diff_size(self, layer_id: str, parents: Sequence[str], views: LayerViews) -> int:
        """Bytes of file content the layer adds against its parent ``parents[0]``.

        Zero for an empty layer; at least N after N bytes were written; the
        parents' content is not counted.
        """
        from .layers.changes import generic_diff_size

        return generic_diff_size(layer_id, parents, views, root_mode=self.capabilities.root_mode)

    def apply(
        self, layer_id: str, parents: Sequence[str], stream: IO[bytes], views: LayerViews
    ) -> ApplyResult:
        """Fill the new, incomplete layer from an OCI layer tar stream.

        ``stream`` is already decompressed. The layer was just created on
        ``parents`` (as passed to :meth:`create`) and holds nothing of its
        own yet. Whiteouts delete from the parents' view; every entry is
        resolved safely inside the layer (:mod:`lamina.core.layertar.apply`). On
        failure the core removes the layer. Default: apply into a writable
        ``populate`` view of the layer.
        """
        from .layertar.apply import apply_tar

        with views.populate(layer_id) as path:
            return apply_tar(stream, path)

