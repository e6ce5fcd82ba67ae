"""`roomserver generate`: a synthetic linear room as JSONL PDUs, for demos and load."""

from __future__ import annotations

import argparse
import json
import sys

from worker.cli.common import EXIT_OK, room_version
from worker.config import Config
from worker.synthetic import linear_room


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register the command on the `roomserver` parser."""
    generate = sub.add_parser(
        "generate", parents=[common], help="write a synthetic linear room as JSONL PDUs"
    )
    generate.add_argument("--room-version", type=room_version, default="10")
    generate.add_argument("--members", type=int, default=20)
    generate.add_argument("--events", type=int, default=100)
    generate.add_argument("--seed", type=int, default=1)
    generate.add_argument("--out", default="-", help="output file (default stdout)")
    generate.set_defaults(func=cmd_generate)


def cmd_generate(config: Config, args: argparse.Namespace) -> int:
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for pdu in linear_room(
            args.room_version, members=args.members, events=args.events, seed=args.seed
        ):
            out.write(json.dumps(pdu, separators=(",", ":")) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return EXIT_OK
