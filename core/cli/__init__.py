"""The ``lamina`` command line (:mod:`.app` parses and dispatches)."""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
