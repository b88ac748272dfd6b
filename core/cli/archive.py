"""Archive commands: ``save``, ``load``, ``import``, with Docker's names and output.

``save`` writes to ``-o FILE`` or to a standard output that is not a terminal
(as ``docker save``, it refuses to write a tar to a terminal); ``load`` reads
``-i FILE`` or standard input; ``import`` a rootfs tarball (a file or ``-``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ImageError, InvalidReference, host_error

if TYPE_CHECKING:
    from ..engine import Engine


# -- save ---------------------------------------------------------------------------------


def save_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", help="file (or directory, for oci-dir) to write "
                   "(default: standard output)")
    p.add_argument("--format", choices=["docker-archive", "oci-archive", "oci-dir"],
                   default="docker-archive",
                   help="docker-archive: Docker 25's `docker save` (an OCI layout with "
                   "manifest.json); oci-archive: an OCI layout in a tar; oci-dir: an OCI "
                   "layout directory (default: docker-archive)")


def cmd_save(args: argparse.Namespace, engine: Engine) -> int:
    from ..images.save import save
    from ..images.store import ImageStore
    from .image import find_image

    if args.format == "oci-dir" and not args.output:
        raise ImageError("--format oci-dir needs -o DIRECTORY",
                         hint="give the directory to write the layout to with -o")
    if not args.output and sys.stdout.isatty():
        raise ImageError("refusing to write an image archive to a terminal",
                         hint="give a file with -o, or redirect standard output")

    def warn(text: str) -> None:
        print(f"lamina: warning: {text}", file=sys.stderr)

    with engine.open_store() as store:  # a layer without its blob is exported via tmp/
        images = ImageStore(store)
        wanted = []
        for text in args.images:
            image_id = find_image(images, text, engine)
            wanted.append((image_id, _name_of(text, image_id, images, engine)))
        if args.format == "oci-dir":
            save(images, wanted, args.format, directory=Path(args.output), warn=warn)
        elif args.output:
            to_file(Path(args.output),
                    lambda fd: save(images, wanted, args.format, fd=fd, warn=warn))
        else:
            sys.stdout.flush()
            save(images, wanted, args.format, fd=sys.stdout.fileno(), warn=warn)
    return 0


def _name_of(text: str, image_id: str, images: object, engine: Engine) -> list[str]:
    """The name ``text`` gives the image (as Docker: none when it is given by id)."""
    from ..images.reference import parse_reference

    try:
        ref = parse_reference(text, default_registry=engine.config.images["default_registry"])
    except InvalidReference:
        return []
    name = str(ref)
    return [name] if ref.tag and not ref.digest and name in images.image(image_id).names \
        else []  # type: ignore[attr-defined]


def to_file(target: Path, write: Callable[[int], None]) -> None:
    """``write(fd)`` into ``FILE.tmp-PID``, then fsync and rename: a failed save or export
    leaves no half archive."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ENOENT and target.parent.is_dir():  # /proc, /sys
            raise host_error(exc, "create a file in", target.parent,
                             hint="choose an output path on a writable filesystem") from None
        raise host_error(exc, "write", target) from None
    try:
        try:
            write(fd)
            os.fsync(fd)
        except OSError as exc:
            raise host_error(exc, "write", target) from None
        finally:
            os.close(fd)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


# -- load ---------------------------------------------------------------------------------


def load_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", help="archive to read: a docker save tar, an OCI layout "
                   "tar or directory, plain or gzip/zstd (default: standard input)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def cmd_load(args: argparse.Namespace, engine: Engine) -> int:
    from ..images.archive import open_archive
    from ..images.load import load
    from ..images.reference import parse_reference
    from ..images.store import ImageStore

    source = args.input or "-"
    if source == "-" and sys.stdin.isatty():
        raise ImageError("no archive given, and standard input is a terminal",
                         hint="give a file with -i, or pipe an archive in")
    default_registry = engine.config.images["default_registry"]
    with engine.open_store() as store:
        images = ImageStore(store)
        with open_archive(source, store.root / "tmp") as archive:
            loaded = load(images, archive, default_registry=default_registry,
                          keep_blobs=engine.config.images["keep_blobs"])
    if not args.quiet:
        for image in loaded:
            for name in image.names:
                print(f"Loaded image: {parse_reference(name).familiar_for(default_registry)}")
            if not image.names:
                print(f"Loaded image ID: {image.image_id}")
    return 0


# -- import -------------------------------------------------------------------------------


def import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE|-", help="root filesystem tarball (plain, gzip or "
                   "zstd), or - for standard input")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")
    p.add_argument("-m", "--message", default="", help="commit message of the image's history")
    p.add_argument("-c", "--change", action="append", default=[], metavar="INSTRUCTION",
                   help="a Dockerfile instruction for the image config: CMD, ENTRYPOINT, ENV, "
                   "WORKDIR, USER, LABEL, EXPOSE, STOPSIGNAL (repeatable)")


def cmd_import(args: argparse.Namespace, engine: Engine) -> int:
    from ..images.instructions import apply_changes
    from ..images.reference import parse_reference
    from ..images.rootfs import import_rootfs
    from ..images.store import ImageStore

    container_config = apply_changes({}, args.change)
    names = []
    if args.reference:
        ref = parse_reference(args.reference,
                              default_registry=engine.config.images["default_registry"])
        if ref.digest:
            raise InvalidReference(args.reference, "an imported image is named by a tag",
                                   hint="give REPOSITORY[:TAG]")
        names.append(str(ref))
    if args.file == "-" and sys.stdin.isatty():
        raise ImageError("no tarball given, and standard input is a terminal",
                         hint="give a file, or pipe a tarball in")
    if args.file != "-" and not os.path.isfile(args.file):
        try:
            os.stat(args.file)
        except OSError as exc:
            raise host_error(exc, "read", args.file) from None
        raise ImageError(f"{args.file} is not a file",
                         hint="give a root filesystem tarball (plain, gzip or zstd)")
    with engine.open_store() as store:
        image_id = import_rootfs(ImageStore(store), args.file, names=names,
                                 message=args.message, container_config=container_config,
                                 keep_blobs=engine.config.images["keep_blobs"])
    print(image_id)
    return 0
