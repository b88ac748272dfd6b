"""Image references: Docker's rules for ``[REGISTRY/]PATH[:TAG][@DIGEST]``.

A name is split where Docker splits it, so that every name means here what it
means to ``docker pull``:

- The first ``/``-separated component is the registry when it contains ``.`` or
  ``:`` (``example.com``, ``127.0.0.1:5000``, ``[::1]:5000``), is ``localhost``,
  or has an uppercase letter (a path never may); otherwise the whole name is a path
  on the default registry. A name without ``/`` is always a path (``localhost``
  alone is ``docker.io/library/localhost``, as in Docker).
- On ``docker.io`` a one-component path gets ``library/`` (``busybox`` is
  ``docker.io/library/busybox``), and ``index.docker.io`` is ``docker.io``.
- Path components are ``[a-z0-9]+`` joined by ``.``, ``_``, ``__`` or runs of
  ``-``; the path is at most 255 characters (what a registry accepts as a
  repository name; the registry part is not counted, as in distribution/reference
  since 2023).
- A tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; a digest here is
  ``sha256:<64 lowercase hex>``: other algorithms are valid OCI but lamina's
  content store holds sha256 content only, so they are refused as unsupported.
- ``name:tag@digest`` keeps both; the digest decides what is pulled, the tag is
  for display. A default tag is added only when there is neither.

Image ids: a bare 64-hex string is never a name (Docker refuses it as one): it
is an image id. A shorter hex string is a name first and an id prefix second;
see :func:`full_id` and :func:`id_prefix` for the order callers follow.

No heavy imports: ``re`` and the errors module only, so every command may parse
a reference without paying for it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from lamina.core.errors import InvalidReference

#: the registry of names that name none, and of Docker's short forms
DOCKER_HUB = "docker.io"
#: Docker Hub's old name, still accepted and written as DOCKER_HUB
LEGACY_DOCKER_HUB = "index.docker.io"
#: the namespace of Docker Hub's official images (``busybox`` is ``library/busybox``)
OFFICIAL_PREFIX = "library/"
#: the longest repository path a registry accepts
MAX_PATH_LENGTH = 255
#: the one digest algorithm the content store holds
DIGEST_ALGORITHM = "sha256"

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_REGISTRY = re.compile(
    rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?", re.ASCII
)
_TAG = re.compile(r"\w[\w.-]{0,127}", re.ASCII)
#: OCI's digest grammar: algorithm components joined by + . _ -, then the encoded part
_DIGEST = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)", re.ASCII)
_SHA256_HEX = re.compile(r"[a-f0-9]{64}", re.ASCII)
_HEX_PREFIX = re.compile(r"[a-f0-9]{1,64}", re.ASCII)


class Reference(NamedTuple):
    """A parsed image reference; ``str()`` gives its full form.

    ``registry`` is as written (a host may have uppercase letters and a port),
    ``repository`` the path on it, ``tag`` and ``digest`` None when absent.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def name(self) -> str:
        """``registry/repository``: what images are grouped by, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar(self) -> str:
        """Docker's short form, as ``docker images`` shows it: ``busybox:latest``.

        Relative to ``docker.io``; :meth:`familiar_for` when the default registry
        is configured to another.
        """
        return self.familiar_for(DOCKER_HUB)

    @property
    def familiar_name(self) -> str:
        """The short form of :attr:`name` (no tag, no digest): ``busybox``, ``org/app``."""
        return _short_name(self.registry, self.repository, DOCKER_HUB)

    def familiar_for(self, default_registry: str) -> str:
        """The shortest text that :func:`parse_reference` with ``default_registry``
        reads back as this reference (its tag and digest kept as they are)."""
        text = _short_name(self.registry, self.repository, default_registry)
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def manifest_ref(self) -> str:
        """What to ask a registry's ``/v2/<repository>/manifests/<ref>`` for: the
        digest when there is one (it pins the content), else the tag."""
        if self.digest is not None:
            return self.digest
        if self.tag is None:
            raise InvalidReference(str(self), "names neither a tag nor a digest")
        return self.tag

    def with_tag(self, tag: str | None) -> Reference:
        """This reference with ``tag`` (checked) instead of its own; the digest stays."""
        if tag is not None:
            _check_tag(str(self), tag)
        return self._replace(tag=tag)

    def with_digest(self, digest: str | None) -> Reference:
        """This reference with ``digest`` (checked) instead of its own; the tag stays."""
        if digest is not None:
            _check_digest(str(self), digest)
        return self._replace(digest=digest)


def parse_reference(
    text: str, *, default_registry: str = DOCKER_HUB, default_tag: str | None = "latest"
) -> Reference:
    """``text`` as a :class:`Reference`, by Docker's rules (module docstring).

    ``default_registry`` takes names without a registry (``[images]
    default_registry`` in the config); ``default_tag`` is added when ``text`` has
    neither tag nor digest (None adds none). Anything malformed raises
    :class:`InvalidReference` naming what is wrong.
    """
    if not text:
        raise InvalidReference(text, "it is empty")
    if "://" in text:
        raise InvalidReference(
            text,
            "a reference has no URL scheme",
            hint=f"leave out {text.partition('://')[0] + '://'!r}: REGISTRY/NAME[:TAG]",
        )
    if _SHA256_HEX.fullmatch(text):
        raise InvalidReference(
            text,
            "a 64-character hex string is an image id, not a name",
            hint="give the id where an image is expected, or a name with a registry or tag",
        )
    name, at, digest_text = text.partition("@")
    tag: str | None = None
    colon = name.rfind(":")
    if colon > name.rfind("/"):  # a ':' in the last component starts the tag
        name, tag = name[:colon], name[colon + 1 :]
    registry, repository = _split_name(text, name, default_registry)
    if tag is not None:
        _check_tag(text, tag)
    digest: str | None = None
    if at:
        digest = digest_text
        _check_digest(text, digest)
    elif tag is None:
        tag = default_tag
    return Reference(registry, repository, tag, digest)


def parse_name(text: str, *, default_registry: str = DOCKER_HUB) -> Reference:
    """A repository name (no tag, no digest) as a :class:`Reference` with neither.

    For what names a repository rather than an image: ``lamina images NAME``, the
    repository a push goes to before its tag is known.
    """
    if "@" in text or text.rfind(":") > text.rfind("/"):
        raise InvalidReference(
            text,
            "a repository name is expected here, without a tag or digest",
            hint="give the name alone, e.g. busybox or registry.example.com/team/app",
        )
    return parse_reference(text, default_registry=default_registry, default_tag=None)


def full_id(text: str) -> str | None:
    """``sha256:<hex>`` when ``text`` is a full image id (64 lowercase hex, with or
    without ``sha256:``), else None.

    Such a text is always an id, never a name: look it up by id only.
    """
    hex_ = text.removeprefix(f"{DIGEST_ALGORITHM}:")
    return f"{DIGEST_ALGORITHM}:{hex_}" if _SHA256_HEX.fullmatch(hex_) else None


def id_prefix(text: str) -> str | None:
    """The hex digits of ``text`` when it could be a (short) image id: 1 to 64
    lowercase hex characters, with or without ``sha256:``; else None.

    Docker's order, which ``rmi``, ``inspect`` and the like follow: a :func:`full_id`
    is an id; otherwise ``text`` is looked up as a name first (``abc`` may be the
    image ``docker.io/library/abc:latest``), and only if no image has that name is
    it an id prefix, which must then match exactly one image.
    """
    hex_ = text.removeprefix(f"{DIGEST_ALGORITHM}:")
    return hex_ if _HEX_PREFIX.fullmatch(hex_) else None


def _split_name(text: str, name: str, default_registry: str) -> tuple[str, str]:
    """(registry, repository) of a name without tag or digest; every part checked."""
    first, slash, rest = name.partition("/")
    if slash and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    ):
        registry, repository = first, rest
        if registry == LEGACY_DOCKER_HUB:
            registry = DOCKER_HUB
        if not _REGISTRY.fullmatch(registry):
            raise InvalidReference(
                text, f"{registry!r} is not a valid registry (HOST[:PORT], [IPv6][:PORT])"
            )
    else:
        registry, repository = default_registry, name
        if registry == LEGACY_DOCKER_HUB:
            registry = DOCKER_HUB
    if not repository:
        raise InvalidReference(text, "the repository name is missing")
    for component in repository.split("/"):
        if _COMPONENT.fullmatch(component):
            continue
        if not component:
            reason = "the repository name has an empty path component (a '/' too many)"
        elif _COMPONENT.fullmatch(component.lower()):
            reason = f"repository name must be lowercase ({repository!r})"
        else:
            reason = (
                f"{component!r} is not a valid path component (lowercase letters and "
                "digits, separated by '.', '_', '__' or '-')"
            )
        raise InvalidReference(text, reason)
    if registry == DOCKER_HUB and "/" not in repository:
        repository = OFFICIAL_PREFIX + repository
    if len(repository) > MAX_PATH_LENGTH:
        raise InvalidReference(
            text,
            f"the repository name is {len(repository)} characters, more than {MAX_PATH_LENGTH}",
        )
    return registry, repository


def _short_name(registry: str, repository: str, default_registry: str) -> str:
    """``repository`` alone when it reads back as (default_registry, repository)."""
    if registry != default_registry:
        return f"{registry}/{repository}"
    if registry == DOCKER_HUB and repository.startswith(OFFICIAL_PREFIX):
        short = repository.removeprefix(OFFICIAL_PREFIX)
        if "/" not in short:
            return short
    first, slash, _ = repository.partition("/")
    if registry == DOCKER_HUB and not slash:
        return f"{registry}/{repository}"  # "docker.io/x" would read back as library/x
    if slash and ("." in first or first == "localhost"):
        return f"{registry}/{repository}"  # its first component would be read as a registry
    return repository


def _check_tag(text: str, tag: str) -> None:
    if not _TAG.fullmatch(tag):
        if not tag:
            reason = "the tag after ':' is empty"
        elif len(tag) > 128:
            reason = f"the tag is {len(tag)} characters, more than 128"
        else:
            reason = (
                f"{tag!r} is not a valid tag (letters, digits, '_', '.' and '-', "
                "not starting with '.' or '-')"
            )
        raise InvalidReference(text, reason)


def _check_digest(text: str, digest: str) -> None:
    match = _DIGEST.fullmatch(digest)
    if not match:
        raise InvalidReference(
            text, f"{digest!r} is not a valid digest (ALGORITHM:HEX, e.g. sha256:<64 hex>)"
        )
    if match[1] != DIGEST_ALGORITHM:
        raise InvalidReference(
            text,
            f"digest algorithm {match[1]!r} is not supported (lamina stores sha256 content)",
            hint="give the image's sha256 digest",
        )
    if not _SHA256_HEX.fullmatch(match[2]):
        raise InvalidReference(
            text, f"{digest!r} is not a valid sha256 digest (64 lowercase hex characters)"
        )
