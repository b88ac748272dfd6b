"""Benchmark: `lamina run --rm IMAGE true` vs `podman run --rm IMAGE true`, and a shell floor.

One busybox image, made here from busybox-static (``examples/busybox-rootfs.sh``),
goes into an empty store of each engine: ``lamina --driver overlay --root R import``
and ``podman import`` of the same tar (containers/storage overlay, runc). Then,
each command warmed up once and all of them interleaved (the order reversed every
other round), ``--runs`` times each:

- ``lamina --driver overlay --root R run --rm --network none IMAGE true`` against
  ``podman --root R --runroot RR --storage-driver overlay run --rm --network none
  --runtime runc IMAGE true``; target: lamina at most 0.6x podman;
- the same without ``--network``: lamina's default bridge (``lamina0``, a veth, an
  address, nftables NAT) against podman's default network (netavark's ``podman0``
  bridge and its iptables rules); target: at most 0.5x;
- the floor, from a shell: mount an overlay of the image's tree (a fresh upper
  directory each run), ``unshare --mount --pid --uts --ipc --net --fork chroot
  MERGED true``, unmount: the raw cost of the syscalls a container start needs;
- ``python -c pass``: the interpreter's own start, which every lamina command pays;
- the peak RSS of every lamina run (``wait4``'s ``ru_maxrss``: the largest of the
  ``lamina`` process and the children it waited for); target: under 60 MB.

Both engines run as a user runs them, interpreter or binary start included, with
stdout discarded. Ratios are best / best, as in the other benchmarks; medians and
their ratios are printed too. Exit 1 when a target is missed.

Nothing here touches the host's network or podman's state: the script re-executes
itself under ``unshare --net --mount`` (a new network namespace with only its
loopback up, and a private mount namespace), refuses to go on if its network
namespace is the host's, and mounts empty tmpfs over ``/dev/shm`` (podman's lock
segment), ``/var/lib/containers`` (its blob-info cache) and ``/run/netns`` inside
that mount namespace. podman gets its own ``containers.conf`` and ``storage.conf``
(``CONTAINERS_CONF``, ``CONTAINERS_STORAGE_CONF``: runc, no default ulimits, its
tmp_dir and network config in the scratch directory), so the host's
``/etc/containers`` is not read. Bridges, veths, nftables/iptables rules and
mounts all die with the namespaces.

    .venv/bin/python bench/bench_run.py [--runs 15] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _common import (
    FIXTURES,
    Contender,
    Podman,
    busybox_tar,
    cleanup,
    fresh_workdir,
    isolate,
    lamina_argv,
    precompile,
    race,
    run_measured,
    spread,
)

NONE_TARGET = 0.6
BRIDGE_TARGET = 0.5
MAX_RSS_MB = 60
IMAGE = "bench/busybox:1"
PODMAN_IMAGE = f"localhost/{IMAGE}"  # what `podman import` names it
FLOOR_SCRIPT = """\
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4" || exit 1
unshare --mount --pid --uts --ipc --net --fork chroot "$4" true
status=$?
umount "$4"
exit $status
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each (default 15)")
    parser.add_argument("--workdir", type=Path, default=FIXTURES / "bench-run",
                        help="scratch directory: both stores, the image tar, the floor's dirs")
    args = parser.parse_args()
    isolate(tools=("nft", "chroot"))
    precompile()
    fresh_workdir(args.workdir)
    podman = Podman(args.workdir)
    ok = False
    try:
        tar = busybox_tar(args.workdir / "busybox.tar")
        lamina = lamina_argv(args.workdir / "lamina")
        run_measured([*lamina, "import", str(tar), IMAGE])
        podman.run("import", "-q", str(tar), IMAGE)
        floor_dir = args.workdir / "floor"
        lower = floor_dir / "lower"
        lower.mkdir(parents=True)
        subprocess.run(["tar", "-xpf", str(tar), "-C", str(lower)], check=True)

        rss: dict[str, list[int]] = {"none": [], "bridge": []}

        def lamina_run(network: str) -> Contender:
            flags = ["--network", "none"] if network == "none" else []
            name = ("lamina run --rm --network none IMAGE true" if flags
                    else "lamina run --rm IMAGE true (bridge)")
            return Contender(name, lambda i: rss[network].append(
                run_measured([*lamina, "run", "--rm", *flags, IMAGE, "true"])))

        def podman_run(network: str) -> Contender:
            flags = ["--network", "none"] if network == "none" else []
            name = ("podman run --rm --network none IMAGE true" if flags
                    else "podman run --rm IMAGE true (netavark bridge)")
            return Contender(name, lambda i: podman.run(
                "run", "--rm", *flags, "--runtime", "runc", PODMAN_IMAGE, "true"))

        def floor_prepare(i: int) -> None:
            for part in ("upper", "work", "merged"):
                (floor_dir / str(i) / part).mkdir(parents=True)

        def floor_run(i: int) -> None:
            run = floor_dir / str(i)
            run_measured(["sh", "-c", FLOOR_SCRIPT, "floor", str(lower), str(run / "upper"),
                          str(run / "work"), str(run / "merged")])

        lamina_none, podman_none = lamina_run("none"), podman_run("none")
        lamina_bridge, podman_bridge = lamina_run("bridge"), podman_run("bridge")
        floor = Contender("floor: mount overlay, unshare, chroot true, umount", floor_run,
                          prepare=floor_prepare)
        python = Contender("python -c pass (interpreter start)",
                           lambda i: run_measured([sys.executable, "-c", "pass"]))
        contenders = [lamina_none, podman_none, lamina_bridge, podman_bridge, floor, python]
        for c in contenders:  # warm-up: page cache, podman's first-use refresh, the bridge
            c.prepare(-1)
            c.run(-1)
        for kind in rss:
            rss[kind].clear()
        load_before = os.getloadavg()
        race(contenders, args.runs)
        load_after = os.getloadavg()

        version = Podman.version()
        print(f"\nbusybox image ({tar.stat().st_size / 1e6:.1f} MB tar), {args.runs} runs each, "
              f"interleaved, after one warm-up each; {os.cpu_count()} cpus; load average "
              f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; {version}, runc, overlay; "
              f"stores under {args.workdir}")
        for c in contenders:
            print(f"  {c.name:<52} {spread(c)}")
            print(f"  {'':<52} runs " + " ".join(f"{t * 1e3:.0f}" for t in c.times))
        ok = True
        for label, mine, theirs, target in (
                ("--network none: lamina / podman", lamina_none, podman_none, NONE_TARGET),
                ("default network: lamina (bridge) / podman", lamina_bridge, podman_bridge,
                 BRIDGE_TARGET)):
            best, median = mine.best / theirs.best, mine.median / theirs.median
            good = best <= target
            ok &= good
            print(f"  {label:<52} {best:.2f}x best/best ({median:.2f}x median/median), "
                  f"target <= {target}x: {'OK' if good else 'MISSED'}")
        for mine in (lamina_none, lamina_bridge):
            print(f"  {mine.name + ' / floor':<52} {mine.best / floor.best:.1f}x best/best "
                  f"({mine.median / floor.median:.1f}x median); "
                  f"{(mine.median - python.median) * 1e3:.0f} ms above the interpreter's start "
                  "(medians)")
        for kind, values in rss.items():
            peak = max(values) / 1e6
            good = peak < MAX_RSS_MB
            ok &= good
            print(f"  peak RSS of lamina run ({kind}): {peak:.1f} MB (median "
                  f"{statistics.median(values) / 1e6:.1f}), target < {MAX_RSS_MB} MB: "
                  f"{'OK' if good else 'MISSED'}")
    finally:
        cleanup(args.workdir, podman.runroot)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
