"""Wiring: NATS (embedded or external), streams, the pipeline's process and the running
parts of worker.runner.

The input loop fetches a batch, has the pipeline process it (one transaction, in the
pipeline's own process: worker.runner.pipeline_process), acks or terminates each input
and hands the batch's outputs to the outbox relay.
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
from worker.metrics import MetricsServer, WorkerMetrics
from worker.pipeline import OutboxRow
from worker.query import QueryService
from worker.runner.common import (
    NATS_ERRORS,
    NatsLink,
    Progress,
    SideWork,
    unless_stopped,
)
from worker.runner.held_timer import HeldTimer
from worker.runner.input_loop import InputLoop
from worker.runner.outbox_relay import OutboxRelay
from worker.runner.parked_retries import ParkedRetries
from worker.runner.pipeline_handle import LocalPipeline, PipelineHandle
from worker.runner.pipeline_process import GC_GEN0_THRESHOLD, PipelineProcess
from worker.storage.database import DB_FILENAME, storage_fault
from worker.storage.lock import StorageLock

log = structlog.get_logger(__name__)


class Worker:
    """One roomserver worker: owns the pipeline's process and the NATS connection.

    `separate_process=False` runs the pipeline in a database thread of this process
    instead (worker.runner.pipeline_handle.LocalPipeline), for tests that read the
    pipeline's own objects."""

    def __init__(
        self, config: Config, partition: int | None = None, *, separate_process: bool = True
    ) -> None:
        self.config = config
        #: The partition this worker processes (config is already `for_partition`'s),
        #: whose query and admin subjects it answers; None without partitions.
        self.partition = partition
        self.subjects = Subjects(config.streams.subject_prefix)
        self.separate_process = separate_process
        self._pipeline: PipelineHandle | None = None
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
            counters=lambda: p.counters if (p := self._open_pipeline()) else None,
            held=lambda: p.held_count if (p := self._open_pipeline()) else None,
            parked=lambda: p.parked_count if (p := self._open_pipeline()) else 0,
            health=self.health,
        )
        self.metrics_server: MetricsServer | None = None

    def health(self) -> dict[str, bool]:
        """Readiness: all must hold for the worker to make progress."""
        nats = self._nats_health
        return {
            **(nats.checks() if nats else {"nats_connected": False, "nats_answering": False}),
            "consumer_running": self._input is not None and self._input.running,
            "database_open": self._open_pipeline() is not None,
        }

    def _open_pipeline(self) -> PipelineHandle | None:
        """The pipeline, once its database is open."""
        pipeline = self._pipeline
        return pipeline if pipeline is not None and pipeline.is_open else None

    @property
    def pipeline(self) -> PipelineHandle:
        """The pipeline as the running parts reach it (its counts, for tests)."""
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
        relay = self._relay = OutboxRelay(pipeline, Publisher(js, self.config), link, self.metrics)
        consumer = PullConsumer(js, self.config)
        stack.push_async_callback(consumer.close)
        loop = self._input_loop(js, consumer, link, pipeline, relay)
        await loop.resume(stop)
        left = await relay.drain(stop)
        if left:
            log.info("published outputs a previous run had committed but not sent", count=left)
        side = SideWork(pipeline, self._publish_committed)
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
        lock = stack.enter_context(StorageLock(Path(self.config.storage.path)))
        # Started now so that its start-up overlaps the connection; stopped (and waited
        # for) before the lock is let go.
        self._pipeline = self._start_pipeline(lock)
        stack.push_async_callback(self._stop_pipeline)
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

    def _start_pipeline(self, lock: StorageLock) -> PipelineHandle:
        if self.separate_process:
            return PipelineProcess(self.metrics, self.config.log, lock.fileno())
        return LocalPipeline(self.metrics)

    async def _stop_pipeline(self) -> None:
        if self._pipeline is not None:
            await self._pipeline.stop()

    async def _open_database(self, stack: AsyncExitStack) -> PipelineHandle:
        pipeline = self.pipeline
        budget = self.config.storage.cache_budget
        log.info("cache budget", cache_mb=budget.mb, bounds=budget.bounds())
        await pipeline.open(
            Path(self.config.storage.path),
            self.subjects.prefix,
            self.config.pipeline.held_max_wait,
            budget.mb,
        )
        stack.push_async_callback(pipeline.close)
        return pipeline

    def _input_loop(
        self,
        js: JetStreamContext,
        consumer: PullConsumer,
        link: NatsLink,
        pipeline: PipelineHandle,
        relay: OutboxRelay,
    ) -> InputLoop:
        self._input = InputLoop(
            self.config,
            js,
            consumer,
            link,
            pipeline,
            relay,
            self.progress,
            self.metrics,
        )
        return self._input

    def _log_ready(self) -> None:
        self.ready.set()
        log.info(
            "worker ready",
            storage=str(self.pipeline.path),
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


async def _unsubscribe(subscription: Any) -> None:
    with contextlib.suppress(*NATS_ERRORS):
        await subscription.unsubscribe()
