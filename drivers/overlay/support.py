"""Whether overlay can work under a root, and what the kernel does with the options in use.

Checked for real, never guessed from version numbers: the d_type of a
directory entry as ``getdents64`` returns it (overlay needs it to find
whiteouts; xfs made with ``ftype=0`` and ext4 without the ``filetype``
feature report DT_UNKNOWN), and a test mount with two lowers and an upper
on the root's own filesystem. The feature probe renames a lower directory
and chmods a lower file in a test mount to see whether the kernel writes
``redirect`` or ``metacopy`` xattrs, which a native diff cannot read.

Test mounts are detached mounts, in no mount table (``_mount_probe``): every
command probes, and no other command's recovery or cleanup may see them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from pathlib import Path
from typing import NamedTuple

from lamina.core.errors import DriverError
from lamina.core.host.fsinfo import filesystem_magic, filesystem_type
from lamina.core.host.locks import boot_id

from . import mountapi

OVERLAY_MAGIC = 0x794C7630
DT_UNKNOWN = 0
DT_REG = 8
REDIRECT_XATTR = "trusted.overlay.redirect"
METACOPY_XATTR = "trusted.overlay.metacopy"

_libc = ctypes.CDLL(None, use_errno=True)
_HAVE_GETDENTS = hasattr(_libc, "getdents64")
if _HAVE_GETDENTS:
    _libc.getdents64.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    _libc.getdents64.restype = ctypes.c_ssize_t


def dirent_types(directory: Path) -> dict[str, int]:
    """name -> d_type of every entry of ``directory``, straight from getdents64."""
    if not _HAVE_GETDENTS:
        raise DriverError("libc has no getdents64", hint="glibc 2.30 or newer is needed")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    buf = ctypes.create_string_buffer(1 << 16)
    out: dict[str, int] = {}
    try:
        while True:
            n = _libc.getdents64(fd, buf, len(buf))
            if n < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(directory))
            if n == 0:
                return out
            raw = buf.raw[:n]
            pos = 0
            while pos < n:
                # struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, char name[]
                reclen = int.from_bytes(raw[pos + 16 : pos + 18], "little")
                dtype = raw[pos + 18]
                name = raw[pos + 19 : pos + reclen].split(b"\0", 1)[0]
                out[os.fsdecode(name)] = dtype
                pos += reclen
    finally:
        os.close(fd)


def supports_d_type(directory: Path) -> bool:
    """Whether the filesystem of ``directory`` fills d_type (probes in a temporary dir)."""
    import shutil
    import tempfile  # (~3 ms with random, bz2, lzma: the probes' cost, not every start-up's)

    probe = Path(tempfile.mkdtemp(prefix=".overlay-dtype-", dir=directory))
    try:
        (probe / "file").touch()
        return dirent_types(probe).get("file", DT_UNKNOWN) != DT_UNKNOWN
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def _kernel_has_overlay() -> bool:
    with open("/proc/filesystems") as f:
        if any(line.split()[-1:] == ["overlay"] for line in f):
            return True
    return mountapi.new_api_available()  # fsopen autoloads the module


def _mount_probe(spec: mountapi.OverlaySpec, legacy: bool, probe: Path) -> int:
    """A test mount that no mount table shows (see :func:`mountapi.mount_detached`).

    Never a mount point under the root: another process's store recovery detaches
    every mount there that its metadata does not explain, and would pull a probe's
    mount away halfway (commands run at once failed at random). Returns the
    directory fd of the mount's root; closing it unmounts.
    """
    if legacy:
        (probe / "merged").mkdir()
        shorts = [os.path.relpath(p, probe) for p in spec.lowers]
        return mountapi.mount_detached(spec, probe / "merged", short_lowers=shorts, cwd=probe)
    return mountapi.mount_detached(spec, probe / "merged")


#: beside the driver's home: the boot, kernel and filesystem a test mount last passed on
PROBE_RECORD = ".overlay-supported"


def unsupported_reason(root: Path) -> str | None:
    """Why overlay cannot keep layers under ``root``, or None when a real test mount worked.

    A passed test mount is remembered in ``root/.overlay-supported`` (only for a root that
    already has overlay's home): until the next boot, the same kernel and the same
    filesystem under ``root`` give the same answer, and the probe costs ~3-10 ms and
    two imports of every command.
    """
    if os.geteuid() != 0:
        return "overlay needs root: it mounts filesystems"
    record = root / PROBE_RECORD
    try:
        key = f"{boot_id()} {os.uname().release} {os.stat(root).st_dev}\n"
        if record.read_text() == key:
            return None
    except OSError:
        pass
    reason = probe_mount(root)
    if reason is None and (root / "overlay").is_dir():
        with contextlib.suppress(OSError):
            part = root / f"{PROBE_RECORD}.{os.getpid()}"
            part.write_text(key)
            os.replace(part, record)
    return reason


def probe_mount(root: Path) -> str | None:
    """The test mount under ``root`` itself (what :func:`unsupported_reason` remembers)."""
    import shutil
    import tempfile

    if not _kernel_has_overlay():
        return "the kernel has no overlay filesystem (modprobe overlay)"
    if filesystem_magic(root) == OVERLAY_MAGIC:
        return (
            f"{root} is itself on an overlay filesystem; overlay on overlay is not supported: "
            "put the store root on a plain filesystem (a volume, or a tmpfs)"
        )
    fstype = filesystem_type(root)
    if not supports_d_type(root):
        fix = (
            "reformat with mkfs.xfs -n ftype=1" if fstype == "xfs"
            else "use a filesystem that reports d_type (for ext4: tune2fs -O filetype)"
        )
        return (
            f"the {fstype} filesystem under {root} does not report d_type, "
            f"which overlay needs: {fix}"
        )
    probe = Path(tempfile.mkdtemp(prefix=".overlay-probe-", dir=root))
    try:
        for name in ("l1", "l2", "upper", "work"):
            (probe / name).mkdir()
        (probe / "l1" / "one").write_bytes(b"1")
        (probe / "l2" / "two").write_bytes(b"2")
        spec = mountapi.OverlaySpec([probe / "l1", probe / "l2"], probe / "upper", probe / "work")
        try:
            merged = _mount_probe(spec, not mountapi.lowerdir_plus_supported(), probe)
        except DriverError as exc:
            return f"a test overlay mount on {fstype} failed: {exc}"
        try:
            seen = sorted(os.listdir(merged))
            os.close(os.open("three", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644,
                             dir_fd=merged))
        finally:
            os.close(merged)  # the only reference: this unmounts
        if seen != ["one", "two"] or not (probe / "upper" / "three").exists():
            return f"a test overlay mount on {fstype} showed {seen}, not the two lowers"
        return None
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(probe)


class Features(NamedTuple):
    """What the kernel writes with the mount options in use (probed once, cached)."""

    redirect_dir: bool
    metacopy: bool

    @property
    def native_diff(self) -> bool:
        return not (self.redirect_dir or self.metacopy)

    def why_not_native(self) -> str:
        found = [n for n, on in (("redirect_dir", self.redirect_dir),
                                 ("metacopy", self.metacopy)) if on]
        return " and ".join(found) + " xattrs written: using the generic diff" if found else ""

    def as_dict(self) -> dict[str, bool]:
        return self._asdict()


def probe_features(work: Path, options: mountapi.MountOptions, legacy: bool) -> Features:
    """Rename a lower dir and chmod a lower file in a test mount; look for the xattrs."""
    import shutil
    import tempfile

    probe = Path(tempfile.mkdtemp(prefix=".overlay-features-", dir=work))
    try:
        for name in ("l1", "l2", "upper", "work"):
            (probe / name).mkdir()
        (probe / "l2" / "dir").mkdir()
        (probe / "l2" / "dir" / "inner").write_bytes(b"x")
        (probe / "l2" / "file").write_bytes(b"data" * 1024)
        spec = mountapi.OverlaySpec([probe / "l1", probe / "l2"], probe / "upper",
                                    probe / "work", options)
        merged = _mount_probe(spec, legacy, probe)
        try:
            with contextlib.suppress(OSError):  # EXDEV without redirect_dir
                os.rename("dir", "moved", src_dir_fd=merged, dst_dir_fd=merged)
            os.chmod("file", 0o600, dir_fd=merged)
        finally:
            os.close(merged)

        def has(path: Path, name: str) -> bool:
            try:
                os.getxattr(path, name, follow_symlinks=False)
            except OSError as exc:
                if exc.errno in (errno.ENODATA, errno.ENOENT, errno.ENOTSUP):
                    return False
                raise
            return True

        return Features(
            redirect_dir=has(probe / "upper" / "moved", REDIRECT_XATTR),
            metacopy=has(probe / "upper" / "file", METACOPY_XATTR),
        )
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(probe)
