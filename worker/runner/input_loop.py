"""The input loop: fetch → process in the database thread → settle → publish.

A batch is processed in one transaction; once it is committed its acks and outputs are
settled in the background while the next batch is processed (the database thread is
the bottleneck; this keeps it busy), but never beside the settling of the batch before
(outputs keep their order). A lost connection rewinds the consumer to the oldest input
not acknowledged, so nothing in flight is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from worker.bus.consumer import PullConsumer
from worker.bus.rewind import rewind_to_ack_floor
from worker.config import Config
from worker.metrics import WorkerMetrics
from worker.pipeline import Disposition, InboundMessage, Pipeline
from worker.runner.common import (
    NATS_ERRORS,
    TRANSIENT_RETRY_DELAY,
    DbThread,
    NatsLink,
    Progress,
    next_delay,
    settle,
    sleep_unless_stopped,
)
from worker.runner.outbox_relay import OutboxRelay
from worker.storage.database import OutboxRow, is_transient

log = structlog.get_logger(__name__)

#: nats-server version from which a consumer can be rewound (ADR-60).
REWIND_SERVER_VERSION = (2, 14)
#: How each disposition settles its message.
_SETTLE: dict[Disposition, Callable[[Msg], Awaitable[None]]] = {
    Disposition.ACK: Msg.ack,
    Disposition.TERM: Msg.term,
}


class Settling:
    """The last committed batch's acks and outputs, settled in the background; at most
    one at a time."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def wait(self) -> None:
        """Wait for the last batch's acks and outputs; raises what settling raised."""
        task, self._task = self._task, None
        if task is not None:
            await task

    async def start(self, work: Awaitable[None]) -> None:
        """Settle a batch once the one before is settled."""
        await self.wait()
        self._task = asyncio.ensure_future(work)


class InputLoop:
    def __init__(
        self,
        config: Config,
        js: JetStreamContext,
        consumer: PullConsumer,
        link: NatsLink,
        db_thread: DbThread,
        pipeline: Pipeline,
        relay: OutboxRelay,
        progress: Progress,
        metrics: WorkerMetrics,
    ) -> None:
        self.config = config
        self.js = js
        self.consumer = consumer
        self.link = link
        self.db_thread = db_thread
        self.pipeline = pipeline
        self.relay = relay
        self.progress = progress
        self.metrics = metrics
        self.settling = Settling()
        #: Whether the loop is fetching (readiness).
        self.running = False
        self._warned_no_rewind = False

    async def run(
        self, stop: asyncio.Event, between_batches: Callable[[asyncio.Event], Awaitable[None]]
    ) -> None:
        """Fetch and process until `stop`; `between_batches` runs after every fetch.

        Stop is checked between batches: a fetch waits at most fetch_timeout, and a
        batch in hand is always finished, so shutdown never strands a message."""
        nc = self.link.nc
        self.running = not stop.is_set()
        reconnects = nc.stats["reconnects"]
        while not stop.is_set():
            if not nc.is_connected:
                await self.link.wait_connected(stop)
                continue
            if nc.stats["reconnects"] != reconnects:
                # Anything in flight when the connection dropped may be lost.
                reconnects = nc.stats["reconnects"]
                await self.settling.wait()
                await self.resume(stop)
                await self.relay.drain(stop)
                continue
            if not await self._fetch_and_handle(stop):
                continue
            await between_batches(stop)
        self.running = False
        await self.settling.wait()
        await self.relay.forget_published()

    async def resume(self, stop: asyncio.Event) -> None:
        """(Re)bind the consumer so that delivery starts at the oldest unacknowledged
        input (see worker.bus.rewind); retried until JetStream answers.

        The old subscription goes first: messages it had buffered predate the rewind
        and would otherwise be taken before the older ones the rewind brings back. The
        new one fetches nothing until the rewind is done.
        """
        delay = 0.1
        consumer = self.consumer
        while not stop.is_set():
            try:
                await consumer.close()
                # Created (or updated) first: the server answers a reset of a consumer
                # that does not exist with silence, not an error.
                await consumer.start()
                if self._can_rewind():
                    await rewind_to_ack_floor(self.js, consumer.stream, consumer.durable)
                    self.metrics.consumer_rewinds.inc()
                return
            except NATS_ERRORS as exc:
                if isinstance(exc, nats.errors.ConnectionClosedError):
                    raise
                log.warning("input consumer not available yet; retrying", error=repr(exc))
                await sleep_unless_stopped(delay, stop)
                delay = next_delay(delay, 5.0)

    async def _fetch_and_handle(self, stop: asyncio.Event) -> bool:
        """One fetch, and its batch handled; False if the fetch failed."""
        try:
            messages = await self.consumer.fetch_batch()
        except NATS_ERRORS as exc:
            log.warning("fetching inputs failed; retrying", error=repr(exc))
            await sleep_unless_stopped(self.config.consumer.fetch_timeout, stop)
            return False
        if messages:
            await self._handle(messages, stop)
        else:
            await self.settling.wait()
            if self.link.nc.is_connected:
                self.metrics.consumer_lag.set(0)
            await self.relay.forget_published()
        return True

    async def _handle(self, messages: list[Msg], stop: asyncio.Event) -> None:
        """Process one fetched batch and settle every message in it."""
        self.metrics.batch_messages.observe(len(messages))
        dispositions = await self._process(messages, stop)
        if dispositions is None:
            return
        last = messages[-1].metadata
        if last is not None and last.num_pending is not None:
            self.metrics.consumer_lag.set(last.num_pending)
        rows = self.pipeline.outbox.emitted
        await self.settling.start(self._settle_batch(messages, dispositions, rows, stop))

    async def _process(self, messages: list[Msg], stop: asyncio.Event) -> list[Disposition] | None:
        """The batch's dispositions, once committed; None if it was handed back.

        A transient database fault retries the same batch in place: handing it back
        (nak) would let the inputs after it overtake it, and a room's inputs must be
        processed in stream order."""
        inbound = [
            InboundMessage(m.subject, m.data, m.metadata.sequence.stream if m.metadata else 0)
            for m in messages
        ]
        delay = TRANSIENT_RETRY_DELAY
        while True:
            started = time.perf_counter()
            try:
                dispositions = await self.db_thread.run(self.pipeline.process_batch, inbound)
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
                return dispositions
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.metrics.transient_retries.inc()
                if stop.is_set():
                    log.warning("transient database fault while stopping; batch handed back")
                    await settle(messages, [Msg.nak] * len(messages))
                    return None
                log.warning("transient database fault; retrying the batch", error=str(exc))
                await settle(messages, [Msg.in_progress] * len(messages))
                await sleep_unless_stopped(delay, stop)
                delay = next_delay(delay)

    async def _settle_batch(
        self,
        messages: list[Msg],
        dispositions: list[Disposition],
        rows: list[OutboxRow],
        stop: asyncio.Event,
    ) -> None:
        await settle(messages, [_SETTLE[d] for d in dispositions])
        self.progress.batches += 1
        await self.relay.publish(rows, stop)
        await self.progress.notify()

    def _can_rewind(self) -> bool:
        version = self.link.nc.connected_server_version
        if (version.major, version.minor) >= REWIND_SERVER_VERSION:
            return True
        if not self._warned_no_rewind:
            self._warned_no_rewind = True
            log.warning(
                "nats-server is older than 2.14 and cannot rewind consumers: after a crash "
                "or a lost connection, unacknowledged inputs come back only after ack_wait, "
                "possibly after later inputs of their room",
                server_version=str(version),
            )
        return False
