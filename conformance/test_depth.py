"""Cases 32-33: deep parent chains, each layer applied from a tiny tar."""

from __future__ import annotations

import random

import pytest

from lamina.conformance.requirements import require_depth
from lamina.conformance.scenarios import (
    NS,
    T0,
    Step,
    apply_tar_layer,
    chmod,
    directory,
    file,
    init_reference,
    mounted,
    remove,
    run_scenario,
    step,
    step_time,
)


@pytest.mark.parametrize("depth", [128, 500])
def test_32_base_file_through_deep_chain(store, reference_dir, capabilities, assert_tree,
                                         depth) -> None:
    """A base-layer file reads right through ``depth`` layers (the chain counts the top)."""
    require_depth(capabilities, depth)
    init_reference(reference_dir, capabilities.root_mode)
    base = step(file("base-file", b"from the bottom layer\n" * 100, mode=0o640, uid=1),
                directory("layers"), name="base")
    base.apply(reference_dir)
    parent = apply_tar_layer(store, base.layer_tar(reference_dir), None)
    for index in range(1, depth):
        # the tree stays small: a copying driver pays for its size once per layer
        one = step(file("layers/current", b"%d" % index, mtime=T0 + index * NS),
                   remove(f"layers/{index - 1}") if index > 1 else file("layers/0", b""),
                   file(f"layers/{index}", b"%d" % index), parent_mtime=step_time(index))
        one.apply(reference_dir)
        parent = apply_tar_layer(store, one.layer_tar(reference_dir), parent)
    assert len(store.chain(parent)) == depth
    with mounted(store, parent) as path:
        assert (path / "base-file").read_bytes() == b"from the bottom layer\n" * 100
        assert_tree(reference_dir, path, f"top of a {depth}-layer chain")


def _random_steps(count: int, seed: int) -> list[Step]:
    """Small steps of every kind (add, modify, delete, chmod, new and removed dirs)."""
    rng = random.Random(seed)
    files: list[str] = []
    dirs: list[str] = [""]
    steps = []
    for index in range(count):
        ops = []
        old_files = list(files)  # a step deletes or changes only what earlier steps made
        for _ in range(rng.randint(1, 3)):
            action = rng.choice(["add", "add", "modify", "delete", "chmod", "mkdir", "rmdir"])
            if action in ("delete", "rmdir") and ops:
                continue  # a deletion is a step of its own: nothing else names its paths
            if action == "add" or (not old_files and action in ("modify", "delete", "chmod")):
                where = rng.choice(dirs)
                path = f"{where}/f{index}-{len(ops)}" if where else f"f{index}-{len(ops)}"
                ops.append(file(path, rng.randbytes(rng.randint(0, 300)),
                                mode=rng.choice([0o644, 0o600, 0o755]),
                                mtime=T0 + rng.randint(0, 10**6) * 1000))
                files.append(path)
            elif action == "modify":
                path = rng.choice(old_files)
                ops.append(file(path, rng.randbytes(rng.randint(1, 300)),
                                mtime=step_time(index) + len(ops)))
            elif action == "delete":
                path = old_files.pop(rng.randrange(len(old_files)))
                files.remove(path)
                ops.append(remove(path))
            elif action == "chmod":
                ops.append(chmod(rng.choice(old_files), rng.choice([0o640, 0o700, 0o4755])))
            elif action == "mkdir":
                where = rng.choice(dirs)
                path = f"{where}/d{index}" if where else f"d{index}"
                ops.append(directory(path, mode=rng.choice([0o755, 0o750, 0o1777])))
                dirs.append(path)
            elif action == "rmdir" and len(dirs) > 1:
                path = dirs.pop(rng.randrange(1, len(dirs)))
                ops.append(remove(path))
                dirs = [d for d in dirs if not d.startswith(path + "/")]
                files = [f for f in files if not f.startswith(path + "/")]
            if action in ("delete", "rmdir"):
                break
        steps.append(step(*ops, parent_mtime=step_time(index), name=f"layer {index + 1}"))
    return steps


def test_33_chain_against_flat_tree(store, reference_dir, capabilities, assert_tree) -> None:
    """128 chained layers, each from a tiny tar, equal the flat tree after every step."""
    require_depth(capabilities, 128)
    init_reference(reference_dir, capabilities.root_mode)
    steps = [step(directory("seed"), file("seed/f", b"seed"), name="layer 0")]
    steps += _random_steps(127, seed=33)
    ids = run_scenario(store, steps, reference_dir, assert_tree, fill="tar")
    assert len(store.chain(ids[-1])) == 128
