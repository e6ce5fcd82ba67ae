"""The federation commands an operator uses to see what the worker tells other servers:
`roomserver acl|user-rooms|restricted-join|visible|backfill` (over NATS, through
`worker.client`, like every query command).
"""

from __future__ import annotations

import argparse
from typing import Any

from worker.cli.common import EXIT_FAILURE, EXIT_OK, ask, nats_options, table
from worker.config import Config


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register the commands on the `roomserver` parser."""
    asks = nats_options(common)

    acl = sub.add_parser(
        "acl", parents=[asks], help="whether a server may take part in a room (its server ACL)"
    )
    acl.add_argument("room", help="room ID")
    acl.add_argument("server_name", metavar="SERVER", help="server name (a port is ignored)")
    acl.set_defaults(func=cmd_acl)

    user_rooms = sub.add_parser(
        "user-rooms", parents=[asks], help="the rooms a user is joined to (or another membership)"
    )
    user_rooms.add_argument("user", help="user ID")
    user_rooms.add_argument("--membership", default="join", help="invite, leave, ban, knock…")
    user_rooms.set_defaults(func=cmd_user_rooms)

    restricted = sub.add_parser(
        "restricted-join",
        parents=[asks],
        help="whether a user may join a restricted room, and who can authorise it",
    )
    restricted.add_argument("room", help="room ID")
    restricted.add_argument("user", help="the joining user's ID")
    restricted.add_argument(
        "--server-name", required=True, help="this (resident) server's name: whose users may vouch"
    )
    restricted.set_defaults(func=cmd_restricted_join)

    visible = sub.add_parser(
        "visible", parents=[asks], help="which events a server may see (history visibility)"
    )
    visible.add_argument("room", help="room ID")
    visible.add_argument("server_name", metavar="SERVER", help="the asking server's name")
    visible.add_argument("event_ids", nargs="+", metavar="EVENT", help="event ID")
    visible.set_defaults(func=cmd_visible)

    backfill = sub.add_parser(
        "backfill", parents=[asks], help="what /backfill would send for these events"
    )
    backfill.add_argument("room", help="room ID")
    backfill.add_argument("event_ids", nargs="+", metavar="EVENT", help="event ID to start from")
    backfill.add_argument("--limit", type=int, default=20, help="at most this many (max 100)")
    backfill.add_argument("--server-name", help="filter for this server's history visibility")
    backfill.set_defaults(func=cmd_backfill)


def cmd_acl(config: Config, args: argparse.Namespace) -> int:
    body = {"room_id": args.room, "server_name": args.server_name}

    def show(reply: dict[str, Any]) -> int:
        verdict = "allowed" if reply["allowed"] else "denied"
        acl = reply["acl_event_id"] or "no m.room.server_acl in the current state"
        print(f"{reply['server_name']} is {verdict} in {reply['room_id']} ({acl})")
        return EXIT_OK if reply["allowed"] else EXIT_FAILURE

    return ask(config, args, lambda c: c.request("server_allowed", body), show)


def cmd_user_rooms(config: Config, args: argparse.Namespace) -> int:
    body = {"user_id": args.user, "membership": args.membership}

    def show(reply: dict[str, Any]) -> int:
        rooms = reply["room_ids"]
        print(f"{len(rooms)} room(s) where {reply['user_id']} has membership {reply['membership']}")
        for room_id in rooms:
            print(room_id)
        return EXIT_OK

    return ask(config, args, lambda c: c.request("rooms_for_user", body), show)


def cmd_restricted_join(config: Config, args: argparse.Namespace) -> int:
    body = {"room_id": args.room, "user_id": args.user, "server_name": args.server_name}

    def show(reply: dict[str, Any]) -> int:
        rows = [
            ("outcome", reply["outcome"]),
            ("allowed", "yes" if reply["allowed"] else "no"),
            ("authoriser", reply["authoriser"] or "-"),
            ("errcode", reply["errcode"] or "-"),
        ]
        for key, value in rows:
            print(f"{key.ljust(10)}  {value}")
        return EXIT_OK if reply["allowed"] else EXIT_FAILURE

    return ask(config, args, lambda c: c.request("restricted_join", body), show)


def cmd_visible(config: Config, args: argparse.Namespace) -> int:
    body = {"room_id": args.room, "server_name": args.server_name, "event_ids": args.event_ids}

    def show(reply: dict[str, Any]) -> int:
        verdicts = {e: "visible" for e in reply["visible"]}
        verdicts |= {e: "redacted" for e in reply["hidden"]}
        verdicts |= {e: "not served" for e in reply["missing"]}
        print(table(["event ID", reply["server_name"]], [(e, verdicts[e]) for e in args.event_ids]))
        return EXIT_FAILURE if reply["missing"] else EXIT_OK

    return ask(config, args, lambda c: c.request("visible_to_server", body), show)


def cmd_backfill(config: Config, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"room_id": args.room, "event_ids": args.event_ids, "limit": args.limit}
    if args.server_name:
        body["server_name"] = args.server_name

    def show(reply: dict[str, Any]) -> int:
        rows = [
            (event_id, pdu.get("depth"), pdu.get("type"), pdu.get("sender"))
            for event_id, pdu in zip(reply["event_ids"], reply["events"], strict=True)
        ]
        print(f"{len(rows)} event(s), newest first")
        if rows:
            print(table(["event ID", "depth", "type", "sender"], rows))
        return EXIT_OK

    return ask(config, args, lambda c: c.request("backfill", body), show)
