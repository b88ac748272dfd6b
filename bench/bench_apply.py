"""Benchmark: `lamina layer apply` of the Debian minbase layer tar vs `tar -xpf`.

Both extract the same uncompressed tar into an empty directory on the same
filesystem: by default a new ext4 made for each timed run (a loop image in
/dev/shm mounted at the workdir), so that every run meets the same fresh
inode allocator; ``--on-disk`` uses the workdir's own filesystem as earlier
runs left it (ext4 slows down after many deletions, see docs/performance.md).
`lamina layer apply` is the whole command as a user runs it (a fresh store
on the vfs driver: interpreter start, store, metadata, the layer's diff id,
every path resolved safely from directory fds). The in-process `apply_tar`
is timed too, for information. Target: the command at most 1.3x the time of
GNU tar (best of N each).

    .venv/bin/python bench/bench_apply.py [--runs 7] [--workdir DIR] [--on-disk] [--gzip]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from _common import (
    FIXTURES,
    Contender,
    FreshExt4,
    ensure_minbase,
    ensure_minbase_gz,
    fresh_first,
    precompile,
    race,
    report,
    tree_stats,
)

from lamina.conformance.trees import compare, snapshot
from lamina.core.host.fsinfo import filesystem_type
from lamina.core.host.treecopy import remove_tree
from lamina.core.layertar.apply import apply_tar
from lamina.core.layertar.compression import open_layer_stream

TARGET = 1.3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each (default 7)")
    parser.add_argument("--workdir", type=Path, default=FIXTURES / "bench-apply",
                        help="scratch directory, on the disk to measure")
    parser.add_argument("--on-disk", action="store_true",
                        help="run in the workdir on its own filesystem (the machine's disk, in "
                             "whatever state earlier runs left it) instead of on a new ext4 "
                             "(a loop image in /dev/shm) mounted at the workdir for each run")
    parser.add_argument("--gzip", action="store_true",
                        help="apply the gzip'ed tar (minbase.tar.gz, level 6) against "
                             "`tar -xzf` instead; the target is for the plain tar")
    parser.add_argument("--podman", action="store_true",
                        help="also time `podman import` of the tar (the engine users compare "
                             "with; for information: it also stores the blob)")
    args = parser.parse_args()
    _, tar = ensure_minbase()
    if args.gzip:
        tar = ensure_minbase_gz()
    precompile()
    remove_tree(args.workdir)
    args.workdir.mkdir(parents=True)
    ours, theirs = args.workdir / "lamina", args.workdir / "tar"
    result = None

    def lamina_apply(i: int) -> None:
        nonlocal result
        with open(tar, "rb") as blob:
            result = apply_tar(open_layer_stream(blob), ours / str(i))

    cli_root = args.workdir / "cli"
    command = [sys.executable, "-m", "lamina.core.cli", "--driver", "vfs"]
    lamina_cli = Contender(
        "lamina layer apply (vfs)",
        lambda i: subprocess.run([*command, "--root", str(cli_root / str(i)), "layer", "apply",
                                  str(tar)], check=True, stdout=subprocess.DEVNULL),
    )
    lamina = Contender("apply_tar (in process)", lamina_apply,
                       lambda i: (ours / str(i)).mkdir(parents=True))
    tar_flags = "-xzpf" if args.gzip else "-xpf"
    gnu = Contender(f"tar {tar_flags}",
                    lambda i: subprocess.run(["tar", tar_flags, str(tar), "-C",
                                              str(theirs / str(i))], check=True),
                    lambda i: (theirs / str(i)).mkdir(parents=True))
    contenders = [lamina_cli, gnu, lamina]
    fresh = None if args.on_disk else FreshExt4(args.workdir)
    if fresh is not None:
        for c in contenders:
            c.prepare = fresh_first(fresh, c.prepare)
    podman_dir = args.workdir / "podman"
    if args.podman:
        if shutil.which("podman") is None:
            sys.exit("--podman: podman is missing (apt-get install -y podman)")
        contenders.append(Contender(
            "podman import (overlay)",
            lambda i: subprocess.run(
                ["podman", "--root", str(podman_dir / str(i)), "--runroot",
                 str(podman_dir / f"run{i}"), "--storage-driver", "overlay", "import", "-q",
                 str(tar), f"bench:{i}"], check=True, stdout=subprocess.DEVNULL),
        ))
    try:
        race(contenders, args.runs)
        if fresh is not None:  # the timed trees went with their filesystems: make a pair
            fresh.remake()
            (theirs / "0").mkdir(parents=True)
            (ours / "0").mkdir(parents=True)
            subprocess.run(["tar", tar_flags, str(tar), "-C", str(theirs / "0")], check=True)
            lamina_apply(0)
        # same tree as tar made (xattrs aside: plain tar -xpf does not restore them)
        problems = [p for p in compare(snapshot(theirs / "0"), snapshot(ours / "0"))
                    if "xattrs" not in p]
        if problems:
            print("lamina's tree differs from tar's:", *problems[:20], sep="\n  ")
        entries, _ = tree_stats(ours / "0")
        ok = report(
            f"lamina layer apply of the Debian minbase layer tar{'.gz' if args.gzip else ''} "
            f"vs tar {tar_flags}",
            lamina_cli, gnu, TARGET,
            [("tar", f"{tar} ({tar.stat().st_size / 1e6:.0f} MB, {entries} entries)"),
             ("diff id", result.diff_id if result else "?"),
             ("filesystem", f"{filesystem_type(args.workdir)} ({args.workdir})"
              + (", a new one for each run" if fresh else ", the disk as it is (--on-disk)")),
             ("trees identical", "yes" if not problems else f"NO ({len(problems)} differences)"),
             ("cpus", str(os.cpu_count()))],
            others=tuple(contenders[2:]),
        )
    finally:
        for i in range(args.runs if args.podman else 0):  # podman's overlay mounts and state
            subprocess.run(["podman", "--root", str(podman_dir / str(i)), "--runroot",
                            str(podman_dir / f"run{i}"), "system", "reset", "-f"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if fresh is not None:
            fresh.close()
        remove_tree(args.workdir)
    return 0 if ok and not problems else 1



if __name__ == "__main__":
    sys.exit(main())
