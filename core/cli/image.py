"""Image commands: ``pull``, ``images``, ``tag``, ``rmi``, ``inspect``, ``history``.

Names and output follow Docker's: short names are on the default registry
(``busybox`` is ``docker.io/library/busybox:latest``) and listed familiar.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import ImageNotFound, InvalidReference, LaminaError
from .output import print_json, print_table, report

if TYPE_CHECKING:
    from ..engine import Engine
    from ..images.platform import Platform
    from ..images.pull import PullResult
    from ..images.reference import Reference
    from ..images.store import ImageStore
    from ..layers.store import Store
    from .filters import PruneFilter


def _reference(text: str, engine: Engine, default_tag: str | None = "latest") -> Reference:
    from ..images.reference import parse_reference

    return parse_reference(text, default_registry=engine.config.images["default_registry"],
                           default_tag=default_tag)


def find_image(images: ImageStore, text: str, engine: Engine) -> str:
    """The id of the image ``text`` names: a name, ``name@digest``, or an id (prefix).

    Docker's order: a full 64-hex id, then a name, then an id prefix.
    """
    from ..images.reference import parse_reference

    hex_part = text.removeprefix("sha256:")
    if len(hex_part) == 64 and images.by_id_prefix(text):
        return f"sha256:{hex_part}"
    found: str | None = None
    try:
        ref = parse_reference(text, default_registry=engine.config.images["default_registry"])
    except LaminaError:
        ref = None
    if ref is not None:
        if ref.digest:
            found = images.by_digest(f"{ref.registry}/{ref.repository}", ref.digest)
        else:
            found = images.by_name(str(ref))
    if found is None:
        found = images.by_id_prefix(text)
    if found is None:
        raise ImageNotFound(f"no such image: {text}",
                            hint="list images with `lamina images`, or pull it: lamina pull NAME")
    return found


# -- pull ---------------------------------------------------------------------------------


def pull_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reference", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument("--platform", help="os/arch[/variant] to pull from a multi-platform image "
                   "(default: this host's)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    p.add_argument("-a", "--all-tags", action="store_true",
                   help="every tag of the repository (its layers stored once, as always)")


def cmd_pull(args: argparse.Namespace, engine: Engine) -> int:
    from ..images.platform import host_platform, parse_platform

    ref = _reference(args.reference, engine, default_tag=None)
    implied_tag = ref.tag is None and ref.digest is None
    platform = parse_platform(args.platform) if args.platform else host_platform()
    if args.all_tags:
        if not implied_tag:
            raise InvalidReference(args.reference, "a tag or digest cannot go with --all-tags",
                                   hint="give the repository alone: lamina pull -a NAME")
        refs = [ref._replace(tag=tag) for tag in _all_tags(engine, ref)]
    else:
        refs = [ref._replace(tag="latest") if implied_tag else ref]
    for one in refs:
        result = pull_reference(engine, one, platform=platform,
                                explicit_platform=args.platform is not None,
                                quiet=args.quiet, implied_tag=implied_tag and not args.all_tags,
                                out=sys.stdout)
        if args.quiet:
            print(result.image_id)
    return 0


def _all_tags(engine: Engine, ref: Reference) -> list[str]:
    """The tags of ``ref``'s repository, as the registry lists them (sorted, as Docker
    pulls them)."""
    from ..images.registry.client import Registry

    tags = Registry.from_config(ref.registry, engine.config).tags(ref.repository)
    if not tags:
        raise ImageNotFound(f"{ref.familiar}: the registry lists no tags for it",
                            hint="check the name; an empty repository has nothing to pull")
    return sorted(set(tags))


def pull_reference(engine: Engine, ref: Reference, *, platform: Platform,
                   explicit_platform: bool = False, quiet: bool = False,
                   implied_tag: bool = False, out: TextIO = sys.stdout) -> PullResult:
    """Pull ``ref`` with Docker's messages on ``out`` (``run`` sends them to stderr).

    ``implied_tag``: the user named no tag and ``latest`` was taken (Docker says so).
    """
    from ..images.fetcher import Fetcher

    # the fetcher asks the registry while this process opens the store; a pull it
    # refuses stores nothing
    fetcher = Fetcher.start(engine.config, engine.root, ref, platform=platform,
                            explicit_platform=explicit_platform,
                            max_downloads=engine.config.images["max_concurrent_downloads"])
    try:
        from ..images.pull import pull
        from ..images.store import ImageStore
        from .progress import pull_events

        if not quiet:
            if implied_tag:
                print("Using default tag: latest", file=out)
            print(f"{ref.tag or ref.digest}: Pulling from {ref.repository}", file=out,
                  flush=True)
        with engine.open_store() as store:
            fetcher.resolved()  # what the registry said, before any progress is drawn
            with pull_events(quiet=quiet, out=out) as events:
                result = pull(ImageStore(store), fetcher,
                              keep_blobs=engine.config.images["keep_blobs"], events=events)
    finally:
        fetcher.close()  # pull() ends it; this one, when the store could not be opened
    if quiet:
        return result
    print(f"Digest: {result.digest}", file=out)
    if result.new:
        print(f"Status: Downloaded newer image for {ref.familiar}", file=out)
    else:
        print(f"Status: Image is up to date for {ref.familiar}", file=out)
    print(result.name, file=out)
    return result


# -- images -------------------------------------------------------------------------------


def images_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repository", nargs="?", help="only images of this repository")
    p.add_argument("-a", "--all", action="store_true", help="accepted for Docker's habits")
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids")
    p.add_argument("--digests", action="store_true", help="show the manifest digests")
    p.add_argument("--no-trunc", action="store_true", help="full image ids")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="; ".join(f"{k}: {v}" for k, v in IMAGE_FILTERS.items()))


#: the column names of ``images --format 'table ...'``, by field
IMAGE_HEADERS = {"ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG",
                 "Digest": "DIGEST", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
                 "Size": "SIZE", "Containers": "CONTAINERS"}


def go_time(stamp: float) -> str:
    """A time as Go's ``time.Time`` prints itself, which Docker's ``CreatedAt`` is."""
    from datetime import datetime

    local = datetime.fromtimestamp(stamp).astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S %z ") + (local.tzname() or "")


#: ``images --filter`` keys, as Docker's
IMAGE_FILTERS = {
    "dangling": "true for untagged images, false for tagged ones",
    "reference": "a NAME[:TAG] pattern (* and ? within a path component)",
    "before": "images created before this one",
    "since": "images created after this one",
    "label": "KEY or KEY=VALUE of the image's labels",
}


def _filtered(rows: list[dict[str, Any]], given: list[str], images: ImageStore,
              engine: Engine) -> list[dict[str, Any]]:
    """The rows ``--filter`` keeps (module :mod:`.filters` for how filters combine)."""
    import re

    from ..build.globs import match_regex
    from .filters import InvalidFilter, parse_filters, truth

    filters = parse_filters(given, IMAGE_FILTERS)
    if "dangling" in filters:
        dangling = truth("dangling", filters["dangling"])
        rows = [r for r in rows if (r["Name"] is None) == dangling]
    if "reference" in filters:
        patterns = []
        for pattern in filters["reference"]:
            parts = [match_regex(part) for part in pattern.split("/")]
            if any(part is None for part in parts):
                raise InvalidFilter(f"invalid reference pattern {pattern!r}",
                                    hint="* and ? match within one path component")
            patterns.append(re.compile("/".join(p for p in parts if p is not None)))
        rows = [r for r in rows if r["Name"] is not None and any(
            p.fullmatch(f"{r['Repository']}:{r['Tag']}") or p.fullmatch(r["Repository"])
            for p in patterns)]
    for key, keep in (("before", lambda mine, theirs: mine < theirs),
                      ("since", lambda mine, theirs: mine > theirs)):
        for text in filters.get(key, []):
            image = images.image(find_image(images, text, engine))
            other = _created_at(image.config_created, image.created)
            rows = [r for r in rows if keep(_created_at(r["Created"], r["Stored"]), other)]
    for wanted in filters.get("label", []):
        name, eq, value = wanted.partition("=")
        labels = {}
        for image_id in {r["ID"] for r in rows}:
            config = images.config_json(image_id).get("config") or {}
            labels[image_id] = config.get("Labels") or {}
        rows = [r for r in rows if name in labels[r["ID"]]
                and (not eq or labels[r["ID"]][name] == value)]
    return rows


def _created_at(created: str | None, stored: float) -> float:
    """When an image was created: its config's time, or when it was stored without one."""
    stamp = timestamp(created)
    return stored if stamp is None else stamp


def _split_name(name: str) -> tuple[str, str]:
    """``docker.io/library/busybox:latest`` -> (``busybox``, ``latest``), familiar."""
    from ..images.reference import parse_reference

    ref = parse_reference(name)
    familiar = ref.familiar
    repo, _, tag = familiar.rpartition(":") if ref.tag else (familiar, "", "<none>")
    return repo, tag


def image_rows(images: ImageStore) -> list[dict[str, Any]]:
    rows = []
    all_digests = images.all_digests()
    for image in images.images():
        digests = all_digests.get(image.id, ())
        entries = [(*_split_name(n), n) for n in image.names] or [("<none>", "<none>", None)]
        for repo, tag, name in entries:
            digest = next((d for r, d in digests if name and name.startswith(r + ":")), None)
            rows.append({
                "ID": image.id, "Repository": repo, "Tag": tag, "Name": name,
                "Digest": digest or "<none>", "Created": image.config_created,
                "Stored": image.created, "Size": image.size, "Layers": image.layer_count,
            })
    return rows


def cmd_images(args: argparse.Namespace, engine: Engine) -> int:
    from ..images.store import ImageStore, short_id
    from .sizes import human_size

    with engine.open_store(readonly=True) as store:
        images = ImageStore(store)
        rows = image_rows(images)
        if args.filter:
            rows = _filtered(rows, args.filter, images, engine)
    if args.repository:
        wanted = _split_name(str(_reference(args.repository, engine)))[0]
        rows = [r for r in rows if r["Repository"] == wanted]
    if args.format == "json":
        print_json(rows, listing=True)
        return 0
    if args.format != "table" and not args.quiet:
        from .gotemplate import render_rows

        sys.stdout.write(render_rows(args.format, [
            {"ID": r["ID"] if args.no_trunc else short_id(r["ID"]),
             "Repository": r["Repository"], "Tag": r["Tag"], "Digest": r["Digest"],
             "CreatedSince": since(r["Created"]),
             "CreatedAt": go_time(_created_at(r["Created"], r["Stored"])),
             "Size": human_size(r["Size"]), "Containers": "N/A"}
            for r in rows], IMAGE_HEADERS))
        return 0
    if args.quiet:
        seen = []
        for r in rows:
            if r["ID"] not in seen:
                seen.append(r["ID"])
        print("\n".join(r if args.no_trunc else short_id(r) for r in seen))
        return 0
    columns = ["REPOSITORY", "TAG", *(["DIGEST"] if args.digests else []), "IMAGE ID",
               "CREATED", "SIZE"]
    table = [
        [r["Repository"], r["Tag"], *([r["Digest"]] if args.digests else []),
         r["ID"] if args.no_trunc else short_id(r["ID"]), since(r["Created"]),
         human_size(r["Size"])]
        for r in rows
    ]
    print_table(None, columns, table)
    return 0


def timestamp(created: str | float | None) -> float | None:
    """An RFC 3339 time (an image config's ``created``) or a timestamp, as a timestamp;
    None when there is none or it cannot be read."""
    if created is None or not isinstance(created, str):
        return created
    from datetime import datetime

    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00")[:32]).timestamp()
    except ValueError:
        return None


def since(created: str | float | None) -> str:
    """Docker's "2 weeks ago" from an RFC 3339 time or a timestamp."""
    stamp = timestamp(created)
    if stamp is None:
        return "N/A"
    seconds = time.time() - stamp
    for unit, length in (("year", 31536000), ("month", 2592000), ("week", 604800),
                         ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= 2 * length:
            return f"{int(seconds // length)} {unit}s ago"
        if seconds >= length:
            return f"About a{'n' if unit == 'hour' else ''} {unit} ago"
    if seconds < 1:
        return "Less than a second ago"
    return "1 second ago" if seconds < 2 else f"{int(seconds)} seconds ago"


# -- tag, rmi -----------------------------------------------------------------------------


def tag_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")


def cmd_tag(args: argparse.Namespace, engine: Engine) -> int:
    from ..images.store import ImageStore

    target = _reference(args.target, engine)
    if target.digest:
        from ..errors import InvalidReference

        raise InvalidReference(args.target, "a tag cannot name a digest",
                               hint="give NAME[:TAG] as the target")
    with engine.open_store() as store:
        images = ImageStore(store)
        images.tag(str(target), find_image(images, args.source, engine))
    return 0


def rmi_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-f", "--force", action="store_true",
                   help="remove an image with several names, or one a container uses")


def cmd_rmi(args: argparse.Namespace, engine: Engine) -> int:
    from ..errors import ImageInUse
    from ..images.store import ImageStore

    status = 0
    with engine.open_store() as store:
        images = ImageStore(store)
        for text in args.images:
            try:
                image_id = find_image(images, text, engine)
                image = images.image(image_id)
                by_name = _names_it(text, image.names, engine)
                if by_name is not None and len(image.names) > 1:
                    images.untag(by_name)  # one name of several: untag only, as Docker
                    print(f"Untagged: {_split_name(by_name)[0]}:{_split_name(by_name)[1]}")
                    continue
                if by_name is None and len(image.names) > 1 and not args.force:
                    raise ImageInUse(
                        f"image {image_id} is referenced in several repositories "
                        f"({', '.join(_familiar(n) for n in image.names)})",
                        hint="remove it by name, or force with -f",
                    )
                if not args.force:
                    images.check_unused(image_id)
                elif users := images.containers_using(image_id):
                    # forced: its names go, the image stays for its containers (Docker's
                    # dangling image, removed with the last of them by `image prune`)
                    if not image.names:
                        raise ImageInUse(
                            f"image {image_id} is used by container {users[0]} and has no "
                            "names: -f removes the names of an image in use, not the image",
                            hint="remove the container first (lamina rm), then the image")
                    for name in image.names:
                        images.untag(name)
                        print(f"Untagged: {_familiar(name)}")
                    continue
                for name in image.names:
                    print(f"Untagged: {_familiar(name)}")
                removed = images.remove(image_id)
                print(f"Deleted: {image_id}")
                for layer in removed:
                    print(f"Deleted: sha256:{layer}")
            except LaminaError as exc:
                report(exc)
                status = exc.exit_status
    return status


def image_prune_arguments(p: argparse.ArgumentParser) -> None:
    from .filters import PRUNE_FILTERS

    p.add_argument("-a", "--all", action="store_true",
                   help="remove every image no container uses, not only untagged ones")
    p.add_argument("-f", "--force", action="store_true", help="do not ask (lamina never asks)")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="; ".join(f"{k}: {v}" for k, v in PRUNE_FILTERS.items()))


def cmd_image_prune(args: argparse.Namespace, engine: Engine) -> int:
    """Docker's ``image prune``: untagged images (``-a``: all) that no container uses.

    Unlike ``prune``, which collects layers and blobs no image references, this
    removes images, as ``rmi`` would, with the layers only they use.
    """
    from .filters import PruneFilter
    from .sizes import human_size

    wanted = PruneFilter(args.filter)
    with engine.open_store() as store:
        deleted, reclaimed = prune_images(store, wanted, every=args.all)
    if deleted:
        print("Deleted Images:")
        print("\n".join(deleted))
        print()
    print(f"Total reclaimed space: {human_size(reclaimed)}")
    return 0


def prune_images(store: Store, wanted: PruneFilter, *, every: bool) -> tuple[list[str], int]:
    """Remove the untagged images (``every``: all) no container uses that ``wanted``
    admits (by the config's time and labels): Docker's lines (``untagged: ...``,
    ``deleted: ...``) and the bytes of the layers that went."""
    from ..errors import ImageInUse
    from ..images.store import ImageStore

    deleted: list[str] = []
    reclaimed = 0
    images = ImageStore(store)
    sizes = {layer.id: layer.size or 0 for layer in store.layers()}
    for image in images.images():
        if image.names and not every:
            continue
        if wanted.until is not None or wanted.labels or wanted.not_labels:
            config = images.config_json(image.id).get("config") or {}
            if not wanted.admits(_created_at(image.config_created, image.created),
                                 config.get("Labels") or {}):
                continue
        try:
            images.check_unused(image.id)
        except ImageInUse:
            continue
        deleted += [f"untagged: {_familiar(name)}" for name in image.names]
        removed = images.remove(image.id)
        deleted.append(f"deleted: {image.id}")
        deleted += [f"deleted: sha256:{layer}" for layer in removed]
        reclaimed += sum(sizes.get(layer, 0) for layer in removed)
    return deleted, reclaimed


def _familiar(name: str) -> str:
    repo, tag = _split_name(name)
    return f"{repo}:{tag}"


def _names_it(text: str, names: tuple[str, ...], engine: Engine) -> str | None:
    """The image's name ``text`` stands for, if it is a name (not an id)."""
    try:
        full = str(_reference(text, engine))
    except LaminaError:
        return None
    return full if full in names else None


# -- inspect, history ---------------------------------------------------------------------


def inspect_image(images: ImageStore, image_id: str) -> dict[str, Any]:
    """Docker's ``image inspect`` fields that lamina knows."""
    image = images.image(image_id)
    config = images.config_json(image_id)
    layers = images.layers(image_id)
    return {
        "Id": image.id,
        "RepoTags": [_familiar(n) for n in image.names],
        "RepoDigests": [f"{_split_name(r + ':x')[0]}@{d}" for r, d in images.digests(image_id)],
        "Created": config.get("created"),
        "Author": config.get("author", ""),
        "Architecture": config.get("architecture"),
        "Variant": config.get("variant"),
        "Os": config.get("os"),
        "Config": config.get("config") or {},
        "Size": image.size,
        "Manifest": {"Digest": image.manifest, "MediaType": image.manifest_type},
        "RootFS": {"Type": "layers", "Layers": [layer.diff_id for layer in layers]},
        "GraphDriver": {"Name": images.store.driver.name,
                        "Data": {"Layers": [layer.layer_id for layer in layers]}},
        "Metadata": {"Stored": image.created},
    }


def history_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--no-trunc", action="store_true", help="show whole commands")
    p.add_argument("-q", "--quiet", action="store_true", help="only the layer ids")


def cmd_history(args: argparse.Namespace, engine: Engine) -> int:
    from ..images.store import ImageStore, short_id
    from .sizes import human_size

    with engine.open_store(readonly=True) as store:
        images = ImageStore(store)
        image_id = find_image(images, args.image, engine)
        config = images.config(image_id)
        layers = images.layers(image_id)
        sizes = [store.layer(layer.layer_id).size or 0 for layer in layers]
    rows = []
    layer_index = len(layers) - 1
    history = list(config.history) or [{} for _ in layers]
    for n, entry in enumerate(reversed(history)):
        empty = bool(entry.get("empty_layer"))
        size = 0 if empty or layer_index < 0 else sizes[layer_index]
        ident = image_id if n == 0 else "<missing>"
        if not empty:
            layer_index -= 1
        rows.append({"ID": ident, "Created": entry.get("created"),
                     "CreatedBy": entry.get("created_by", ""), "Size": size,
                     "Comment": entry.get("comment", ""), "EmptyLayer": empty})
    if args.format == "json":
        print_json(rows, listing=True)
        return 0
    def ident(row: dict[str, Any]) -> str:
        return row["ID"] if args.no_trunc or row["ID"] == "<missing>" else short_id(row["ID"])

    if args.quiet:
        print("\n".join(ident(r) for r in rows))
        return 0
    if args.format != "table":
        from .gotemplate import render_rows

        sys.stdout.write(render_rows(args.format, [
            {"ID": ident(r), "CreatedSince": since(r["Created"]),
             "CreatedAt": go_time(_created_at(r["Created"], 0)),
             "CreatedBy": r["CreatedBy"] if args.no_trunc else _truncate(r["CreatedBy"], 45),
             "Size": human_size(r["Size"]), "Comment": r["Comment"]}
            for r in rows], HISTORY_HEADERS))
        return 0
    print_table(None, ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], [
        [ident(r), since(r["Created"]),
         r["CreatedBy"] if args.no_trunc else _truncate(r["CreatedBy"], 45),
         human_size(r["Size"]), r["Comment"]]
        for r in rows
    ])
    return 0


#: the column names of ``history --format 'table ...'``, by field
HISTORY_HEADERS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
                   "CreatedBy": "CREATED BY", "Size": "SIZE", "Comment": "COMMENT"}


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# -- space --------------------------------------------------------------------------------


def df_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true",
                   help="per image: size, shared size and unique size")


def cmd_df(args: argparse.Namespace, engine: Engine) -> int:
    from ..containers.store import ContainerStore
    from ..containers.volumes import VolumeStore
    from ..images.space import usage
    from ..images.store import ImageStore, short_id
    from .sizes import human_size

    with engine.open_store(readonly=True) as store:
        found = usage(ImageStore(store))
        volumes = VolumeStore(store)
        links: dict[str, int] = {}
        for c in ContainerStore(store).containers():
            for v in c.spec.volumes:
                if v.kind == "volume":
                    links[v.source] = links.get(v.source, 0) + 1
        # (name, containers using it, bytes)
        local = [(i.name, links.get(i.name, 0), volumes.size(i.name))
                 for i in volumes.volumes()]
        every = ContainerStore(store).containers()
        own = {cid: size for cid, (size, _) in ContainerStore(store).sizes(every).items()}
    if args.format == "json":
        print_json(found._asdict() | {
            "images": [u._asdict() for u in found.images],
            "volumes": [{"name": n, "links": k, "size": b} for n, k, b in local],
            "containers": [{"id": c.id, "name": c.name, "state": c.state, "size": own[c.id]}
                           for c in every]})
        return 0

    def part(size: int, whole: int) -> str:
        return f"{human_size(size)} ({round(100 * size / whole) if whole else 0}%)"

    active = sum(1 for u in found.images if u.containers)
    print_table(None, ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], [
        ["Images", len(found.images), active, human_size(found.image_layers_size),
         part(found.reclaimable_images_size, found.image_layers_size)],
        # the containers' writable layers are the Containers row's
        ["Other layers", found.other_layers - len(every), "",
         human_size(found.other_layers_size),
         part(found.reclaimable_layers_size, found.other_layers_size)],
        ["Layer blobs (kept)", found.layer_blobs, "", human_size(found.layer_blobs_size),
         part(found.layer_blobs_size, found.layer_blobs_size)],
        ["Other blobs", found.blobs - found.layer_blobs, "",
         human_size(found.blobs_size - found.layer_blobs_size),
         part(found.unreferenced_blobs_size, found.blobs_size - found.layer_blobs_size)],
        ["Containers", len(every), sum(1 for c in every if c.running),
         human_size(sum(own.values())),
         part(sum(own[c.id] for c in every if not c.running), sum(own.values()))],
        ["Local Volumes", len(local), sum(1 for _, k, _ in local if k),
         human_size(sum(b for _, _, b in local)),
         part(sum(b for _, k, b in local if not k), sum(b for _, _, b in local))],
    ])
    if args.verbose:
        print("\nImages space usage:\n")
        rows = []
        for u in found.images:
            for name in u.names or ("<none>:<none>",):
                repo, _, tag = (_familiar(name) if u.names else name).rpartition(":")
                rows.append([repo, tag, short_id(u.image_id), since(u.created),
                             human_size(u.size), human_size(u.shared), human_size(u.unique),
                             u.containers])
        print_table(None, ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE",
                           "UNIQUE SIZE", "CONTAINERS"], rows)
        print("\nContainers space usage:\n")
        print_table(None, ["CONTAINER ID", "IMAGE", "COMMAND", "LOCAL VOLUMES", "SIZE",
                           "CREATED", "STATUS", "NAMES"],
                    [[c.id[:12], c.spec.image_name, " ".join(c.spec.argv)[:20],
                      sum(1 for v in c.spec.volumes if v.kind == "volume"),
                      human_size(own[c.id]), since(c.created), c.state, c.name]
                     for c in every])
        print("\nLocal Volumes space usage:\n")
        print_table(None, ["VOLUME NAME", "LINKS", "SIZE"],
                    [[n, k, human_size(b)] for n, k, b in local])
    return 0


def prune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--blobs", action="store_true",
                   help="also remove the compressed layer blobs kept for pushing")


def cmd_prune(args: argparse.Namespace, engine: Engine) -> int:
    from ..build.cache import BuildCache
    from ..images.space import prune
    from ..images.store import ImageStore
    from .sizes import human_size

    with engine.open_store() as store:
        result = prune(ImageStore(store), layer_blobs=args.blobs)
        BuildCache(store).prune()  # the build cache's entries whose layers just went
    for layer in result.layers:
        print(f"Deleted layer: {layer}")
    for blob in result.blobs:
        print(f"Deleted blob: {blob}")
    print(f"Total reclaimed space: {human_size(result.reclaimed)}")
    return 0
