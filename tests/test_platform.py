"""Platforms: parsing, the host's, and choosing an index's manifest (core/images/platform.py)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lamina.core.errors import InvalidPlatform, LaminaError
from lamina.core.images.platform import (
    KNOWN_ARCH,
    Platform,
    best_match,
    entry_platform,
    format_platform,
    host_platform,
    matches,
    parse_platform,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", ("linux", "amd64", None)),
        ("amd64", ("linux", "amd64", None)),
        ("linux/amd64/v1", ("linux", "amd64", None)),
        ("linux/amd64/v3", ("linux", "amd64", "v3")),
        ("linux/x86_64", ("linux", "amd64", None)),
        ("x86-64", ("linux", "amd64", None)),
        ("linux/arm64", ("linux", "arm64", "v8")),
        ("linux/arm64/v8", ("linux", "arm64", "v8")),
        ("linux/arm64/8", ("linux", "arm64", "v8")),
        ("linux/arm64/v8.0", ("linux", "arm64", "v8")),
        ("linux/arm64/v8.2", ("linux", "arm64", "v8.2")),
        ("linux/arm64/v9.0", ("linux", "arm64", "v9")),
        ("aarch64", ("linux", "arm64", "v8")),
        ("linux/aarch64/v8", ("linux", "arm64", "v8")),
        ("linux/arm", ("linux", "arm", "v7")),
        ("linux/arm/v7", ("linux", "arm", "v7")),
        ("linux/arm/7", ("linux", "arm", "v7")),
        ("linux/arm/v6", ("linux", "arm", "v6")),
        ("linux/arm/v5", ("linux", "arm", "v5")),
        ("armhf", ("linux", "arm", "v7")),
        ("linux/armel", ("linux", "arm", "v6")),
        ("armv7l", ("linux", "arm", "v7")),
        ("armv6l", ("linux", "arm", "v6")),
        ("armv5tel", ("linux", "arm", "v5")),
        ("i386", ("linux", "386", None)),
        ("i686", ("linux", "386", None)),
        ("linux/386", ("linux", "386", None)),
        ("ppc64le", ("linux", "ppc64le", None)),
        ("ppc64el", ("linux", "ppc64le", None)),  # Debian's name
        ("s390x", ("linux", "s390x", None)),
        ("riscv64", ("linux", "riscv64", None)),
        ("loongarch64", ("linux", "loong64", None)),
        ("Linux/AMD64", ("linux", "amd64", None)),
        ("windows/amd64", ("windows", "amd64", None)),
        ("freebsd/arm64", ("freebsd", "arm64", "v8")),
    ],
)
def test_parse(text: str, expected: tuple) -> None:
    platform = parse_platform(text)
    assert platform == Platform(*expected)
    assert parse_platform(format_platform(platform)) == platform


def test_an_os_alone_is_on_the_hosts_architecture() -> None:
    host = host_platform()
    assert parse_platform("linux") == Platform("linux", host.architecture, host.variant)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("linux/", "a part is empty"),
        ("/amd64", "a part is empty"),
        ("linux//amd64", "a part is empty"),
        ("linux/amd64/v3/x", "more than three"),
        ("linux/amd46", "unknown architecture 'amd46'"),
        ("amd46", "unknown operating system or architecture 'amd46'"),
        ("linus/amd64", "unknown operating system 'linus'"),
        ("amd64/linux", "the OS comes first"),
        ("linux/arm/v9", "unknown variant 'v9' of arm"),
        ("linux/arm/v4", "unknown variant 'v4' of arm"),
        ("linux/arm64/v7", "unknown variant 'v7' of arm64"),
        ("linux/amd64/v5", "unknown variant 'v5' of amd64"),
        ("linux/armhf/v6", "'armhf' means variant v7"),
        ("linux amd64", "not a valid part"),
        ("windows(10.0.17763)/amd64", "not a valid part"),
        ("linux/*", "not a valid part"),
    ],
)
def test_parse_refuses(text: str, reason: str) -> None:
    with pytest.raises(InvalidPlatform) as caught:
        parse_platform(text)
    assert isinstance(caught.value, LaminaError)
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"invalid platform {text!r}: ")
    assert caught.value.hint


def test_format() -> None:
    assert format_platform(Platform("linux", "arm", "v7")) == "linux/arm/v7"
    assert str(Platform("linux", "amd64")) == "linux/amd64"
    assert Platform("linux", "arm64", "v8").as_dict() == {
        "architecture": "arm64", "os": "linux", "variant": "v8"}
    assert Platform("windows", "amd64", None, "10.0.17763.1").as_dict() == {
        "architecture": "amd64", "os": "windows", "os.version": "10.0.17763.1"}


def test_host_platform_is_unames() -> None:
    machine = subprocess.run(["uname", "-m"], capture_output=True, text=True,
                             check=True).stdout.strip()
    host = host_platform()
    assert host == parse_platform(f"linux/{machine}")
    assert host.os == os.uname().sysname.lower() == "linux"
    assert host.architecture in KNOWN_ARCH


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg (Debian's architecture names) "
                    "is not installed")
def test_host_platform_agrees_with_debian() -> None:
    # Debian names its architectures differently (armhf, ppc64el, i386): each is an alias
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert parse_platform(arch) == host_platform()


# --- matching -------------------------------------------------------------------------

def plat(os_name: str, arch: str, variant: str | None = None) -> dict[str, str]:
    out = {"os": os_name, "architecture": arch}
    if variant is not None:
        out["variant"] = variant
    return out


@pytest.mark.parametrize(
    ("wanted", "candidate", "expected"),
    [
        ("linux/amd64", plat("linux", "amd64"), True),
        ("linux/amd64", plat("linux", "amd64", "v1"), True),
        ("linux/amd64", plat("linux", "amd64", "v2"), False),  # needs a newer CPU
        ("linux/amd64/v3", plat("linux", "amd64", "v2"), True),
        ("linux/amd64/v3", plat("linux", "amd64"), True),
        ("linux/amd64", plat("linux", "386"), False),  # no cross-architecture fallback
        ("linux/amd64", plat("windows", "amd64"), False),
        ("linux/amd64", plat("Linux", "x86_64"), True),  # candidates are normalised too
        ("linux/arm64", plat("linux", "arm64"), True),  # arm64 without variant is v8
        ("linux/arm64", plat("linux", "arm64", "v8"), True),
        ("linux/arm64/v8", plat("linux", "arm64"), True),
        ("linux/arm64", plat("linux", "arm64", "v8.2"), False),
        ("linux/arm64/v8.2", plat("linux", "arm64", "v8.1"), True),
        ("linux/arm64/v9", plat("linux", "arm64", "v8.5"), True),
        ("linux/arm64/v9", plat("linux", "arm64", "v8.6"), False),
        ("linux/arm64", plat("linux", "arm", "v7"), False),  # a v8 host runs arm64 only
        ("linux/arm64", plat("linux", "arm", "v8"), False),
        ("linux/arm/v7", plat("linux", "arm", "v7"), True),
        ("linux/arm/v7", plat("linux", "arm"), True),  # arm without variant is v7
        ("linux/arm/v7", plat("linux", "arm", "v6"), True),
        ("linux/arm/v7", plat("linux", "arm", "v5"), True),
        ("linux/arm/v7", plat("linux", "arm", "v8"), False),
        ("linux/arm/v6", plat("linux", "arm", "v7"), False),
        ("linux/arm/v6", plat("linux", "arm"), False),
        ("linux/arm/v7", plat("linux", "arm64"), False),
        ("linux/riscv64", plat("linux", "riscv64"), True),
        ("linux/riscv64", plat("linux", "riscv64", "rva22"), False),
        ("linux/amd64", plat("unknown", "unknown"), False),
        ("linux/amd64", {"os": "linux"}, False),
        ("linux/amd64", {"os": "linux", "architecture": 64}, False),
        ("linux/amd64", {}, False),
    ],
)
def test_matches(wanted: str, candidate: dict, expected: bool) -> None:
    assert matches(parse_platform(wanted), candidate) is expected


def test_os_version_is_compared_only_when_wanted() -> None:
    candidate = {**plat("windows", "amd64"), "os.version": "10.0.17763.1"}
    assert matches(Platform("windows", "amd64"), candidate)
    assert matches(Platform("windows", "amd64", None, "10.0.17763.1"), candidate)
    assert not matches(Platform("windows", "amd64", None, "10.0.20348.1"), candidate)


def entry(platform: dict | None, name: str) -> dict:
    out: dict = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                 "digest": f"sha256:{name}", "size": 1}
    if platform is not None:
        out["platform"] = platform
    return out


#: the shape of docker.io/library/busybox's index (plus BuildKit's attestations)
BUSYBOX = [
    entry(plat("linux", "amd64"), "amd64"),
    entry(plat("unknown", "unknown"), "amd64-attestation"),
    entry(plat("linux", "arm", "v5"), "armv5"),
    entry(plat("linux", "arm", "v6"), "armv6"),
    entry(plat("linux", "arm", "v7"), "armv7"),
    entry(plat("linux", "arm64", "v8"), "arm64"),
    entry(plat("linux", "386"), "386"),
    entry(plat("linux", "ppc64le"), "ppc64le"),
    entry(plat("linux", "riscv64"), "riscv64"),
    entry(plat("linux", "s390x"), "s390x"),
]


def chosen(wanted: str, entries: list[dict]) -> str | None:
    index = best_match(parse_platform(wanted), entries)
    return None if index is None else entries[index]["digest"].removeprefix("sha256:")


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        ("linux/amd64", "amd64"),
        ("linux/arm64", "arm64"),
        ("linux/arm64/v8", "arm64"),
        ("linux/arm/v7", "armv7"),
        ("linux/arm/v6", "armv6"),
        ("linux/arm/v5", "armv5"),
        ("linux/386", "386"),
        ("linux/s390x", "s390x"),
        ("linux/amd64/v3", "amd64"),
        ("linux/arm64/v8.2", "arm64"),
        ("linux/mips64le", None),
        ("windows/amd64", None),
    ],
)
def test_best_match_in_busybox(wanted: str, expected: str | None) -> None:
    assert chosen(wanted, BUSYBOX) == expected


def test_exact_variant_beats_an_older_one_wherever_listed() -> None:
    entries = [entry(plat("linux", "arm", "v5"), "v5"), entry(plat("linux", "arm", "v6"), "v6"),
               entry(plat("linux", "arm", "v7"), "v7")]
    assert chosen("linux/arm/v7", entries) == "v7"
    assert chosen("linux/arm/v7", entries[:2]) == "v6"  # newest that runs, not first listed
    assert chosen("linux/arm/v7", entries[:1]) == "v5"
    assert chosen("linux/arm/v6", [entries[2]]) is None
    amd = [entry(plat("linux", "amd64"), "v1"), entry(plat("linux", "amd64", "v3"), "v3"),
           entry(plat("linux", "amd64", "v2"), "v2")]
    assert chosen("linux/amd64/v3", amd) == "v3"
    assert chosen("linux/amd64/v2", amd) == "v2"
    assert chosen("linux/amd64", amd) == "v1"


def test_among_equals_the_first_listed_wins() -> None:
    entries = [entry(plat("linux", "arm64"), "first"), entry(plat("linux", "arm64", "v8"), "2nd")]
    assert chosen("linux/arm64", entries) == "first"


def test_entries_without_a_usable_platform_are_skipped() -> None:
    entries = [
        entry(None, "no-platform"),
        entry(plat("unknown", "unknown"), "attestation"),
        {"platform": "linux/amd64"},  # not an object
        "junk",  # not an entry at all
        entry({"os": "linux", "architecture": ""}, "empty-arch"),
        entry(plat("linux", "amd64"), "image"),
    ]
    assert chosen("linux/amd64", entries) == "image"
    assert best_match(parse_platform("linux/amd64"), entries[:5]) is None
    assert best_match(parse_platform("linux/amd64"), []) is None


def test_entry_platform_lists_what_an_index_offers() -> None:
    offered = [entry_platform(e) for e in BUSYBOX]
    assert offered[1] is None  # the attestation
    assert [str(p) for p in offered if p is not None] == [
        "linux/amd64", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm64/v8",
        "linux/386", "linux/ppc64le", "linux/riscv64", "linux/s390x"]
    assert entry_platform(entry(plat("linux", "aarch64"), "x")) == Platform("linux", "arm64", "v8")


_known = st.sampled_from([
    "linux/amd64", "linux/amd64/v2", "linux/amd64/v3", "linux/amd64/v4", "linux/arm64",
    "linux/arm64/v8.1", "linux/arm64/v9", "linux/arm64/v9.3", "linux/arm/v5", "linux/arm/v6",
    "linux/arm/v7", "linux/arm/v8", "linux/386", "linux/s390x", "linux/riscv64",
])


@given(_known, _known)
def test_matching_is_an_order(a: str, b: str) -> None:
    """Each platform runs itself; two platforms that run each other are the same one;
    and whatever an image for ``b`` runs on, a platform that runs ``b`` runs too."""
    pa, pb = parse_platform(a), parse_platform(b)
    assert matches(pa, pa.as_dict())
    if matches(pa, pb.as_dict()) and matches(pb, pa.as_dict()):
        assert pa == pb
    for c in ("linux/arm/v5", "linux/amd64", "linux/arm64", "linux/arm64/v8.2"):
        pc = parse_platform(c)
        if matches(pa, pb.as_dict()) and matches(pb, pc.as_dict()):
            assert matches(pa, pc.as_dict())
