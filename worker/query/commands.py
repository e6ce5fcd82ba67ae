"""The operator's query commands: `roomserver state|event|rooms|members|held|stats|graph`.

`state`, `event`, `rooms`, `members` and `held` ask a running worker over NATS (the
configured servers, or the embedded server's address when none are configured), so
they see exactly what publishers and consumers see. `stats` and `graph` read the
database file directly, read-only: they need no running worker (and `stats` counts
over whole tables, which is not a question for the hot path's query service).

Tables are for people; `--json` prints the worker's reply map as JSON, for scripts.
Exit status: 0 done, 1 the worker (or the database) answered with an error, or some
asked-for event is unknown, 3 no worker or NATS answered.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.client import RoomserverClient, embedded_server_url
from worker.config import Config
from worker.errors import UNAVAILABLE, RoomserverError
from worker.query.graph import render_dot, write_graph
from worker.storage.reader import Reader, ReadError

#: Exit statuses.
OK, FAILED, UNREACHABLE = 0, 1, 3

Ask = Callable[[RoomserverClient], Awaitable[dict[str, Any]]]
Show = Callable[[dict[str, Any]], int]


def add_query_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register the commands on the `roomserver` parser."""
    asks = argparse.ArgumentParser(add_help=False, parents=[common])
    asks.add_argument("--json", action="store_true", help="print the reply as JSON")
    asks.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for NATS and the worker"
    )

    state = sub.add_parser(
        "state",
        parents=[asks],
        help="a room's current state, or the state at an event (asks the worker)",
    )
    state.add_argument("room", help="room ID")
    state.add_argument("--at", metavar="EVENT", help="the state before this event")
    state.add_argument("--after", action="store_true", help="with --at: after the event")
    state.add_argument(
        "--type", action="append", metavar="T", dest="types", help="only this event type"
    )
    state.add_argument(
        "--key",
        nargs=2,
        action="append",
        metavar=("TYPE", "STATE_KEY"),
        dest="keys",
        help="only this (type, state key)",
    )
    state.set_defaults(func=cmd_state)

    event = sub.add_parser(
        "event", parents=[asks], help="stored events with status and reason (asks the worker)"
    )
    event.add_argument("event_ids", nargs="+", metavar="ID", help="event ID")
    event.add_argument("--pdu", action="store_true", help="also print each event's PDU")
    event.set_defaults(func=cmd_event)

    rooms = sub.add_parser("rooms", parents=[asks], help="rooms the worker knows")
    rooms.set_defaults(func=cmd_rooms)

    members = sub.add_parser(
        "members", parents=[asks], help="a room's joined members (asks the worker)"
    )
    members.add_argument("room", help="room ID")
    members.add_argument(
        "--membership", default="join", help="list this membership instead (invite, ban…)"
    )
    members.add_argument("--user", help="show this one user's membership instead")
    members.add_argument("--at", metavar="EVENT", help="as before this event")
    members.set_defaults(func=cmd_members)

    held = sub.add_parser(
        "held", parents=[asks], help="events waiting for missing prev events (asks the worker)"
    )
    held.add_argument("room", nargs="?", help="room ID (default: every room)")
    held.set_defaults(func=cmd_held)

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
        "--out", help="DOT file to write (default: the room ID made file-safe, .dot); - for stdout"
    )
    graph.add_argument(
        "--limit", type=int, default=1000, help="newest events to draw (0: all; default 1000)"
    )
    graph.add_argument("--no-svg", action="store_true", help="do not run `dot`")
    graph.set_defaults(func=cmd_graph)


# -- plumbing --------------------------------------------------------------------------------


def _ask(config: Config, args: argparse.Namespace, ask: Ask, show: Show) -> int:
    """Connect, ask, print; the error handling every NATS command shares."""
    # The connection's own log lines (one per failed attempt) would only clutter the
    # answer; failing to connect is reported once, below.
    logging.getLogger("worker.bus.connection").setLevel(logging.ERROR)

    async def go() -> dict[str, Any]:
        target = ", ".join(config.nats.servers) or embedded_server_url(config)
        try:
            client = await asyncio.wait_for(
                RoomserverClient.connect(config, name="roomserver-cli", timeout=args.timeout),
                args.timeout,
            )
        except TimeoutError:
            raise RoomserverError(
                UNAVAILABLE, f"cannot reach NATS at {target} within {args.timeout:g} s"
            ) from None
        try:
            return await ask(client)
        finally:
            await client.close()

    try:
        reply = asyncio.run(go())
    except RoomserverError as exc:
        if args.json:
            print(json.dumps({"error": exc.code, "message": exc.message}))
        else:
            print(f"roomserver: {exc.message} ({exc.code})", file=sys.stderr)
        return UNREACHABLE if exc.code == UNAVAILABLE else FAILED
    if args.json:
        print(json.dumps(reply, ensure_ascii=False, indent=2))
        return OK if not reply.get("missing") else FAILED
    return show(reply)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns, two spaces apart, upper-case headers."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _state_key(value: object) -> str:
    """How the event view shows a state key: `-` for none, `""` for the empty one."""
    if value is None:
        return "-"
    return '""' if value == "" else str(value)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n:,}" if unit == "B" else f"{n:,} ({value:.1f} {unit})"
        value /= 1024
    return f"{n:,}"


# -- commands over NATS ------------------------------------------------------------------------


def cmd_state(config: Config, args: argparse.Namespace) -> int:
    if args.after and not args.at:
        print("roomserver: --after needs --at EVENT", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"room_id": args.room}
    if args.at:
        body["event_id"] = args.at
        body["at"] = "after" if args.after else "before"
    if args.types:
        body["types"] = args.types
    if args.keys:
        body["keys"] = [list(k) for k in args.keys]

    def show(reply: dict[str, Any]) -> int:
        entries = sorted(reply["state"])
        where = f"{reply['at']} {reply['event_id']}" if "event_id" in reply else "now"
        count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
        print(f"state of {reply['room_id']} {where}: {count}")
        if entries:
            print(table(["type", "state key", "event ID"], entries))
        return OK

    return _ask(config, args, lambda c: c.request("state", body), show)


def cmd_event(config: Config, args: argparse.Namespace) -> int:
    def show(reply: dict[str, Any]) -> int:
        for i, event in enumerate(reply["events"]):
            pdu = event["event"]
            rows = [
                ("event ID", event["event_id"]),
                ("room", event["room_id"]),
                ("type", pdu.get("type")),
                ("state key", _state_key(pdu.get("state_key"))),
                ("sender", pdu.get("sender")),
                ("depth", pdu.get("depth")),
                ("sent", _when(pdu["origin_server_ts"]) if "origin_server_ts" in pdu else "-"),
                ("status", event["status"]),
            ]
            if event.get("reason"):
                rows.append(("reason", event["reason"]))
            if event.get("redacted_by"):
                rows.append(("redacted by", event["redacted_by"]))
            if i:
                print()
            for key, value in rows:
                print(f"{key.ljust(11)}  {value}")
            if args.pdu:
                print(json.dumps(pdu, ensure_ascii=False, indent=2, sort_keys=True))
        for event_id in reply["missing"]:
            print(f"roomserver: event {event_id} is not stored (unknown_event)", file=sys.stderr)
        return FAILED if reply["missing"] else OK

    return _ask(config, args, lambda c: c.request("events", {"event_ids": args.event_ids}), show)


def cmd_rooms(config: Config, args: argparse.Namespace) -> int:
    def show(reply: dict[str, Any]) -> int:
        rooms = reply["rooms"]
        if not rooms:
            print("no rooms")
            return OK
        rows = [(r["room_id"], r["room_version"], r["events"]) for r in rooms]
        print(table(["room ID", "version", "events"], rows))
        return OK

    return _ask(config, args, lambda c: c.request("rooms"), show)


def cmd_members(config: Config, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"room_id": args.room}
    if args.user:
        body["user_id"] = args.user
    else:
        body["membership"] = args.membership
    if args.at:
        body["event_id"] = args.at

    def show(reply: dict[str, Any]) -> int:
        if args.user:
            print(
                table(
                    ["user ID", "membership", "event ID"],
                    [(reply["user_id"], reply["membership"] or "-", reply["event_id"] or "-")],
                )
            )
            return OK
        members = reply["members"]
        print(f"{len(members)} with membership {reply['membership']} in {reply['room_id']}")
        for user_id in members:
            print(user_id)
        return OK

    return _ask(config, args, lambda c: c.request("membership", body), show)


def cmd_held(config: Config, args: argparse.Namespace) -> int:
    body = {"room_id": args.room} if args.room else {}

    def show(reply: dict[str, Any]) -> int:
        held = reply["held"]
        if not held:
            print("no held events")
            return OK
        rows = [
            (
                h["event_id"],
                h["room_id"],
                _when(h["held_since_ms"]),
                " ".join(h["waiting_for"]) or "-",
            )
            for h in held
        ]
        print(table(["event ID", "room", "held since", "waiting for"], rows))
        return OK

    return _ask(config, args, lambda c: c.request("held", body), show)


# -- commands on the database file ----------------------------------------------------------------


def _read(config: Config, work: Callable[[Reader], Awaitable[int]]) -> int:
    async def go() -> int:
        reader = await Reader.open(Path(config.storage.path))
        try:
            return await work(reader)
        finally:
            await reader.close()

    try:
        return asyncio.run(go())
    except ReadError as exc:
        print(f"roomserver: {exc.message} ({exc.code})", file=sys.stderr)
        return FAILED


def cmd_stats(config: Config, args: argparse.Namespace) -> int:
    async def work(reader: Reader) -> int:
        stats = await reader.stats()
        if args.json:
            print(json.dumps(dataclasses.asdict(stats), indent=2))
            return OK
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
            ("block bytes", _size(stats.block_bytes)),
            ("outbox rows", f"{stats.outbox:,}"),
            ("database file", _size(stats.file_bytes)),
        ]
        print(f"storage {reader.path}")
        print(table(["what", "count"], rows))
        return OK

    return _read(config, work)


def _file_name(room_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", room_id).strip("._") or "room"


def cmd_graph(config: Config, args: argparse.Namespace) -> int:
    async def work(reader: Reader) -> int:
        graph = await reader.graph(args.room, limit=args.limit)
        if args.out == "-":
            sys.stdout.write(render_dot(graph))
            return OK
        path = Path(args.out) if args.out else Path(_file_name(args.room) + ".dot")
        try:
            written = write_graph(graph, path, svg=not args.no_svg)
        except subprocess.CalledProcessError as exc:
            detail = exc.stderr.decode(errors="replace").strip() if exc.stderr else ""
            print(f"wrote {path}; `dot` failed on it: {detail}", file=sys.stderr)
            return FAILED
        shown = f"{len(graph.events)} events" + (
            f" (the newest; {graph.omitted} older not drawn)" if graph.omitted else ""
        )
        print(f"{shown}: wrote {', '.join(map(str, written))}")
        return OK

    return _read(config, work)
