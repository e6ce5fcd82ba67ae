"""Wiring: NATS (embedded or external), streams, the database thread and the running
parts of worker.runner.

The input loop fetches a batch, processes it in the database thread (one transaction),
acks or terminates each input and hands the batch's outputs to the outbox relay.
Outputs are durable in the outbox before any input is acknowledged, so the order of
the last two steps never loses anything; publishing after the acks keeps the
consumer's pending window short. Between batches the held-event timer releases events
that waited too long and parked rooms are retried on request. docs/architecture.md
draws the whole path.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sqlite3
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from worker.bus.connection import NatsHealth, connect
from worker.bus.consumer import PullConsumer
from worker.bus.publisher import Publisher
from worker.bus.server import EmbeddedNatsServer
from worker.bus.streams import ensure_streams
from worker.bus.subjects import Subjects
from worker.config import Config
from worker.metrics import MetricsServer, TimedDatabase, WorkerMetrics
from worker.pipeline import OutboxRow, Pipeline
from worker.query import QueryService
from worker.runner.common import (
    NATS_ERRORS,
    DbThread,
    NatsLink,
    Progress,
    SideWork,
    unless_stopped,
)
from worker.runner.held_timer import HeldTimer
from worker.runner.input_loop import InputLoop
from worker.runner.outbox_relay import OutboxRelay
from worker.runner.parked_retries import ParkedRetries
from worker.storage.database import DB_FILENAME, storage_fault
from worker.storage.lock import StorageLock

log = structlog.get_logger(__name__)

#: The collector's first-generation threshold. The worker keeps many long-lived objects
#: (cached events and states), and with the default of 700 the full collections they
#: provoke cost about a third of the throughput (measured with bench/fork_bench.py).
GC_GEN0_THRESHOLD = 50_000


class Worker:
    """One roomserver worker: owns the database thread and the NATS connection."""

    def __init__(self, config: Config, partition: int | None = None) -> None:
        self.config = config
        #: The partition this worker processes (config is already `for_partition`'s),
        #: whose query and admin subjects it answers; None without partitions.
        self.partition = partition
        self.subjects = Subjects(config.streams.subject_prefix)
        self._db: TimedDatabase | None = None
        self._pipeline: Pipeline | None = None
        self.nc: NATS | None = None
        self._nats_health: NatsHealth | None = None
        #: The query service (worker.query), running while the worker runs.
        self.queries: QueryService | None = None
        #: Set once streams exist and the consumer is running (tests and health wait on it).
        self.ready = asyncio.Event()
        self.progress = Progress()
        self._input: InputLoop | None = None
        self._relay: OutboxRelay | None = None
        self.metrics = WorkerMetrics(
            counters=lambda: self._pipeline.counters if self._pipeline else None,
            held=lambda: self._pipeline.held_count if self._pipeline else None,
            parked=lambda: self._pipeline.parked_count if self._pipeline else 0,
            health=self.health,
        )
        self._db_thread = DbThread(self.metrics)
        self.metrics_server: MetricsServer | None = None

    def health(self) -> dict[str, bool]:
        """Readiness: all must hold for the worker to make progress."""
        nats = self._nats_health
        return {
            **(nats.checks() if nats else {"nats_connected": False, "nats_answering": False}),
            "consumer_running": self._input is not None and self._input.running,
            "database_open": self._db is not None,
        }

    @property
    def pipeline(self) -> Pipeline:
        assert self._pipeline is not None, "the worker is not running"
        return self._pipeline

    @property
    def batches(self) -> int:
        return self.progress.batches

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until `predicate` holds after some batch (for tests and tools that feed
        the worker and need to know it has caught up)."""
        await self.progress.wait_until(predicate, timeout)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then finish the batch in hand, flush and close.

        Raises StorageLocked if another worker holds the storage directory, and
        StorageFault (one line naming the cause and the file) when the disk or the
        database fails: no input is to blame, so none is dead-lettered or parked."""
        gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
        try:
            async with AsyncExitStack() as stack:
                await self._run(stack, stop)
        except sqlite3.Error as exc:
            fault = storage_fault(exc, Path(self.config.storage.path) / DB_FILENAME)
            if fault is None:
                raise
            log.error("stopping on a storage fault", error=str(fault), sqlite_error=str(exc))
            raise fault from exc

    async def _run(self, stack: AsyncExitStack, stop: asyncio.Event) -> None:
        nc = await self._connect(stack, stop)
        if nc is None:
            log.info("stopped before NATS could be reached")
            return
        js = nc.jetstream()
        await ensure_streams(js, self.config)
        pipeline = await self._open_database(stack)
        # Queries read the same file through their own read-only connection; they
        # stop before the database closes (the exit stack unwinds in reverse).
        self.queries = await QueryService.start(
            nc,
            Path(self.config.storage.path),
            self.subjects,
            self.partition,
            self.config.storage.cache_budget,
        )
        stack.push_async_callback(self.queries.stop)
        link = NatsLink(nc)
        relay = self._relay = OutboxRelay(
            self._db_thread, pipeline, Publisher(js, self.config), link, self.metrics
        )
        consumer = PullConsumer(js, self.config)
        stack.push_async_callback(consumer.close)
        loop = self._input_loop(js, consumer, link, pipeline, relay)
        await loop.resume(stop)
        left = await relay.drain(stop)
        if left:
            log.info("published outputs a previous run had committed but not sent", count=left)
        side = SideWork(self._db_thread, pipeline, self._publish_committed)
        retries = ParkedRetries(side)
        await retries.retry_all(stop)
        retry_subscription = await nc.subscribe(
            self.subjects.admin("retry", self.partition), cb=retries.on_request
        )
        stack.push_async_callback(_unsubscribe, retry_subscription)
        held = HeldTimer(side)

        async def between_batches(stop: asyncio.Event) -> None:
            await held.tick(stop)
            await retries.answer_requests(stop)

        self._log_ready()
        await loop.run(stop, between_batches)
        log.info("worker stopping")

    async def _connect(self, stack: AsyncExitStack, stop: asyncio.Event) -> NATS | None:
        """The storage lock, the embedded nats-server if configured, metrics, and the
        connection (None if stopped before NATS could be reached)."""
        # Before anything else, the embedded nats-server above all: it stores under
        # the same directory.
        stack.enter_context(StorageLock(Path(self.config.storage.path)))
        servers: list[str] | None = None
        if self.config.nats.embedded:
            server = EmbeddedNatsServer.from_config(self.config)
            await stack.enter_async_context(server)
            servers = [server.url]
            log.info("embedded nats-server started", url=server.url)
        # After the embedded server: a server that cannot start is then the only line.
        await self._start_metrics(stack)
        nc = await unless_stopped(connect(self.config.nats, servers), stop)
        if nc is None:
            return None
        self.nc = nc
        stack.push_async_callback(self._close_nats)
        self._nats_health = await stack.enter_async_context(
            NatsHealth(nc, self.config.nats.ready_grace)
        )
        return nc

    async def _open_database(self, stack: AsyncExitStack) -> Pipeline:
        budget = self.config.storage.cache_budget
        log.info("cache budget", cache_mb=budget.mb, bounds=budget.bounds())
        db = self._db = await self._db_thread.run(
            TimedDatabase, Path(self.config.storage.path), budget.bound("nid_names")
        )
        db.commit_histogram = self.metrics.commit_seconds
        stack.push_async_callback(self._close_db)
        problems = await self._db_thread.run(db.integrity_check)
        if problems:
            raise RuntimeError(f"database integrity check failed: {'; '.join(problems)}")
        self._pipeline = Pipeline(
            db, self.subjects, held_max_wait=self.config.pipeline.held_max_wait, budget=budget
        )
        return self._pipeline

    def _input_loop(
        self,
        js: JetStreamContext,
        consumer: PullConsumer,
        link: NatsLink,
        pipeline: Pipeline,
        relay: OutboxRelay,
    ) -> InputLoop:
        self._input = InputLoop(
            self.config,
            js,
            consumer,
            link,
            self._db_thread,
            pipeline,
            relay,
            self.progress,
            self.metrics,
        )
        return self._input

    def _log_ready(self) -> None:
        assert self._db is not None
        self.ready.set()
        log.info(
            "worker ready",
            storage=str(self._db.path),
            input_stream=self.config.streams.input,
            filter_subject=self.config.consumer.filter_subject,
        )

    async def _publish_committed(self, rows: list[OutboxRow], stop: asyncio.Event) -> None:
        """Publish what a transaction outside the batches committed (a release of held
        events, a retry), after the last batch's outputs, and tell those waiting."""
        assert self._input is not None and self._relay is not None
        await self._input.settling.wait()
        await self._relay.publish(rows, stop)
        await self.progress.notify()

    async def _start_metrics(self, stack: AsyncExitStack) -> None:
        settings = self.config.metrics
        if not settings.enabled:
            return
        server = MetricsServer(self.metrics, settings.listen_host, settings.listen_port)
        try:
            await server.start()
        except OSError as exc:
            # Monitoring must never keep the worker from processing events.
            log.error(
                "metrics endpoint could not listen; running without it",
                host=settings.listen_host,
                port=settings.listen_port,
                error=str(exc),
            )
            return
        self.metrics_server = server
        stack.push_async_callback(server.close)

    async def _close_nats(self) -> None:
        nc = self.nc
        if nc is None or nc.is_closed:
            return
        with contextlib.suppress(Exception):
            # Draining needs the server; without it, pending acks are lost anyway and
            # their inputs come back as duplicates.
            await (nc.drain() if nc.is_connected else nc.close())

    async def _close_db(self) -> None:
        if self._db is not None:
            await self._db_thread.run(self._db.close)
            self._db = None
        self._db_thread.shutdown()


async def _unsubscribe(subscription: Any) -> None:
    with contextlib.suppress(*NATS_ERRORS):
        await subscription.unsubscribe()
