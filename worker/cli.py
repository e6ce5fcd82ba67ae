"""The `roomserver` command: run the worker, feed it, generate demo rooms, ask it.

Each subcommand is a small function over the same configuration loader, so the CLI
and the daemon always agree on subjects, stream names and storage paths.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import structlog
from tqdm import tqdm

from worker.app import Worker
from worker.bus.connection import connect, tls_context
from worker.bus.publisher import Outgoing, Publisher
from worker.bus.subjects import Subjects
from worker.config import Config, ConfigError, check_storage_writable, load_config
from worker.logs import configure_logging
from worker.matrix.hashes import compute_event_id
from worker.matrix.pdu import PduError, room_version_of_create
from worker.matrix.room_versions import RoomVersion, UnknownRoomVersion, get_room_version
from worker.query.commands import add_query_commands
from worker.query.operator import add_operator_commands
from worker.storage.database import StorageFault
from worker.storage.lock import StorageLocked
from worker.synthetic import linear_room
from worker.verify import verify

log = structlog.get_logger(__name__)

DEFAULT_CONFIG = "config/roomserver.toml"

# Exit statuses (docs/operations.md has the table): a supervisor can tell a fault to fix
# from one a restart cures. The systemd unit sets RestartPreventExitStatus=78 and
# restarts on 4 and 5 with a back-off (a full disk resumes by itself once space is back).
EXIT_OK = 0
#: The worker failed while running (or a command found faults): a restart may help.
EXIT_FAILURE = 1
#: The command line is wrong (argparse uses 2 too).
EXIT_USAGE = 2
#: The disk or the database failed (full, I/O error, corrupt): fix it, then restart.
EXIT_STORAGE_FAULT = 4
#: Another worker holds the storage directory.
EXIT_STORAGE_LOCKED = 5
#: A configuration fault (sysexits.h EX_CONFIG): a bad value, or a setting the machine
#: cannot honour (storage.path not writable, nats.listen_port taken, a TLS file unusable).
EXIT_CONFIG = 78


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        path = getattr(args, "config", None)
        if path is None and Path(DEFAULT_CONFIG).exists():
            path = DEFAULT_CONFIG
        config = load_config(path)
    except ConfigError as exc:
        _config_fault(exc)
        return EXIT_CONFIG
    configure_logging(config.log)
    try:
        result: int = args.func(config, args)
    except BrokenPipeError:
        # The reader went away (`roomserver state ... | head`): not a failure of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
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

    run = sub.add_parser("run", parents=[common], help="run the worker in the foreground")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "verify",
        parents=[common],
        help="check the database (reads the file directly; run it with the worker stopped "
        "or beside it); exits 1 and names every fault found",
    )
    check.add_argument("--json", action="store_true", help="one JSON object for scripts")
    check.set_defaults(func=cmd_verify)

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
    publish.add_argument(
        "--room-version",
        default=None,
        help="room version for rooms whose create event is not in the file",
    )
    publish.add_argument("--no-progress", action="store_true", help="no progress bar")
    publish.set_defaults(func=cmd_publish)

    generate = sub.add_parser(
        "generate", parents=[common], help="write a synthetic linear room as JSONL PDUs"
    )
    generate.add_argument("--room-version", default="10")
    generate.add_argument("--members", type=int, default=20)
    generate.add_argument("--events", type=int, default=100)
    generate.add_argument("--seed", type=int, default=1)
    generate.add_argument("--out", default="-", help="output file (default stdout)")
    generate.set_defaults(func=cmd_generate)

    # state, event, rooms, members, held, stats, graph (worker.query.commands)
    add_query_commands(sub, common)
    # parked, retry, deadletters, replay (worker.query.operator)
    add_operator_commands(sub, common)
    return parser


# -- run ------------------------------------------------------------------------------


def _config_fault(exc: ConfigError) -> None:
    print(f"roomserver: configuration: {exc}", file=sys.stderr)


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Worker(config).run(stop)

    try:
        # Settings the machine must honour, checked before anything starts or logs.
        check_storage_writable(config.storage.path)
        tls_context(config.nats)
        asyncio.run(go())
    except StorageLocked as exc:
        print(f"roomserver: {exc}", file=sys.stderr)
        return EXIT_STORAGE_LOCKED
    except StorageFault as exc:
        print(f"roomserver: {exc}", file=sys.stderr)
        return EXIT_STORAGE_FAULT
    except ConfigError as exc:
        log.debug("the configuration cannot be used", exc_info=True)
        _config_fault(exc)
        return EXIT_CONFIG
    except Exception as exc:
        # One clear line for the operator; the traceback is in the log at debug level.
        log.debug("the worker failed", exc_info=True)
        first_line = (str(exc) or type(exc).__name__).splitlines()[0]
        print(f"roomserver: the worker stopped: {first_line}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    try:
        report = verify(Path(config.storage.path))
    except FileNotFoundError as exc:
        print(f"roomserver: {exc}", file=sys.stderr)
        return 2
    summary = (
        f"{report.rooms} rooms, {report.events} events, {report.snapshots} snapshots, "
        f"{report.blocks} blocks"
    )
    if args.json:
        print(json.dumps({"summary": summary, "faults": report.faults}))
    else:
        for fault in report.faults:
            print(f"FAULT: {fault}")
        print(f"checked {summary}: {len(report.faults)} faults")
    return 1 if report.faults else 0


# -- publish ----------------------------------------------------------------------------


class _Lines:
    """Turns JSONL lines into (subject, msgpack body, msg id), remembering room versions
    from create events so later events of the same room get their event ID as msg ID."""

    def __init__(self, subjects: Subjects, kind: str | None, room_version: str | None) -> None:
        self.subjects = subjects
        self.kind = kind
        self.default_version = room_version
        self.versions: dict[str, RoomVersion] = {}
        self.unreadable = 0

    def convert(self, line: str, number: int) -> Outgoing | None:
        try:
            item = json.loads(line)
            if not isinstance(item, dict):
                raise ValueError("a line must hold a JSON object")
        except ValueError as exc:
            self.unreadable += 1
            print(f"line {number}: skipped, not a JSON object ({exc})", file=sys.stderr)
            return None
        body: dict[str, Any] = item if "event" in item else {"event": item}
        if self.kind is not None and "kind" not in body:
            body["kind"] = self.kind
        if self.default_version is not None and "room_version" not in body:
            body["room_version"] = self.default_version
        pdu = body["event"]
        room_id, event_id = self._ids(pdu, body.get("room_version"))
        if room_id is None:
            self.unreadable += 1
            print(f"line {number}: skipped, the event has no room ID", file=sys.stderr)
            return None
        payload = msgpack.packb(body, use_bin_type=True)
        return Outgoing(self.subjects.input(room_id), payload, event_id)

    def _ids(self, pdu: Any, room_version: Any) -> tuple[str | None, str | None]:
        if not isinstance(pdu, dict):
            return None, None
        version: RoomVersion | None = None
        try:
            if pdu.get("type") == "m.room.create" and pdu.get("state_key") == "":
                version = room_version_of_create(pdu)
            elif isinstance(pdu.get("room_id"), str) and pdu["room_id"] in self.versions:
                version = self.versions[pdu["room_id"]]
            elif room_version is not None:
                version = get_room_version(room_version)
        except (PduError, UnknownRoomVersion):
            version = None
        event_id: str | None = None
        if version is not None:
            try:
                event_id = compute_event_id(pdu, version)
            except Exception:  # a malformed PDU still gets published; the worker judges it
                event_id = None
        room_id = pdu.get("room_id")
        if room_id is None and version is not None and version.room_id_from_create and event_id:
            room_id = "!" + event_id[1:]
        if isinstance(room_id, str) and version is not None:
            self.versions.setdefault(room_id, version)
        return (room_id if isinstance(room_id, str) else None), event_id


def _read_lines(path: str) -> Iterator[str]:
    if path == "-":
        yield from sys.stdin
    else:
        with open(path, encoding="utf-8") as fh:
            yield from fh


def cmd_publish(config: Config, args: argparse.Namespace) -> int:
    subjects = Subjects(config.streams.subject_prefix)
    lines = _Lines(subjects, args.kind, args.room_version)

    async def go() -> tuple[int, int, int]:
        servers = list(config.nats.servers) or [
            f"nats://{config.nats.listen_host}:{config.nats.listen_port}"
        ]
        nc = await connect(config.nats, servers, name="roomserver-publish")
        publisher = Publisher(nc.jetstream(), config)
        published = duplicates = failed = 0
        batch: list[Outgoing] = []
        progress = tqdm(unit=" events", disable=args.no_progress, file=sys.stderr)

        async def flush() -> None:
            nonlocal published, duplicates, failed
            if not batch:
                return
            try:
                acks = await publisher.publish_many(batch)
            except Exception as exc:
                failed += len(batch)
                print(f"NATS refused a batch of {len(batch)}: {exc!r}", file=sys.stderr)
            else:
                for ack in acks:
                    if ack.duplicate:
                        duplicates += 1
                    else:
                        published += 1
            progress.update(len(batch))
            batch.clear()

        try:
            for number, line in enumerate(_read_lines(args.file), start=1):
                if not line.strip():
                    continue
                outgoing = lines.convert(line, number)
                if outgoing is not None:
                    batch.append(outgoing)
                if len(batch) >= 500:
                    await flush()
            await flush()
        finally:
            progress.close()
            await nc.drain()
        return published, duplicates, failed

    published, duplicates, failed = asyncio.run(go())
    print(
        f"published {published}, duplicates dropped by NATS {duplicates}, "
        f"refused by NATS {failed}, unreadable lines {lines.unreadable}"
    )
    return 0 if failed == 0 and lines.unreadable == 0 else 1


# -- generate -----------------------------------------------------------------------------


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
