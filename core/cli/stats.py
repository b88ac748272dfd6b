"""``lamina stats``: Docker's live table of what running containers use.

Each line is two readings a second apart (core/launcher/stats.py): CPU as a share of
the host's (100% is one CPU), memory against its limit, network and block I/O so far,
and the number of processes. ``--no-stream`` prints one table; without it the table is
redrawn every second until Ctrl-C (on a terminal over the last one, elsewhere one after
the other).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from ..errors import LaminaError
from .output import print_table, report

if TYPE_CHECKING:
    from ..containers.store import Container
    from ..engine import Engine
    from ..launcher.stats import Usage

#: the column names of ``--format 'table ...'``, by field
HEADERS = {"Container": "CONTAINER", "ID": "CONTAINER ID", "Name": "NAME",
           "CPUPerc": "CPU %", "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %",
           "NetIO": "NET I/O", "BlockIO": "BLOCK I/O", "PIDs": "PIDS"}
#: seconds between the two readings of one table
INTERVAL = 1.0


def stats_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true",
                   help="every container (default: the running ones)")
    p.add_argument("--no-stream", action="store_true", help="print one table and exit")
    p.add_argument("--no-trunc", action="store_true", help="whole container ids")
    p.add_argument("--format", default="table",
                   help="a Go template of the fields " + ", ".join(HEADERS)
                   + " (`table TEMPLATE` for columns)")
    p.add_argument("containers", nargs="*", metavar="CONTAINER",
                   help="the containers to show (default: all running ones)")


def cmd_stats(args: argparse.Namespace, engine: Engine) -> int:
    from ..launcher import stats

    status = 0
    terminal = sys.stdout.isatty() and not args.no_stream
    while True:
        shown, failed = _containers(args, engine)
        status = status or failed
        if not shown and args.containers:
            return status  # none of those named is there
        before = {c.id: stats.sample(c) for c in shown}
        time.sleep(INTERVAL)
        after = {c.id: stats.sample(c) for c in shown}
        rows = []
        for c in shown:
            first, second = before[c.id], after[c.id]
            use = stats.usage(first, second) if first and second else None
            rows.append(_row(c, use, args))
        if terminal:
            sys.stdout.write("\033[2J\033[H")  # over the last table, as Docker's
        _print(rows, args.format)
        sys.stdout.flush()
        if args.no_stream:
            return status


def _containers(args: argparse.Namespace, engine: Engine) -> tuple[list[Container], int]:
    """The containers to show now, and 1 if one that was named is not there."""
    from ..containers.store import ContainerStore
    from ..launcher.monitor import reconcile

    failed = 0
    with engine.open_store() as store:
        reconcile(store)
        containers = ContainerStore(store)
        if not args.containers:
            return [c for c in containers.containers() if args.all or c.running], 0
        found = []
        for ref in args.containers:
            try:
                found.append(containers.get(ref))
            except LaminaError as exc:
                report(exc)
                failed = 1
    return found, failed


def _row(c: Container, use: Usage | None, args: argparse.Namespace) -> dict[str, Any]:
    from .sizes import human_binary, human_size

    ident = c.id if args.no_trunc else c.id[:12]
    if use is None:  # not running: Docker's zeros
        return {"Container": ident, "ID": ident, "Name": c.name, "CPUPerc": "0.00%",
                "MemUsage": "0 B / 0 B", "MemPerc": "0.00%", "NetIO": "0 B / 0 B",
                "BlockIO": "0 B / 0 B", "PIDs": "0"}
    return {"Container": ident, "ID": ident, "Name": c.name,
            "CPUPerc": f"{use.cpu_percent:.2f}%",
            "MemUsage": f"{human_binary(use.memory)} / {human_binary(use.memory_limit)}",
            "MemPerc": f"{use.memory_percent:.2f}%",
            "NetIO": f"{human_size(use.net_rx)} / {human_size(use.net_tx)}",
            "BlockIO": f"{human_size(use.block_read)} / {human_size(use.block_write)}",
            "PIDs": str(use.pids)}


def _print(rows: list[dict[str, Any]], template: str) -> None:
    if template != "table":
        from .gotemplate import render_rows

        if template == "json":  # Docker's: one object per line, as {{json .}}
            template = "{{json .}}"
        sys.stdout.write(render_rows(template, rows, HEADERS))
        return
    columns = ["ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO", "PIDs"]
    print_table(None, [HEADERS[k] for k in columns], [[r[k] for k in columns] for r in rows])
