"""Benchmark: overlay mount time for stacks of 1, 10, 100 and 500 layers.

Two kinds of stack, both timed as the store's query of the layer's parents
plus the driver's ``mount`` given them (what the store does for a layer's
first user; the unmount of the previous mount is untimed), every stack
interleaved with the others:

* read-only: an image's N layers mounted read-only, the top layer's ``diff/``
  and its N-1 parents as lowers. One layer needs no overlay (the kernel wants
  two lowers without an upper): it is a read-only bind mount of its
  ``diff/``. The 2-layer stack is the smallest read-only overlay.
* writable: a container's root, N image layers plus its writable layer: an
  overlay of N lowers and the writable layer's ``diff/`` as upper. The
  driver's 500 counts the writable layer too, so the deepest is 499 + 1.

Target: the 500-layer mount within 10x the 1-layer mount, for each kind
(read-only: 500 vs the bind mount; writable: 499 + 1 vs 1 + 1). Exits 1 when
either is missed. ``--compare OPTS`` (repeatable) adds the smallest and the
deepest overlay of each kind mounted with the overlay options OPTS added,
interleaved with the rest: what an option costs or saves, for information.

    .venv/bin/python bench/bench_overlay_mount.py [--runs 30] [--workdir DIR]
        [--compare xino=off --compare uuid=off ...]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
from pathlib import Path

from _common import FIXTURES, Contender, race

from lamina.core.host.fsinfo import filesystem_type
from lamina.core.host.treecopy import remove_tree
from lamina.core.layers.store import Store
from lamina.drivers.overlay import OverlayDriver

#: read-only stacks: N image layers
READONLY = (1, 2, 10, 100, 500)
#: writable stacks: N image layers under the writable layer
WRITABLE = (1, 10, 100, 499)
TARGET = 10.0


def base_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(20):
            data = b"x" * 100
            info = tarfile.TarInfo(f"f{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--workdir", type=Path, default=FIXTURES / "bench-overlay-mount")
    parser.add_argument("--compare", action="append", default=[], metavar="OPTS",
                        help="also mount with these overlay options (mountopt), e.g. xino=off")
    args = parser.parse_args()
    remove_tree(args.workdir)
    (args.workdir / "overlay").mkdir(parents=True)
    driver = OverlayDriver(args.workdir / "overlay")
    # more drivers on the same layers, each adding its options to every mount
    others = {opts: OverlayDriver(args.workdir / "overlay", {"mountopt": opts})
              for opts in args.compare}
    store = Store(args.workdir, driver)
    ok = True
    try:
        # one chain of read-only layers; chain[n - 1] is the top of an n-layer image
        chain = [store.apply_layer(io.BytesIO(base_tar())).id]
        while len(chain) < max(READONLY):
            chain.append(store.create_layer(chain[-1]).id)
        stacks: dict[str, tuple[str, bool]] = {}
        for n in READONLY:
            stacks[f"read-only {n}"] = (chain[n - 1], True)
        for n in WRITABLE:
            stacks[f"writable {n}+1"] = (store.create_layer(chain[n - 1], writable=True).id, False)
        mounted: list[tuple[OverlayDriver, str]] = []

        def unmount_previous(_: int) -> None:
            while mounted:
                by, layer = mounted.pop()
                by.unmount(layer)

        def mount(by: OverlayDriver, layer: str, readonly: bool) -> None:
            path = by.mount(layer, store.parents(layer), readonly=readonly)
            mounted.append((by, layer))
            assert path.name == "merged", path

        def contender(name: str, by: OverlayDriver, layer: str, readonly: bool) -> Contender:
            return Contender(name, lambda i: mount(by, layer, readonly), unmount_previous)

        contenders = {name: contender(name, driver, layer, readonly)
                      for name, (layer, readonly) in stacks.items()}
        for opts, other in others.items():
            for name in ("read-only 2", "read-only 500", "writable 1+1", "writable 499+1"):
                label = f"{name} [{opts}]"
                contenders[label] = contender(label, other, *stacks[name])
        race(list(contenders.values()), args.runs)
        unmount_previous(0)

        print(f"overlay mount time, {args.runs} interleaved runs each, on "
              f"{filesystem_type(args.workdir)} ({args.workdir}), kernel {os.uname().release}")
        print(f"  {'stack':<30} {'best ms':>8} {'median ms':>10}")
        for name, c in contenders.items():
            how = " (bind mount)" if name == "read-only 1" else ""
            print(f"  {name + how:<30} {ms(c.best):>8} {ms(c.median):>10}")
        for deep, small, counted in (
            ("read-only 500", "read-only 1", True),
            ("writable 499+1", "writable 1+1", True),
            ("read-only 500", "read-only 2", False),
        ):
            best = contenders[deep].best / contenders[small].best
            median = contenders[deep].median / contenders[small].median
            if counted:
                verdict = f"(target <= {TARGET}x): {'OK' if best <= TARGET else 'MISSED'}"
                ok = ok and best <= TARGET
            else:
                verdict = "(for information)"
            print(f"  {deep} vs {small}: best {best:.1f}x, median {median:.1f}x {verdict}")
    finally:
        for layer in reversed(store.layers()):
            store.remove_layer(layer.id)
        store.close()
        remove_tree(args.workdir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
