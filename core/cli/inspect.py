"""``inspect``: containers' or images' details as JSON, Docker's shapes.

A command of its own because it looks in both places: a container first, then an
image, as Docker does (``--type`` to choose).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import LaminaError
from .output import print_json, report

if TYPE_CHECKING:
    from ..engine import Engine


def inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--type", choices=["container", "image"],
                   help="look only for this kind (default: a container first, then an image)")
    p.add_argument("-f", "--format", help="a Go template applied to each object, as "
                   "Docker's: '{{.Id}}', '{{json .Config}}', '{{range .RepoTags}}{{.}} {{end}}'")
    p.add_argument("images", nargs="+", metavar="NAME|ID")


def cmd_inspect(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.store import ContainerStore
    from ..errors import ContainerNotFound
    from ..images.store import ImageStore
    from .container import inspect_container
    from .image import find_image, inspect_image
    from .network import container_networks

    template = None
    if args.format:
        from .gotemplate import Template

        template = Template(args.format)  # a bad one fails before anything is read
    out = []
    status = 0
    from ..containers.volumes import VolumeStore
    from ..launcher.monitor import restart_count, shown

    with engine.open_store(readonly=True) as store:
        images = ImageStore(store)
        containers = ContainerStore(store)
        for text in args.images:
            try:
                if args.type != "image":
                    try:
                        container = containers.get(text)
                        out.append(inspect_container(
                            shown(containers, container), containers.directory(container.id),
                            VolumeStore(store).path, restart_count(containers, container.id),
                            container_networks(store, container, engine.config.network)))
                        continue
                    except ContainerNotFound:
                        if args.type == "container":
                            raise
                out.append(inspect_image(images, find_image(images, text, engine)))
            except LaminaError as exc:
                report(exc)
                status = exc.exit_status
    if template is None:
        print_json(out)
    else:
        sys.stdout.write("".join(template.render(o) + "\n" for o in out))
    return status
