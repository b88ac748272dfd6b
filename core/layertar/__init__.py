"""Layer tars: reading them safely (the parser and its compiled fast path), decompressing,
applying them to a directory, and writing a layer's changes as a tar.

:class:`ApplyResult` is defined here, not in :mod:`.apply`: the driver contract names it,
and importing it must not load the tar machinery into every command.
"""

from __future__ import annotations

from typing import NamedTuple


class ApplyResult(NamedTuple):
    """What applying a layer tar produced.

    ``diff_id`` is ``sha256:<hex>`` of the uncompressed tar stream, ``size`` the
    number of uncompressed tar bytes read: headers, padding and end blocks included
    (10240 for a tar of one 6-byte file), the size of the layer tar, which is what
    the store records. :meth:`lamina.core.driver.Driver.diff_size` counts file content instead (6).
    """

    diff_id: str
    size: int

