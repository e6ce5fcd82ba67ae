"""Wiring: NATS (embedded or external), streams, the consumer loop and the database thread.

The loop is fetch → process the batch in the database thread (one transaction) →
ack or terminate each input → publish the outbox. Outputs are durable in the outbox
before any input is acknowledged, so the order of the last two steps never loses
anything; publishing after the acks keeps the consumer's pending window short.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import ParamSpec, TypeVar

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from worker.bus.connection import connect
from worker.bus.consumer import PullConsumer
from worker.bus.publisher import Outgoing, Publisher
from worker.bus.server import EmbeddedNatsServer
from worker.bus.streams import ensure_streams
from worker.bus.subjects import Subjects
from worker.config import Config
from worker.pipeline import Disposition, InboundMessage, Pipeline
from worker.storage.database import Database, is_transient

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Outbox rows published per round trip when draining a backlog.
OUTBOX_CHUNK = 2000
#: Seconds before a batch that hit a transient fault is redelivered.
TRANSIENT_RETRY_DELAY = 1.0


class Worker:
    """One roomserver worker: owns the database thread and the NATS connection."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.subjects = Subjects(config.streams.subject_prefix)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roomserver-db")
        self._db: Database | None = None
        self._pipeline: Pipeline | None = None
        self._publisher: Publisher | None = None
        self.nc: NATS | None = None
        #: Set once streams exist and the consumer is running (tests and health wait on it).
        self.ready = asyncio.Event()
        self.batches = 0
        self._progress = asyncio.Condition()

    @property
    def pipeline(self) -> Pipeline:
        assert self._pipeline is not None, "the worker is not running"
        return self._pipeline

    async def _in_db(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then finish the batch in hand, flush and close."""
        async with AsyncExitStack() as stack:
            servers: list[str] | None = None
            if self.config.nats.embedded:
                server = EmbeddedNatsServer.from_config(self.config)
                await stack.enter_async_context(server)
                servers = [server.url]
                log.info("embedded nats-server started", url=server.url)
            self.nc = await connect(self.config.nats, servers)
            stack.push_async_callback(self._close_nats)
            js = self.nc.jetstream()
            await ensure_streams(js, self.config)
            self._db = await self._in_db(Database, Path(self.config.storage.path))
            stack.push_async_callback(self._close_db)
            problems = await self._in_db(self._db.integrity_check)
            if problems:
                raise RuntimeError(f"database integrity check failed: {'; '.join(problems)}")
            self._pipeline = Pipeline(self._db, self.subjects)
            self._publisher = Publisher(js, self.config)
            consumer = PullConsumer(js, self.config)
            await consumer.start()
            stack.push_async_callback(consumer.close)
            await self._flush_outbox()
            self.ready.set()
            log.info(
                "worker ready",
                storage=str(self._db.path),
                input_stream=self.config.streams.input,
                filter_subject=self.config.consumer.filter_subject,
            )
            # Stop is checked between batches: a fetch waits at most fetch_timeout, and
            # a batch in hand is always finished, so shutdown never strands a message.
            while not stop.is_set():
                messages = await consumer.fetch_batch()
                if messages:
                    await self._handle(messages)
            log.info("worker stopping")

    async def _handle(self, messages: list[Msg]) -> None:
        """Process one fetched batch and settle every message in it."""
        inbound = [
            InboundMessage(m.subject, m.data, m.metadata.sequence.stream if m.metadata else 0)
            for m in messages
        ]
        try:
            dispositions = await self._in_db(self.pipeline.process_batch, inbound)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("transient database fault; batch will be redelivered", error=str(exc))
            for m in messages:
                await m.nak(delay=TRANSIENT_RETRY_DELAY)
            return
        for m, disposition in zip(messages, dispositions, strict=True):
            if disposition is Disposition.ACK:
                await m.ack()
            else:
                await m.term()
        self.batches += 1
        await self._flush_outbox()
        async with self._progress:
            self._progress.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until `predicate` holds after some batch (for tests and tools that feed
        the worker and need to know it has caught up)."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(predicate), timeout)

    async def _flush_outbox(self) -> None:
        """Publish everything committed but not yet published, oldest first.

        Retries while NATS is away; nothing new is fetched meanwhile, so memory stays
        bounded by one batch.
        """
        assert self._db is not None and self._publisher is not None
        db, publisher = self._db, self._publisher
        delay = 0.2
        while True:
            rows = await self._in_db(db.outbox_pending, OUTBOX_CHUNK)
            if not rows:
                return
            try:
                await publisher.publish_many(
                    Outgoing(subject, payload, msg_id) for _, subject, msg_id, payload in rows
                )
            except Exception as exc:
                log.warning("publishing outputs failed; retrying", error=repr(exc), delay=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.2
            await self._in_db(db.outbox_delete_through, rows[-1][0])

    async def _close_nats(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    async def _close_db(self) -> None:
        if self._db is not None:
            await self._in_db(self._db.close)
        self._executor.shutdown(wait=True)
