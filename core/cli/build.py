"""``lamina build``: a Dockerfile and its context to an image (core/build/).

Docker's flags: ``-t`` (several), ``-f`` (``-f -`` reads the Dockerfile from stdin),
``--build-arg K=V`` (``K`` alone takes the value from the environment, as Docker),
``--no-cache``, ``--target``, ``--network``, ``-q`` (only the image id). ``--timestamp``
(or ``SOURCE_DATE_EPOCH``) makes the build reproducible (core/build/builder.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BuildError, host_error

if TYPE_CHECKING:
    from ..engine import Engine


def build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--tag", action="append", default=[], metavar="NAME[:TAG]",
                   help="name the image (several -t give several names)")
    p.add_argument("-f", "--file", metavar="FILE",
                   help="the Dockerfile (default CONTEXT/Dockerfile; - reads stdin)")
    p.add_argument("--build-arg", action="append", default=[], metavar="NAME[=VALUE]",
                   help="a build argument (NAME alone: the environment's value)")
    p.add_argument("--no-cache", action="store_true", help="make every layer again")
    p.add_argument("--target", metavar="STAGE", help="build this stage, not the last")
    p.add_argument("--network", default="bridge", choices=["bridge", "none", "host"],
                   help="the network of RUN steps (default: bridge, as Docker)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only the image id (RUN output shown only when one fails)")
    p.add_argument("--timestamp", type=int, metavar="EPOCH",
                   help="reproducible: file, config and history times at most this "
                        "(default: $SOURCE_DATE_EPOCH)")
    p.add_argument("--pull", choices=["missing", "always", "never"], default="missing",
                   help="when to pull base images (default: when missing)")
    p.add_argument("context", metavar="CONTEXT", help="the build context directory")


def cmd_build(args: argparse.Namespace, engine: Engine) -> int:
    from ..build.builder import Builder, BuildOptions
    from ..build.dockerignore import Dockerignore
    from ..build.instructions import parse
    from .container import _resolve_image
    from .image import _reference

    context = Path(args.context)
    if not context.is_dir():
        raise BuildError(f"the build context {context} is not a directory",
                         hint="give the directory whose files COPY and ADD may use")
    name, text = _dockerfile(args, context)
    dockerfile = parse(text, filename=name)
    ignore = None
    ignore_path = context / ".dockerignore"
    if ignore_path.is_file():
        ignore = Dockerignore.parse(_read(ignore_path), filename=str(ignore_path))
    tags = []
    for tag in args.tag:
        ref = _reference(tag, engine)
        if ref.digest:
            raise BuildError(f"-t {tag}: a build's name cannot have a digest",
                             hint="give NAME[:TAG]")
        tags.append(str(ref))
    timestamp = args.timestamp
    if timestamp is None and os.environ.get("SOURCE_DATE_EPOCH"):
        try:
            timestamp = int(os.environ["SOURCE_DATE_EPOCH"])
        except ValueError:
            raise BuildError(f"SOURCE_DATE_EPOCH={os.environ['SOURCE_DATE_EPOCH']!r} is not a "
                             "number of seconds", hint="give seconds since 1970, or unset it") \
                from None
    options = BuildOptions(
        context.resolve(), ignore=ignore, build_args=_build_args(args.build_arg), tags=tags,
        target=args.target, network=args.network, network_settings=engine.config.network,
        no_cache=args.no_cache, quiet=args.quiet, timestamp=timestamp,
        keep_blobs=engine.config.images["keep_blobs"])

    def resolve(image: str) -> str:
        return _resolve_image(engine, image, args.pull)

    with engine.open_store() as store:
        from .container import _reconcile

        _reconcile(store)
        image_id = Builder(store, dockerfile, options, resolve_image=resolve,
                           out=sys.stdout).build()
    if args.quiet:
        print(image_id)
    else:
        print(f"Successfully built {image_id.removeprefix('sha256:')[:12]}")
        for tag in args.tag:
            print(f"Successfully tagged {tag}")
    return 0


def _dockerfile(args: argparse.Namespace, context: Path) -> tuple[str, str]:
    """The Dockerfile's name (for error messages) and text."""
    if args.file == "-":
        return "Dockerfile", sys.stdin.read()
    path = Path(args.file) if args.file else context / "Dockerfile"
    return str(path if args.file else "Dockerfile"), _read(path)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BuildError(f"{path} does not exist",
                         hint="give the Dockerfile with -f, or put one in the context") from None
    except UnicodeDecodeError as exc:
        raise BuildError(f"{path} is not UTF-8 text ({exc.reason})",
                         hint="save it as UTF-8") from None
    except OSError as exc:
        raise host_error(exc, "read", path) from exc


def _build_args(items: list[str]) -> dict[str, str]:
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name:
            raise BuildError(f"invalid --build-arg {item!r}", hint="give NAME=VALUE or NAME")
        if not sep:
            if name not in os.environ:
                continue  # Docker: a NAME the environment lacks is left unset
            value = os.environ[name]
        values[name] = value
    return values
