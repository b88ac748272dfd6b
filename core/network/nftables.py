"""Running nftables commands: libnftables through ctypes, else the ``nft`` program.

One call is one ``nft -f`` script, which the kernel applies as one transaction: all of
it or nothing, never half a container's rules. The library costs ~1 ms a call where
starting ``nft`` costs ~5 ms; the program is the fallback where the library is missing.
"""

from __future__ import annotations

import ctypes
import json
import os
from typing import Any

from ..errors import NetworkError

NFT_CTX_OUTPUT_HANDLE = 1 << 3
NFT_CTX_OUTPUT_JSON = 1 << 4

_HINT = "bridge networks need nftables (Debian: apt-get install nftables) and root"


class NftablesError(NetworkError):
    """An nftables command failed; ``missing`` when it named a table or chain not there."""

    @property
    def missing(self) -> bool:
        return "No such file or directory" in str(self)


class NftablesMissing(NetworkError):
    """Neither libnftables nor the nft program is installed: no lamina rule can exist."""


class _Library:
    """libnftables.so.1: one context, output and errors kept in buffers."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)

    def run(self, script: str, flags: int) -> tuple[int, str, str]:
        self.lib.nft_ctx_output_set_flags(self.ctx, flags)
        rc = self.lib.nft_run_cmd_from_buffer(self.ctx, script.encode())
        out = self.lib.nft_ctx_get_output_buffer(self.ctx) or b""
        err = self.lib.nft_ctx_get_error_buffer(self.ctx) or b""
        return rc, out.decode(errors="replace"), err.decode(errors="replace")


_library: _Library | bool | None = None  # False: looked for, not there


def _get_library() -> _Library | None:
    global _library
    if _library is None:
        if os.environ.get("LAMINA_NFT") == "program":  # to compare the two, and test the fallback
            _library = False
        else:
            try:
                _library = _Library()
            except OSError:
                _library = False
    return _library or None


def run(script: str, *, listing: bool = False) -> str:
    """Run an nft script; with ``listing`` (one ``list`` command) its output is JSON
    with rule handles."""
    flags = NFT_CTX_OUTPUT_HANDLE | NFT_CTX_OUTPUT_JSON if listing else 0
    library = _get_library()
    if library is not None:
        rc, out, err = library.run(script, flags)
    else:
        rc, out, err = _run_program(script, listing)
    if rc != 0:
        raise NftablesError(f"nftables refused the change: {err.strip() or 'no reason given'}",
                            hint=_HINT)
    return out


def _run_program(script: str, listing: bool) -> tuple[int, str, str]:
    import shutil
    import subprocess  # only without the library

    nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    if nft is None:
        raise NftablesMissing("neither libnftables nor the nft program is installed",
                              hint=_HINT)
    if listing:  # one command, as arguments: with -j, nft reads a script as JSON
        done = subprocess.run([nft, "-j", "-a", *script.split()], capture_output=True,
                              text=True, check=False)
    else:
        done = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True,
                              check=False)
    return done.returncode, done.stdout, done.stderr


def listing(script: str) -> list[dict[str, Any]]:
    """The objects a ``list ...`` command prints, each as nftables' JSON gives it."""
    out = run(script, listing=True)
    return json.loads(out).get("nftables", []) if out.strip() else []
