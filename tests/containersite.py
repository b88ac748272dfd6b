"""A store with the busybox image for tests of container commands that are the same on
every driver (those that differ run on each, in test_containers.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

from conftest import LAMINA, run_lamina

IMAGE = "bb:1"


class Site:
    """The real CLI on one store."""

    def __init__(self, root: Path, prefix: tuple[str, ...] = ()) -> None:
        self.root = root
        #: a command run before lamina's (nsenter into a test's network namespace)
        self.prefix = prefix

    def __call__(self, *args: str, check: bool = True,
                 input: bytes | None = None) -> subprocess.CompletedProcess:
        if not self.prefix:
            return run_lamina(*args, root=self.root, check=check, input=input, timeout=60)
        proc = subprocess.run([*self.prefix, *self.cmd(*args)], capture_output=True,
                              input=input, timeout=60)
        assert not check or proc.returncode == 0, proc.stderr.decode()
        return proc

    def out(self, *args: str) -> str:
        return self(*args).stdout.decode()

    def cmd(self, *args: str) -> list[str]:
        return [*LAMINA, "--root", str(self.root), *args]


def busybox_site(root: Path, busybox_tar: Path) -> Iterator[Site]:
    """A store at ``root`` with the busybox image as :data:`IMAGE`; its containers
    removed afterwards."""
    site = Site(root)
    site("import", "-c", 'CMD ["sh"]', str(busybox_tar), IMAGE)
    yield site
    site("rm", "-f", *site.out("ps", "-a", "-q").split(), check=False)
