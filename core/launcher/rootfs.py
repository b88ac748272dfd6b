"""The container's root filesystem, set up inside its new mount namespace.

Runs in the container's process before ``pivot_root``. The order matters and follows
the OCI runtime spec's defaults (runc's rootfs setup is the reference):

1. ``/`` made private recursively, so nothing mounted here propagates to the host;
2. the root bound onto itself (``pivot_root`` needs a mount point);
3. ``/proc``, a tmpfs ``/dev``, a new devpts instance, ``/dev/shm``, ``/dev/mqueue``, a
   read-only ``/sys``;
4. volumes and the generated ``/etc/hosts``, ``/etc/hostname``, ``/etc/resolv.conf``;
5. nodev on every mount but devpts, then the host's standard nodes bound into ``/dev``:
   a node the container makes (or an image brings) opens nothing;
6. the masked and read-only paths of ``/proc`` and ``/sys``;
7. the root made read-only for ``--read-only``; ``pivot_root(".", ".")`` and the old
   root detached.

The image is hostile. Every mount target is opened by :func:`open_beneath`, which walks
the path one component at a time with ``O_PATH|O_NOFOLLOW`` and resolves symlinks as if
the root were ``/``, so a planted symlink can never point a mount outside the root;
the mount is then made on ``/proc/self/fd/N``, the opened object itself. An image
whose ``/proc``, ``/dev`` or ``/sys`` is a symlink is refused outright: mounting
"through" it would at best put the kernel's files somewhere the image chose.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence

from ..containers.spec import Volume
from ..errors import DriverError, LaunchError
from ..host.mounts import (
    MNT_DETACH,
    MOUNT_ATTR_NODEV,
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    _libc,
    mount,
    set_mount_attributes,
)
from .syscalls import pivot_root

MS_NOEXEC = 8
MS_STRICTATIME = 1 << 24
#: statvfs's f_flag bits a remount must repeat (ST_* equal MS_*): rdonly, nosuid, nodev,
#: noexec, noatime, nodiratime, relatime
_KEPT_FLAGS = 1 | 2 | 4 | 8 | 1024 | 2048 | 4096
MAX_SYMLINKS = 40

#: Docker's (and the OCI spec's) masked paths: files get /dev/null, directories an empty
#: read-only tmpfs
MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
#: (name, major, minor): the nodes every container's /dev has, mode 0666
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
             ("ptmx", "pts/ptmx"), ("core", "/proc/kcore"))


def open_beneath(root_fd: int, path: str, *, create: str | None = None) -> int:
    """An ``O_PATH`` fd of ``path`` resolved inside ``root_fd`` as if it were ``/``.

    ``..`` never climbs above the root; symlinks are followed by reading them and
    resolving their text the same way (absolute ones from the root). With ``create``
    ("dir" or "file"), missing components are made as directories and the last one as
    ``create`` says. The caller closes the fd.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    stack: list[int] = [os.dup(root_fd)]  # stack[-1] is where we are; stack[0] the root
    links = 0
    try:
        while parts:
            name = parts.pop(0)
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            last = not parts
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            except FileNotFoundError:
                if create is None:
                    raise
                if last and create == "file":
                    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, 0o644, dir_fd=stack[-1]))
                else:
                    os.mkdir(name, 0o755, dir_fd=stack[-1])
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                links += 1
                if links > MAX_SYMLINKS:
                    os.close(fd)
                    raise OSError(errno.ELOOP, f"too many symlinks resolving {path}")
                target = os.readlink(name, dir_fd=stack[-1])
                os.close(fd)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
            if not last and not stat.S_ISDIR(mode):
                os.close(fd)
                raise NotADirectoryError(errno.ENOTDIR, f"{path}: {name} is not a directory")
            stack.append(fd)
        result = stack.pop()
        return result
    finally:
        for fd in stack:
            os.close(fd)


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _mount_at(root_fd: int, target: str, source: str, fstype: str | None, flags: int,
              data: str | None = None, *, create: str = "dir") -> None:
    fd = open_beneath(root_fd, target, create=create)
    try:
        mount(source, _fd_path(fd), fstype, flags, data)  # type: ignore[arg-type]
    finally:
        os.close(fd)


def _remount_readonly(root_fd: int, target: str, flags: int = 0) -> None:
    fd = open_beneath(root_fd, target)
    try:
        mount(_fd_path(fd), _fd_path(fd), None, MS_BIND | MS_REC, None)  # type: ignore[arg-type]
        # the new fd sees the bind just made: reopen it before remounting
        os.close(fd)
        fd = open_beneath(root_fd, target)
        mount("none", _fd_path(fd), None,  # type: ignore[arg-type]
              MS_BIND | MS_REMOUNT | MS_RDONLY | flags, None)
    finally:
        os.close(fd)


def _refuse_symlinked_system_dirs(root_fd: int) -> None:
    for name in ("proc", "dev", "sys"):
        try:
            st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.mkdir(name, 0o755, dir_fd=root_fd)
            continue
        if not stat.S_ISDIR(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise LaunchError(
                f"the image's /{name} is {kind}; refusing to mount the kernel's /{name} "
                "through it", hint="this image is broken or hostile: rebuild it with a plain "
                f"/{name} directory")


def _make_dev(root_fd: int, shm_size: int | None = None, *, privileged: bool = False,
              host_shm: bool = False) -> None:
    """A tmpfs ``/dev`` (nodev: a node made in it opens nothing) with empty files where
    the standard nodes go (:func:`_bind_devices` binds the host's nodes on them); for
    ``--privileged`` one that takes nodes, which :func:`_copy_host_devices` makes."""
    _mount_at(root_fd, "/dev", "tmpfs", "tmpfs",
              MS_NOSUID | MS_STRICTATIME | (0 if privileged else MS_NODEV),
              "mode=755,size=65536k")
    dev = open_beneath(root_fd, "/dev")
    try:
        dev_dir = os.open(_fd_path(dev), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    finally:
        os.close(dev)
    try:
        old = os.umask(0)
        try:
            for name, _, _ in () if privileged else DEVICES:
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                                 0o666, dir_fd=dev_dir))
            for name in ("pts", "shm", "mqueue"):
                os.mkdir(name, 0o755, dir_fd=dev_dir)
        finally:
            os.umask(old)
        for name, target in DEV_LINKS:
            os.symlink(target, name, dir_fd=dev_dir)
    finally:
        os.close(dev_dir)
    _mount_at(root_fd, "/dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620,gid=5")
    if host_shm:  # --ipc host: the host's shared memory, as Docker's
        _mount_at(root_fd, "/dev/shm", "/dev/shm", None, MS_BIND | MS_REC)
    else:
        shm_kib = 65536 if shm_size is None else max(1, shm_size // 1024)  # Docker's 64 MB
        _mount_at(root_fd, "/dev/shm", "shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  f"mode=1777,size={shm_kib}k")
    # no POSIX message queues in this kernel: the directory stays
    with contextlib.suppress(DriverError):
        _mount_at(root_fd, "/dev/mqueue", "mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _no_devices(root_fd: int, volumes: Sequence[Volume]) -> None:
    """Make a device node anywhere the container can reach open nothing: every mount
    below the root (the image's layers, volumes and what is mounted below them, /dev)
    gets nodev, but devpts (its ptys are nodes). Docker gets this from the devices
    cgroup (joining a cgroup costs a start ~10 ms); without it a container, which keeps
    CAP_MKNOD as Docker's do, could make a node of the host's disk and read it."""
    root = os.open(".", os.O_PATH | os.O_CLOEXEC, dir_fd=root_fd)
    try:
        if set_mount_attributes(root, add=MOUNT_ATTR_NODEV, recursive=True):
            pts = open_beneath(root_fd, "/dev/pts")
            try:
                set_mount_attributes(pts, remove=MOUNT_ATTR_NODEV)
            finally:
                os.close(pts)
            return
    finally:
        os.close(root)
    # before Linux 5.12: the root and each volume, remounted with their flags and nodev
    # (not what is mounted below a volume)
    for target in ("/", *(v.target for v in volumes if v.kind != "tmpfs")):
        fd = open_beneath(root_fd, target)
        try:
            flags = os.statvfs(_fd_path(fd)).f_flag & _KEPT_FLAGS
            mount("none", _fd_path(fd), None,  # type: ignore[arg-type]
                  MS_BIND | MS_REMOUNT | MS_NODEV | flags)
        finally:
            os.close(fd)


def _bind_devices(root_fd: int) -> None:
    """The host's standard nodes bound on the files :func:`_make_dev` left (after
    :func:`_no_devices`: these mounts keep the host's devtmpfs flags)."""
    dev = open_beneath(root_fd, "/dev")
    try:
        for name, major, minor in DEVICES:
            host = os.open(f"/dev/{name}", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                st = os.fstat(host)
                if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(major, minor):
                    raise LaunchError(f"the host's /dev/{name} is not the device {major}:"
                                      f"{minor}", hint="the host's /dev is damaged: a "
                                      "container's standard devices are bound from it")
                mount(_fd_path(host), f"{_fd_path(dev)}/{name}", None,  # type: ignore[arg-type]
                      MS_BIND)
            finally:
                os.close(host)
    finally:
        os.close(dev)


def _copy_host_devices(root_fd: int) -> None:
    """``--privileged``: a node in the container's /dev for each of the host's (Docker's),
    but those of the filesystems mounted below the host's /dev (devpts, shm, mqueue)."""
    dev = open_beneath(root_fd, "/dev")
    try:
        top = _fd_path(dev)
        host_dev = os.stat("/dev").st_dev
        for where, dirs, names in os.walk("/dev"):
            dirs[:] = [d for d in dirs
                       if os.lstat(os.path.join(where, d)).st_dev == host_dev]
            relative = os.path.relpath(where, "/dev")
            for name in names:
                st = os.lstat(os.path.join(where, name))
                if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                    continue
                target = os.path.normpath(os.path.join(top, relative, name))
                os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
                with contextlib.suppress(FileExistsError):  # ptmx: the link to pts/ptmx
                    os.mknod(target, st.st_mode, st.st_rdev)
                    os.chown(target, st.st_uid, st.st_gid)
                    os.chmod(target, stat.S_IMODE(st.st_mode))
    finally:
        os.close(dev)


def _bind_user_devices(root_fd: int, devices: Sequence[tuple[str, str]]) -> None:
    """``--device``: each host node (every node below a host directory) bound at its
    container path; bound after :func:`_no_devices`, so it opens."""
    for host, target in devices:
        host = os.path.realpath(host)  # /dev/disk/by-id/... names a node by a symlink
        if os.path.isdir(host):
            found = [(os.path.join(where, name),
                      os.path.join(target, os.path.relpath(where, host), name))
                     for where, _, names in os.walk(host) for name in names]
        else:
            found = [(host, target)]
        for node, path in found:
            source = os.open(node, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                mode = os.fstat(source).st_mode
                if not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
                    if node == host:
                        raise LaunchError(f"--device {host}: not a device",
                                          hint="give a character or block device")
                    continue  # a directory's other files
                fd = open_beneath(root_fd, os.path.normpath(path), create="file")
                try:
                    mount(_fd_path(source), _fd_path(fd), None,  # type: ignore[arg-type]
                          MS_BIND)
                finally:
                    os.close(fd)
            finally:
                os.close(source)


def _mask(root_fd: int) -> None:
    null = open_beneath(root_fd, "/dev/null")
    try:
        st = os.fstat(null)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
            raise LaunchError("the container's /dev/null is not the null device",
                              hint="report this: lamina made that node itself")
        for path in MASKED_PATHS:
            try:
                fd = open_beneath(root_fd, path)
            except OSError:
                continue  # not in this kernel
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    mount("tmpfs", _fd_path(fd), "tmpfs", MS_RDONLY,  # type: ignore[arg-type]
                          "size=0")
                else:
                    mount(_fd_path(null), _fd_path(fd), None, MS_BIND)  # type: ignore[arg-type]
            finally:
                os.close(fd)
    finally:
        os.close(null)
    for path in READONLY_PATHS:
        try:
            _remount_readonly(root_fd, path, MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except FileNotFoundError:
            continue  # not in this kernel


def _volume(root_fd: int, volume: Volume) -> None:
    if volume.kind == "tmpfs":
        _mount_at(root_fd, volume.target, "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV,
                  volume.options or "mode=1777")
        return
    try:
        source = os.open(volume.source, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        raise LaunchError(f"volume source {volume.source}: {exc.strerror}",
                          hint="create the host path first") from None
    try:
        is_dir = stat.S_ISDIR(os.fstat(source).st_mode)
        target = open_beneath(root_fd, volume.target, create="dir" if is_dir else "file")
        try:
            mount(_fd_path(source), _fd_path(target), None,  # type: ignore[arg-type]
                  MS_BIND | MS_REC)
        finally:
            os.close(target)
    finally:
        os.close(source)
    if volume.readonly:
        target = open_beneath(root_fd, volume.target)
        try:
            mount("none", _fd_path(target), None,  # type: ignore[arg-type]
                  MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
        finally:
            os.close(target)


def enter(rootfs: str, *, volumes: Sequence[Volume] = (), files: Sequence[tuple[str, str]] = (),
          read_only: bool = False, mount_sys: bool = True, shm_size: int | None = None,
          privileged: bool = False, devices: Sequence[tuple[str, str]] = (),
          host_shm: bool = False) -> None:
    """Build the container's mounts on ``rootfs`` and make it the process's ``/``.

    ``files`` are (host file, container path) pairs bound read-write onto the root
    (the generated /etc files). The caller is in a new mount namespace.
    """
    mount("none", "/", None, MS_REC | MS_PRIVATE)  # type: ignore[arg-type]
    mount(rootfs, rootfs, None, MS_BIND | MS_REC)  # type: ignore[arg-type]
    root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _refuse_symlinked_system_dirs(root_fd)
        _mount_at(root_fd, "/proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _make_dev(root_fd, shm_size, privileged=privileged, host_shm=host_shm)
        if mount_sys:
            try:
                _mount_at(root_fd, "/sys", "sysfs", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC
                          | (0 if privileged else MS_RDONLY))
            except DriverError:
                # sysfs needs a network namespace of our own; with --network host it
                # is the host's, bound (read-only unless privileged)
                _mount_at(root_fd, "/sys", "/sys", None, MS_BIND | MS_REC)
                if not privileged:
                    _remount_readonly(root_fd, "/sys")
        for volume in volumes:
            _volume(root_fd, volume)
        for host_file, path in files:
            _mount_at(root_fd, path, host_file, None, MS_BIND, create="file")
        if privileged:
            _copy_host_devices(root_fd)
        else:
            _no_devices(root_fd, volumes)
            _bind_devices(root_fd)
        _bind_user_devices(root_fd, devices)
        if not privileged:
            _mask(root_fd)
        if read_only:  # nodev kept: a remount sets every flag it is given, clears the rest
            mount("none", rootfs, None,  # type: ignore[arg-type]
                  MS_BIND | MS_REMOUNT | MS_RDONLY | (0 if privileged else MS_NODEV))
    finally:
        os.close(root_fd)
    os.chdir(rootfs)
    pivot_root(".", ".")
    if _libc.umount2(b".", MNT_DETACH) != 0:
        raise LaunchError("could not detach the host's root from the container",
                          hint="report this with `lamina --debug`")
    os.chdir("/")
