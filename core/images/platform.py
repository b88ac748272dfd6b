"""Platforms (``OS/ARCH[/VARIANT]``) and choosing an index's manifest for one.

Names are OCI's (Go's ``GOOS``/``GOARCH``: ``linux``, ``amd64``, ``arm64``,
``arm``), and one spelling stands for each platform, whatever was written, so
that two platforms are the same exactly when their tuples are equal:

- ``x86_64`` is ``amd64`` (``amd64/v1`` is plain ``amd64``), ``aarch64`` is
  ``arm64``, ``i686`` and friends are ``386``, ``armhf`` is ``arm/v7``, ``armel``
  ``arm/v6``; a bare number variant gets its ``v``.
- ``arm`` without a variant is ``arm/v7`` and ``arm64`` without one ``arm64/v8``
  (what images that state no variant are built for).

Matching follows containerd's ordering, minus its cross-architecture fallbacks:
a platform accepts its own variant first, then older ones of the same
architecture (``arm/v7`` runs ``v6`` and ``v5``, ``arm64/v8.2`` runs ``v8.1`` and
``v8``, ``amd64/v3`` runs ``v2`` and plain ``amd64``), never a newer one and never
another architecture: ``arm64`` does not fall back to 32-bit ``arm`` (AArch32 is
optional on arm64 CPUs, and missing on many servers) nor ``amd64`` to ``386``.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from lamina.core.errors import InvalidPlatform

#: operating systems Go (and so every image builder) names
KNOWN_OS = frozenset({
    "aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js",
    "linux", "nacl", "netbsd", "openbsd", "plan9", "solaris", "wasip1", "windows", "zos",
})
#: architectures Go names (what an index's ``platform.architecture`` holds)
KNOWN_ARCH = frozenset({
    "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "loong64", "mips",
    "mipsle", "mips64", "mips64le", "mips64p32", "mips64p32le", "ppc", "ppc64", "ppc64le",
    "riscv", "riscv64", "s390", "s390x", "sparc", "sparc64", "wasm",
})
#: the OS of a platform given as an architecture alone
DEFAULT_OS = "linux"

#: other spellings of an architecture -> (architecture, the variant they imply or None)
_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None), "x86-64": ("amd64", None),
    "aarch64": ("arm64", None),
    "i386": ("386", None), "i486": ("386", None), "i586": ("386", None),
    "i686": ("386", None), "x86": ("386", None),
    "armhf": ("arm", "v7"), "armel": ("arm", "v6"),
    "armv5l": ("arm", "v5"), "armv5tel": ("arm", "v5"), "armv5tejl": ("arm", "v5"),
    "armv6l": ("arm", "v6"), "armv7l": ("arm", "v7"), "armv8l": ("arm", "v8"),
    "ppc64el": ("ppc64le", None), "loongarch64": ("loong64", None),
}
#: the variants each architecture with a ladder of them may have
_VARIANTS = {
    "arm": {"v5", "v6", "v7", "v8"},
    "arm64": {"v8", *(f"v8.{n}" for n in range(1, 10)), "v9", *(f"v9.{n}" for n in range(1, 8))},
    "amd64": {"v2", "v3", "v4"},
}
_COMPONENT = re.compile(r"[a-z0-9_.-]+", re.ASCII)


class Platform(NamedTuple):
    """One platform, in the canonical spelling (module docstring); ``str()`` is
    ``os/arch[/variant]``."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None

    def __str__(self) -> str:
        return format_platform(self)

    def as_dict(self) -> dict[str, str]:
        """The platform as an OCI index entry's (or config's) ``platform`` object."""
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant is not None:
            out["variant"] = self.variant
        if self.os_version is not None:
            out["os.version"] = self.os_version
        return out


def format_platform(platform: Platform) -> str:
    """``os/arch[/variant]``: ``linux/arm/v7``; what :func:`parse_platform` reads back."""
    text = f"{platform.os}/{platform.architecture}"
    return f"{text}/{platform.variant}" if platform.variant else text


@functools.cache
def host_platform() -> Platform:
    """The platform of this machine's kernel, from ``uname``.

    The kernel's, not the Python build's: a 32-bit Python on a 64-bit kernel still
    runs 64-bit images. amd64 is plain ``amd64`` (no ``v2``..``v4`` level is probed:
    images that state one are rare, and the plain one runs everywhere).
    """
    uname = os.uname()
    arch, variant = _normalize_arch(uname.machine, None)
    return Platform(uname.sysname.lower(), arch, variant)


def parse_platform(text: str) -> Platform:
    """``[OS/]ARCH[/VARIANT]`` as a canonical :class:`Platform`.

    ``amd64`` alone is ``linux/amd64``; an OS alone (``linux``) is that OS on this
    host's architecture. Aliases are accepted (``x86_64``, ``aarch64``, ``armhf``,
    ``arm64/8``); an unknown OS, architecture or variant is :class:`InvalidPlatform`.
    """
    parts = text.lower().split("/")
    if not text:
        raise InvalidPlatform(text, "it is empty")
    if len(parts) > 3:
        raise InvalidPlatform(text, "more than three '/'-separated parts")
    for part in parts:
        if not _COMPONENT.fullmatch(part):
            what = repr(part) + " is not a valid part" if part else "a part is empty"
            raise InvalidPlatform(text, f"{what} (letters, digits, '_', '.', '-')")
    if len(parts) == 1:
        if parts[0] in KNOWN_OS:
            return host_platform()._replace(os=parts[0])
        if not _is_arch(parts[0]):
            raise InvalidPlatform(text, f"unknown operating system or architecture {parts[0]!r}")
        os_name, arch, variant = DEFAULT_OS, parts[0], None
    elif len(parts) == 2:
        os_name, arch, variant = parts[0], parts[1], None
    else:
        os_name, arch, variant = parts
    if os_name not in KNOWN_OS:
        swapped = " (the OS comes first: linux/ARCH)" if _is_arch(os_name) else ""
        raise InvalidPlatform(text, f"unknown operating system {os_name!r}{swapped}")
    if not _is_arch(arch):
        raise InvalidPlatform(
            text,
            f"unknown architecture {arch!r}",
            hint="common ones: amd64, arm64, arm/v7, arm/v6, 386, ppc64le, s390x, riscv64",
        )
    implied = _ARCH_ALIASES.get(arch, (arch, None))[1]
    if variant is not None and implied is not None and _vee(variant) != implied:
        raise InvalidPlatform(text, f"{arch!r} means variant {implied}, not {variant!r}")
    arch, variant = _normalize_arch(arch, variant)
    allowed = _VARIANTS.get(arch)
    if allowed is not None and variant is not None and variant not in allowed:
        raise InvalidPlatform(
            text,
            f"unknown variant {variant!r} of {arch} (known: {', '.join(sorted(allowed))})",
        )
    return Platform(os_name, arch, variant)


def entry_platform(entry: Mapping[str, Any]) -> Platform | None:
    """The canonical platform of an index entry (a manifest descriptor), or None
    when it has none or an ``unknown`` one (the attestation manifests BuildKit adds
    are ``unknown/unknown``): such entries are never an image to run."""
    platform = entry.get("platform")
    if not isinstance(platform, Mapping):
        return None
    os_name, arch = platform.get("os"), platform.get("architecture")
    variant, os_version = platform.get("variant"), platform.get("os.version")
    if not (isinstance(os_name, str) and isinstance(arch, str)) or not os_name or not arch:
        return None
    if os_name == "unknown" or arch == "unknown":
        return None
    arch, variant = _normalize_arch(arch, variant if isinstance(variant, str) else None)
    return Platform(
        os_name.lower(), arch, variant, os_version if isinstance(os_version, str) else None
    )


def matches(wanted: Platform, candidate: Mapping[str, Any]) -> bool:
    """Whether an image for ``candidate`` (an index entry's ``platform`` object) runs
    on ``wanted``, by the rules of the module docstring."""
    found = entry_platform({"platform": candidate})
    return found is not None and _rank(wanted, found) is not None


def best_match(wanted: Platform, entries: Sequence[Mapping[str, Any]]) -> int | None:
    """The index in ``entries`` (an image index's ``manifests``) of the manifest to
    pull for ``wanted``, or None when none runs on it.

    The exact variant wins over an older one; among equals the first listed wins
    (an index lists its preferred manifest first). Entries without a platform, or
    with an ``unknown`` one, are skipped.
    """
    best: tuple[int, int] | None = None
    for index, entry in enumerate(entries):
        found = entry_platform(entry) if isinstance(entry, Mapping) else None
        rank = None if found is None else _rank(wanted, found)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, index)
    return None if best is None else best[1]


def _rank(wanted: Platform, candidate: Platform) -> int | None:
    """0 for the exact platform, higher for older variants it runs, None if not."""
    if candidate.os != wanted.os or candidate.architecture != wanted.architecture:
        return None
    if wanted.os_version is not None and candidate.os_version not in (None, wanted.os_version):
        return None
    arch, variant = _normalize_arch(wanted.architecture, wanted.variant)
    ladder = _ladder(arch, variant)
    return ladder.index(candidate.variant) if candidate.variant in ladder else None


def _ladder(arch: str, variant: str | None) -> list[str | None]:
    """The variants a platform runs, its own first, then older ones in order."""
    if arch == "arm" and variant in _VARIANTS["arm"]:
        return [f"v{n}" for n in range(int(variant[1:]), 4, -1)]
    if arch == "amd64" and variant in _VARIANTS["amd64"]:
        return [*(f"v{n}" for n in range(int(variant[1:]), 1, -1)), None]
    if arch == "arm64" and variant in _VARIANTS["arm64"]:
        major, _, minor_text = variant[1:].partition(".")
        minor = int(minor_text or 0)
        # v9.n has the features of v8.(n+5) (Arm's own mapping; containerd's too)
        steps = [(9, m) for m in range(minor, -1, -1)] if major == "9" else []
        steps += [(8, m) for m in range(min(minor + 5, 9) if major == "9" else minor, -1, -1)]
        return [f"v{a}.{b}" if b else f"v{a}" for a, b in steps]
    return [variant]


def _normalize_arch(arch: str, variant: str | None) -> tuple[str, str | None]:
    """The canonical (architecture, variant) of any spelling; unknown ones kept as they are."""
    arch = arch.lower()
    variant = _vee(variant.lower()) if variant else None
    arch, implied = _ARCH_ALIASES.get(arch, (arch, None))
    variant = implied or variant
    if arch == "amd64" and variant == "v1":
        variant = None
    elif arch == "arm64":
        variant = "v8" if variant in (None, "v8.0") else "v9" if variant == "v9.0" else variant
    elif arch == "arm" and variant is None:
        variant = "v7"
    elif arch == "386":
        variant = None
    return arch, variant


def _vee(variant: str) -> str:
    """``7`` -> ``v7``: a bare version number is a variant without its ``v``."""
    return f"v{variant}" if variant[:1].isdigit() else variant


def _is_arch(name: str) -> bool:
    return name in KNOWN_ARCH or name in _ARCH_ALIASES
