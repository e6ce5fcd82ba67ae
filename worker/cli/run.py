"""`roomserver run`: the worker in the foreground, with the exit statuses a supervisor
acts on (worker.cli.common has the table)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog

from worker.app import Worker
from worker.bus.connection import tls_context
from worker.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_STORAGE_FAULT,
    EXIT_STORAGE_LOCKED,
)
from worker.config import Config, ConfigError, check_storage_writable, for_partition
from worker.storage.database import StorageFault
from worker.storage.lock import StorageLocked
from worker.supervisor import Supervisor

log = structlog.get_logger(__name__)


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register the command on the `roomserver` parser."""
    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the worker in the foreground (with partitions: one per partition)",
        description="Run the worker in the foreground. With partitions.count N > 1 and no "
        "--partition, run N partition workers as child processes (restarted when one "
        "dies) and the embedded nats-server once; with --partition K, only partition K's "
        "worker (as a service of its own, against nats.servers).",
    )
    run.add_argument(
        "--partition",
        type=int,
        metavar="K",
        help="run only partition K's worker (0 to partitions.count - 1)",
    )
    run.set_defaults(func=cmd_run)


def config_fault(exc: ConfigError) -> None:
    print(f"roomserver: configuration: {exc}", file=sys.stderr)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    partition: int | None = getattr(args, "partition", None)

    async def work() -> int:
        await Worker(config, partition=partition).run(_stop_on_signals())
        return EXIT_OK

    async def supervise() -> int:
        return await Supervisor(config, getattr(args, "config", None)).run(_stop_on_signals())

    try:
        if partition is not None:
            config = for_partition(config, partition)
            if config.nats.embedded:
                raise ConfigError(
                    "nats.servers: `run --partition` needs the NATS servers; `run` without "
                    "--partition starts the embedded server and all partition workers"
                )
        # Settings the machine must honour, checked before anything starts or logs.
        check_storage_writable(config.storage.path)
        tls_context(config.nats)
        if partition is None and config.partitions.enabled:
            return asyncio.run(supervise())
        return asyncio.run(work())
    except StorageLocked as exc:
        print(f"roomserver: {exc}", file=sys.stderr)
        return EXIT_STORAGE_LOCKED
    except StorageFault as exc:
        print(f"roomserver: {exc}", file=sys.stderr)
        return EXIT_STORAGE_FAULT
    except ConfigError as exc:
        log.debug("the configuration cannot be used", exc_info=True)
        config_fault(exc)
        return EXIT_CONFIG
    except Exception as exc:
        # One clear line for the operator; the traceback is in the log at debug level.
        log.debug("the worker failed", exc_info=True)
        first_line = (str(exc) or type(exc).__name__).splitlines()[0]
        print(f"roomserver: the worker stopped: {first_line}", file=sys.stderr)
        return EXIT_FAILURE
