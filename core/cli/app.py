"""The ``lamina`` command line: the global options, the table of commands, dispatch.

Each noun has its module (:mod:`.system`, :mod:`.layer`, :mod:`.conformance`,
:mod:`.login`, :mod:`.image`, :mod:`.archive`, later container, build); the table below
names each command's handler and arguments as ``"module:function"``, imported only when
that command runs.

Every :class:`~lamina.core.errors.LaminaError` becomes one ``lamina: error:`` line
(plus a ``hint:`` line when there is one) and a non-zero exit. No traceback reaches a
user: an OSError nobody translated and any other exception (a bug) are printed the
same way, with a hint to rerun with ``--debug``, which shows the traceback of any error.
Heavy imports (rich, pytest, json) stay inside the commands that need them, and only the
sub-command that runs gets its arguments built: every command pays for its start-up
(docs/architecture.md, "Start-up").
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..config import load_config
from ..engine import Engine
from ..errors import LaminaError, host_error
from .output import report, terminal_columns

Handler = Callable[[argparse.Namespace, Engine], int]
#: ``"module:function"`` in this package, imported when the command runs
Ref = str


def _resolve(ref: Ref) -> Any:
    """The function ``ref`` names; its module is imported now (once per process)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def _engine(args: argparse.Namespace) -> Engine:
    config = load_config(args.config, driver=args.driver, root=args.root)
    plugins: tuple[object, ...] = ()
    if args.trace or os.environ.get("LAMINA_TRACE", "") not in ("", "0"):
        from ..plugins.trace import Tracer

        plugins = (Tracer(),)
    return Engine(config, plugins=plugins)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter with the width from :func:`terminal_columns`."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _CommandParser(argparse.ArgumentParser):
    """A sub-command's parser that adds its arguments only when it is used.

    A run needs one sub-command, and argparse checks the help formatting of every
    argument as it is added: adding all of them cost ~2 ms of each start.
    ``arguments`` is called with the parser before it first parses.
    """

    def __init__(self, *args: Any,
                 arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self._add_arguments = arguments

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        # the one way argparse uses a sub-command's parser; its help and usage
        # errors are printed from inside it
        if self._add_arguments is not None:
            add, self._add_arguments = self._add_arguments, None
            add(self)
        return super().parse_known_args(args, namespace)


class _VersionAction(argparse.Action):
    """``--version``: the installed version, read only when asked for.

    argparse's own version action takes the text when the parser is built, and
    every command would pay for reading the metadata.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print lamina's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from ..plugins.entrypoints import distribution_version

        print(f"lamina {distribution_version('lamina') or '(version unknown: not installed)'}")
        parser.exit()


def _untranslated(message: str) -> str:
    return message


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each sub-command's arguments are added when it is used.

    argparse passes every help and usage string through ``gettext``, which looks for a
    message catalog on disk for each (~5-10 ms of every start here, a tenth of a
    ``run``): no catalog exists for its ``messages`` domain (CPython ships none), so
    lamina's parser skips the lookup.
    """
    argparse._ = _untranslated  # type: ignore[attr-defined]
    parser = argparse.ArgumentParser(
        prog="lamina", description="Container images and layers on pluggable storage drivers.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--root", help="store root (default /var/lib/lamina for root)")
    parser.add_argument("--driver", help="storage driver (default: chosen automatically)")
    parser.add_argument("--config", help="config file (default: see docs/configuration.md)")
    parser.add_argument("--trace", action="store_true",
                        help="print each driver operation and its duration to stderr")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also LAMINA_DEBUG=1)")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_CommandParser)

    #: the top-level commands, for their aliases in the ``container`` and ``image`` groups
    registered: dict[str, tuple[Ref, str, bool | str, Ref | None, dict[str, Any]]] = {}

    def command(parent: Any, name: str, handler: Ref, help_: str, *,
                formats: bool | str = False, arguments: Ref | None = None,
                **kwargs: Any) -> argparse.ArgumentParser:
        def add_arguments(p: argparse.ArgumentParser) -> None:
            if formats == "template":
                p.add_argument("--format", default="table",
                               help="table (default), json, or a Go template as Docker's: "
                               "'{{.ID}} {{.Names}}', 'table {{.ID}}\\t{{.Status}}'")
            elif formats:
                p.add_argument("--format", choices=["table", "json"], default="table")
            if arguments is not None:
                _resolve(arguments)(p)

        p = parent.add_parser(name, help=help_, description=help_, arguments=add_arguments,
                              **kwargs)
        p.set_defaults(handler=handler)
        if parent is sub:
            registered[name] = (handler, help_, formats, arguments, kwargs)
        return p

    def alias(parent: Any, name: str, short: str) -> None:
        """``lamina <group> <name>``: the same command as ``lamina <short>`` (Docker's
        management commands, ``docker image ls`` for ``docker images``)."""
        handler, help_, formats, arguments, kwargs = registered[short]
        command(parent, name, handler, help_, formats=formats, arguments=arguments, **kwargs)

    command(sub, "info", "system:cmd_info", "show the chosen driver, why, and its status",
            formats=True)
    command(sub, "drivers", "system:cmd_drivers",
            "list installed drivers and whether they work here", formats=True)
    p = command(sub, "conformance", "conformance:cmd_conformance",
                "run the conformance suite on a driver, or on drivers x filesystems",
                arguments="conformance:conformance_arguments",
                epilog="Without --fs, --junit, --json, --workdir and --size-mb and with one "
                "driver, the suite runs in this process on a temporary directory. Any other "
                "arguments (-q, -v, ...) are passed on to pytest.")
    p.set_defaults(pytest_args=[])

    command(sub, "pull", "image:cmd_pull", "pull an image from a registry",
            arguments="image:pull_arguments")
    command(sub, "push", "push:cmd_push", "push an image to a registry",
            arguments="push:push_arguments")
    command(sub, "images", "image:cmd_images", "list images", formats="template",
            arguments="image:images_arguments")
    command(sub, "tag", "image:cmd_tag", "give an image another name",
            arguments="image:tag_arguments")
    command(sub, "rmi", "image:cmd_rmi", "remove images (and the layers only they use)",
            arguments="image:rmi_arguments")
    command(sub, "inspect", "inspect:cmd_inspect", "show containers' or images' details as JSON",
            arguments="inspect:inspect_arguments")
    command(sub, "history", "image:cmd_history", "show how an image's layers were made",
            formats="template", arguments="image:history_arguments")

    command(sub, "save", "archive:cmd_save",
            "write images to a docker save archive or an OCI layout (tar or directory)",
            arguments="archive:save_arguments")
    command(sub, "load", "archive:cmd_load",
            "load images from a docker save archive or an OCI layout (tar or directory)",
            arguments="archive:load_arguments")
    command(sub, "import", "archive:cmd_import",
            "make a one-layer image from a root filesystem tarball",
            arguments="archive:import_arguments")

    command(sub, "prune", "image:cmd_prune",
            "remove image layers and blobs no image uses, and dead pulls' leftovers",
            arguments="image:prune_arguments")

    command(sub, "build", "build:cmd_build", "build an image from a Dockerfile",
            arguments="build:build_arguments")
    command(sub, "run", "container:cmd_run", "run a command in a new container",
            arguments="container:run_arguments", add_help=False)
    command(sub, "create", "container:cmd_create", "create a container, print its id",
            arguments="container:create_arguments", add_help=False)
    command(sub, "start", "container:cmd_start", "start stopped containers",
            arguments="container:start_arguments")
    command(sub, "ps", "container:cmd_ps", "list containers", formats="template",
            arguments="container:ps_arguments")
    command(sub, "stop", "container:cmd_stop", "stop containers (SIGTERM, then SIGKILL)",
            arguments="container:stop_arguments")
    command(sub, "kill", "container:cmd_kill", "send a signal to containers",
            arguments="container:kill_arguments")
    command(sub, "wait", "container:cmd_wait", "wait for containers to exit, print their codes",
            arguments="container:wait_arguments")
    command(sub, "rm", "container:cmd_rm", "remove containers",
            arguments="container:rm_arguments")
    command(sub, "export", "container:cmd_export", "write a container's files as one tar",
            arguments="container:export_arguments")
    command(sub, "cp", "container:cmd_cp", "copy files between a container and this host",
            arguments="container:cp_arguments")
    command(sub, "restart", "container:cmd_restart", "stop containers, then start them",
            arguments="container:restart_arguments")
    command(sub, "rename", "container:cmd_rename", "give a container another name",
            arguments="container:rename_arguments")
    command(sub, "port", "container:cmd_port", "list a running container's published ports",
            arguments="container:port_arguments")
    command(sub, "top", "container:cmd_top", "list a running container's processes (ps)",
            arguments="container:top_arguments")
    command(sub, "update", "container:cmd_update", "change containers' limits or restart "
            "policy (at once when running)", arguments="container:update_arguments")
    command(sub, "pause", "container:cmd_pause", "freeze every process of containers",
            arguments="container:pause_arguments")
    command(sub, "unpause", "container:cmd_unpause", "let paused containers go on",
            arguments="container:pause_arguments")
    command(sub, "stats", "stats:cmd_stats", "show what running containers use (CPU, "
            "memory, network, block I/O, processes)", arguments="stats:stats_arguments")
    command(sub, "attach", "container:cmd_attach", "print a running container's output "
            "until it exits, with its status (not its stdin)",
            arguments="container:attach_arguments")
    command(sub, "logs", "container:cmd_logs", "print a container's output",
            arguments="container:logs_arguments")
    command(sub, "exec", "container:cmd_exec", "run a command in a running container",
            arguments="container:exec_arguments")
    command(sub, "diff", "container:cmd_diff", "list a container's changed paths (A/C/D)",
            formats=True, arguments="container:diff_arguments")
    command(sub, "commit", "container:cmd_commit", "make an image of a container's changes",
            arguments="container:commit_arguments")
    container = sub.add_parser("container", help="manage containers (Docker's `container` "
                               "commands: the same as the short ones)")
    csub = container.add_subparsers(dest="container_command", metavar="COMMAND", required=True)
    command(csub, "prune", "container:cmd_container_prune", "remove every stopped container",
            arguments="container:prune_arguments")
    for name, short in [("ls", "ps"), ("create", "create"), ("run", "run"), ("start", "start"),
                        ("stop", "stop"), ("kill", "kill"), ("wait", "wait"), ("rm", "rm"),
                        ("logs", "logs"), ("exec", "exec"), ("diff", "diff"),
                        ("commit", "commit"), ("inspect", "inspect"), ("restart", "restart"),
                        ("rename", "rename"), ("port", "port"), ("top", "top"), ("cp", "cp"),
                        ("export", "export"), ("stats", "stats"), ("pause", "pause"),
                        ("unpause", "unpause"), ("attach", "attach"),
                        ("update", "update")]:
        alias(csub, name, short)

    volume = sub.add_parser("volume", help="manage volumes: directories the store keeps for "
                            "containers (-v NAME:/path)")
    vsub = volume.add_subparsers(dest="volume_command", metavar="COMMAND", required=True)
    command(vsub, "create", "volume:cmd_create", "make a volume, print its name",
            arguments="volume:create_arguments")
    command(vsub, "ls", "volume:cmd_ls", "list volumes", formats=True,
            arguments="volume:ls_arguments")
    command(vsub, "inspect", "volume:cmd_inspect", "show volumes' details as JSON",
            arguments="volume:inspect_arguments")
    command(vsub, "rm", "volume:cmd_rm", "remove volumes no container uses",
            arguments="volume:rm_arguments")
    command(vsub, "prune", "volume:cmd_prune",
            "remove the anonymous volumes no container uses (-a: every unused one)",
            arguments="volume:prune_arguments")

    network = sub.add_parser("network", help="manage networks: bridges of their own whose "
                             "containers find each other by name (--network NAME)")
    nsub = network.add_subparsers(dest="network_command", metavar="COMMAND", required=True)
    command(nsub, "create", "network:cmd_create", "make a network, print its id",
            arguments="network:create_arguments")
    command(nsub, "ls", "network:cmd_ls", "list networks", arguments="network:ls_arguments")
    command(nsub, "inspect", "network:cmd_inspect", "show networks' details as JSON",
            arguments="network:inspect_arguments")
    command(nsub, "rm", "network:cmd_rm", "remove networks no running container is on",
            arguments="network:rm_arguments")
    command(nsub, "prune", "network:cmd_prune", "remove the networks no container is on",
            arguments="network:prune_arguments")

    image = sub.add_parser("image", help="manage images (Docker's `image` commands: the same "
                           "as the short ones, and `image prune`)")
    isub = image.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    command(isub, "prune", "image:cmd_image_prune",
            "remove untagged images no container uses (-a: every image no container uses)",
            arguments="image:image_prune_arguments")
    for name, short in [("ls", "images"), ("rm", "rmi"), ("pull", "pull"), ("push", "push"),
                        ("tag", "tag"), ("inspect", "inspect"), ("history", "history"),
                        ("save", "save"), ("load", "load"), ("import", "import"),
                        ("build", "build")]:
        alias(isub, name, short)

    layer = sub.add_parser("layer", help="layer plumbing for driver authors and tests")
    lsub = layer.add_subparsers(dest="layer_command", metavar="COMMAND", required=True)
    command(lsub, "create", "layer:cmd_create", "create an empty layer, print its id",
            arguments="layer:new_layer_arguments")
    command(lsub, "apply", "layer:cmd_apply", "create a layer from a layer tar, print its id",
            arguments="layer:apply_arguments")
    command(lsub, "ls", "layer:cmd_ls", "list layers", formats=True,
            arguments="layer:ls_arguments")
    command(lsub, "rm", "layer:cmd_rm", "remove layers", arguments="layer:ids_arguments")
    command(lsub, "mount", "layer:cmd_mount", "mount a layer (counted), print the path",
            arguments="layer:id_argument")
    command(lsub, "unmount", "layer:cmd_unmount", "drop one mount of a layer",
            arguments="layer:id_argument")
    command(lsub, "diff", "layer:cmd_diff", "write the layer's changes as an OCI layer tar",
            arguments="layer:diff_arguments")
    command(lsub, "changes", "layer:cmd_changes", "list changed paths (A/C/D)", formats=True,
            arguments="layer:id_argument")

    command(sub, "login", "login:cmd_login",
            "check credentials with a registry, then store them (0600, Docker's shape)",
            arguments="login:login_arguments")
    command(sub, "logout", "login:cmd_logout", "forget the stored credentials of a registry",
            arguments="login:logout_arguments")

    system = sub.add_parser("system", help="space used; repair or reset the store")
    ssub = system.add_subparsers(dest="system_command", metavar="COMMAND", required=True)
    command(ssub, "df", "image:cmd_df", "show the space images, layers and blobs use",
            formats=True, arguments="image:df_arguments")
    command(ssub, "prune", "system:cmd_prune",
            "remove stopped containers, unused images (and --volumes), then what nothing "
            "uses", arguments="system:prune_arguments")
    command(ssub, "boot", "system:cmd_boot",
            "start the containers whose restart policy says so after a reboot (run it "
            "once at boot, as Docker's daemon does)")
    command(ssub, "repair", "system:cmd_repair",
            "rebuild the metadata database from the layer records and what the drivers hold")
    command(ssub, "reset", "system:cmd_reset",
            "remove every layer, blob and the metadata under the root",
            arguments="system:reset_arguments")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; ``argv`` None means the process's own (the ``lamina`` command).

    Run as the command, the modules loaded so far are handed to ``gc.freeze()`` at
    once (collections during the command do not walk them), and the process ends when
    this returns: everything it made is handed to ``gc.freeze()`` first, so that the
    interpreter's exit does not search it all for reference cycles again (~9 ms of a
    `layer apply`, a tenth of it).
    Exit handlers still run and files are still flushed, except after the commands of
    :data:`QUICK_EXIT`, which end the process at once (:func:`_exit_now`).
    """
    code = 1
    if argv is None:
        # What the imports made is not garbage: later collections skip it. A command
        # makes mostly objects that live until it ends, so young-object collections
        # (every 700 allocations by default: ~4 ms of a `run`) are made rarer.
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)
    try:
        code = _run(argv)
        return code
    finally:
        if argv is None:
            gc.freeze()
            if _quick_exit:
                _exit_now(code)


#: commands whose process may end without the interpreter's shutdown (see _exit_now)
QUICK_EXIT = frozenset({"container:cmd_run", "container:cmd_exec", "container:cmd_start"})
_quick_exit = False


def _exit_now(code: int) -> None:
    """End the process at once: ``run`` is over (the container gone, the store closed, no
    thread of ours left), and the interpreter's shutdown (module teardown, exit handlers)
    cost ~10 ms of every ``run``, a tenth of it."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code & 0xFF)


def _run(argv: Sequence[str] | None) -> int:
    global _quick_exit
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    _quick_exit = argv is None and args.handler in QUICK_EXIT
    if extra:
        if args.command != "conformance":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.pytest_args = extra
    debug = args.debug or os.environ.get("LAMINA_DEBUG", "") not in ("", "0")
    try:
        return _resolve(args.handler)(args, _engine(args))
    except KeyboardInterrupt:
        print("lamina: interrupted; nothing was left half done", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # no traceback reaches a user
        if debug:
            import traceback

            traceback.print_exc()
        error = _as_lamina_error(exc)
        report(error)
        return error.exit_status


def _as_lamina_error(exc: Exception) -> LaminaError:
    """What to tell the user about ``exc``: itself, a translated OSError, or a bug."""
    if isinstance(exc, LaminaError):
        return exc
    debug_hint = "rerun with --debug to see where it happened"
    if isinstance(exc, OSError):
        error = host_error(exc)
        if error.hint is None:
            error.hint = debug_hint
        return error
    text = " ".join(str(exc).split())  # one line, whatever the exception holds
    return LaminaError(
        f"unexpected {type(exc).__name__}: {text}",
        hint=f"this is a bug in lamina: {debug_hint}, and report it with that output",
    )


if __name__ == "__main__":
    sys.exit(main())
