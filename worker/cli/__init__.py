"""The `roomserver` command: run the worker, feed it, generate demo rooms, ask it.

Each command is a small function over the same configuration loader, so the CLI and
the daemon always agree on subjects, stream names and storage paths; one module per
group of commands, and everything that talks to NATS goes through `worker.client`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from worker import __version__
from worker.cli import (
    federation,
    generate,
    inspect,
    operator,
    partitions,
    publish,
    queries,
    run,
)
from worker.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_STORAGE_FAULT,
    EXIT_STORAGE_LOCKED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    error,
    exit_status,
)
from worker.config import ConfigError, load_config
from worker.errors import RoomserverError
from worker.logs import configure_logging

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_STORAGE_FAULT",
    "EXIT_STORAGE_LOCKED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "main",
]

DEFAULT_CONFIG = "config/roomserver.toml"

log = structlog.get_logger(__name__)

DESCRIPTION = """\
roomserver: a Matrix roomserver that runs as a NATS JetStream worker.

The worker (`roomserver run`) takes Matrix room events from NATS, checks each against
its room's rules, keeps every room's state in SQLite and publishes what changed. The
other commands feed it, ask it questions, and help repair it."""

EPILOG = """\
common commands:
  run                          run the worker in the foreground
  generate --out room.jsonl    write a demo room as JSONL events
  publish room.jsonl           send events to the worker
  rooms, state ROOM, event ID, members ROOM, held
                               ask the running worker (over NATS)
  stats, verify, graph ROOM    read the database file (no worker needed)
  parked, retry ROOM, deadletters, replay
                               find and repair what failed

example:
  roomserver run &
  roomserver generate --members 5 --events 20 --out room.jsonl
  roomserver publish room.jsonl
  roomserver rooms
  roomserver state '!room:example.org' --type m.room.member

NATS: -s URL, else $NATS_URL, else nats.servers from the configuration, else the
embedded server's address (nats.listen_host:listen_port). Configuration: --config
FILE, or ROOMSERVER_* environment variables.

exit statuses: 0 ok; 1 failed, or faults found; 2 usage; 3 NATS or the worker did
not answer; 4 storage fault; 5 storage locked by another worker; 6 not found (room,
event, dead letter, file, database); 78 configuration.

`roomserver COMMAND --help` describes a command; docs/queries.md has more."""


def _version() -> str:
    try:
        return importlib.metadata.version("roomserver-worker")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        path = getattr(args, "config", None)
        if path is None and Path(DEFAULT_CONFIG).exists():
            path = DEFAULT_CONFIG
        config = load_config(path)
    except ConfigError as exc:
        run.config_fault(exc)
        return EXIT_CONFIG
    configure_logging(config.log)
    try:
        result: int = args.func(config, args)
    except BrokenPipeError:
        # The reader went away (`roomserver state ... | head`): not a failure of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except RoomserverError as exc:
        error(f"{exc.message} ({exc.code})")
        return exit_status(exc)
    except OSError as exc:
        log.debug("the command failed", exc_info=True)
        error(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
        return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_FAILURE
    except Exception as exc:
        # One line, never a traceback (it is in the log at debug level).
        log.debug("the command failed", exc_info=True)
        first_line = (str(exc) or type(exc).__name__).splitlines()[0]
        error(f"{args.command}: {first_line}")
        return EXIT_FAILURE
    return result


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help=f"TOML configuration file (default {DEFAULT_CONFIG} when it exists)",
    )
    parser = argparse.ArgumentParser(
        prog="roomserver",
        description=DESCRIPTION,
        epilog=EPILOG,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"roomserver {_version()}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND", dest="command")
    for group in (run, publish, generate, queries, federation, inspect, operator, partitions):
        group.add_commands(sub, common)
    return parser
