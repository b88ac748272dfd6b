"""Many `lamina` commands at once on one overlay store: none fails because another runs.

Every command checks that overlay works (a test mount) and opens the store (crash
recovery, which detaches mounts nobody recorded). Here 20 workers each run 20
mount/unmount loops of the real CLI, some on a layer of their own, some on layers
they share, and afterwards the store's mount counts must match the kernel's mount
table.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import needs_root, run_lamina

from lamina.core.host import mounts
from lamina.core.layers.store import Store
from lamina.core.plugins.discovery import load_plugins
from lamina.core.plugins.hookspec import hookimpl
from lamina.drivers.overlay import OverlayDriver, mountapi, support

pytestmark = [needs_root, pytest.mark.slow]

WORKERS = 20
LOOPS = 20


def lamina(root: Path, *args: str) -> tuple[int, str, str]:
    proc = run_lamina(*args, root=root, env={"LAMINA_DRIVER": "overlay"}, check=False,
                      timeout=120)
    return proc.returncode, proc.stdout.decode().strip(), proc.stderr.decode().strip()


def counts(root: Path) -> dict[str, int]:
    code, out, err = lamina(root, "layer", "ls", "--format", "json")
    assert code == 0, err
    return {row["id"]: row["mounts"] for row in json.loads(out)}


def kernel_mounts(root: Path) -> set[str]:
    return set(mounts.mounts_under(root))


def test_parallel_mount_loops_never_fail_and_counts_match_the_kernel(store_root: Path) -> None:
    if reason := OverlayDriver.check_support(store_root.parent):
        pytest.skip(reason)
    # layers of every mount kind: a read-only bind of a base, overlays with and without
    # an upper; ten workers have a layer of their own, ten share three
    assert lamina(store_root, "layer", "create", "--id", "base")[0] == 0
    plan: list[str] = []
    for i in range(10):
        rw = ["--rw"] if i % 2 else []
        code, _, err = lamina(store_root, "layer", "create", "--parent", "base",
                              "--id", f"own{i}", *rw)
        assert code == 0, err
        plan.append(f"own{i}")
    assert lamina(store_root, "layer", "create", "--parent", "base", "--id", "shared-ro")[0] == 0
    assert lamina(store_root, "layer", "create", "--parent", "base", "--rw",
                  "--id", "shared-rw")[0] == 0
    plan += ["shared-ro"] * 4 + ["shared-rw"] * 3 + ["base"] * 3
    assert len(plan) == WORKERS

    def worker(layer: str) -> list[str]:
        failures = []
        for _ in range(LOOPS):
            for command in ("mount", "unmount"):
                code, out, err = lamina(store_root, "layer", command, layer)
                if code != 0:
                    failures.append(f"layer {command} {layer}: {err}")
                elif command == "mount" and not os.path.isdir(out):
                    failures.append(f"layer mount {layer} printed {out!r}")
        # one mount kept, so that counts above zero are compared with the kernel too
        code, out, err = lamina(store_root, "layer", "mount", layer)
        if code != 0:
            failures.append(f"last layer mount {layer}: {err}")
        return failures

    with ThreadPoolExecutor(WORKERS) as pool:
        failures = [f for result in pool.map(worker, plan) for f in result]
    assert failures == [], f"{len(failures)} failed commands:\n" + "\n".join(failures)

    expected = {layer: plan.count(layer) for layer in set(plan)}
    found = counts(store_root)
    assert {k: v for k, v in found.items() if v} == expected
    home = store_root / "overlay"
    assert kernel_mounts(store_root) == {str(home / layer / "merged") for layer in expected}

    for layer in plan:
        code, _, err = lamina(store_root, "layer", "unmount", layer)
        assert code == 0, err
    assert set(counts(store_root).values()) == {0}
    assert kernel_mounts(store_root) == set()
    # the support checks left nothing behind but the record of the one that passed
    assert not [p for p in os.listdir(store_root)
                if p.startswith(".overlay") and p != support.PROBE_RECORD]
    assert not [p for p in os.listdir(home) if p.startswith(".overlay")]


# --- the support and feature probes against another process's recovery -----------------------

_RECOVERING = """
import sys, time
from pathlib import Path
from lamina.core.layers.store import Store
from lamina.drivers.overlay import OverlayDriver
root, stop = Path(sys.argv[1]), Path(sys.argv[2])
actions = []
while True:  # at least once, then until told to stop
    with Store(root, OverlayDriver(root / "overlay")) as store:
        actions += store.recover()
    if stop.exists():
        break
print("\\n".join(actions))
"""


def _support(root: Path) -> object:
    return support.probe_mount(root)  # the test mount itself, never the remembered answer


def _features(legacy: bool) -> Callable[[Path], object]:
    def probe(root: Path) -> object:
        options = mountapi.parse_mountopt("metacopy=on")
        return support.probe_features(root / "overlay", options, legacy).as_dict()
    return probe


@pytest.mark.parametrize(
    "probe", [_support, _features(False), _features(True)], ids=["support", "features",
                                                              "features-legacy"])
def test_probes_survive_recovery_in_another_process(
    store_root: Path, probe: Callable[[Path], object]
) -> None:
    """A probe's test mount is nobody's stray: another process's recovery never sees it."""
    if reason := OverlayDriver.check_support(store_root.parent):
        pytest.skip(reason)
    (store_root / "overlay").mkdir(parents=True)
    expected = probe(store_root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    stop = store_root.parent / "stop-recovering"
    recovering = subprocess.Popen([sys.executable, "-c", _RECOVERING, str(store_root), str(stop)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env)
    results = []
    started = time.monotonic()
    # however slow the machine: a few seconds and several probes, all while it recovers
    while len(results) < 5 or time.monotonic() - started < 3:
        if recovering.poll() is not None:
            pytest.fail(f"the recovering process ended early: {recovering.communicate()[1]}")
        try:
            results.append(probe(store_root))
        except Exception as exc:  # a failed probe is what this test looks for
            results.append(f"{type(exc).__name__}: {exc}")
    stop.touch()
    out, err = recovering.communicate(timeout=120)
    assert recovering.returncode == 0, err
    actions = out.split("\n")
    wrong = [r for r in results if r != expected]
    assert wrong == [], f"{len(wrong)} of {len(results)} probes went wrong: {wrong[:3]}"
    assert [a for a in actions if a] == []
    assert mounts.mounts_under(store_root) == []


# --- a new mount and another process's recovery ------------------------------------------------


class LockWitness:
    """Looks, the moment a layer is mounted and not yet recorded, whether the store lock is held."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.held: list[bool] = []

    @hookimpl
    def lamina_layer_mounted(self, driver, layer_id, path, seconds) -> None:
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held.append(False)
        except BlockingIOError:
            self.held.append(True)
        finally:
            os.close(fd)


def test_a_mount_not_yet_recorded_is_out_of_recoverys_reach(store_root: Path) -> None:
    """Mounting and recording happen under the lock that recovery takes: never a stray."""
    if reason := OverlayDriver.check_support(store_root.parent):
        pytest.skip(reason)
    witness = LockWitness(store_root)
    home = store_root / "overlay"
    home.mkdir(parents=True)
    hooks = load_plugins(extra_plugins=(witness,)).hook
    with Store(store_root, OverlayDriver(home), hooks=hooks) as store:
        store.create_layer(layer_id="base")
        store.create_layer("base", layer_id="child")
        path = store.mount("child", holder=store.process_holder)
        assert witness.held == [True]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
        once = store_root.parent / "recover-once"
        once.touch()
        other = subprocess.run([sys.executable, "-c", _RECOVERING, str(store_root), str(once)],
                               capture_output=True, text=True, env=env, check=True, timeout=60)
        assert other.stdout.strip() == ""
        assert mounts.is_mountpoint(path)
        store.unmount("child", holder=store.process_holder)


def test_commands_racing_to_make_a_new_store_all_succeed(tmp_path: Path) -> None:
    """Several first commands on one new root at once: each waits for the others' setup.

    The switch of a new database to WAL mode is refused ("database is locked") rather
    than waited for while another process holds the file; every command must wait.
    """
    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    for attempt in range(3):
        shared = root / str(attempt)
        procs = [subprocess.Popen([sys.executable, "-m", "lamina.core.cli", "--root", str(shared),
                                   "--driver", "vfs", "layer", "create"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(8)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
