"""``lamina --trace`` / ``LAMINA_TRACE=1``: print each layer operation and its duration.

An ordinary plugin of the observer hooks, registered by the CLI when asked;
it shows that the hooks carry what an outside plugin needs.
"""

from __future__ import annotations

import sys
from typing import TextIO

from .hookspec import hookimpl


class Tracer:
    """Writes one line per driver operation to ``stream`` (stderr by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def _line(self, driver: str, op: str, layer_id: str, seconds: float, extra: str = "") -> None:
        tail = f" {extra}" if extra else ""
        print(
            f"lamina trace: {driver} {op} {layer_id[:12]} {seconds * 1000:.1f} ms{tail}",
            file=self.stream,
            flush=True,
        )

    @hookimpl
    def lamina_layer_created(
        self, driver: str, layer_id: str, parent: str | None, writable: bool, seconds: float
    ) -> None:
        mode = "rw" if writable else "ro"
        self._line(driver, "create", layer_id, seconds, f"parent={(parent or '-')[:12]} {mode}")

    @hookimpl
    def lamina_layer_applied(
        self, driver: str, layer_id: str, diff_id: str, size: int, seconds: float
    ) -> None:
        self._line(driver, "apply", layer_id, seconds, f"{size} bytes {diff_id[:19]}")

    @hookimpl
    def lamina_layer_removed(self, driver: str, layer_id: str, seconds: float) -> None:
        self._line(driver, "remove", layer_id, seconds)

    @hookimpl
    def lamina_layer_mounted(self, driver: str, layer_id: str, path: str, seconds: float) -> None:
        self._line(driver, "mount", layer_id, seconds, path)

    @hookimpl
    def lamina_layer_unmounted(self, driver: str, layer_id: str, seconds: float) -> None:
        self._line(driver, "unmount", layer_id, seconds)
