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
    p.add_argument("-a", "--all-tags", action="store_true",
                   help="every local tag of IMAGE's repository (IMAGE without a tag)")


def cmd_push(args: argparse.Namespace, engine: Engine) -> int:
    from ..images.reference import parse_reference
    from ..images.store import ImageStore

    default = engine.config.images["default_registry"]
    if not args.all_tags:
        target = parse_reference(args.destination or args.image, default_registry=default)
        if target.digest is not None:
            raise InvalidReference(args.destination or args.image,
                                   "a push goes to a tag, not to a digest",
                                   hint="give the destination as NAME[:TAG]")
        # the image is looked up in a store opened to read: a push that cannot start (no
        # such image, a damaged store) creates nothing
        with engine.open_store(readonly=True) as store:
            image_id = _image_to_push(ImageStore(store), args, target, engine)
        _push_one(args, engine, image_id, target)
        return 0
    repository = parse_reference(args.image, default_registry=default, default_tag=None)
    if args.destination is not None or repository.tag or repository.digest:
        raise InvalidReference(args.image, "--all-tags pushes a repository's tags: give it "
                               "alone, without a tag, digest or destination",
                               hint="lamina push -a NAME")
    with engine.open_store(readonly=True) as store:
        images = ImageStore(store)
        tagged = sorted(
            (name.rpartition(":")[2], image.id) for image in images.images()
            for name in image.names if name.rpartition(":")[0] == repository.name)
    if not tagged:
        raise ImageNotFound(
            f"no image of {repository.familiar_for(default)} has a tag",
            hint="give one a name there first (lamina tag IMAGE NAME:TAG)")
    for tag, image_id in tagged:
        _push_one(args, engine, image_id, repository.with_tag(tag))
    return 0


def _push_one(args: argparse.Namespace, engine: Engine, image_id: str,
              target: Reference) -> None:
    """Push ``image_id`` to ``target`` with Docker's output."""
    from ..images.push import push
    from ..images.registry.client import Registry
    from ..images.store import ImageStore
    from .progress import pull_events

    registry = Registry.from_config(target.registry, engine.config)
    warnings: list[str] = []
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
