"""Capability requirements: a case that needs a promise the driver does not make skips, saying so.

One place decides what each optional case needs, so the skip reasons read
the same everywhere ("driver declares rename_lower_dir=False").
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from lamina.core.driver import Capabilities


def require(capabilities: Capabilities, **wanted: object) -> None:
    """Skip unless every named capability has the wanted value."""
    for name, value in wanted.items():
        actual = getattr(capabilities, name)
        if actual != value:
            pytest.skip(f"driver declares {name}={actual!r}")


def require_depth(capabilities: Capabilities, depth: int) -> None:
    """Skip unless the driver claims chains of ``depth`` layers mount."""
    if capabilities.max_depth < depth:
        pytest.skip(f"driver declares max_depth={capabilities.max_depth} (< {depth})")


def backing_keeps_holes(directory: Path) -> bool:
    """Whether the filesystem holding ``directory`` stores a 1 MiB hole without blocks."""
    probe = Path(directory) / ".lamina-hole-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, 1 << 20)
        os.pwrite(fd, b"x", (1 << 20) - 1)
        os.fsync(fd)
        return os.fstat(fd).st_blocks * 512 < (1 << 20) // 2
    finally:
        os.close(fd)
        os.unlink(probe)


#: errnos that mean "this view refuses writes"
READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
#: errnos that mean "the quota is exhausted"
QUOTA_ERRNOS = frozenset({errno.EDQUOT, errno.ENOSPC})
