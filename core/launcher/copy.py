"""``cp``: files into and out of a container, as tar streams, the container's side done
from inside it.

A container's tree is hostile, and running: a path in it may be a symlink to ``/``
now and something else a moment later (moby's CVE-2018-15664). So nothing here
resolves a container's path from the host. A child process enters the container's
view of its files (a running container's mount namespace, with its volumes and
tmpfs; a stopped one's layer, mounted by the store and made the child's root by
``chroot``) and there looks the path up, writes the tar of what it names, or
unpacks a tar into a directory. There, ``/`` is the container's root: no symlink
and no ``..`` leads out. The host's side is the user's own and is read and
written in this process: a host tree becomes a tar with the layer exporter, and a
tar from the container is unpacked on the host by the hardened layer applier
(nothing written outside the destination directory), names rebased on the way.

Both directions follow Docker's rules for what the destination becomes (a
directory copied *into* an existing directory, ``SRC/.`` for its contents, a file
written *as* a path that does not exist yet). Owners become the receiving side's
root (0:0) unless ``archive`` keeps them, as ``docker cp -a``. The applier gives
``.wh.`` names their layer meaning (a deletion): such files are not copied.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple

from ..containers.store import Container
from ..errors import ContainerError, LaminaError
from ..layers.changes import Change, ChangeKind
from ..layers.store import Store
from ..layertar import reader as tar
from ..layertar.apply import apply_tar_with
from ..layertar.export import write_layer_tar
from . import process, syscalls


class Source(NamedTuple):
    """What a copy's source path names, looked up where it lives."""

    #: the directory the tar's names are relative to
    parent: str
    #: the tar's top entry, a name in ``parent``
    name: str
    directory: bool


class Target(NamedTuple):
    """Where a copy lands: the directory to unpack into, and the name the source's top
    entry takes there ("": the source directory's contents go into ``directory``)."""

    directory: str
    name: str


# -- the rules ----------------------------------------------------------------------------


def contents_only(path: str) -> bool:
    """``SRC/.``: a directory's contents, not the directory."""
    return path == "." or path.endswith("/.")


def target_for(dest: str, exists: bool, dest_is_dir: bool, source: Source,
               source_path: str) -> Target:
    """Docker's rules for what ``dest`` becomes, once both sides were looked up."""
    if exists and dest_is_dir:
        if source.directory and contents_only(source_path):
            return Target(dest, "")
        return Target(dest, source.name)
    if exists:
        if source.directory:
            raise ContainerError(f"cannot copy the directory {source_path} to the file {dest}",
                                 hint="give a directory, or a path that does not exist yet")
        return Target(posixpath.dirname(dest.rstrip("/")) or "/", posixpath.basename(dest))
    if dest.endswith("/") and not source.directory:
        raise ContainerError(f"the destination directory {dest} does not exist",
                             hint="make it first, or leave out the trailing / to name a file")
    stripped = dest.rstrip("/") or "/"
    return Target(posixpath.dirname(stripped) or "/", posixpath.basename(stripped))


# -- either side --------------------------------------------------------------------------


def look_up(path: str, *, follow: bool, where: str) -> Source:
    """``path`` (absolute, or relative to the working directory) where this process is:
    its parent directory with symlinks resolved, and what it is. ``follow``: a symlink
    at the end is followed too (``cp -L``)."""
    clean = posixpath.normpath(path[:-1] if contents_only(path) and path != "." else path)
    parent, name = posixpath.split(clean)
    if name in ("", ".", ".."):  # "/", ".", "a/..": the directory itself
        parent, name = posixpath.split(os.path.realpath(clean))
    else:
        parent = os.path.realpath(parent or ".")
    full = posixpath.join(parent, name) if name else parent
    try:
        st = os.stat(full) if follow else os.lstat(full)
        if follow and stat.S_ISLNK(os.lstat(full).st_mode):
            parent, name = posixpath.split(os.path.realpath(full))
    except FileNotFoundError:
        raise ContainerError(f"{path}: no such file or directory {where}",
                             hint="check the path") from None
    except OSError as exc:
        raise ContainerError(f"{path} {where}: {exc.strerror}") from None
    return Source(parent, name, stat.S_ISDIR(st.st_mode))


#: what copying a container's / leaves out but for the directories themselves, as
#: Docker's cp: the kernel's views, not files
SYSTEM_DIRS = ("proc", "sys", "dev")


def describe(path: str) -> tuple[bool, bool]:
    """Whether ``path`` exists, and whether it is a directory (symlinks followed)."""
    try:
        return True, stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        return False, False


def write_tar(source: Source, out: IO[bytes], *, with_top: bool = True) -> int:
    """The tar of ``source`` (its tree, symlinks not followed) to ``out``; bytes written.
    ``with_top=False`` leaves out the top directory's own entry (``SRC/.``)."""
    base = posixpath.join(source.parent, source.name) if source.name else source.parent
    paths = [source.name] if with_top or not source.directory else []
    if source.directory:
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            rel = posixpath.relpath(dirpath, source.parent)
            rel = "" if rel == "." else rel
            paths.extend(posixpath.join(rel, n) for n in dirnames + filenames)
            if dirpath == "/":
                dirnames[:] = [d for d in dirnames if d not in SYSTEM_DIRS]
    for path in paths:
        if any(part.startswith(".wh.") for part in path.split("/")):
            raise ContainerError(f"cannot copy {path}: names beginning with .wh. mean "
                                 "deletions in lamina's tar applier",
                                 hint="rename it, or copy it with lamina exec and tar")
    return write_layer_tar(out, Path(source.parent), [Change(p, ChangeKind.ADDED) for p in paths])


def unpack(stream: IO[bytes], target: Target, top: str, *,
           owner: tuple[int, int] | None) -> int:
    """Unpack a tar whose top entry is ``top`` into ``target``, renamed to its name; the
    tar's size."""
    def rebase(entry: tar.TarEntry) -> None:
        entry.path = _rebased(entry.path, top, target.name)
        if entry.kind == tar.HARDLINK:
            entry.linkname = _rebased(entry.linkname, top, target.name)
        if owner is not None:
            entry.uid, entry.gid = owner

    return apply_tar_with(stream, Path(target.directory), before=rebase).size


def _rebased(path: str, old: str, new: str) -> str:
    clean = path.strip("/")
    if clean.startswith("./"):
        clean = clean[2:]
    if clean == ".":
        clean = ""
    if not old or clean == old:
        rest = "" if old else clean
    elif clean.startswith(old + "/"):
        rest = clean[len(old) + 1:]
    else:
        return path  # not under the top: the applier judges it
    return posixpath.join(new, rest) if new and rest else (new or rest or ".")


def copy_out(inside: Inside, source: Source, target: Target, *, with_top: bool,
             owner: tuple[int, int] | None) -> int:
    """``source`` in the container (looked up there) unpacked on this host at ``target``;
    the tar's size."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    running = inside.start(lambda: write_tar(source, os.fdopen(write_end, "wb"),
                                             with_top=with_top),
                           keep=(write_end,), drop=(read_end,))
    try:
        with os.fdopen(read_end, "rb") as stream:
            size = unpack(stream, target, source.name, owner=owner)
    except BaseException:
        with contextlib.suppress(LaminaError):
            running.result()
        raise
    running.result()
    return size


def copy_in(inside: Inside, source: Source, target: Target, *, with_top: bool,
            owner: tuple[int, int] | None) -> int:
    """``source`` on this host unpacked in the container at ``target`` (looked up
    there); the tar's size."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    running = inside.start(lambda: unpack(os.fdopen(read_end, "rb"), target, source.name,
                                          owner=owner),
                           keep=(read_end,), drop=(write_end,))
    try:
        with os.fdopen(write_end, "wb") as stream:
            size = write_tar(source, stream, with_top=with_top)
    except BrokenPipeError:
        running.result()  # the child's own error says why it stopped reading
        raise
    except BaseException:
        with contextlib.suppress(LaminaError):
            running.result()
        raise
    running.result()
    return size


# -- the container's side ----------------------------------------------------------------


class Inside:
    """A child process in the container's view of its files, running one function.

    A running container's mount namespace is joined (its volumes and tmpfs are
    there); a stopped container's layer is mounted and becomes the child's root, as
    any container's does with ``layer_only`` (``export``: its files, not its volumes).
    The function's JSON-able result, or the :class:`LaminaError` it raised, comes
    back through a pipe. Everything the function needs must be imported before:
    inside, the host's Python files are not there.
    """

    def __init__(self, store: Store, container: Container, *, layer_only: bool = False) -> None:
        self.store = store
        self.container = container
        self.rootfs: str | None = None
        if layer_only or not container.running or container.pid is None:
            self.rootfs = str(store.mount(container.layer, holder=store.process_holder))

    def close(self) -> None:
        if self.rootfs is not None:
            with contextlib.suppress(LaminaError):
                self.store.unmount(self.container.layer, holder=self.store.process_holder)
            self.rootfs = None

    def __enter__(self) -> Inside:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, work: Callable[[], Any], *, keep: tuple[int, ...] = (),
              drop: tuple[int, ...] = ()) -> Running:
        """Fork the child and run ``work`` in it. ``keep``: fds it uses, closed here once
        it has them; ``drop``: fds of this process it must close (a pipe's other end,
        which would keep it from seeing the end of its input)."""
        result_r, result_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.close(result_r)
            for fd in drop:
                os.close(fd)
            self._child(work, result_w)
        os.close(result_w)
        for fd in keep:
            os.close(fd)
        return Running(pid, result_r, self.container.name)

    def run(self, work: Callable[[], Any]) -> Any:
        return self.start(work).result()

    def _child(self, work: Callable[[], Any], result_w: int) -> None:
        code = 1
        try:
            if self.rootfs is None:
                assert self.container.pid is not None
                fd = process.namespace_fd(self.container.pid, "mnt")
                assert fd is not None
                syscalls.setns(fd)  # root and working directory: the container's /
                os.close(fd)
            else:
                os.chroot(self.rootfs)
            os.chdir("/")
            reply: dict[str, Any] = {"result": work()}
            code = 0
        except LaminaError as exc:
            reply = {"error": str(exc), "hint": exc.hint}
        except OSError as exc:
            reply = {"error": f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename
                                                           else "")}
        except BaseException as exc:  # a bug: reported, never a traceback of the child
            reply = {"error": f"copying failed inside the container: {exc!r}",
                     "hint": "rerun with --debug"}
        with contextlib.suppress(OSError):
            os.write(result_w, json.dumps(reply).encode())
        os._exit(code)


class Running(NamedTuple):
    pid: int
    result_fd: int
    name: str

    def result(self) -> Any:
        """Wait for the child; its function's result, or its error raised here."""
        data = b""
        try:
            while chunk := os.read(self.result_fd, 65536):
                data += chunk
        finally:
            os.close(self.result_fd)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        try:
            reply = json.loads(data)
        except ValueError:
            raise ContainerError(f"copying in container {self.name} failed: its helper died",
                                 hint="rerun with --debug") from None
        if "error" in reply:
            raise ContainerError(reply["error"], hint=reply.get("hint"))
        return reply["result"]
