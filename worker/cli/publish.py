"""`roomserver publish`: inputs from a JSONL file, through `worker.client`.

Each line is a PDU, or an input map with the PDU under `event`. The client builds
each input (subject, body, and the event ID as msg ID, so JetStream drops a second
publish of the same event) and chooses the room version the one way it always does:
a create event's own, then the input's `room_version`, then what it learnt from
earlier lines, then `--room-version`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, TextIO

from tqdm import tqdm

from worker.bus.publisher import Outgoing
from worker.cli.common import (
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    add_server_option,
    connect,
    error,
    exit_status,
    room_version,
)
from worker.client import RoomserverClient
from worker.config import Config
from worker.errors import UNAVAILABLE, RoomserverError

#: Inputs published per round trip.
BATCH: Final = 500
#: Fields of an input map that `RoomserverClient.input_message` takes by name.
_OPTIONS: Final = (
    "kind",
    "room_version",
    "state_event_ids",
    "origin",
    "send_as_server",
    "transaction_id",
)


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register the command on the `roomserver` parser."""
    publish = sub.add_parser(
        "publish", parents=[common], help="publish PDUs or input maps from a JSONL file"
    )
    publish.add_argument(
        "file", help="one PDU or input map (with an `event` key) per line; - for stdin"
    )
    publish.add_argument(
        "--kind",
        choices=["new", "outlier", "old"],
        default=None,
        help="input kind for bare PDUs (default new)",
    )
    add_server_option(publish)
    publish.add_argument(
        "--room-version",
        type=room_version,
        default=None,
        help="room version for rooms whose create event is not in the file",
    )
    publish.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for NATS, and for each batch's acks (default 10)",
    )
    publish.add_argument("--no-progress", action="store_true", help="no progress bar")
    publish.set_defaults(func=cmd_publish)


@dataclass
class _Counts:
    published: int = 0
    duplicates: int = 0
    refused: int = 0
    unreadable: int = 0


def _lines(lines: TextIO) -> Iterator[str]:
    with lines:
        yield from lines


def _input(client: RoomserverClient, line: str, kind: str | None) -> Outgoing:
    """One line as an input; ValueError (or TypeError) says why it cannot be one."""
    try:
        item = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(item, dict):
        raise ValueError("not a JSON object")
    body: dict[str, Any] = item if "event" in item else {"event": item}
    event = body["event"]
    if not isinstance(event, dict):
        raise ValueError("the input's `event` is not a JSON object")
    options = {k: body[k] for k in _OPTIONS if body.get(k) is not None}
    if kind is not None:
        options.setdefault("kind", kind)
    extra = {k: v for k, v in body.items() if k != "event" and k not in _OPTIONS}
    return client.input_message(event, **options, extra=extra)


def cmd_publish(config: Config, args: argparse.Namespace) -> int:
    counts = _Counts()
    # The file first: a wrong name is reported at once, without waiting for NATS.
    try:
        source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        error(f"cannot read {args.file}: {exc.strerror or exc}")
        return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_FAILURE
    try:
        via = asyncio.run(_publish_file(config, args, source, counts))
    except RoomserverError as exc:
        error(f"{exc.message} ({exc.code})")
        return exit_status(exc)
    print(
        f"published {counts.published}, duplicates dropped by NATS {counts.duplicates}, "
        f"refused by NATS {counts.refused}, unreadable lines {counts.unreadable}"
    )
    print(via, file=sys.stderr)
    return EXIT_OK if counts.refused == 0 and counts.unreadable == 0 else EXIT_FAILURE


async def _publish_file(
    config: Config, args: argparse.Namespace, source: TextIO, counts: _Counts
) -> str:
    """Publish every readable line of `source`, `BATCH` at a time; the server it went
    through, for the summary."""
    client = await connect(config, args, "publish")
    via = f"via {client.server_url}"  # (the client forgets its server once closed)
    client.default_room_version = args.room_version
    batch: list[Outgoing] = []
    progress = tqdm(unit=" events", disable=args.no_progress, file=sys.stderr)
    try:
        for number, line in enumerate(_lines(source), start=1):
            if not line.strip():
                continue
            try:
                batch.append(_input(client, line, args.kind))
            except (ValueError, TypeError) as exc:
                counts.unreadable += 1
                print(f"line {number}: skipped, {exc}", file=sys.stderr)
            if len(batch) >= BATCH:
                await _flush(client, batch, counts, progress)
        await _flush(client, batch, counts, progress)
    finally:
        progress.close()
        await client.close()
    return via


async def _flush(
    client: RoomserverClient, batch: list[Outgoing], counts: _Counts, progress: tqdm[Any]
) -> None:
    """Publish the batch and count its acks, then empty it. A batch NATS refuses is
    counted and reported; losing NATS ends the run."""
    if not batch:
        return
    try:
        acks = await client.publish_messages(batch)
    except Exception as exc:
        if not client.nc.is_connected:
            raise RoomserverError(
                UNAVAILABLE,
                f"lost NATS at {client.server_url} after publishing "
                f"{counts.published + counts.duplicates} inputs",
            ) from None
        counts.refused += len(batch)
        print(f"NATS refused a batch of {len(batch)}: {exc!r}", file=sys.stderr)
    else:
        for ack in acks:
            if ack.duplicate:
                counts.duplicates += 1
            else:
                counts.published += 1
    progress.update(len(batch))
    batch.clear()
