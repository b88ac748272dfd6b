"""Every CLI command in every broken environment: no traceback ever reaches a user.

Each environment is made once (a full disk, a damaged database, an unreadable
config file, an output path nobody can write, a driver home deleted behind the
store's back). Every command the real parser knows runs in it and must either
work (where it legitimately can) or fail with exactly one ``lamina: error:``
line and one ``hint:`` line, exit status 1 (2 for configuration errors), and
leave the store as it was: nothing lost, no new debris. After all commands,
the environment is repaired and every layer that existed must still mount.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sqlite3
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import LAMINA, needs_root

from lamina.core.cli import build_parser

pytestmark = needs_root

#: one run of each command: its arguments, {name} filled from the environment.
#: Order matters: mount before unmount, rm last.
#: in the order they run in each environment: `system repair` last but the two that
#: always fail, as it undoes the damage the commands after it would meet
COMMANDS: dict[str, list[str]] = {
    "info": ["info"],
    "drivers": ["drivers"],
    # the suite itself runs on its own temporary directory and takes minutes: the
    # cheapest run that still loads the configuration and the plugins
    "conformance": ["conformance", "--size-mb", "1"],
    "layer ls": ["layer", "ls"],
    "layer create": ["layer", "create", "--parent", "{base}"],
    "layer apply": ["layer", "apply", "{tar}", "--parent", "{base}"],
    "layer mount": ["layer", "mount", "{base}"],
    "layer unmount": ["layer", "unmount", "{base}"],
    "layer changes": ["layer", "changes", "{child}"],
    "layer diff": ["layer", "diff", "{child}", "-o", "{output}"],
    "layer rm": ["layer", "rm", "{victim}"],
    # images: a registry nobody listens on; the healthy store's image; a name no image has
    "pull": ["pull", "127.0.0.1:9/nobody/img:1"],
    "images": ["images"],
    "system df": ["system", "df"],
    "inspect": ["inspect", "img/healthy:1"],
    "history": ["history", "img/healthy:1"],
    "tag": ["tag", "img/healthy:1", "other/img:2"],
    "rmi": ["rmi", "nobody/img:1"],
    "prune": ["prune"],
    # archives: the healthy store holds an imported image, {archive} is its docker save
    "save": ["save", "-o", "{output}", "img/healthy:1"],
    "load": ["load", "-i", "{archive}"],
    "import": ["import", "{tar}", "img/imported:1"],
    # containers: listing and pruning work on any healthy store; the rest name a
    # container no store has, or an image that is not there and may not be pulled
    "ps": ["ps", "-a"],
    "stats": ["stats", "--no-stream", "-a"],
    "container prune": ["container", "prune", "-f"],
    "image prune": ["image", "prune", "-f"],
    "run": ["run", "--pull", "never", "--network", "none", "nobody/img:1", "true"],
    "create": ["create", "--pull", "never", "--network", "none", "nobody/img:1", "true"],
    "start": ["start", "nosuch"],
    "stop": ["stop", "nosuch"],
    "kill": ["kill", "nosuch"],
    "wait": ["wait", "nosuch"],
    "rm": ["rm", "nosuch"],
    "logs": ["logs", "nosuch"],
    "restart": ["restart", "nosuch"],
    "rename": ["rename", "nosuch", "other"],
    "port": ["port", "nosuch"],
    "top": ["top", "nosuch"],
    "pause": ["pause", "nosuch"],
    "attach": ["attach", "nosuch"],
    "update": ["update", "--memory", "64m", "nosuch"],
    "unpause": ["unpause", "nosuch"],
    "cp": ["cp", "nosuch:/etc/hostname", "{output}"],
    "export": ["export", "-o", "{output}", "nosuch"],
    "volume create": ["volume", "create", "made"],
    "volume ls": ["volume", "ls"],
    "volume inspect": ["volume", "inspect", "nosuch"],
    "volume rm": ["volume", "rm", "nosuch"],
    "volume prune": ["volume", "prune", "-f"],  # anonymous ones: "made" stays
    # stopped containers, unused images and anonymous volumes: a healthy store's image
    # stays only without -a, so without it here (before system repair, which mends a
    # damaged store for the commands after it)
    "system prune": ["system", "prune", "--volumes", "-f"],
    "system boot": ["system", "boot"],  # no container to start: nothing printed
    # after system prune (it takes unused networks too) and before the create: the
    # created network is kept, as the healthy store's things are
    "network prune": ["network", "prune", "-f"],
    "network create": ["network", "create", "made-net"],
    "network ls": ["network", "ls"],
    "network inspect": ["network", "inspect", "nosuch"],
    "network rm": ["network", "rm", "nosuch"],
    "exec": ["exec", "nosuch", "true"],
    "diff": ["diff", "nosuch"],
    "commit": ["commit", "nosuch", "img/committed:1"],
    # a context directory that does not exist: refused before the store is opened
    "build": ["build", "--network", "none", "{output}-context"],
    # without --force and without a terminal to confirm on: refused, in every environment
    "system reset": ["system", "reset"],
    "system repair": ["system", "repair"],
    # standard input is empty: no password, refused before any registry is asked
    "login": ["login", "-u", "someone", "--password-stdin", "127.0.0.1:1"],
    # nobody logged in to that host (the auth file is under the test's XDG_CONFIG_HOME)
    "logout": ["logout", "127.0.0.1:1"],
    # a name no image has: refused before any registry is asked
    "push": ["push", "127.0.0.1:9/nobody/img:1"],
}
#: commands that fail in every environment, on purpose (see COMMANDS)
ALWAYS_FAIL = {"conformance", "system reset", "login", "logout", "pull", "rmi", "push", "build",
               "run",
               "create", "start", "stop", "kill", "wait", "rm", "logs", "exec", "diff",
               "commit", "restart", "rename", "port", "top", "cp", "export", "pause",
               "unpause", "attach", "update",
               "volume inspect", "volume rm", "network inspect", "network rm"}
EVERYTHING = set(COMMANDS) - ALWAYS_FAIL
DB_FILES = ("lamina.db", "lamina.db-wal", "lamina.db-shm")


def parser_commands() -> set[str]:
    """Every leaf command of the real parser, as "layer ls", but for the aliases in
    the ``image`` and ``container`` groups (``image ls`` runs what ``images`` runs)."""
    found: dict[str, str] = {}

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[" ".join(prefix)] = parser.get_default("handler")
        for action in subs:
            for name, sub in action.choices.items():
                walk(sub, (*prefix, name))

    walk(build_parser(), ())
    top = {handler for command, handler in found.items() if " " not in command}
    return {command for command, handler in found.items()
            if " " not in command or handler not in top}


def test_every_command_is_covered() -> None:
    """A command added to the CLI must be added here, with its broken environments."""
    assert parser_commands() == set(COMMANDS)


# --- environments ------------------------------------------------------------------


def small_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("etc/hostname", b"lamina\n"), ("bin/tool", b"#!/bin/sh\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Env:
    """One broken environment: a store with three layers, and how to run lamina in it."""

    name: str
    root: Path
    workdir: Path
    #: commands that must succeed here; every other one must fail cleanly
    ok: set[str]
    output: str = ""
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    config_error: bool = False
    #: undo the damage so that the layers can be checked (after all commands ran)
    repair: Callable[[], None] = lambda: None
    #: whether the layers' data is meant to survive (not when the test deleted it)
    data_kept: bool = True
    layers: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [*LAMINA, "--root", str(self.root), "--driver", "vfs", *args]
        if self.user:
            cmd = ["setpriv", "--reuid", self.user, "--regid", "nogroup", "--clear-groups", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
        for key, value in self.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return subprocess.run(cmd, capture_output=True, env=env, timeout=120,
                              stdin=subprocess.DEVNULL)

    def args(self, command: str) -> list[str]:
        values = {**self.layers, "tar": str(self.workdir / "layer.tar"), "output": self.output,
                  "archive": str(self.workdir / "image.tar")}
        return [a.format(**values) for a in COMMANDS[command]]


def healthy(root: Path, workdir: Path) -> dict[str, str]:
    """A vfs store with a base layer, a writable child with a change, and a victim."""
    (workdir / "layer.tar").write_bytes(small_tar())
    probe = Env("setup", root, workdir, ok=set())

    def lamina(*args: str) -> str:
        proc = probe.run(*args)
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout.decode().strip()

    base = lamina("layer", "apply", str(workdir / "layer.tar"))
    child = lamina("layer", "create", "--rw", "--parent", base)
    path = Path(lamina("layer", "mount", child))
    (path / "etc" / "hostname").write_text("changed\n")
    lamina("layer", "unmount", child)
    victim = lamina("layer", "create", "--parent", base)
    lamina("import", str(workdir / "layer.tar"), "img/healthy:1")  # the same layer as base's
    lamina("save", "-o", str(workdir / "image.tar"), "img/healthy:1")
    return {"base": base, "child": child, "victim": victim}


def fill(directory: Path) -> None:
    """Use up every block and inode of ``directory``'s filesystem."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
        os.fsync(fd)
    finally:
        os.close(fd)
    n = 0
    try:
        while True:
            os.mkdir(directory / f"filler-{n}")
            n += 1
    except OSError:
        pass


def make_full_disk(workdir: Path, stack: list[Callable[[], None]]) -> Env:
    from lamina.conformance.backing import BackingUnavailable, backing_filesystem

    cm = backing_filesystem("ext4", workdir / "backing", size_mb=64)
    try:
        fs = cm.__enter__()
    except BackingUnavailable as exc:
        pytest.skip(str(exc))
    stack.append(lambda: cm.__exit__(None, None, None))
    root = fs.path / "root"
    layers = healthy(root, workdir)
    fill(fs.path)

    def repair() -> None:
        (fs.path / "filler").unlink()
        for leftover in fs.path.glob("filler-*"):
            leftover.rmdir()

    # repair finds nothing to do on a healthy store, full disk or not
    return Env("full-disk", root, workdir,
               ok={"info", "drivers", "layer ls", "system repair", "images", "system df",
                   "inspect", "history", "prune", "ps", "container prune", "image prune",
                   "volume ls", "volume prune", "system prune", "stats", "system boot",
                   "network ls", "network prune"},
               output=str(fs.path / "x.tar"), repair=repair, layers=layers)


def make_db_damage(kind: str) -> Callable[[Path, list], Env]:
    def make(workdir: Path, stack: list) -> Env:
        root = workdir / "root"
        layers = healthy(root, workdir)
        db = root / "lamina.db"
        saved = db.read_bytes()
        if kind == "corrupt-db":
            with open(db, "r+b") as f:  # the schema page stays, random bytes over the rest
                f.seek(4096)
                f.write(os.urandom(len(saved) - 4096))
        elif kind == "empty-db":
            db.write_bytes(b"")
        else:
            db.unlink()

        def repair() -> None:
            for name in DB_FILES:
                (root / name).unlink(missing_ok=True)
            db.write_bytes(saved)

        return Env(kind, root, workdir, ok={"drivers", "system repair"},
                   output=str(workdir / "x.tar"),
                   repair=repair, layers=layers)

    return make


def make_unreadable_config(workdir: Path, stack: list) -> Env:
    root = workdir / "root"
    layers = healthy(root, workdir)
    home = workdir / "home"  # like /root for nobody: not even the config's existence shows
    (home / ".config" / "lamina").mkdir(parents=True)
    (home / ".config" / "lamina" / "lamina.toml").write_text('driver = "vfs"\n')
    home.chmod(0o700)
    os.chmod(workdir, 0o755)

    def repair() -> None:
        env.user, env.env, env.config_error = None, {}, False

    env = Env("unreadable-config", root, workdir, ok=set(), output=str(workdir / "x.tar"),
               env={"HOME": str(home), "XDG_CONFIG_HOME": None}, user="nobody",
               config_error=True, repair=repair, layers=layers)
    return env


def make_output(path: str) -> Callable[[Path, list], Env]:
    def make(workdir: Path, stack: list) -> Env:
        root = workdir / "root"
        return Env(f"output-{path}", root, workdir, ok=EVERYTHING - {"layer diff", "save"},
                   output=path, layers=healthy(root, workdir))

    return make


def make_driver_home_deleted(workdir: Path, stack: list) -> Env:
    root = workdir / "root"
    layers = healthy(root, workdir)
    shutil.rmtree(root / "vfs")
    # the metadata still lists the layers: reads work, writes are refused with
    # `system repair` as the way out (it forgets the layers whose data is gone)
    return Env("driver-home-deleted", root, workdir,
               ok={"info", "drivers", "layer ls", "system repair", "images", "system df",
                   "inspect", "history", "volume ls", "network ls"},
               output=str(workdir / "x.tar"),
               data_kept=False, layers=layers)


ENVIRONMENTS: dict[str, Callable[[Path, list], Env]] = {
    "full-disk": make_full_disk,
    "corrupt-db": make_db_damage("corrupt-db"),
    "empty-db": make_db_damage("empty-db"),
    "missing-db": make_db_damage("missing-db"),
    "unreadable-config": make_unreadable_config,
    "output-missing-dir": make_output("/nonexistent-dir/x.tar"),
    "output-proc": make_output("/proc/x.tar"),
    "driver-home-deleted": make_driver_home_deleted,
}


@pytest.fixture(scope="module", params=list(ENVIRONMENTS))
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from lamina.core.host import mounts

    workdir = tmp_path_factory.mktemp(request.param)
    undo: list[Callable[[], None]] = []
    try:
        yield ENVIRONMENTS[request.param](workdir, undo)
    finally:
        for point in mounts.mounts_under(workdir):
            mounts.detach(Path(point))
        for step in reversed(undo):
            step()


# --- what "the store is as it was" means -----------------------------------------------


def is_lock_file(rel: Path) -> bool:
    """A lock file under tmp/: made by whoever takes the lock, removed by prune; not data."""
    return rel.parts[:1] == ("tmp",) and (rel.name.endswith(".lock") or
                                          rel.name.startswith("lock-"))


def snapshot(root: Path) -> tuple[frozenset[str], object]:
    """The store's files (three levels deep: each layer's dir and meta) and its rows."""
    paths = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if len(rel.parts) >= 3:
            dirnames[:] = []
        paths.update(str(rel / n) for n in dirnames + filenames
                     if n not in DB_FILES and not is_lock_file(rel / n))
    return frozenset(paths), database_state(root / "lamina.db")


def database_state(db: Path) -> object:
    """The layer rows, read without touching the store; the bytes when they cannot be read."""
    if not db.exists():
        return "missing"
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            return sorted(con.execute("SELECT id, state, parent FROM layers").fetchall())
        finally:
            con.close()
    except sqlite3.Error:
        return hashlib.sha256(db.read_bytes()).hexdigest()


def check_outcome(env: Env, command: str, proc: subprocess.CompletedProcess) -> None:
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    shown = f"lamina {' '.join(env.args(command))} in {env.name}:\n{err}"
    assert "Traceback" not in out + err, shown
    if command in env.ok:
        assert proc.returncode == 0, shown
        return
    # Docker's run and create fail with 125 (the engine's error, not the command's)
    failed = 125 if command in ("run", "create") else 1
    assert proc.returncode == (2 if env.config_error else failed), shown
    lines = err.splitlines()
    assert len(lines) == 2, shown
    assert lines[0].startswith("lamina: error: ") and lines[1].startswith("hint: "), shown
    # a LaminaError made on purpose, not an exception the CLI caught as a bug
    assert "--debug" not in err, shown


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_in_broken_environment(env: Env, command: str) -> None:
    before = snapshot(env.root)
    proc = env.run(*env.args(command))
    check_outcome(env, command, proc)
    after = snapshot(env.root)
    if proc.returncode != 0:
        assert after == before, (f"{command} failed in {env.name} but changed the store: "
                                 f"+{sorted(after[0] - before[0])} -{sorted(before[0] - after[0])}")
    else:
        kept = {
            p for p in before[0]
            if not p.startswith("vfs/mnt/")  # mount points come and go
            and (command != "layer rm" or env.layers["victim"] not in p)
            # a repair forgets the records of layers whose data is gone
            and (command != "system repair" or env.data_kept or not p.startswith("layerdb/"))
        }
        lost = kept - after[0]
        assert not lost, f"{command} in {env.name} lost {sorted(lost)}"


def test_layers_survive(env: Env) -> None:
    """Once the damage is repaired, every layer that existed is there and mounts."""
    env.repair()
    proc = env.run("layer", "ls", "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    listed = set(proc.stdout.decode().split())
    if not env.data_kept:
        # `system repair` ran among the commands: it forgot the layers whose data is gone
        assert not {env.layers["base"], env.layers["child"]} & listed
        return
    for name in ("base", "child"):
        assert env.layers[name] in listed, f"{name} layer lost in {env.name}"
        proc = env.run("layer", "mount", env.layers[name])
        assert proc.returncode == 0, proc.stderr.decode()
        tree = Path(proc.stdout.decode().strip())
        expected = "changed\n" if name == "child" else "lamina\n"
        assert (tree / "etc" / "hostname").read_text() == expected
        assert env.run("layer", "unmount", env.layers[name]).returncode == 0
    leftovers = [p.name for p in (env.root / "vfs" / "dir").iterdir() if p.name.startswith(".")]
    assert not leftovers, f"debris in {env.name}: {leftovers}"


# --- defect 2: an apply that fills the disk -----------------------------------------------


def test_apply_that_fills_the_disk_leaves_nothing(tmp_path: Path) -> None:
    """The disk fills mid-apply, so the metadata cannot grow either: one clear line,
    the half layer's data gone, and nothing to do by hand once space is free."""
    from lamina.conformance.backing import BackingUnavailable, backing_filesystem

    random_tar = io.BytesIO()
    with tarfile.open(fileobj=random_tar, mode="w") as tar:
        for n in range(30):
            info = tarfile.TarInfo(f"d/f{n}")
            info.size = 1 << 20
            tar.addfile(info, io.BytesIO(os.urandom(info.size)))
    data = random_tar.getvalue()
    try:
        cm = backing_filesystem("ext4", tmp_path / "backing", size_mb=64)
        fs = cm.__enter__()
    except BackingUnavailable as exc:
        pytest.skip(str(exc))
    try:
        root = fs.path / "root"
        env = Env("filling", root, tmp_path, ok=set())
        (tmp_path / "layer.tar").write_bytes(small_tar())
        base = env.run("layer", "apply", str(tmp_path / "layer.tar")).stdout.decode().strip()
        cmd = [*LAMINA, "--root", str(root), "--driver", "vfs", "layer", "apply", "-"]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(data[: 10 << 20])  # a third of the layer is on disk ...
        proc.stdin.flush()
        time.sleep(1)
        fill(fs.path)  # ... when the disk fills up, WAL room included
        os.sync()
        try:
            proc.stdin.write(data[10 << 20:])
            proc.stdin.close()
        except BrokenPipeError:
            pass
        err = proc.stderr.read().decode()
        assert proc.wait() == 1, err
        assert "Traceback" not in err
        lines = err.splitlines()
        assert len(lines) == 2 and "No space left on device" in lines[0], err
        assert lines[1].startswith("hint: "), err
        # the half layer's data is gone already, before any space was freed
        assert sorted(p.name for p in (root / "vfs" / "dir").iterdir()) == [base]
        # a read-only command works on the full disk
        ls = env.run("layer", "ls", "-q")
        assert ls.returncode == 0 and ls.stdout.decode().split() == [base], ls.stderr.decode()
        # space freed: everything works without help
        (fs.path / "filler").unlink()
        for leftover in fs.path.glob("filler-*"):
            leftover.rmdir()
        again = env.run("layer", "apply", str(tmp_path / "layer.tar"))
        assert again.returncode == 0, again.stderr.decode()
        ls = env.run("layer", "ls", "-q")
        assert len(ls.stdout.decode().split()) == 2
    finally:
        cm.__exit__(None, None, None)
