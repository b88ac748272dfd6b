"""Fake input streams for the readers' tests: lazy zeros, and data in short reads.

A reader must bound what it reads (gigabytes of zeros after an archive, a blob
that never ends) and must not assume a read returns what it asked for (a
pipe, a socket). These make both without holding the data in memory.
"""

from __future__ import annotations

import io
from collections.abc import Iterator


class Zeros(io.RawIOBase):
    """``prefix``, then ``total`` zero bytes (endless with None), made on demand in
    pieces of at most 1 MiB; ``read_bytes`` counts what was read."""

    def __init__(self, total: int | None = None, prefix: bytes = b"") -> None:
        self.left = total
        self.prefix = prefix
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        if self.prefix:
            out, self.prefix = self.prefix[:size], self.prefix[size:]
        else:
            n = min(size, 1 << 20, size if self.left is None else self.left)
            if self.left is not None:
                self.left -= n
            out = bytes(n)
        self.read_bytes += len(out)
        return out


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class Trickle(io.RawIOBase):
    """``data`` returned at most ``step`` bytes per read, like a slow socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self.parts = chunks_of(data, step)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        return next(self.parts, b"")
