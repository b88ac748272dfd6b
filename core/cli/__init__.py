"""The ``lamina`` command line (:mod:`.app` parses and dispatches).

The cyclic garbage collector is paused while the command line's modules load: the
imports allocate tens of thousands of objects, none of them garbage, and the ~25
collections they would trigger cost ~5 ms of every command. It runs again afterwards.
"""

import gc

_collecting = gc.isenabled()
gc.disable()
try:
    from .app import build_parser, main
finally:
    if _collecting:
        gc.enable()

__all__ = ["build_parser", "main"]
