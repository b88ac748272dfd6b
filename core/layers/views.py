"""Counted access to layer trees: what the generic operations on layers are handed.

The store implements it (its mount references), a driver's generic ``changes``, ``diff``,
``diff_size`` and ``apply`` use it. It lives below both, so that neither the contract
(:mod:`lamina.core.driver`, which re-exports it) nor the generic code needs the other.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol


class LayerViews(Protocol):
    """Counted access to layer trees, handed to a driver's generic operations.

    The core implements it on top of the store's mount references, so a
    driver method that needs a mounted tree never mounts twice what a user
    already mounted.
    """

    def view(self, layer_id: str) -> contextlib.AbstractContextManager[Path]:
        """Mount ``layer_id`` read-only for the duration of the block."""
        ...

    def populate(self, layer_id: str) -> contextlib.AbstractContextManager[Path]:
        """Mount the incomplete layer ``layer_id`` writable, to fill it."""
        ...

    def created_ns(self, layer_id: str) -> int | None:
        """When the driver finished creating the layer (``time.time_ns()``).

        Anything in the layer whose ctime is later was written after that:
        the generic diff compares such files' content, not only metadata.
        """
        ...
