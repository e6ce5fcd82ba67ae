"""The operator's repair commands: `roomserver parked|retry|deadletters|replay`.

`parked` reads the database file (read-only, beside the worker or without one), so a
parked room is visible even while the worker is stopped. `retry` asks the running
worker over NATS (`<prefix>.admin.retry`), which processes the room's waiting inputs
between two batches. `deadletters` and `replay` work on the dead-letter stream alone,
through NATS; the worker processes a replayed input like any other. Everything that
talks to NATS goes through `worker.client`.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from worker.bus.deadletters import DeadLetterRecord
from worker.cli.common import (
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    ask,
    error,
    nats_options,
    table,
    when,
)
from worker.client import RoomserverClient
from worker.config import Config
from worker.storage.database import DB_FILENAME
from worker.storage.parked import ParkedRoom, list_parked

#: Seconds `roomserver retry` waits by default: a room may have many waiting inputs.
RETRY_TIMEOUT: Final = 120.0


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register the commands on the `roomserver` parser."""
    parked = sub.add_parser(
        "parked",
        parents=[common],
        help="rooms stopped by an unexpected error, with the input and the error "
        "(reads the database file; no worker needed)",
    )
    parked.add_argument("room", nargs="?", help="only this room")
    parked.add_argument("--json", action="store_true", help="print them as JSON")
    parked.add_argument("--traceback", action="store_true", help="also print each traceback")
    parked.set_defaults(func=cmd_parked)

    retry = sub.add_parser(
        "retry",
        parents=[nats_options(common, timeout=RETRY_TIMEOUT, what="the worker")],
        help="process a parked room's waiting inputs now, from the one that failed "
        "(asks the running worker)",
    )
    retry.add_argument("room", help="room ID")
    retry.set_defaults(func=cmd_retry)

    selection = nats_options(common, what="NATS")
    selection.add_argument("--code", help="only dead letters with this error code")
    selection.add_argument("--room", help="only dead letters of this room")

    deadletters = sub.add_parser(
        "deadletters",
        parents=[selection],
        help="list the dead-letter stream: time, sequence, code, room, message",
    )
    deadletters.set_defaults(func=cmd_deadletters)

    replay_parser = sub.add_parser(
        "replay",
        parents=[selection],
        help="publish dead letters' original inputs again, to their original subjects",
    )
    replay_parser.add_argument(
        "sequences",
        nargs="*",
        type=int,
        metavar="SEQUENCE",
        help="dead-letter stream sequences (as `roomserver deadletters` shows them)",
    )
    replay_parser.add_argument(
        "--all", action="store_true", help="every dead letter matching the filters, or all"
    )
    replay_parser.set_defaults(func=cmd_replay)


# -- parked ------------------------------------------------------------------------------------


def _parked_map(room: ParkedRoom, with_traceback: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "room_id": room.room_id,
        "event_id": room.event_id,
        "stream_sequence": room.stream_sequence,
        "error": room.error,
        "parked_at_ms": room.parked_at_ms,
        "failures": room.failures,
        "waiting_inputs": room.inputs,
    }
    if with_traceback:
        result["traceback"] = room.traceback
    return result


def cmd_parked(config: Config, args: argparse.Namespace) -> int:
    path = Path(config.storage.path) / DB_FILENAME
    if not path.exists():
        error(f"there is no database at {path} (no_database)")
        return EXIT_NOT_FOUND
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rooms = list_parked(conn, args.room)
    finally:
        conn.close()
    if args.json:
        print(json.dumps({"parked": [_parked_map(r, True) for r in rooms]}, indent=2))
        return EXIT_OK
    if not rooms:
        print("no parked rooms")
        return EXIT_OK
    rows = [
        (
            r.room_id,
            r.event_id or "-",
            r.stream_sequence,
            when(r.parked_at_ms),
            r.failures,
            r.inputs,
            r.error,
        )
        for r in rooms
    ]
    headers = ["room", "event", "stream seq", "since", "failures", "inputs", "error"]
    print(table(headers, rows))
    if args.traceback:
        for r in rooms:
            print(f"\n{r.room_id}:\n{r.traceback.rstrip()}")
    return EXIT_OK


# -- retry -------------------------------------------------------------------------------------


def cmd_retry(config: Config, args: argparse.Namespace) -> int:
    async def question(client: RoomserverClient) -> dict[str, Any]:
        return (await client.retry(args.room)).to_wire()

    def show(reply: dict[str, Any]) -> int:
        room, count = reply["room_id"], reply["processed"]
        if reply["parked"]:
            print(f"{room}: still parked after {count} inputs: {reply['error']}")
            return EXIT_FAILURE
        print(f"{room}: {count} waiting inputs processed; the room runs again")
        return EXIT_OK

    return ask(config, args, question, show, name="retry")


# -- dead letters --------------------------------------------------------------------------------


async def _dead_letters(
    client: RoomserverClient, args: argparse.Namespace
) -> list[DeadLetterRecord]:
    return await client.dead_letters(room_id=args.room, code=args.code)


def cmd_deadletters(config: Config, args: argparse.Namespace) -> int:
    async def question(client: RoomserverClient) -> dict[str, Any]:
        records = await _dead_letters(client, args)
        return {"dead_letters": [r.as_map() for r in records]}

    def show(reply: dict[str, Any]) -> int:
        records = reply["dead_letters"]
        if not records:
            print("no dead letters")
            return EXIT_OK
        rows = [
            (r["sequence"], r["time"] or "-", r["code"], r["room_id"] or "-", r["message"])
            for r in records
        ]
        print(table(["seq", "time", "code", "room", "message"], rows))
        return EXIT_OK

    return ask(config, args, question, show, name="deadletters")


def cmd_replay(config: Config, args: argparse.Namespace) -> int:
    if not (args.sequences or args.code or args.room or args.all):
        error("name dead letters to replay: SEQUENCE..., --code, --room or --all")
        return EXIT_USAGE

    async def question(client: RoomserverClient) -> dict[str, Any]:
        records = await _dead_letters(client, args)
        if args.sequences:
            records = [r for r in records if r.sequence in set(args.sequences)]
        missing = sorted(set(args.sequences) - {r.sequence for r in records})
        results = await client.replay(records)
        return {
            "replayed": [
                {
                    "sequence": r.record.sequence,
                    "code": r.record.code,
                    "room_id": r.record.room_id,
                    "subject": r.record.subject,
                    "msg_id": r.msg_id,
                    "input_sequence": r.input_sequence,
                    "duplicate": r.duplicate,
                    "error": r.error,
                }
                for r in results
            ],
            "missing": missing,
        }

    def show(reply: dict[str, Any]) -> int:
        return _show_replayed(reply["replayed"], reply["missing"])

    return ask(config, args, question, show, name="replay")


def _show_replayed(replayed: Sequence[dict[str, Any]], missing: Sequence[int]) -> int:
    failed = False
    for sequence in missing:
        error(f"no dead letter {sequence} matches")
    if not replayed and not missing:
        error("no dead letters match")
        return EXIT_NOT_FOUND
    for r in replayed:
        what = f"dead letter {r['sequence']} ({r['code']}, room {r['room_id'] or '-'})"
        if r["error"]:
            failed = True
            print(f"{what}: not replayed: {r['error']}")
        elif r["duplicate"]:
            print(f"{what}: already replayed (JetStream dropped it as {r['msg_id']})")
        else:
            print(f"{what}: replayed to {r['subject']} as input {r['input_sequence']}")
    if missing:
        return EXIT_NOT_FOUND
    return EXIT_FAILURE if failed else EXIT_OK
