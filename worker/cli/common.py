"""What every `roomserver` command shares: exit statuses, one-line errors, tables,
and asking the worker over NATS through `worker.client`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from worker.client import RoomserverClient
from worker.config import Config
from worker.errors import UNAVAILABLE, RoomserverError

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
#: A configuration fault (sysexits.h EX_CONFIG): a bad value, or a setting the machine
#: cannot honour (storage.path not writable, nats.listen_port taken, a TLS file unusable).
EXIT_CONFIG: Final = 78

Ask = Callable[[RoomserverClient], Awaitable[dict[str, Any]]]
Show = Callable[[dict[str, Any]], int]


def nats_options(
    common: argparse.ArgumentParser, *, timeout: float = 10.0, what: str = "NATS and the worker"
) -> argparse.ArgumentParser:
    """The options of every command that talks to NATS."""
    parser = argparse.ArgumentParser(add_help=False, parents=[common])
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")
    parser.add_argument(
        "--timeout", type=float, default=timeout, help=f"seconds to wait for {what}"
    )
    return parser


def error(message: str) -> None:
    """One line on stderr, as every command reports a failure."""
    print(f"roomserver: {message}", file=sys.stderr)


def exit_status(exc: RoomserverError) -> int:
    """The exit status for an error code."""
    return EXIT_UNREACHABLE if exc.code == UNAVAILABLE else EXIT_FAILURE


def ask(
    config: Config, args: argparse.Namespace, question: Ask, show: Show, *, name: str = "cli"
) -> int:
    """Connect, ask, print; the error handling every NATS command shares."""
    # The connection's own log lines (one per failed attempt) would only clutter the
    # answer; failing to connect is reported once, below.
    logging.getLogger("worker.bus.connection").setLevel(logging.ERROR)

    async def go() -> dict[str, Any]:
        client = await RoomserverClient.connect(
            config,
            name=f"roomserver-{name}",
            timeout=args.timeout,
            connect_timeout=args.timeout,
        )
        try:
            return await question(client)
        finally:
            await client.close()

    try:
        reply = asyncio.run(go())
    except RoomserverError as exc:
        if args.json:
            print(json.dumps(exc.to_wire()))
        else:
            error(f"{exc.message} ({exc.code})")
        return exit_status(exc)
    if args.json:
        print(json.dumps(reply, ensure_ascii=False, indent=2))
        return EXIT_OK if not reply.get("missing") else EXIT_FAILURE
    return show(reply)


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
