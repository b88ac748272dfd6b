"""The one exception hierarchy of lamina.

Every error a user can cause is a :class:`LaminaError`. Its message says what
was wrong; its ``hint`` says what to do about it. The CLI prints both on one or
two lines, without a traceback, and exits non-zero. What the host refuses (a
full disk, a missing permission, a read-only filesystem) becomes a
:class:`HostError` through :func:`host_error` where the operation and its path
are known. Anything else is a bug in lamina: the CLI still prints it as one
line and asks for ``--debug``, which shows the traceback.
"""

from __future__ import annotations

import errno as _errno
import os


class LaminaError(Exception):
    """Base of every error lamina raises on purpose."""

    #: what the user can do about it; printed after the message
    hint: str | None = None
    #: process exit status used by the CLI
    exit_status: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled as it is, whatever its class's ``__init__`` takes: a pull's fetcher
        process sends its errors to the pull this way (``core/images/fetcher.py``)."""
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[LaminaError], args: tuple[object, ...],
             state: dict[str, object]) -> LaminaError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


# --- configuration and driver selection ------------------------------------


class ConfigError(LaminaError):
    """The configuration file or an option in it is invalid."""

    exit_status = 2


class DriverNotFound(ConfigError):
    """A driver name was asked for that no installed plugin registers."""


class DriverNotSupported(LaminaError):
    """The driver cannot work on this root or kernel.

    This is the only failure that lets automatic selection move on to the
    next driver in the priority list; ``reason`` says why.
    """

    def __init__(self, driver: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"driver {driver!r} cannot work here: {reason}", hint=hint)
        self.driver = driver
        self.reason = reason


class AmbiguousDriver(ConfigError):
    """State of more than one driver exists under the root and none was chosen."""


class PluginError(LaminaError):
    """A driver plugin failed to load or registered something invalid."""


# --- the store and its layers -------------------------------------------------


class StoreError(LaminaError):
    """The store cannot be opened or used."""


class StoreClosed(StoreError):
    """An operation was attempted on a closed store or driver."""


#: what to do about lost or damaged metadata (docs/configuration.md, "Repairing a store")
METADATA_WAY_OUT = (
    "`lamina system repair` rebuilds the database from the layer records and what the "
    "drivers hold; `lamina system reset` removes everything under the root"
)


class MetadataCorrupt(StoreError):
    """The metadata database exists but SQLite cannot read it (damaged or not a database)."""

    hint = METADATA_WAY_OUT


class MetadataMissing(StoreError):
    """The metadata database is gone or empty while the root still holds layers or blobs.

    Never answered by making a new, empty database: that would forget every layer.
    """

    hint = METADATA_WAY_OUT


class DriverError(LaminaError):
    """A driver operation failed (the driver's message says why)."""


class LayerError(LaminaError):
    """Base for errors about one layer."""

    def __init__(self, layer_id: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.layer_id = layer_id


class InvalidLayerId(LayerError):
    """A layer id is not of the accepted form."""


class LayerNotFound(LayerError):
    """No layer has that id (or it was removed)."""


class AmbiguousLayerId(LayerError):
    """A short id (a prefix) matches more than one layer."""


class LayerExists(LayerError):
    """A layer with that id exists already."""


class LayerHasChildren(LayerError):
    """The layer cannot be removed while layers are built on it."""


class LayerInUse(LayerError):
    """The layer is mounted or being written and cannot be changed now."""


class LayerIncomplete(LayerError):
    """The layer's content is not complete yet (being applied, or left by a crash)."""


class NotMounted(LayerError):
    """Unmount of a layer that holds no mount reference."""


class LayerOptionError(LayerError):
    """A per-layer option (``--storage-opt``) the driver does not take, or a bad value."""


class ReadOnlyLayer(LayerError):
    """A write was attempted on a read-only layer."""


# --- content --------------------------------------------------------------------


class ContentError(LaminaError):
    """Content (a blob or a layer tar) is invalid."""


class DigestMismatch(ContentError):
    """A blob's digest or size differs from what was declared."""


class UnsafeArchive(ContentError):
    """A layer tar tried something that is never allowed (escape, bad whiteout, ...).

    Raised before the offending entry touches the disk.
    """

    def __init__(self, entry: str, reason: str) -> None:
        super().__init__(
            f"refusing layer entry {entry!r}: {reason}",
            hint="the layer tarball is malformed or hostile; nothing was stored",
        )
        self.entry = entry
        self.reason = reason


class CorruptArchive(ContentError):
    """A layer stream is not a readable tar (junk, truncated, bad headers)."""

    hint = "check that the file is an uncompressed, gzip or zstd tar; nothing was stored"


class ArchiveLimit(ContentError):
    """A layer tar exceeds a safety limit (header size, sparse map, path length)."""

    hint = "the layer tarball is malformed or hostile; nothing was stored"


# --- images: the model, the store, pulls ------------------------------------------


class ImageError(LaminaError):
    """An image cannot be found, stored, pulled or removed."""


class ImageFormatError(ImageError, ContentError):
    """A manifest, index or config is malformed, too large or of an unknown kind."""

    hint = "the image is malformed or not a container image; nothing was stored"


class ImageNotFound(ImageError):
    """No image has that name or id."""


class AmbiguousImageId(ImageError):
    """An id prefix matches several images."""


class ImageInUse(ImageError):
    """An image is used (by a container, or named in several repositories)."""


# --- the host -------------------------------------------------------------------


class HostError(LaminaError):
    """The host refused a file operation: no permission, a read-only filesystem, ...

    Made by :func:`host_error`; ``errno`` is the refusing OSError's.
    """

    def __init__(self, message: str, *, hint: str | None = None, errno: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.errno = errno


class NoSpace(HostError):
    """The filesystem is full (ENOSPC) or the user's disk quota is used up (EDQUOT)."""


#: what to do about an errno; errnos not listed get no hint of their own
_HINTS = {
    _errno.ENOSPC: "free space on that filesystem, then run the command again",
    _errno.EDQUOT: "free space within your disk quota or have it raised, then run the "
    "command again",
    _errno.EACCES: "check the permissions of that path, or run lamina as a user who may use it",
    _errno.EPERM: "check the permissions of that path, or run lamina as a user who may use it",
    _errno.EROFS: "that filesystem is mounted read-only: remount it read-write or choose a "
    "path on another one",
    _errno.ENOENT: "check that the path and its parent directories exist",
    _errno.ENOTDIR: "a component of that path is not a directory",
    _errno.EISDIR: "that path is a directory; give a file",
    _errno.EIO: "the device reported an I/O error: check the kernel log (dmesg) and the disk",
}


def host_error(
    exc: OSError,
    action: str | None = None,
    path: str | os.PathLike[str] | None = None,
    *,
    hint: str | None = None,
) -> HostError:
    """The LaminaError for an OSError: ``cannot <action> <path>: <reason>`` and a hint.

    ``path`` defaults to the OSError's own file name, ``hint`` to one for the errno.
    Raise the result where the OSError happened: only there are the operation and
    the path known.
    """
    reason = exc.strerror or str(exc)
    where = os.fspath(path) if path is not None else exc.filename
    if action:
        message = f"cannot {action} {where}: {reason}" if where else f"cannot {action}: {reason}"
    else:
        message = f"{where}: {reason}" if where else reason
    kind = NoSpace if exc.errno in (_errno.ENOSPC, _errno.EDQUOT) else HostError
    return kind(message, hint=hint or _HINTS.get(exc.errno or 0), errno=exc.errno)


# --- registries (the distribution API client, credentials, login) -------------------


class RegistryError(LaminaError):
    """A registry refused or broke a request; the message names the registry and what.

    ``host`` is the registry's (or mirror's) host, ``status`` the last HTTP status, if any.
    """

    def __init__(self, message: str, *, hint: str | None = None, host: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.host = host
        self.status = status


class RegistryAuthError(RegistryError):
    """The registry (or its token server) refused the credentials, or wants some."""


class RegistryNotFound(RegistryError):
    """The repository, manifest or blob does not exist on the registry (404)."""


class RegistryUnavailable(RegistryError):
    """The registry cannot be reached or kept failing (connection errors, 429, 5xx, timeouts)."""


class RegistryProtocolError(RegistryError):
    """The registry's answer breaks the protocol: a malformed header, a missing Location, ..."""


class RegistryDigestMismatch(RegistryError, DigestMismatch):
    """What the registry sent does not hash to the digest it was asked for."""


class CredentialsError(LaminaError):
    """An auth file (lamina's or Docker's) or a credential helper cannot be used."""


# --- images: references and platforms -------------------------------------------


class InvalidReference(LaminaError):
    """An image reference (``NAME[:TAG][@DIGEST]``) or repository name is malformed.

    ``text`` is the input as given, ``reason`` what is wrong with it.
    """

    hint = (
        "an image reference is NAME[:TAG][@DIGEST], e.g. busybox, busybox:1.36, "
        "registry.example.com:5000/team/app:v1 or app@sha256:<64 hex digits>; names are "
        "lowercase"
    )

    def __init__(self, text: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"invalid reference {text!r}: {reason}", hint=hint)
        self.text = text
        self.reason = reason


class InvalidPlatform(LaminaError):
    """A platform (``OS/ARCH[/VARIANT]``) is malformed or names an unknown OS or architecture."""

    hint = "a platform is [OS/]ARCH[/VARIANT], e.g. linux/amd64, linux/arm64, linux/arm/v7, amd64"

    def __init__(self, text: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"invalid platform {text!r}: {reason}", hint=hint)
        self.text = text
        self.reason = reason


# --- images: archives (save, load, import) -------------------------------------------


class ArchiveError(ImageError, ContentError):
    """An image archive (``docker save``, an OCI layout) is malformed, hostile or unreadable."""

    hint = "the archive is malformed or not an image archive; nothing was stored"


class InvalidChange(LaminaError):
    """A ``--change`` instruction of ``lamina import`` is malformed or not supported."""

    hint = (
        "--change takes one Dockerfile instruction: CMD, ENTRYPOINT, ENV, WORKDIR, USER, "
        "LABEL, EXPOSE, STOPSIGNAL or HEALTHCHECK, e.g. --change 'CMD [\"sh\"]'"
    )


# -- containers (core/containers/, core/launcher/, core/network/) -----------------------


class ContainerError(LaminaError):
    """A container cannot be created, started, stopped or removed as asked.

    Exit status 1, as ``docker rm``/``start`` of a missing container; ``run`` and
    ``create`` turn every engine failure into Docker's 125 (core/cli/container.py).
    """


class ContainerNotFound(ContainerError):
    pass


class ContainerInUse(ContainerError):
    """A running container asked to be removed, or a name already taken."""


class VolumeNotFound(ContainerError):
    """No volume has that name."""


class VolumeInUse(ContainerError):
    """A container uses the volume that was asked to be removed."""


class LaunchError(ContainerError):
    """The container's process could not be started (namespaces, mounts, exec)."""


class CommandNotFound(LaunchError):
    """The command is not in the container (Docker's 127)."""

    exit_status = 127


class CommandNotExecutable(LaunchError):
    """The command is there but cannot be run: a directory, no permission (Docker's 126)."""

    exit_status = 126


class NetworkError(ContainerError):
    """A container's network could not be set up or torn down."""


class CgroupError(ContainerError):
    """A resource limit could not be applied."""


# -- builds (core/build/) ----------------------------------------------------------------


class BuildError(LaminaError):
    """A build cannot go on: a Dockerfile step, its arguments or its context are wrong."""

    hint = "see https://docs.docker.com/reference/dockerfile/ for what each instruction takes"


class DockerfileSyntaxError(BuildError):
    """A Dockerfile (or .dockerignore) is not valid; the message starts ``FILE:LINE:COLUMN:``.

    ``filename``, ``line`` and ``column`` (1-based; None where unknown) say where,
    ``reason`` what is wrong without the place.
    """

    def __init__(self, reason: str, *, filename: str | None = None, line: int | None = None,
                 column: int | None = None, hint: str | None = None) -> None:
        where = ":".join(str(part) for part in (filename, line, column) if part is not None)
        super().__init__(f"{where}: {reason}" if where else reason, hint=hint)
        self.reason = reason
        self.filename = filename
        self.line = line
        self.column = column
