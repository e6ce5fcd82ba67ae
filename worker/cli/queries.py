"""The query commands: `roomserver state|event|rooms|members|held` ask a running
worker over NATS (through `worker.client`), so they see exactly what publishers and
consumers see.

Tables are for people; `--json` prints the worker's reply map as JSON, for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from worker.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    ask,
    error,
    nats_options,
    table,
    when,
)
from worker.config import Config


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register the commands on the `roomserver` parser."""
    asks = nats_options(common)

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


# -- commands over NATS ------------------------------------------------------------------------


def cmd_state(config: Config, args: argparse.Namespace) -> int:
    if args.after and not args.at:
        error("--after needs --at EVENT")
        return EXIT_USAGE
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
        return EXIT_OK

    return ask(config, args, lambda c: c.request("state", body), show)


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
                ("sent", when(pdu["origin_server_ts"]) if "origin_server_ts" in pdu else "-"),
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
        return EXIT_NOT_FOUND if reply["missing"] else EXIT_OK

    return ask(config, args, lambda c: c.request("events", {"event_ids": args.event_ids}), show)


def cmd_rooms(config: Config, args: argparse.Namespace) -> int:
    def show(reply: dict[str, Any]) -> int:
        rooms = reply["rooms"]
        if not rooms:
            print("no rooms")
            return EXIT_OK
        rows = [(r["room_id"], r["room_version"], r["events"]) for r in rooms]
        print(table(["room ID", "version", "events"], rows))
        return EXIT_OK

    return ask(config, args, lambda c: c.request("rooms"), show)


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
            return EXIT_OK
        members = reply["members"]
        print(f"{len(members)} with membership {reply['membership']} in {reply['room_id']}")
        for user_id in members:
            print(user_id)
        return EXIT_OK

    return ask(config, args, lambda c: c.request("membership", body), show)


def cmd_held(config: Config, args: argparse.Namespace) -> int:
    body = {"room_id": args.room} if args.room else {}

    def show(reply: dict[str, Any]) -> int:
        held = reply["held"]
        if not held:
            print("no held events")
            return EXIT_OK
        rows = [
            (
                h["event_id"],
                h["room_id"],
                when(h["held_since_ms"]),
                " ".join(h["waiting_for"]) or "-",
            )
            for h in held
        ]
        print(table(["event ID", "room", "held since", "waiting for"], rows))
        return EXIT_OK

    return ask(config, args, lambda c: c.request("held", body), show)


def _state_key(value: object) -> str:
    """How the event view shows a state key: `-` for none, `""` for the empty one."""
    if value is None:
        return "-"
    return '""' if value == "" else str(value)
