"""What every `roomserver` command shares: exit statuses, one-line errors, tables,
and asking the worker over NATS through `worker.client`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from worker.client import RoomserverClient, server_urls
from worker.config import Config
from worker.errors import (
    BAD_REQUEST,
    INCOMPLETE_REPLY,
    NO_DATABASE,
    UNAVAILABLE,
    UNKNOWN_EVENT,
    UNKNOWN_ROOM,
    RoomserverError,
)
from worker.matrix.room_versions import ROOM_VERSIONS, UnknownRoomVersion, get_room_version

# Exit statuses (docs/operations.md has the table): a supervisor can tell a fault to fix
# from one a restart cures. The systemd unit sets RestartPreventExitStatus=78 and
# restarts on 4 and 5 with a back-off (a full disk resumes by itself once space is back).
EXIT_OK: Final = 0
#: The worker failed while running (or a command found faults): a restart may help.
EXIT_FAILURE: Final = 1
#: The command line is wrong (argparse uses 2 too).
EXIT_USAGE: Final = 2
#: No NATS server, or no worker, answered.
EXIT_UNREACHABLE: Final = 3
#: The disk or the database failed (full, I/O error, corrupt): fix it, then restart.
EXIT_STORAGE_FAULT: Final = 4
#: Another worker holds the storage directory.
EXIT_STORAGE_LOCKED: Final = 5
#: What was asked for does not exist: a room, an event, a dead letter, an input file,
#: the database file.
EXIT_NOT_FOUND: Final = 6
#: A configuration fault (sysexits.h EX_CONFIG): a bad value, or a setting the machine
#: cannot honour (storage.path not writable, nats.listen_port taken, a TLS file unusable).
EXIT_CONFIG: Final = 78

#: Error codes (worker.errors) and the exit status each gives.
_STATUS_OF_CODE: Final = {
    UNAVAILABLE: EXIT_UNREACHABLE,
    INCOMPLETE_REPLY: EXIT_UNREACHABLE,
    UNKNOWN_ROOM: EXIT_NOT_FOUND,
    UNKNOWN_EVENT: EXIT_NOT_FOUND,
    NO_DATABASE: EXIT_NOT_FOUND,
    BAD_REQUEST: EXIT_USAGE,
}

Ask = Callable[[RoomserverClient], Awaitable[dict[str, Any]]]
Show = Callable[[dict[str, Any]], int]


def nats_options(
    common: argparse.ArgumentParser, *, timeout: float = 10.0, what: str = "NATS and the worker"
) -> argparse.ArgumentParser:
    """The options of every command that talks to NATS."""
    parser = argparse.ArgumentParser(add_help=False, parents=[common])
    add_server_option(parser)
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")
    parser.add_argument(
        "--timeout", type=float, default=timeout, help=f"seconds to wait for {what}"
    )
    return parser


def add_server_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-s",
        "--server",
        metavar="URL",
        help="NATS server URL(s), comma-separated (default: $NATS_URL, else the "
        "configuration's nats.servers, else the embedded server's address)",
    )


def servers(config: Config, args: argparse.Namespace) -> list[str]:
    """Where to connect, as the `nats` CLI decides: -s, then NATS_URL, then the
    configuration."""
    override = getattr(args, "server", None) or os.environ.get("NATS_URL") or None
    return server_urls(config, override)


async def connect(config: Config, args: argparse.Namespace, name: str) -> RoomserverClient:
    """A client on the chosen servers, giving up after --timeout seconds."""
    # The connection's own log lines (one per failed attempt) would only clutter the
    # answer; failing to connect is reported once, by the caller.
    logging.getLogger("worker.bus.connection").setLevel(logging.ERROR)
    return await RoomserverClient.connect(
        config,
        name=f"roomserver-{name}",
        timeout=args.timeout,
        servers=servers(config, args),
        connect_timeout=args.timeout,
    )


async def answered_by(client: RoomserverClient) -> str:
    """Who answered, for the line on stderr: the query service instance (with its
    storage and host, from `$SRV.INFO`) and the NATS server."""
    via = f"via {client.server_url}"
    if client.answered_by is None:
        return via
    info = await client.worker_info(client.answered_by)
    metadata = (info or {}).get("metadata") or {}
    where = ", ".join(f"{key} {metadata[key]}" for key in ("storage", "host") if metadata.get(key))
    worker = f"worker {client.answered_by}" + (f" ({where})" if where else "")
    return f"answered by {worker} {via}"


def room_version(value: str) -> str:
    """An argparse type: a room version this worker knows."""
    try:
        return get_room_version(value).identifier
    except UnknownRoomVersion:
        known = ", ".join(ROOM_VERSIONS)
        raise argparse.ArgumentTypeError(
            f"unknown room version {value!r} (known: {known})"
        ) from None


def error(message: str) -> None:
    """One line on stderr, as every command reports a failure."""
    print(f"roomserver: {message}", file=sys.stderr)


def exit_status(exc: RoomserverError) -> int:
    """The exit status for an error code."""
    return _STATUS_OF_CODE.get(exc.code, EXIT_FAILURE)


def ask(
    config: Config, args: argparse.Namespace, question: Ask, show: Show, *, name: str = "cli"
) -> int:
    """Connect, ask, print, and say on stderr who answered; the error handling every
    NATS command shares."""

    async def go() -> tuple[dict[str, Any] | RoomserverError, str]:
        client = await connect(config, args, name)
        try:
            try:
                reply: dict[str, Any] | RoomserverError = await question(client)
            except RoomserverError as exc:
                reply = exc
            return reply, await answered_by(client)
        finally:
            await client.close()

    try:
        reply, footer = asyncio.run(go())
    except RoomserverError as exc:
        reply, footer = exc, ""
    if isinstance(reply, RoomserverError):
        if args.json:
            print(json.dumps(reply.to_wire()))
        else:
            error(f"{reply.message} ({reply.code})")
        status = exit_status(reply)
    elif args.json:
        print(json.dumps(reply, ensure_ascii=False, indent=2))
        status = EXIT_NOT_FOUND if reply.get("missing") else EXIT_OK
    else:
        status = show(reply)
    # With --json the output is for scripts, which often read stderr too: no footer.
    if footer and not args.json:
        sys.stdout.flush()
        print(footer, file=sys.stderr)
    return status


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns, two spaces apart, upper-case headers."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n:,}" if unit == "B" else f"{n:,} ({value:.1f} {unit})"
        value /= 1024
    return f"{n:,}"
