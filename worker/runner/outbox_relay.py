"""The outbox relay: publishes what transactions committed, oldest first.

The usual case publishes the rows the pipeline hands over after a commit, with no read
of the outbox; their rows are deleted in the next transaction. After a failure, or
while older outputs still wait (at start-up, after a reconnection), the outbox itself
is drained instead, so outputs never overtake each other.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from worker.bus.publisher import Outgoing, Publisher
from worker.metrics import WorkerMetrics
from worker.pipeline import OutboxRow
from worker.runner.common import NatsLink, next_delay, sleep_unless_stopped
from worker.runner.pipeline_handle import PipelineHandle
from worker.storage.database import is_transient

log = structlog.get_logger(__name__)

#: Outbox rows published per round trip when draining a backlog.
OUTBOX_CHUNK = 2000
#: Back-off (seconds) between attempts to drain the outbox while publishing fails.
DRAIN_RETRY_DELAY = 0.2
DRAIN_RETRY_MAX_DELAY = 2.0


class OutboxRelay:
    def __init__(
        self,
        pipeline: PipelineHandle,
        publisher: Publisher,
        link: NatsLink,
        metrics: WorkerMetrics,
    ) -> None:
        self.pipeline = pipeline
        self.publisher = publisher
        self.link = link
        self.metrics = metrics
        #: Outputs may still be in the outbox from an earlier batch or run; until the
        #: outbox has been drained, new outputs must wait behind them (order matters).
        self.backlog = True

    async def publish(self, rows: list[OutboxRow], stop: asyncio.Event) -> None:
        """Publish the outputs the last transaction committed (or drain the outbox if
        they would overtake older ones, or if publishing them fails)."""
        if not rows:
            return
        if self.backlog:
            await self.drain(stop)
            return
        try:
            await self._send(rows)
        except Exception as exc:
            self.metrics.publish_retries.inc()
            log.warning("publishing outputs failed; draining the outbox", error=repr(exc))
            self.backlog = True
            await self.drain(stop)
            return
        self.pipeline.mark_published(rows[-1].seq)
        self.metrics.outbox_depth.set(0)

    async def drain(self, stop: asyncio.Event) -> int:
        """Publish everything committed but not yet published, oldest first; returns
        how many outputs were published.

        While NATS is away it waits instead of publishing into the client's buffer, and
        nothing new is fetched meanwhile, so memory stays bounded by one batch. When
        stopping it gives up after one failed attempt: the outbox is durable, and the
        next start publishes what is left.
        """
        delay = DRAIN_RETRY_DELAY
        published = 0
        while True:
            rows = await self._pending()
            if not rows:
                self.backlog = False
                return published
            if not self.link.nc.is_connected and not await self.link.wait_connected(stop):
                return published
            try:
                await self._send(rows)
            except Exception as exc:
                self.metrics.publish_retries.inc()
                log.warning("publishing outputs failed; retrying", error=repr(exc), delay=delay)
                if stop.is_set() or self.link.nc.is_closed:
                    return published
                await sleep_unless_stopped(delay, stop)
                delay = next_delay(delay, DRAIN_RETRY_MAX_DELAY)
                continue
            delay = DRAIN_RETRY_DELAY
            published += len(rows)
            await self.pipeline.outbox_delete_through(rows[-1].seq)

    async def forget_published(self) -> None:
        """Delete published rows now (the worker is idle or stopping)."""
        try:
            await self.pipeline.forget_published()
        except Exception as exc:
            if not is_transient(exc):
                raise
            # The rows stay; the next transaction deletes them.
            log.warning("could not delete published outputs yet", error=str(exc))

    async def _pending(self) -> list[OutboxRow]:
        """The oldest chunk of the outbox, with the outbox's depth set as a metric."""
        rows = await self.pipeline.outbox_pending(OUTBOX_CHUNK)
        depth = len(rows)
        if depth == OUTBOX_CHUNK:
            depth = await self.pipeline.outbox_depth()
        self.metrics.outbox_depth.set(depth)
        return rows

    async def _send(self, rows: list[OutboxRow]) -> None:
        """The one way outputs are published: in order, while connected, timed."""
        started = time.perf_counter()
        await self.link.while_connected(
            self.publisher.publish_checked(
                Outgoing(row.subject, row.payload, row.msg_id) for row in rows
            )
        )
        self.metrics.publish_seconds.observe(time.perf_counter() - started)
