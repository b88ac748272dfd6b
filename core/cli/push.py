"""``lamina push``: Docker's habits and output for sending an image to a registry.

``lamina push NAME[:TAG]`` pushes the image of that name to the registry the name
says; ``lamina push IMAGE DESTINATION`` (podman's form) pushes the image named by a
name, ``name@digest`` or id to DESTINATION without giving it that name locally.
The steps and what is recorded are in :mod:`lamina.core.images.push`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import ImageNotFound, InvalidReference

if TYPE_CHECKING:
    from ..engine import Engine
    from ..images.reference import Reference
    from ..images.store import ImageStore


def push_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE",
                   help="NAME[:TAG] to push to the registry it names; with DESTINATION, "
                   "any name or id")
    p.add_argument("destination", nargs="?", metavar="DESTINATION",
                   help="where to push IMAGE: [REGISTRY/]NAME[:TAG]")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the manifest digest")


def cmd_push(args: argparse.Namespace, engine: Engine) -> int:
    from ..images.push import push
    from ..images.reference import parse_reference
    from ..images.registry.client import Registry
    from ..images.store import ImageStore
    from .progress import pull_events

    default = engine.config.images["default_registry"]
    target = parse_reference(args.destination or args.image, default_registry=default)
    if target.digest is not None:
        raise InvalidReference(args.destination or args.image,
                               "a push goes to a tag, not to a digest",
                               hint="give the destination as NAME[:TAG]")
    registry = Registry.from_config(target.registry, engine.config)
    warnings: list[str] = []
    # the image is looked up in a store opened to read: a push that cannot start (no such
    # image, a damaged store) creates nothing
    with engine.open_store(readonly=True) as store:
        image_id = _image_to_push(ImageStore(store), args, target, engine)
    with engine.open_store() as store:
        if not args.quiet:
            print(f"The push refers to repository [{target.name}]", flush=True)
        with pull_events(quiet=args.quiet) as events:
            result = push(ImageStore(store), registry, image_id, target,
                          keep_blobs=engine.config.images["keep_blobs"], events=events,
                          warn=warnings.append, what=args.image)
    for text in warnings:
        print(f"warning: {text}", file=sys.stderr)
    if args.quiet:
        print(result.digest)
    else:
        print(f"{target.tag}: digest: {result.digest} size: {result.size}")
    return 0


def _image_to_push(images: ImageStore, args: argparse.Namespace, target: Reference,
                   engine: Engine) -> str:
    """Docker's form pushes the image of the destination's name; podman's, any image."""
    from .image import find_image

    if args.destination is not None:
        return find_image(images, args.image, engine)
    image_id = images.by_name(str(target))
    if image_id is None:
        raise ImageNotFound(
            f"no image named {target.familiar_for(engine.config.images['default_registry'])}",
            hint="give it that name first (lamina tag IMAGE NAME), or push it with "
            "lamina push IMAGE DESTINATION")
    return image_id
