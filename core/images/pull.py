"""``lamina pull``: an image from a registry into the store, downloading and applying at once.

The pipeline (docs/architecture.md, "Pulling"); steps 1 and 2 are the network's, in
the pull's fetcher process (:mod:`.fetcher`), started before the caller opens the store:

1. the manifest (an index picks the platform's), then the config blob; every check on
   them (size caps, media types, the config's diff ids against the layers) runs
   before any layer is stored. The first layer's blob is asked for meanwhile;
2. the missing layers' blobs download in parallel threads, started in layer order,
   each into a :class:`~.spool.Spool` file (resumed from a dead pull's part with a
   Range request);
3. the main thread applies the layers base first, each reading its spool as it
   grows: the first layer is decompressed and applied while it downloads, and
   the others have downloaded meanwhile. A layer becomes ready only once its
   blob's digest and size and its DiffID check out (:mod:`.unpack`);
4. the image is registered in one transaction once every layer is ready.

Drivers whose layers can be applied before their parent is complete could apply
in parallel too; none of the built-in drivers can (each reads the layers below
while applying: overlay's copy-up rules, vfs and btrfs start from a copy of the
parent), so layers are applied in order.

Interrupted anywhere (error, Ctrl-C, SIGKILL), nothing is registered; layers
already applied are complete and shared, the next pull skips them; a blob whose
layer is not applied yet stays as a part file, downloaded in part or in full, for
the next pull to resume or only to hash again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from ..errors import NoSpace
from .events import NoEvents, PullEvents
from .formats import chain_ids, layer_id
from .store import ImageLayer, ImageStore, short_id
from .unpack import ensure_layer, layer_ready

if TYPE_CHECKING:
    from .fetcher import Fetcher
    from .resolve import Resolved


class PullResult(NamedTuple):
    image_id: str
    name: str  # the reference pulled, in full
    digest: str  # of the manifest (or index) the reference named
    new: bool  # whether anything was stored (False: the image was up to date)


def pull(
    images: ImageStore,
    fetcher: Fetcher,
    *,
    keep_blobs: bool = True,
    events: PullEvents | None = None,
) -> PullResult:
    """Store the image ``fetcher`` resolved; see the module docstring for the steps.

    Raises what the registry said about the image; ends the fetcher either way.
    """
    from .space import images_lock

    try:
        resolved = fetcher.resolved()
        with images_lock(images.store):
            return _pull(images, fetcher, resolved, keep_blobs=keep_blobs,
                         events=events or NoEvents())
    finally:
        fetcher.close()


def _pull(
    images: ImageStore,
    fetcher: Fetcher,
    resolved: Resolved,
    *,
    keep_blobs: bool,
    events: PullEvents,
) -> PullResult:
    ref, manifest, config = resolved.ref, resolved.manifest, resolved.config
    manifest_digest, top_digest = resolved.manifest_digest, resolved.top_digest
    name = str(ref)
    image_id = manifest.config.digest
    chains = [layer_id(c) for c in chain_ids(config.diff_ids)]
    layers = [
        ImageLayer(chains[n], config.diff_ids[n], d.digest, d.media_type, d.size)
        for n, d in enumerate(manifest.layers)
    ]
    repository = f"{ref.registry}/{ref.repository}"
    names = [name] if ref.tag else []
    up_to_date = images.exists(image_id) and all(layer_ready(images.store, c) for c in chains)
    if up_to_date:
        # new when the name did not name this image yet (Docker's "Downloaded newer image")
        renamed = bool(names) and images.by_name(name) != image_id
        if images.by_digest(repository, top_digest) != image_id:
            # another manifest of layers stored already; the same one: no layer lines (Docker)
            for descriptor in manifest.layers:
                events.layer(short_id(descriptor.digest), "Already exists")
        resolved.store_documents(images.blobs)
        images.register(image_id, config, layers, manifest=manifest_digest,
                        manifest_type=manifest.media_type, names=names,
                        digests=[(repository, top_digest)])
        return PullResult(image_id, name, top_digest, new=renamed)

    missing = [n for n, c in enumerate(chains) if not layer_ready(images.store, c)]
    for n, descriptor in enumerate(manifest.layers):
        if n not in missing:
            events.layer(short_id(descriptor.digest), "Already exists")
    _import_tar_path()
    spools = fetcher.fetch(missing, events)
    stored: set[str] = set()  # the blobs whose layers are in the store now
    full = False
    try:
        for n in missing:
            spool = spools[n]
            short = short_id(manifest.layers[n].digest)
            applied = ensure_layer(
                images.store, chains[n], chains[n - 1] if n else None, config.diff_ids[n],
                spool.reader, check=spool.wait,
                what=f"{ref.familiar}: layer {n} ({manifest.layers[n].digest})",
            )
            if applied:
                events.layer(short, "Pull complete")
            else:
                spool.cancel()
                events.layer(short, "Already exists")
            stored.add(spool.digest)
    except NoSpace:
        full = True  # a part file would hold on to the space the user must free
        raise
    finally:
        # a failed pull keeps its stored layers' blobs too (the next pull registers
        # them) and leaves the others' files, complete or not, for the next pull
        fetcher.finish(images.blobs, stored=stored, keep=keep_blobs, resumable=not full)
    resolved.store_documents(images.blobs)
    images.register(image_id, config, layers, manifest=manifest_digest,
                    manifest_type=manifest.media_type, names=names,
                    digests=[(repository, top_digest)])
    return PullResult(image_id, name, top_digest, new=True)


def _import_tar_path() -> None:
    """Import what applying a layer needs before the fetcher's reports come in.

    With downloads in threads beside it, an import waited for the GIL between their
    chunks: the first layer's apply started up to 50 ms later with six of them
    (measured); the thread that takes the fetcher's reports takes the GIL too.
    """
    from ..layertar import apply, compression  # noqa: F401

    compression.inflater()
