"""The `roomserver` command: run the worker, feed it, generate demo rooms, ask it.

Each command is a small function over the same configuration loader, so the CLI and
the daemon always agree on subjects, stream names and storage paths; one module per
group of commands, and everything that talks to NATS goes through `worker.client`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from worker.cli import federation, generate, inspect, operator, publish, queries, run
from worker.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_STORAGE_FAULT,
    EXIT_STORAGE_LOCKED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from worker.config import ConfigError, load_config
from worker.logs import configure_logging

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_STORAGE_FAULT",
    "EXIT_STORAGE_LOCKED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "main",
]

DEFAULT_CONFIG = "config/roomserver.toml"


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
    return result


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help=f"TOML configuration file (default {DEFAULT_CONFIG} when it exists)",
    )
    parser = argparse.ArgumentParser(prog="roomserver", description=__doc__, parents=[common])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    for group in (run, inspect, publish, generate, queries, federation, operator):
        group.add_commands(sub, common)
    return parser
