"""Image references read as Docker reads them (core/images/reference.py).

The tables are the cases Docker's own parser (distribution/reference) decides;
the properties check round trips and hold the parser equal to an independent
oracle written from Docker's grammar and normalisation steps.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.core.errors import InvalidReference, LaminaError
from lamina.core.images.reference import (
    Reference,
    full_id,
    id_prefix,
    parse_name,
    parse_reference,
)

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"
OTHER = "sha256:" + "f" * 64

VALID = [
    # text, registry, repository, tag, digest, familiar
    ("busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None, "busybox:1.36"),
    ("library/busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
    ("docker.io/library/busybox:glibc", "docker.io", "library/busybox", "glibc", None,
     "busybox:glibc"),
    ("index.docker.io/library/busybox", "docker.io", "library/busybox", "latest", None,
     "busybox:latest"),
    ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
    ("org/app:1", "docker.io", "org/app", "1", None, "org/app:1"),
    ("docker.io/org/app", "docker.io", "org/app", "latest", None, "org/app:latest"),
    ("library/a/b", "docker.io", "library/a/b", "latest", None, "library/a/b:latest"),
    ("localhost/x", "localhost", "x", "latest", None, "localhost/x:latest"),
    ("localhost:5000/x:y", "localhost:5000", "x", "y", None, "localhost:5000/x:y"),
    ("localhost:5000/a:5000", "localhost:5000", "a", "5000", None, "localhost:5000/a:5000"),
    (f"127.0.0.1:5000/a/b:c@{DIGEST}", "127.0.0.1:5000", "a/b", "c", DIGEST,
     f"127.0.0.1:5000/a/b:c@{DIGEST}"),
    ("[::1]:5000/x", "[::1]:5000", "x", "latest", None, "[::1]:5000/x:latest"),
    ("[2001:db8::1]/repo:tag", "[2001:db8::1]", "repo", "tag", None, "[2001:db8::1]/repo:tag"),
    ("example.com/x", "example.com", "x", "latest", None, "example.com/x:latest"),
    ("Example.com/x", "Example.com", "x", "latest", None, "Example.com/x:latest"),
    ("Docker/docker", "Docker", "docker", "latest", None, "Docker/docker:latest"),
    ("test:5000/repo", "test:5000", "repo", "latest", None, "test:5000/repo:latest"),
    ("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com", "bar/baz/quux",
     "some-long-tag", None, "sub-dom1.foo.com/bar/baz/quux:some-long-tag"),
    ("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io",
     "test.example.com/my-app", "test.example.com", None,
     "b.gcr.io/test.example.com/my-app:test.example.com"),
    ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", "xn--n3h.com", None,
     "xn--n3h.com/myimage:xn--n3h.com"),
    # no '/': never a registry, whatever it looks like (as in Docker)
    ("localhost", "docker.io", "library/localhost", "latest", None, "localhost:latest"),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None, "localhost:5000"),
    ("192.168.1.1", "docker.io", "library/192.168.1.1", "latest", None, "192.168.1.1:latest"),
    ("foo_bar.com:8080", "docker.io", "library/foo_bar.com", "8080", None, "foo_bar.com:8080"),
    # digests: a default tag only when there is neither; name:tag@digest keeps both
    (f"busybox@{DIGEST}", "docker.io", "library/busybox", None, DIGEST, f"busybox@{DIGEST}"),
    (f"busybox:1@{DIGEST}", "docker.io", "library/busybox", "1", DIGEST, f"busybox:1@{DIGEST}"),
    # separators: '.', '_', '__', runs of '-'
    ("a_b__c---d/e.f", "docker.io", "a_b__c---d/e.f", "latest", None, "a_b__c---d/e.f:latest"),
    ("docker.io/" + HEX, "docker.io", "library/" + HEX, "latest", None, HEX + ":latest"),
    # a tag may have uppercase, and be 128 characters
    ("lowercase:Uppercase", "docker.io", "library/lowercase", "Uppercase", None,
     "lowercase:Uppercase"),
    ("a:" + "T" * 128, "docker.io", "library/a", "T" * 128, None, "a:" + "T" * 128),
]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest", "familiar"), VALID)
def test_valid(text, registry, repository, tag, digest, familiar) -> None:
    ref = parse_reference(text)
    assert ref == Reference(registry, repository, tag, digest)
    assert ref.familiar == familiar
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.familiar) == ref


INVALID = [
    # text, what the message must say
    ("", "empty"),
    ("x/Y", "must be lowercase"),
    ("Busybox", "must be lowercase"),
    ("docker.io/docker/Docker", "must be lowercase"),
    ("test:5000/Uppercase/lowercase:tag", "must be lowercase"),
    ("::", "not a valid path component"),
    (":justtag", "repository name is missing"),
    (f"@{DIGEST}", "repository name is missing"),
    ("x/", "empty path component"),
    ("/x", "empty path component"),
    ("docker///docker", "empty path component"),
    ("-docker", "not a valid path component"),
    ("docker-/x", "not a valid path component"),
    ("_docker/x", "not a valid path component"),
    ("x/dock..er", "not a valid path component"),
    ("x/dock_.er", "not a valid path component"),
    ("dock..er/docker", "not a valid registry"),
    ("foo_bar.com/x", "not a valid registry"),
    ("aa/asdf$$^/aa", "not a valid path component"),
    (" busybox", "not a valid path component"),
    ("busybox:", "tag after ':' is empty"),
    ("busybox:" + "a" * 129, "more than 128"),
    ("busybox:.x", "not a valid tag"),
    ("busybox:-x", "not a valid tag"),
    ("busybox:a/b", "not a valid registry"),  # a ':' before the last '/' is no tag
    ("busybox:tag:tag", "not a valid path component"),
    ("busybox@", "not a valid digest"),
    ("busybox@sha256:" + "a" * 32, "not a valid sha256 digest"),
    ("busybox@sha256:" + "A" * 64, "not a valid sha256 digest"),
    ("busybox@sha256:" + "a" * 65, "not a valid sha256 digest"),
    ("busybox@sha512:" + "a" * 128, "'sha512' is not supported"),
    ("busybox@invaliddigest:" + "f" * 64, "'invaliddigest' is not supported"),
    ("busybox@sha256", "not a valid digest"),
    (f"busybox@{DIGEST}@{DIGEST}", "not a valid digest"),
    (HEX, "image id, not a name"),
    ("https://github.com/docker/docker", "no URL scheme"),
    ("[fc00::1]", "not a valid path component"),
    ("[fc00::1]:5000", "not a valid path component"),
    ("[fe80::1%eth0]:5000/debian", "not a valid registry"),
    ("[2001:db8:3:4::192.0.2.33]:5000/debian", "not a valid registry"),
    ("fc00::1:5000/debian", "not a valid registry"),
    ("-docker.io/docker/docker", "not a valid registry"),
    ("a:b/c", "not a valid registry"),
    ("example.com:port/x", "not a valid registry"),
    ("example.com/" + "a" * 256 + ":tag", "256 characters, more than 255"),
    ("a/" * 127 + "a/" + "a", "more than 255"),
]


@pytest.mark.parametrize(("text", "reason"), INVALID)
def test_invalid(text: str, reason: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)
    error = caught.value
    assert isinstance(error, LaminaError)
    assert reason in error.reason
    assert str(error).startswith(f"invalid reference {text!r}: ")
    assert error.text == text
    assert error.hint


def test_the_hint_shows_the_form() -> None:
    with pytest.raises(InvalidReference) as caught:
        parse_reference("x/Y")
    assert "NAME[:TAG][@DIGEST]" in caught.value.hint


def test_path_length_counts_the_path_not_the_registry() -> None:
    longest = "a" * 255
    assert parse_reference(f"example.com/{longest}:tag").repository == longest
    assert len(parse_reference("a/" * 127 + "a").repository) == 255
    # docker.io's "library/" counts: it is part of the path the registry sees
    with pytest.raises(InvalidReference, match="more than 255"):
        parse_reference("a" * 248)
    assert parse_reference("a" * 247).repository == "library/" + "a" * 247


def test_default_registry_and_tag() -> None:
    ref = parse_reference("busybox", default_registry="registry.example.com:5000")
    assert ref == Reference("registry.example.com:5000", "busybox", "latest")  # no library/
    assert ref.familiar == "registry.example.com:5000/busybox:latest"
    assert ref.familiar_for("registry.example.com:5000") == "busybox:latest"
    # a name with a registry keeps it; docker.io still gets library/
    assert parse_reference("docker.io/busybox", default_registry="r.example") == Reference(
        "docker.io", "library/busybox", "latest"
    )
    assert parse_reference("busybox", default_registry="index.docker.io").registry == "docker.io"
    assert parse_reference("busybox", default_tag=None).tag is None
    assert parse_reference("busybox", default_tag="stable").tag == "stable"
    assert parse_reference(f"busybox@{DIGEST}", default_tag="stable").tag is None


def test_familiar_keeps_what_would_read_back_differently() -> None:
    # a first path component that looks like a registry keeps the registry in front
    on_hub = Reference("docker.io", "a.b/c", "1")
    assert on_hub.familiar == "docker.io/a.b/c:1"
    assert parse_reference(on_hub.familiar) == on_hub
    assert Reference("docker.io", "localhost/x").familiar == "docker.io/localhost/x"
    assert Reference("docker.io", "library/a/b").familiar == "library/a/b"
    assert Reference("docker.io", "library/busybox").familiar_name == "busybox"
    assert Reference("example.com", "x", "1").familiar_name == "example.com/x"


def test_str_name_and_manifest_ref() -> None:
    ref = parse_reference(f"localhost:5000/a/b:c@{DIGEST}")
    assert str(ref) == f"localhost:5000/a/b:c@{DIGEST}"
    assert ref.name == "localhost:5000/a/b"
    assert ref.manifest_ref == DIGEST  # the digest pins the content; the tag is for display
    assert parse_reference("busybox:1").manifest_ref == "1"
    with pytest.raises(InvalidReference, match="neither a tag nor a digest"):
        _ = parse_reference("busybox", default_tag=None).manifest_ref


def test_with_tag_and_with_digest_check_their_argument() -> None:
    ref = parse_reference("busybox")
    assert ref.with_tag("1.36") == Reference("docker.io", "library/busybox", "1.36")
    assert ref.with_digest(DIGEST).digest == DIGEST
    assert ref.with_digest(DIGEST).tag == "latest"
    assert ref.with_digest(DIGEST).with_tag(None) == Reference(
        "docker.io", "library/busybox", None, DIGEST
    )
    with pytest.raises(InvalidReference, match="not a valid tag"):
        ref.with_tag("-bad")
    with pytest.raises(InvalidReference, match="not supported"):
        ref.with_digest("md5:" + "0" * 32)


def test_parse_name() -> None:
    assert parse_name("busybox") == Reference("docker.io", "library/busybox")
    assert parse_name("localhost:5000/a/b") == Reference("localhost:5000", "a/b")
    assert parse_name("x", default_registry="r.example") == Reference("r.example", "x")
    for text in ("busybox:1", f"busybox@{DIGEST}", "localhost:5000/a:b"):
        with pytest.raises(InvalidReference, match="without a tag or digest"):
            parse_name(text)
    with pytest.raises(InvalidReference, match="lowercase"):
        parse_name("x/Y")


@pytest.mark.parametrize(
    ("text", "full", "prefix"),
    [
        (HEX, DIGEST, HEX),
        (DIGEST, DIGEST, HEX),
        ("0123abc", None, "0123abc"),
        ("sha256:0123abc", None, "0123abc"),
        ("a", None, "a"),
        ("busybox", None, None),
        ("ABCDEF", None, None),  # ids are lowercase
        (HEX + "0", None, None),
        ("sha256:", None, None),
        ("", None, None),
        ("sha512:" + "a" * 64, None, None),
    ],
)
def test_full_id_and_id_prefix(text: str, full: str | None, prefix: str | None) -> None:
    assert full_id(text) == full
    assert id_prefix(text) == prefix


def test_an_id_prefix_may_also_be_a_name() -> None:
    # "abc" is both: callers look it up as a name first, then as an id prefix
    assert id_prefix("abc") == "abc"
    assert parse_reference("abc") == Reference("docker.io", "library/abc", "latest")
    # a full id is never a name
    assert full_id(HEX) == DIGEST
    with pytest.raises(InvalidReference):
        parse_reference(HEX)


def test_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "import lamina.core.images.reference, lamina.core.images.platform\n"
        "print(' '.join(m for m in ('json', 'http', 'tomllib', 'platform') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


# --- properties -------------------------------------------------------------------

_component = st.from_regex(r"\A[a-z0-9]{1,4}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,4}){0,2}\Z")
_domain_part = st.from_regex(r"\A(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]{0,4}[a-zA-Z0-9])\Z")
_port = st.integers(1, 65535).map(lambda n: f":{n}")
_hosts = st.one_of(
    st.lists(_domain_part, min_size=2, max_size=3).map(".".join),
    st.sampled_from(["localhost", "docker.io", "index.docker.io", "LOCALDOMAIN"]),
    st.from_regex(r"\A\[[a-f0-9]{0,4}:[a-f0-9:]{1,10}\]\Z"),
)
_registries = st.one_of(
    st.none(),
    _hosts,
    st.tuples(st.one_of(_hosts, _domain_part), _port).map("".join),
)
_tags = st.one_of(st.none(), st.from_regex(r"\A[\w][\w.-]{0,20}\Z", fullmatch=True).filter(
    lambda t: t.isascii()))
_digests = st.one_of(st.none(), st.text("0123456789abcdef", min_size=64, max_size=64).map(
    lambda h: f"sha256:{h}"))


@st.composite
def references(draw) -> str:
    registry = draw(_registries)
    components = draw(st.lists(_component, min_size=1, max_size=4))
    if registry is None:  # a first component with a '.' would be read as the registry
        components[0] = components[0].replace(".", "-")
    path = "/".join(components)
    text = f"{registry}/{path}" if registry else path
    tag, digest = draw(_tags), draw(_digests)
    if tag is not None:
        text += f":{tag}"
    if digest is not None:
        text += f"@{digest}"
    return text


@settings(max_examples=400, deadline=None)
@given(text=references(), default=st.sampled_from(["docker.io", "registry.example.com:5000"]))
def test_round_trip(text: str, default: str) -> None:
    try:
        ref = parse_reference(text, default_registry=default)
    except InvalidReference as error:
        # the generator makes well-formed names; only the length limit can refuse one
        assert "more than 255" in error.reason or _is_hex64(text), text
        return
    assert parse_reference(str(ref), default_registry=default) == ref
    assert parse_reference(str(ref)) == ref  # the full form needs no default
    assert parse_reference(ref.familiar) == ref
    assert parse_reference(ref.familiar_for(default), default_registry=default) == ref
    assert ref.repository == ref.repository.lower()


def _is_hex64(text: str) -> bool:
    return re.fullmatch(r"[a-f0-9]{64}", text) is not None


# An oracle written from Docker's grammar (distribution/reference's regexp.go) and its
# normalisation steps (normalize.go), independent of the module's step-by-step checks.
_ALNUM = r"[a-z0-9]+"
_SEP = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEP}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = (rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[(?:[a-fA-F0-9:]+)\])"
           r"(?::[0-9]+)?")
_NAME = rf"((?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
_ORACLE = re.compile(
    rf"{_NAME}(?::([\w][\w.-]{{0,127}}))?"
    r"(?:@([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}))?",
    re.ASCII,
)
_ORACLE_NAME = re.compile(
    rf"(?:({_DOMAIN})/)?({_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)", re.ASCII
)


def docker_parse(text: str) -> Reference | None:
    """What Docker's ParseNormalizedNamed makes of ``text`` (only sha256 digests)."""
    if _is_hex64(text):
        return None
    first, slash, rest = text.partition("/")
    if not slash:
        domain, remainder = "docker.io", "library/" + text
    elif first == "localhost":
        domain, remainder = first, rest
    elif first == "index.docker.io":
        domain, remainder = "docker.io", rest
    elif "." in first or ":" in first or first.lower() != first:
        domain, remainder = first, rest
    else:
        domain, remainder = "docker.io", text
    if domain == "docker.io" and "/" not in remainder:
        remainder = "library/" + remainder
    if remainder.split(":", 1)[0].lower() != remainder.split(":", 1)[0]:
        return None
    match = _ORACLE.fullmatch(f"{domain}/{remainder}")
    if not match:
        return None
    name, tag, digest = match.groups()
    split = _ORACLE_NAME.fullmatch(name)
    assert split is not None
    registry, path = split.groups()
    if registry is None:
        # the first component was taken as a registry but is not a valid one
        # ("foo_bar.com/x"): Docker then keeps the whole name as a path on an empty
        # registry, which no registry can serve; lamina refuses it
        return None
    if len(path) > 255:
        return None
    if digest is not None and not re.fullmatch(r"sha256:[a-f0-9]{64}", digest):
        return None
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, path, tag, digest)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(
    st.text("abAB09.:/@-_[]", max_size=16),
    references(),
    references().map(lambda t: t.replace("/", "//", 1)),
    references().map(lambda t: t.upper()),
    st.tuples(references(), st.text("aA.:/@-_[]% ", max_size=3), st.integers(0, 40)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2]:]),
))
def test_same_answers_as_dockers_grammar(text: str) -> None:
    expected = docker_parse(text)
    try:
        got = parse_reference(text)
    except InvalidReference:
        got = None
    assert got == expected, text


@pytest.mark.parametrize("text", [t for t, *_ in VALID] + [t for t, _ in INVALID])
def test_tables_agree_with_the_oracle(text: str) -> None:
    expected = docker_parse(text)
    try:
        got = parse_reference(text)
    except InvalidReference:
        got = None
    assert got == expected
