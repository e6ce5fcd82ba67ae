"""`roomserver run` with partitions on one machine: one worker process per partition.

Each partition must be processed by exactly one worker, with its own consumer and
database, and a Python process uses one core, so N partitions run as N processes
(`roomserver run --partition K`). This supervisor starts the embedded nats-server once
(when no servers are configured) and hands its address to every worker, restarts a
worker that dies (with a back-off, so a worker failing at start-up does not spin), and
on SIGINT/SIGTERM stops them all before the server. In production each partition is its
own service instead (deploy/roomserver@.service); this is the one-machine form.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import structlog

from worker.bus.server import EmbeddedNatsServer
from worker.config import Config, env_var
from worker.storage.lock import StorageLock

log = structlog.get_logger(__name__)

#: Exit statuses after which restarting cannot help: the configuration (78) is wrong or
#: another process holds the partition's directory (5). worker.cli.common has the table.
_PERMANENT: Final = frozenset({5, 78})
#: Back-off between restarts of one worker: doubled after each quick failure.
RESTART_DELAY: Final = 0.5
RESTART_MAX_DELAY: Final = 30.0
#: A worker that ran this long before dying is restarted at once.
HEALTHY_RUN: Final = 60.0
#: Seconds workers get to finish their batch and flush after SIGTERM, before SIGKILL.
STOP_TIMEOUT: Final = 30.0


@dataclass(slots=True)
class _Child:
    partition: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    delay: float = RESTART_DELAY
    restarts: int = 0
    exits: list[int] = field(default_factory=list)


class Supervisor:
    """Runs partition workers 0..N-1 as child processes until stopped."""

    def __init__(self, config: Config, config_path: str | None) -> None:
        self.config = config
        self._config_path = config_path
        self._children = [_Child(k) for k in range(config.partitions.count)]
        self._servers: str | None = None

    def worker_command(self, partition: int) -> list[str]:
        """The command line of partition ``partition``'s worker."""
        command = [sys.executable, "-m", "worker.cli"]
        if self._config_path is not None:
            command += ["--config", self._config_path]
        return [*command, "run", "--partition", str(partition)]

    def worker_env(self, partition: int) -> dict[str, str]:
        """The worker's environment: the embedded server's address, and a metrics port
        of its own (``metrics.listen_port + K``) so that N workers can share a host."""
        env = dict(os.environ)
        if self._servers is not None:
            env[env_var("nats", "servers")] = self._servers
        metrics = self.config.metrics
        if metrics.enabled:
            env[env_var("metrics", "listen_port")] = str(metrics.listen_port + partition)
        return env

    async def run(self, stop: asyncio.Event) -> int:
        """Supervise until ``stop`` is set (0), or a worker fails for good (its status)."""
        async with AsyncExitStack() as stack:
            if self.config.nats.embedded:
                # The server stores under <storage.path>/nats: the directory is ours.
                stack.enter_context(StorageLock(Path(self.config.storage.path)))
                server = EmbeddedNatsServer.from_config(self.config)
                await stack.enter_async_context(server)
                self._servers = server.url
                log.info("embedded nats-server started", url=server.url)
            stack.push_async_callback(self._stop_all)
            log.info("starting partition workers", partitions=len(self._children))
            for child in self._children:
                await self._start(child)
            return await self._watch(stop)
        return 0  # pragma: no cover - the exit stack does not swallow exceptions

    async def _start(self, child: _Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *self.worker_command(child.partition),
            env=self.worker_env(child.partition),
            # Its own process group: a terminal's Ctrl-C reaches the supervisor, which
            # stops the workers in order (workers first, then the server).
            start_new_session=True,
        )
        child.started = time.monotonic()
        log.info("partition worker started", partition=child.partition, pid=child.process.pid)

    async def _watch(self, stop: asyncio.Event) -> int:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                waits = {
                    asyncio.ensure_future(child.process.wait()): child
                    for child in self._children
                    if child.process is not None
                }
                done, pending = await asyncio.wait(
                    {*waits, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in pending:
                    if task is not stopping:
                        task.cancel()
                for task in done:
                    child = waits.get(task)
                    if child is None or stop.is_set():
                        continue
                    status = task.result()
                    if status in _PERMANENT:
                        log.error(
                            "partition worker cannot run; stopping all",
                            partition=child.partition,
                            exit_status=status,
                        )
                        return int(status)
                    await self._restart(child, status, stop)
        finally:
            stopping.cancel()
        return 0

    async def _restart(self, child: _Child, status: int, stop: asyncio.Event) -> None:
        ran = time.monotonic() - child.started
        child.delay = RESTART_DELAY if ran >= HEALTHY_RUN else child.delay
        log.warning(
            "partition worker died; restarting it",
            partition=child.partition,
            exit_status=status,
            ran_seconds=round(ran, 1),
            delay=child.delay,
        )
        child.exits.append(status)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), child.delay)
        child.delay = min(child.delay * 2, RESTART_MAX_DELAY)
        if not stop.is_set():
            child.restarts += 1
            await self._start(child)

    async def _stop_all(self) -> None:
        running = [c.process for c in self._children if c.process and c.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        await _wait_or_kill(running, STOP_TIMEOUT)
        log.info("partition workers stopped")


async def _wait_or_kill(processes: Sequence[asyncio.subprocess.Process], timeout: float) -> None:
    if not processes:
        return
    _, pending = await asyncio.wait(
        {asyncio.ensure_future(p.wait()) for p in processes}, timeout=timeout
    )
    if pending:
        for process in processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        await asyncio.gather(*(p.wait() for p in processes))
