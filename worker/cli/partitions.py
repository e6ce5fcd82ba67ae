"""`roomserver rebuild` and `roomserver diff`: the input stream as the source of truth.

`rebuild` replays one partition's inputs (every input, without partitions) from the
input stream into a fresh database; `diff` compares two databases by event ID and
(type, state key), so a rebuild can be checked against the live database before it
replaces a lost or moved one (docs/operations.md#partitions).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Final

from worker.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, connect, error, nats_options
from worker.cli.run import config_fault
from worker.config import Config, ConfigError, for_partition
from worker.diff import diff_databases
from worker.rebuild import rebuild

#: Seconds to reach NATS; the replay itself takes as long as it takes.
REBUILD_TIMEOUT: Final = 10.0


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register the commands on the `roomserver` parser."""
    rebuild_parser = sub.add_parser(
        "rebuild",
        parents=[nats_options(common, timeout=REBUILD_TIMEOUT, what="NATS")],
        help="replay a partition's inputs from the input stream into a fresh database",
    )
    rebuild_parser.add_argument(
        "--partition", type=int, metavar="K", help="the partition (omit without partitions)"
    )
    rebuild_parser.add_argument(
        "--into", required=True, type=Path, metavar="DIR", help="an empty directory"
    )
    rebuild_parser.set_defaults(func=cmd_rebuild)

    diff = sub.add_parser(
        "diff",
        parents=[common],
        help="compare two databases: events, statuses, states, forward extremities "
        "(exit 1 on any difference)",
    )
    diff.add_argument("a", type=Path, metavar="DIR_A", help="a storage directory")
    diff.add_argument("b", type=Path, metavar="DIR_B", help="another storage directory")
    diff.set_defaults(func=cmd_diff)


def cmd_rebuild(config: Config, args: argparse.Namespace) -> int:
    partition: int | None = args.partition
    if partition is not None:
        try:
            for_partition(config, partition)  # K must be one of partitions.count
        except ConfigError as exc:
            config_fault(exc)
            return EXIT_CONFIG

    async def go() -> int:
        client = await connect(config, args, "rebuild")
        try:
            done = await rebuild(client.nc, config, partition, args.into)
        finally:
            await client.close()
        print(
            f"rebuilt {args.into}: {done.inputs} inputs up to stream sequence "
            f"{done.last_sequence}, {done.rooms} rooms, in {done.seconds:.1f} s"
        )
        return EXIT_OK

    return asyncio.run(go())


def cmd_diff(config: Config, args: argparse.Namespace) -> int:
    found = diff_databases(args.a, args.b)
    for line in found:
        print(line)
    if found:
        error(f"{len(found)} differences between {args.a} and {args.b}")
        return EXIT_FAILURE
    print(f"{args.a} and {args.b} hold the same events, states and rooms")
    return EXIT_OK
