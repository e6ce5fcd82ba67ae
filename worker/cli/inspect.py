"""Commands on the database file: `roomserver stats|graph|verify`.

They open the database under `storage.path` read-only and need no running worker:
`stats` counts whole tables, which is not a question for the hot path's query service;
`graph` shows NIDs (snapshots and blocks), which never leave the worker; `verify`
checks the invariants the write path keeps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from worker.cli.common import (
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_STORAGE_FAULT,
    error,
    exit_status,
    size,
    table,
)
from worker.config import Config
from worker.errors import NO_DATABASE, RoomserverError
from worker.query.graph import render_dot, write_graph
from worker.storage.inspection import Inspector
from worker.verify import verify


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register the commands on the `roomserver` parser."""
    stats = sub.add_parser(
        "stats",
        parents=[common],
        help="storage counts (reads the database file directly; no worker needed)",
    )
    stats.add_argument("--json", action="store_true", help="print the counts as JSON")
    stats.set_defaults(func=cmd_stats)

    graph = sub.add_parser(
        "graph",
        parents=[common],
        help="a room's event graph as Graphviz DOT, and SVG when `dot` is installed "
        "(reads the database file directly; no worker needed)",
    )
    graph.add_argument("room", help="room ID")
    graph.add_argument(
        "--out",
        metavar="FILE|DIR|-",
        help="DOT file to write, or a directory to write it in (default: the current "
        "directory; the file is named after the room); - for stdout",
    )
    graph.add_argument(
        "--limit", type=int, default=1000, help="newest events to draw (0: all; default 1000)"
    )
    graph.add_argument("--no-svg", action="store_true", help="do not run `dot`")
    graph.set_defaults(func=cmd_graph)

    check = sub.add_parser(
        "verify",
        parents=[common],
        help="check the database (reads the file directly; run it with the worker stopped "
        "or beside it); exits 1 and names every fault found",
    )
    check.add_argument("--json", action="store_true", help="one JSON object for scripts")
    check.set_defaults(func=cmd_verify)


def _read(config: Config, work: Callable[[Inspector], int]) -> int:
    try:
        with Inspector.open(Path(config.storage.path)) as inspector:
            return work(inspector)
    except RoomserverError as exc:
        error(f"{exc.message} ({exc.code})")
        return exit_status(exc)
    except sqlite3.DatabaseError as exc:
        return _unreadable(config, exc)


def _unreadable(config: Config, exc: sqlite3.DatabaseError) -> int:
    """The file is there but SQLite cannot read it (corrupt, not a database, I/O)."""
    error(f"cannot read the database under {config.storage.path}: {exc}")
    return EXIT_STORAGE_FAULT


def cmd_stats(config: Config, args: argparse.Namespace) -> int:
    def work(inspector: Inspector) -> int:
        stats = inspector.stats()
        if args.json:
            print(json.dumps(dataclasses.asdict(stats), indent=2))
            return EXIT_OK
        rows = [
            ("rooms", f"{stats.rooms:,}"),
            ("events", f"{stats.events:,}"),
            ("  rejected", f"{stats.rejected:,}"),
            ("  soft-failed", f"{stats.soft_failed:,}"),
            ("  outliers", f"{stats.outliers:,}"),
            ("held events", f"{stats.held:,}"),
            ("state snapshots", f"{stats.snapshots:,}"),
            ("state blocks", f"{stats.blocks:,}"),
            ("block entries", f"{stats.block_entries:,}"),
            ("block bytes", size(stats.block_bytes)),
            ("outbox rows", f"{stats.outbox:,}"),
            ("database file", size(stats.file_bytes)),
        ]
        print(f"storage {inspector.path}")
        print(table(["what", "count"], rows))
        return EXIT_OK

    return _read(config, work)


def _file_name(room_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", room_id).strip("._") or "room"


def _dot_path(out: str | None, room_id: str) -> Path:
    """--out as given; a directory (existing, or ending in /) gets the room's file name."""
    name = _file_name(room_id) + ".dot"
    if out is None:
        return Path(name)
    if out.endswith(("/", os.sep)):
        Path(out).mkdir(parents=True, exist_ok=True)
    path = Path(out)
    return path / name if path.is_dir() else path


def cmd_graph(config: Config, args: argparse.Namespace) -> int:
    def work(inspector: Inspector) -> int:
        graph = inspector.graph(args.room, limit=args.limit)
        if args.out == "-":
            sys.stdout.write(render_dot(graph))
            return EXIT_OK
        path = _dot_path(args.out, args.room)
        svg = not args.no_svg
        if svg and shutil.which("dot") is None:
            error(
                "Graphviz `dot` is not on PATH: SVG skipped "
                f"(install graphviz, or run `dot -Tsvg -O {path}` elsewhere)"
            )
            svg = False
        try:
            written = write_graph(graph, path, svg=svg)
        except subprocess.CalledProcessError as exc:
            detail = exc.stderr.decode(errors="replace").strip() if exc.stderr else ""
            print(f"wrote {path}; `dot` failed on it: {detail}", file=sys.stderr)
            return EXIT_FAILURE
        shown = f"{len(graph.events)} events" + (
            f" (the newest; {graph.omitted} older not drawn)" if graph.omitted else ""
        )
        print(f"{shown}: wrote {', '.join(map(str, written))}")
        return EXIT_OK

    return _read(config, work)


def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    try:
        report = verify(Path(config.storage.path))
    except FileNotFoundError as exc:
        error(f"{exc} ({NO_DATABASE})")
        return EXIT_NOT_FOUND
    except sqlite3.DatabaseError as exc:
        return _unreadable(config, exc)
    counts = {
        "rooms": report.rooms,
        "events": report.events,
        "snapshots": report.snapshots,
        "blocks": report.blocks,
    }
    if args.json:
        print(json.dumps({"summary": counts, "faults": report.faults}))
    else:
        for fault in report.faults:
            print(f"FAULT: {fault}")
        summary = ", ".join(f"{n} {what}" for what, n in counts.items())
        print(f"checked {summary}: {len(report.faults)} faults")
    return EXIT_FAILURE if report.faults else EXIT_OK
