"""Running a parsed Dockerfile: each stage's steps in order, a layer per RUN, COPY and ADD.

A stage starts from its base (an image, an earlier stage, or ``scratch``) and keeps an
image config as it goes: metadata steps (ENV, LABEL, WORKDIR, USER, CMD, ...) change the
config and add a history entry marked ``empty_layer``, as Docker records them. A layer
step first looks for its key in the build cache (core/build/cache.py); on a miss:

- RUN runs in a container of its own (core/containers/, core/launcher/: the same
  namespaces, hardening, network and limits as ``lamina run``) on the stage's top layer,
  with the stage's environment, ARGs, working directory, user and shell; its output is
  streamed, a non-zero exit ends the build with that output and status, tagging nothing;
- COPY and ADD copy into the writable layer of such a container, never started
  (core/build/copy.py);

then the writable layer's changes are exported once (the driver's native diff where it
has one), applied as a read-only layer whose id is its ChainID, and the container
removed. Step containers carry the build's process identity (``BUILD_OWNER_LABEL``):
``ps`` does not list them, and the next command removes those of a killed build. The
final stage's config, with the DiffIDs and history, is the image; its id is the config's
digest.

With ``timestamp`` (``--timestamp``, ``SOURCE_DATE_EPOCH``) the build is reproducible:
every file a step changed gets its time clamped to at most that epoch before the export
(BuildKit's ``rewrite-timestamp``), and the config and history times are that epoch, so
that the same inputs give the same image id on any driver.

A failure or an interrupt leaves no half image: the image is recorded last, the step's
container and writable layer are removed, a layer being applied is removed by the
store's recovery, and layers of finished steps stay as cache (``prune`` reclaims them).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TextIO

from ..containers.commit import export_changes, layer_id_of
from ..containers.spec import BUILD_OWNER_LABEL, DEFAULT_PATH, ContainerSpec, Volume
from ..containers.store import ContainerStore
from ..errors import BuildError, LaminaError
from ..host.locks import process_identity
from ..images.formats import OCI_LAYER, canonical_json, parse_config, sha256_digest
from ..images.rootfs import new_config, rfc3339
from ..images.space import images_lock
from ..images.store import ImageLayer, ImageStore
from ..images.unpack import ensure_layer
from ..layers.store import Store
from . import instructions as ins
from .cache import BuildCache, CacheEntry, step_key
from .dockerignore import Dockerignore
from .instructions import Dockerfile, Instruction, Stage, parse_trigger
from .variables import Variables, expand_from, global_values

#: what a RUN in shell form runs when no SHELL was given (Docker's)
DEFAULT_SHELL = ("/bin/sh", "-c")
#: where a ``RUN <<EOF`` program with its own ``#!`` interpreter is bound in the container
HEREDOC_PROGRAM = "/dev/.lamina-run-heredoc"


class BuildOptions:
    """What ``lamina build`` was asked (the CLI fills it)."""

    __slots__ = ("build_args", "context", "ignore", "keep_blobs", "network",
                 "network_settings", "no_cache", "quiet", "tags", "target", "timestamp")

    def __init__(self, context: Path, *, ignore: Dockerignore | None = None,
                 build_args: Mapping[str, str] | None = None, tags: Sequence[str] = (),
                 target: str | None = None, network: str = "bridge",
                 network_settings: dict[str, Any] | None = None, no_cache: bool = False,
                 quiet: bool = False, timestamp: int | None = None,
                 keep_blobs: bool = True) -> None:
        self.context = context
        self.ignore = ignore
        self.build_args = dict(build_args or {})
        self.tags = tuple(tags)
        self.target = target
        self.network = network
        self.network_settings = network_settings
        self.no_cache = no_cache
        self.quiet = quiet
        self.timestamp = timestamp
        self.keep_blobs = keep_blobs


class _State:
    """A stage as it is built: its top layer, image config and variables."""

    __slots__ = ("base_history", "cmd_set", "config", "layers", "name", "top", "variables")

    def __init__(self, name: str | None, config: dict[str, Any], layers: list[ImageLayer],
                 variables: Variables) -> None:
        self.name = name
        self.config = config  # the whole OCI image config document
        self.layers = layers
        self.top = layers[-1].layer_id if layers else None
        self.variables = variables
        self.cmd_set = False  # a CMD of this stage (an ENTRYPOINT then keeps it)
        #: how many history entries came with the base (the rest are this build's)
        self.base_history = len(config.get("history") or [])

    @property
    def run_config(self) -> dict[str, Any]:
        return self.config.setdefault("config", {})

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]


class Builder:
    """One build of ``dockerfile`` into ``store``.

    ``resolve_image(name)`` returns the id of a base image, pulling it if it is missing
    (the CLI's policy); ``out`` gets the step lines and, unless quiet, RUN's output.
    """

    def __init__(self, store: Store, dockerfile: Dockerfile, options: BuildOptions, *,
                 resolve_image: Callable[[str], str], out: TextIO) -> None:
        self.store = store
        self.images = ImageStore(store)
        self.containers = ContainerStore(store)
        self.cache = BuildCache(store)
        self.dockerfile = dockerfile
        self.options = options
        self.resolve_image = resolve_image
        self.out = out
        self.now = float(options.timestamp) if options.timestamp is not None else time.time()
        self.stages: dict[int, _State] = {}
        self.owner = process_identity()

    # -- the build ---------------------------------------------------------------------

    def build(self) -> str:
        """Build every stage the target needs; record and name the image; its id."""
        df = self.dockerfile
        if not df.stages:
            raise BuildError(f"{df.filename} has no FROM instruction",
                             hint="begin the Dockerfile with FROM IMAGE (or FROM scratch)")
        target = self._target()
        globals_ = global_values(df, self.options.build_args)
        wanted = self._needed(target, globals_)
        total = sum(len(df.stages[i].instructions) + 1 for i in wanted)
        step = 0
        for index in wanted:
            stage = df.stages[index]
            state, step = self._stage(stage, globals_, step, total)
            self.stages[index] = state
        return self._finish(self.stages[target.index])

    def _target(self) -> Stage:
        if self.options.target is None:
            return self.dockerfile.stages[-1]
        stage = self.dockerfile.stage(self.options.target)
        if stage is None:
            names = [s.name for s in self.dockerfile.stages if s.name]
            raise BuildError(f"no build stage named {self.options.target!r} in "
                             f"{self.dockerfile.filename}",
                             hint=f"the stages are: {', '.join(names) or '(none named)'}")
        return stage

    def _needed(self, target: Stage, globals_: Mapping[str, str]) -> list[int]:
        """The stages the target depends on (FROM and COPY --from), in file order.

        As BuildKit: a stage nothing needs is not built.
        """
        needed: set[int] = set()
        todo = [target.index]
        while todo:
            index = todo.pop()
            if index in needed:
                continue
            needed.add(index)
            stage = self.dockerfile.stages[index]
            base = expand_from(stage, globals_, escape=self.dockerfile.escape).image
            refs = [base]
            for instruction in stage.instructions:
                if isinstance(instruction, ins.Copy | ins.Add):
                    source = instruction.flags.get("from")
                    if isinstance(source, str):
                        refs.append(source)
            for ref in refs:
                found = self._earlier_stage(ref, index)
                if found is not None:
                    todo.append(found.index)
        return sorted(needed)

    def _earlier_stage(self, ref: str, before: int) -> Stage | None:
        """The stage ``ref`` names (its name, or its index as in ``COPY --from=0``)."""
        for stage in self.dockerfile.stages[:before]:
            if stage.name is not None and stage.name == ref.lower():
                return stage
            if ref.isdigit() and int(ref) == stage.index:
                return stage
        return None

    def _stage(self, stage: Stage, globals_: Mapping[str, str], step: int,
               total: int) -> tuple[_State, int]:
        df = self.dockerfile
        base = expand_from(stage, globals_, escape=df.escape)
        step += 1
        self._say(f"STEP {step}/{total}: {base.source}")
        state = self._base(base.image, stage, globals_)
        triggers = list(state.run_config.get("OnBuild") or [])
        if triggers:
            state.run_config["OnBuild"] = None  # they run here, once; not inherited further
            for expression in triggers:
                self._say(f"--> ONBUILD {expression}")
                self._step(state, parse_trigger(expression, escape=df.escape))
        for instruction in stage.instructions:
            step += 1
            self._say(f"STEP {step}/{total}: {instruction.source}")
            self._step(state, instruction)
        return state, step

    def _base(self, image: str, stage: Stage, globals_: Mapping[str, str]) -> _State:
        """The state a stage starts from: ``scratch``, an earlier stage, or an image."""
        earlier = self._earlier_stage(image, stage.index)
        if earlier is not None:
            parent = self.stages[earlier.index]
            config = _copy_doc(parent.config)
            layers = list(parent.layers)
        elif image == "scratch":
            config = new_config([], [], created=self.now)
            layers = []
        else:
            image_id = self.resolve_image(image)
            config = _copy_doc(self.images.config(image_id).raw)
            layers = list(self.images.layers(image_id))
        env = config.get("config", {}).get("Env") or []
        variables = Variables(globals_, self.options.build_args, env=env,
                              escape=self.dockerfile.escape)
        return _State(stage.name, config, layers, variables)

    # -- one step ------------------------------------------------------------------------

    def _step(self, state: _State, instruction: Instruction) -> None:
        expanded = state.variables.step(instruction)
        handler = getattr(self, f"_do_{type(expanded).__name__.lower()}", None)
        if handler is None:  # pragma: no cover - the parser knows no other instruction
            raise BuildError(f"{expanded.location.filename}:{expanded.location.line}: "
                             f"{type(expanded).__name__.upper()} is not supported")
        handler(state, expanded)

    def _history(self, state: _State, created_by: str, *, empty: bool) -> None:
        entry: dict[str, Any] = {"created": rfc3339(self.now), "created_by": created_by,
                                 "comment": "lamina build"}
        if empty:
            entry["empty_layer"] = True
        state.config.setdefault("history", []).append(entry)

    def _meta(self, state: _State, created_by: str) -> None:
        self._history(state, created_by, empty=True)

    def _do_env(self, state: _State, step: ins.Env) -> None:
        state.run_config["Env"] = [f"{k}={v}" for k, v in state.variables.env.items()]
        self._meta(state, "ENV " + " ".join(f"{k}={v}" for k, v in step.pairs))

    def _do_arg(self, state: _State, step: ins.Arg) -> None:
        text = " ".join(name if value is None else f"{name}={value}" for name, value in step.args)
        self._meta(state, "ARG " + text)

    def _do_label(self, state: _State, step: ins.Label) -> None:
        labels = dict(state.run_config.get("Labels") or {})
        labels.update(step.pairs)
        state.run_config["Labels"] = labels
        self._meta(state, "LABEL " + " ".join(f"{k}={v}" for k, v in step.pairs))

    def _do_workdir(self, state: _State, step: ins.Workdir) -> None:
        current = state.run_config.get("WorkingDir") or "/"
        state.run_config["WorkingDir"] = os.path.normpath(os.path.join(current, step.path))
        self._meta(state, f"WORKDIR {state.run_config['WorkingDir']}")

    def _do_user(self, state: _State, step: ins.User) -> None:
        state.run_config["User"] = step.user
        self._meta(state, f"USER {step.user}")

    def _do_expose(self, state: _State, step: ins.Expose) -> None:
        ports = dict(state.run_config.get("ExposedPorts") or {})
        for port in step.ports:
            ports[port if "/" in port else f"{port}/tcp"] = {}
        state.run_config["ExposedPorts"] = ports
        self._meta(state, "EXPOSE " + " ".join(step.ports))

    def _do_volume(self, state: _State, step: ins.Volume) -> None:
        volumes = dict(state.run_config.get("Volumes") or {})
        volumes.update({path: {} for path in step.paths})
        state.run_config["Volumes"] = volumes
        self._meta(state, "VOLUME " + json.dumps(list(step.paths)))

    def _do_stopsignal(self, state: _State, step: ins.Stopsignal) -> None:
        state.run_config["StopSignal"] = step.signal
        self._meta(state, f"STOPSIGNAL {step.signal}")

    def _do_healthcheck(self, state: _State, step: ins.Healthcheck) -> None:
        check: dict[str, Any] = {"Test": list(step.test)}
        for key, value in (("Interval", step.interval), ("Timeout", step.timeout),
                           ("StartPeriod", step.start_period),
                           ("StartInterval", step.start_interval), ("Retries", step.retries)):
            if value:
                check[key] = value
        state.run_config["Healthcheck"] = check
        self._meta(state, "HEALTHCHECK " + " ".join(step.test))

    def _do_onbuild(self, state: _State, step: ins.Onbuild) -> None:
        state.run_config["OnBuild"] = [*(state.run_config.get("OnBuild") or []), step.expression]
        self._meta(state, f"ONBUILD {step.expression}")

    def _do_shell(self, state: _State, step: ins.Shell) -> None:
        state.run_config["Shell"] = list(step.command)
        self._meta(state, "SHELL " + json.dumps(list(step.command)))

    def _do_cmd(self, state: _State, step: ins.Cmd) -> None:
        state.run_config["Cmd"] = self._command(state, step.command, step.shell_form)
        state.cmd_set = True
        self._meta(state, "CMD " + json.dumps(state.run_config["Cmd"]))

    def _do_entrypoint(self, state: _State, step: ins.Entrypoint) -> None:
        state.run_config["Entrypoint"] = self._command(state, step.command, step.shell_form)
        if not state.cmd_set:
            state.run_config["Cmd"] = None  # Docker: a base image's CMD does not survive it
        self._meta(state, "ENTRYPOINT " + json.dumps(state.run_config["Entrypoint"]))

    def _do_maintainer(self, state: _State, step: ins.Maintainer) -> None:
        state.config["author"] = step.name
        self._meta(state, f"MAINTAINER {step.name}")

    def _command(self, state: _State, command: Sequence[str], shell_form: bool) -> list[str]:
        return [*self._shell(state), command[0]] if shell_form else list(command)

    @staticmethod
    def _shell(state: _State) -> list[str]:
        return list(state.run_config.get("Shell") or DEFAULT_SHELL)

    # -- layer steps ---------------------------------------------------------------------

    def _do_run(self, state: _State, step: ins.Run) -> None:
        heredoc = None
        if step.shell_form:
            script, heredoc = step.script()
            argv = [*self._shell(state), script]
            shown = " ".join(argv)
        else:
            argv = list(step.command)
            shown = json.dumps(argv)
        program = heredoc.content if heredoc is not None and heredoc.content.startswith(
            "#!") else None
        if program is not None:  # run as a file, by its own interpreter (BuildKit's way)
            argv = [HEREDOC_PROGRAM]
            shown = f"<<{heredoc.name} ({program.splitlines()[0]})"  # type: ignore[union-attr]
        env = state.variables.run_environment()
        env.setdefault("PATH", DEFAULT_PATH)
        network = str(step.flags.get("network") or self.options.network)
        config = state.run_config
        key = step_key(state.top, "run", argv=argv, env=sorted(env.items()),
                       workdir=config.get("WorkingDir") or "/", user=config.get("User") or "",
                       network=network, program=program)
        with self._program_file(program) as volumes:
            spec = self._step_spec(argv=tuple(argv),
                                   env=tuple(f"{k}={v}" for k, v in env.items()),
                                   workdir=config.get("WorkingDir") or "/",
                                   user=config.get("User") or "", network=network,
                                   volumes=volumes)

            def make(layer: str) -> None:
                self._run_container(step, argv, layer)

            self._layer_step(state, key, f"RUN {shown}", make, spec=spec)

    @contextlib.contextmanager
    def _program_file(self, program: str | None) -> Iterator[tuple[Volume, ...]]:
        """A ``RUN <<EOF`` body starting with ``#!``, as an executable file bound read-only
        at :data:`HEREDOC_PROGRAM` (on the container's /dev tmpfs: nothing of it reaches
        the layer)."""
        if program is None:
            yield ()
            return
        tmp = self.store.root / "tmp"
        tmp.mkdir(mode=0o700, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="build-program-", dir=tmp)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(program)
            os.chmod(name, 0o755)
            yield (Volume("bind", HEREDOC_PROGRAM, name, readonly=True),)
        finally:
            Path(name).unlink(missing_ok=True)

    def _run_container(self, step: ins.Run, argv: list[str], layer: str) -> None:
        from ..launcher import monitor

        container = self.containers.get(layer)
        stdio = monitor.Stdio("log" if self.options.quiet else "inherit", False)
        if not self.options.quiet:
            self.out.flush()
        code = monitor.run(self.store, container, stdio, network=self.options.network_settings,
                           stop_on_signal=True)
        if code != 0:
            output = ""
            if self.options.quiet:
                from ..containers import logs

                with contextlib.suppress(OSError):
                    output = logs.text(self.containers.directory(container.id))[-4000:]
            raise BuildError(
                f"{_where(step)}: RUN {' '.join(argv)!r} returned a non-zero code: {code}"
                + (f"\n{output.rstrip()}" if output else ""),
                hint="fix the command (its output is above); nothing was tagged",
            )

    def _do_copy(self, state: _State, step: ins.Copy) -> None:
        self._copy(state, step, extract=False)

    def _do_add(self, state: _State, step: ins.Add) -> None:
        for source in step.sources:
            if isinstance(source, str) and ("://" in source or source.startswith("git@")):
                raise BuildError(f"{_where(step)}: ADD of a remote URL ({source}) is not "
                                 "supported", hint="download it in a RUN step, or COPY a "
                                 "file of the build context")
        self._copy(state, step, extract=True)

    def _copy(self, state: _State, step: ins.Copy | ins.Add, *, extract: bool) -> None:
        from .copy import copy_into

        source_ref = step.flags.get("from")
        paths = [s for s in step.sources if isinstance(s, str)]
        workdir = state.run_config.get("WorkingDir") or "/"
        chown = step.flags.get("chown")
        chmod = step.flags.get("chmod")
        exclude = step.flags.get("exclude") or ()
        exclude = (exclude,) if isinstance(exclude, str) else tuple(map(str, exclude))
        with self._source_tree(source_ref, state) as (tree, tree_id):
            digest = tree.digest(paths, exclude=exclude) if paths else ""
            heredocs = [[s.name, s.content] for s in step.sources if not isinstance(s, str)]
            key = step_key(state.top, "add" if extract else "copy", tree=tree_id,
                           sources=[s if isinstance(s, str) else s.name for s in step.sources],
                           content=digest, heredocs=heredocs, dest=step.dest, workdir=workdir,
                           chown=chown, chmod=chmod, exclude=exclude,
                           timestamp=self.options.timestamp)

            def make(layer: str) -> None:
                root = self.store.mount(layer, holder=self.store.process_holder)
                try:
                    copy_into(root, tree, step.sources, step.dest, workdir=workdir,
                              chown=chown if isinstance(chown, str) else None,
                              chmod=chmod if isinstance(chmod, str) else None,
                              extract=extract, mtime=self.options.timestamp,
                              exclude=exclude)
                finally:
                    self.store.unmount(layer, holder=self.store.process_holder)

            keyword = "ADD" if extract else "COPY"
            self._layer_step(state, key, f"{keyword} {' '.join(map(_name, step.sources))} "
                             f"{step.dest}", make, spec=self._step_spec(network="none"))

    @contextlib.contextmanager
    def _source_tree(self, ref: object, state: _State) -> Iterator[tuple[Any, str]]:
        """What COPY reads: the context, or the root of a stage or image (mounted)."""
        from .context import SourceTree

        if not isinstance(ref, str) or not ref:
            yield SourceTree.context(self.options.context, self.options.ignore), "context"
            return
        stage = self._earlier_stage(ref, len(self.dockerfile.stages))
        if stage is not None:
            if stage.index not in self.stages:
                raise BuildError(f"COPY --from={ref}: stage {ref} is not built before this one",
                                 hint="a stage can copy only from an earlier one")
            top = self.stages[stage.index].top
        else:
            top = self.images.image(self.resolve_image(ref)).top_layer
        if top is None:  # an empty stage or image: an empty tree
            with tempfile.TemporaryDirectory(dir=self.store.root / "tmp") as empty:
                yield SourceTree.rootfs(Path(empty)), "empty"
            return
        root = self.store.mount(top, holder=self.store.process_holder)
        try:
            yield SourceTree.rootfs(root), top
        finally:
            self.store.unmount(top, holder=self.store.process_holder)

    def _step_spec(self, **fields: Any) -> ContainerSpec:
        """A step's container: labelled with this build's process, so that the next
        command removes it if the build is killed (core/launcher/monitor.py)."""
        return ContainerSpec(image=None, image_name="(build step)", argv=("true",), env=(),
                             labels={BUILD_OWNER_LABEL: self.owner}).\
            _replace(**fields)

    def _layer_step(self, state: _State, key: str, created_by: str,
                    make: Callable[[str], None], *, spec: ContainerSpec) -> None:
        """The cached layer of ``key``, or a new one made by ``make(writable layer id)``."""
        entry = None if self.options.no_cache else self.cache.get(key)
        if entry is not None:
            self._say(f"--> CACHED {entry.layer_id[:12]}")
        else:
            entry = self._new_layer(state, make, spec)
            self.cache.put(key, entry)
            self._say(f"--> {entry.layer_id[:12]}")
        blob = entry.diff_id if self.images.blobs.has(entry.diff_id) else None
        state.layers.append(ImageLayer(entry.layer_id, entry.diff_id, blob,
                                       OCI_LAYER if blob else None, entry.size if blob else None))
        state.top = entry.layer_id
        self._history(state, created_by, empty=False)

    def _new_layer(self, state: _State, make: Callable[[str], None],
                   spec: ContainerSpec) -> CacheEntry:
        """Run ``make`` on the writable layer of a new step container on the stage's top;
        export and apply its changes as the next read-only layer; remove the container.

        The container has the same init layer, record and launcher as ``lamina run``'s
        (a RUN runs in it, a COPY writes into its layer), so a killed build's leftovers
        are found and removed like any container's.
        """
        writable = self.containers.create(spec, state.top).id
        try:
            make(writable)
            if self.options.timestamp is not None:
                self._clamp_times(writable, self.options.timestamp)
            return self._commit_layer(state, writable)
        finally:
            with contextlib.suppress(LaminaError):
                self.containers.remove(writable)

    def _clamp_times(self, layer: str, epoch: int) -> None:
        """Every changed path's times at most ``epoch`` (reproducible layer tars)."""
        changed = [c.path for c in self.store.changes(layer) if c.kind.name != "DELETED"]
        if not changed:
            return
        root = self.store.mount(layer, holder=self.store.process_holder)
        try:
            for path in changed:
                full = root / path
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(full)
                    if st.st_mtime_ns > epoch * 10**9 or st.st_atime_ns > epoch * 10**9:
                        ns = min(st.st_mtime_ns, epoch * 10**9)
                        os.utime(full, ns=(ns, ns), follow_symlinks=False)
        finally:
            self.store.unmount(layer, holder=self.store.process_holder)

    def _commit_layer(self, state: _State, writable: str) -> CacheEntry:
        tmp = self.store.root / "tmp"
        tmp.mkdir(mode=0o700, exist_ok=True)
        with images_lock(self.store):
            fd, name = tempfile.mkstemp(prefix="ingest-build-", dir=tmp)
            path = Path(name)
            try:
                diff_id, size = export_changes(self.store, writable, fd, path)
                top = layer_id_of(state.diff_ids, diff_id)
                if self.options.keep_blobs and not self.images.blobs.has(diff_id):
                    with open(path, "rb") as f:
                        os.fsync(f.fileno())
                    self.images.blobs.adopt(path, diff_id)
                    source = self.images.blobs.path(diff_id)
                else:
                    source = path

                def open_tar() -> IO[bytes]:
                    return open(source, "rb")

                ensure_layer(self.store, top, state.top, diff_id, open_tar,
                             what="the build step's changes")
                return CacheEntry(top, diff_id, size)
            finally:
                path.unlink(missing_ok=True)

    # -- the image -----------------------------------------------------------------------

    def _finish(self, state: _State) -> str:
        doc = state.config
        doc["rootfs"] = {"type": "layers", "diff_ids": state.diff_ids}
        for key in ("container", "container_config"):
            doc.pop(key, None)
        self._stamp(state, doc)
        config_bytes = canonical_json(doc)
        image_id = sha256_digest(config_bytes)
        config = parse_config(config_bytes)
        with images_lock(self.store):
            if not self.images.blobs.has(image_id):
                self.images.blobs.ingest(io.BytesIO(config_bytes), digest=image_id,
                                         size=len(config_bytes))
            self.images.register(image_id, config, state.layers, manifest=None,
                                 manifest_type=None, names=self.options.tags)
        return image_id

    def _stamp(self, state: _State, doc: dict[str, Any]) -> None:
        """Give the config and this build's history entries their time.

        The same inputs give the same image again, as Docker's cached builds do: the
        time of the first build of a config (keyed by the config without this build's
        times) is kept in the cache and used again. With ``--timestamp`` it is that.
        """
        ours = doc.get("history", [])[state.base_history:]
        stamp = rfc3339(self.now)
        if self.options.timestamp is None:
            for entry in ours:
                entry["created"] = ""
            doc["created"] = ""
            key = step_key(None, "image", config=canonical_json(doc).decode())
            stamp = self.cache.stamp(key, stamp)
        for entry in ours:
            entry["created"] = stamp
        doc["created"] = stamp

    def _say(self, line: str) -> None:
        if not self.options.quiet:
            print(line, file=self.out, flush=True)


def _where(step: Instruction) -> str:
    loc = step.location
    return f"{loc.filename}:{loc.line}"


def _name(source: object) -> str:
    return source if isinstance(source, str) else f"<<{getattr(source, 'name', '')}"


def _copy_doc(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a config document, to change freely."""
    return json.loads(json.dumps(doc))
