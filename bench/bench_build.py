"""Benchmark: `lamina build` vs `podman build` of one six-step Dockerfile, cold and cached.

One busybox image, made here from busybox-static (``examples/busybox-rootfs.sh``),
goes into an empty store of each engine under the same name: ``lamina --driver
overlay --root R import`` and ``podman import`` of the same tar (containers/storage
overlay, runc). One build context, made once: a 100 KB file of random bytes and this
Dockerfile (:data:`DOCKERFILE`)::

    FROM localhost/bench/busybox:1
    ENV GREETING=hello
    WORKDIR /app
    COPY data /app/data
    RUN echo one > /app/one
    RUN sh -c 'cat /app/data > /dev/null && echo two > /app/two'
    CMD ["sh"]

Then, each command warmed up once and all four interleaved (the order reversed every
other round), ``--runs`` times each:

- cold: ``lamina --driver overlay --root R build --no-cache --network none -t bench:1
  CTX`` against ``podman --root R --runroot RR --storage-driver overlay build
  --no-cache --network none -t bench:1 CTX``; target: lamina at most 0.5x podman;
- fully cached: the same commands without ``--no-cache`` (every build before has
  filled the cache); target: at most 0.6x.

Both engines run as a user runs them, interpreter or binary start included, stdout
discarded. Ratios are best / best, as in the other benchmarks; medians and their
ratios are printed too. After timing (untimed), a cached build of each is checked to
have reused all three layer steps, and both images are run to check that they hold
the same files. Exit 1 when a target is missed.

As ``bench_run.py``: the script re-executes itself under ``unshare --net --mount``,
podman's host-wide state (``/dev/shm``, ``/var/lib/containers``, ``/run/netns``) is
behind empty tmpfs, and podman reads a ``containers.conf``/``storage.conf`` of the
script's (bench/_common.py, :class:`Podman`), so the host's network and podman state
stay as they were.

    .venv/bin/python bench/bench_build.py [--runs 9] [--workdir DIR]
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

COLD_TARGET = 0.5
CACHED_TARGET = 0.6
BASE = "localhost/bench/busybox:1"  # the name `podman import` gives bench/busybox:1
TAG = "bench:1"
DATA_SIZE = 100 * 1024
DOCKERFILE = f"""\
FROM {BASE}
ENV GREETING=hello
WORKDIR /app
COPY data /app/data
RUN echo one > /app/one
RUN sh -c 'cat /app/data > /dev/null && echo two > /app/two'
CMD ["sh"]
"""
#: what the built image is checked with, run by each engine
CHECK = "md5sum /app/data; cat /app/one /app/two; echo $GREETING; pwd"


def make_context(ctx: Path) -> None:
    ctx.mkdir()
    (ctx / "data").write_bytes(os.urandom(DATA_SIZE))
    (ctx / "Dockerfile").write_text(DOCKERFILE)


def output(argv: list[str], env: dict[str, str] | None = None) -> str:
    """``argv``'s stdout (untimed checks); exit on failure."""
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs of each (default 9)")
    parser.add_argument("--workdir", type=Path, default=FIXTURES / "bench-build",
                        help="scratch directory: both stores, the image tar, the context")
    args = parser.parse_args()
    isolate()
    precompile()
    fresh_workdir(args.workdir)
    podman = Podman(args.workdir)
    ok = False
    try:
        tmp = args.workdir / "tmp"
        tmp.mkdir()
        podman.env["TMPDIR"] = str(tmp)  # buildah's scratch files, not the host's /var/tmp
        tar = busybox_tar(args.workdir / "busybox.tar")
        lamina = lamina_argv(args.workdir / "lamina")
        run_measured([*lamina, "import", str(tar), BASE])
        podman.run("import", "-q", str(tar), BASE)
        ctx = args.workdir / "context"
        make_context(ctx)

        rss: list[int] = []
        cold = ["build", "--no-cache", "--network", "none", "-t", TAG, str(ctx)]
        build = ["build", "--network", "none", "-t", TAG, str(ctx)]
        lamina_cold = Contender("lamina build --no-cache", lambda i: rss.append(
            run_measured([*lamina, *cold])))
        podman_cold = Contender("podman build --no-cache", lambda i: podman.run(*cold))
        lamina_cached = Contender("lamina build (cached)", lambda i: rss.append(
            run_measured([*lamina, *build])))
        podman_cached = Contender("podman build (cached)", lambda i: podman.run(*build))
        contenders = [lamina_cold, podman_cold, lamina_cached, podman_cached]
        for c in contenders:  # warm-up: page cache, podman's first-use refresh, the caches
            c.run(-1)
        rss.clear()
        load_before = os.getloadavg()
        race(contenders, args.runs)
        load_after = os.getloadavg()

        # untimed checks: a cached build reuses every layer step; both images alike
        said = output([*lamina, *build])
        if said.count("--> CACHED") != 3:
            sys.exit(f"lamina's cached build did not reuse the 3 layer steps:\n{said}")
        said = output([*podman.argv, *build], env=podman.env)
        if said.count("Using cache") < 3:
            sys.exit(f"podman's cached build did not reuse the 3 layer steps:\n{said}")
        mine = output([*lamina, "run", "--rm", "--network", "none", TAG, "sh", "-c", CHECK])
        theirs = output([*podman.argv, "run", "--rm", "--network", "none", "--runtime", "runc",
                         f"localhost/{TAG}", "sh", "-c", CHECK], env=podman.env)
        if mine != theirs:
            sys.exit(f"the images differ:\nlamina:\n{mine}\npodman:\n{theirs}")

        print(f"\nsix-step Dockerfile on a busybox image ({tar.stat().st_size / 1e6:.1f} MB "
              f"tar), COPY of {DATA_SIZE // 1024} KB, {args.runs} runs each, interleaved, "
              f"after one warm-up each; {os.cpu_count()} cpus; load average "
              f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; {Podman.version()}, "
              f"runc, overlay; stores under {args.workdir}")
        for c in contenders:
            print(f"  {c.name:<28} {spread(c)}")
            print(f"  {'':<28} runs " + " ".join(f"{t * 1e3:.0f}" for t in c.times))
        ok = True
        for label, mine_c, theirs_c, target in (
                ("cold (--no-cache): lamina / podman", lamina_cold, podman_cold, COLD_TARGET),
                ("cached: lamina / podman", lamina_cached, podman_cached, CACHED_TARGET)):
            best, median = mine_c.best / theirs_c.best, mine_c.median / theirs_c.median
            good = best <= target
            ok &= good
            print(f"  {label:<36} {best:.2f}x best/best ({median:.2f}x median/median), "
                  f"target <= {target}x: {'OK' if good else 'MISSED'}")
        print(f"  peak RSS of lamina build: {max(rss) / 1e6:.1f} MB "
              f"(median {statistics.median(rss) / 1e6:.1f}), for information")
        print(f"  built images run alike: {mine.strip().splitlines()[0]}")
    finally:
        cleanup(args.workdir, podman.runroot)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
