"""What a pull or a push reports as it goes; the CLI draws it (bars, plain lines, or nothing)."""

from __future__ import annotations

from typing import Protocol


class PullEvents(Protocol):
    """What a pull reports as it goes (the CLI draws it: bars, plain lines, or nothing)."""

    def status(self, text: str) -> None: ...

    def layer(self, layer: str, status: str, total: int | None = None) -> None: ...

    def progress(self, layer: str, done: int, total: int) -> None: ...


class NoEvents:
    def status(self, text: str) -> None:
        pass

    def layer(self, layer: str, status: str, total: int | None = None) -> None:
        pass

    def progress(self, layer: str, done: int, total: int) -> None:
        pass
