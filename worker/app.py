"""Wiring: NATS (embedded or external), streams, the consumer loop and the database thread.

The loop is fetch → process the batch in the database thread (one transaction) →
ack or terminate each input → publish the batch's outputs. Outputs are durable in the
outbox before any input is acknowledged, so the order of the last two steps never loses
anything; publishing after the acks keeps the consumer's pending window short. Held
events that waited too long are released between batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import msgpack
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError

from worker.bus.connection import NatsHealth, connect
from worker.bus.consumer import PullConsumer
from worker.bus.publisher import Outgoing, Publisher
from worker.bus.rewind import rewind_to_ack_floor
from worker.bus.server import EmbeddedNatsServer
from worker.bus.streams import ensure_streams
from worker.bus.subjects import Subjects
from worker.config import Config
from worker.metrics import MetricsServer, TimedDatabase, WorkerMetrics
from worker.pipeline import Disposition, InboundMessage, Pipeline
from worker.query import QueryService
from worker.storage.database import DB_FILENAME, is_transient, storage_fault
from worker.storage.lock import StorageLock

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Outbox rows published per round trip when draining a backlog.
OUTBOX_CHUNK = 2000
#: Back-off (seconds) between retries of a batch that hit a transient database fault.
TRANSIENT_RETRY_DELAY = 0.05
TRANSIENT_RETRY_MAX_DELAY = 2.0
#: How often the worker looks whether NATS is back while it is away.
NATS_POLL_INTERVAL = 0.1
#: Errors of the NATS client and JetStream API that pass when the connection returns.
NATS_ERRORS = (nats.errors.Error, APIError, TimeoutError)
#: nats-server version from which a consumer can be rewound (ADR-60).
REWIND_SERVER_VERSION = (2, 14)
#: Seconds between looks for held events that have waited long enough.
HELD_CHECK_INTERVAL = 1.0
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
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roomserver-db")
        self._db: TimedDatabase | None = None
        self._pipeline: Pipeline | None = None
        self._publisher: Publisher | None = None
        self.nc: NATS | None = None
        self._nats_health: NatsHealth | None = None
        #: The query service (worker.query), running while the worker runs.
        self.queries: QueryService | None = None
        #: Set once streams exist and the consumer is running (tests and health wait on it).
        self.ready = asyncio.Event()
        self.batches = 0
        self._progress = asyncio.Condition()
        self._consumer_running = False
        self._warned_no_rewind = False
        #: Outputs may still be in the outbox from an earlier batch or run; until the
        #: outbox has been drained, new outputs must wait behind them (order matters).
        self._outbox_backlog = True
        self._held_checked = 0.0
        #: Acknowledging and publishing the last batch, running while the next one is
        #: processed (the database thread is the bottleneck; this keeps it busy).
        self._settling: asyncio.Task[None] | None = None
        #: `roomserver retry` requests waiting for the loop: (room ID, the request).
        self._retry_requests: asyncio.Queue[tuple[str, Msg]] = asyncio.Queue()
        self.metrics = WorkerMetrics(
            counters=lambda: self._pipeline.counters if self._pipeline else None,
            held=lambda: self._pipeline.held_count if self._pipeline else None,
            parked=lambda: self._pipeline.parked_count if self._pipeline else 0,
            health=self.health,
        )
        self.metrics_server: MetricsServer | None = None

    def health(self) -> dict[str, bool]:
        """Readiness: all must hold for the worker to make progress."""
        nats = self._nats_health
        return {
            **(nats.checks() if nats else {"nats_connected": False, "nats_answering": False}),
            "consumer_running": self._consumer_running,
            "database_open": self._db is not None,
        }

    @property
    def pipeline(self) -> Pipeline:
        assert self._pipeline is not None, "the worker is not running"
        return self._pipeline

    async def _in_db(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then finish the batch in hand, flush and close.

        Raises StorageLocked if another worker holds the storage directory, and
        StorageFault (one line naming the cause and the file) when the disk or the
        database fails: no input is to blame, so none is dead-lettered or parked."""
        try:
            await self._run(stop)
        except sqlite3.Error as exc:
            fault = storage_fault(exc, Path(self.config.storage.path) / DB_FILENAME)
            if fault is None:
                raise
            log.error("stopping on a storage fault", error=str(fault), sqlite_error=str(exc))
            raise fault from exc

    async def _run(self, stop: asyncio.Event) -> None:
        gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
        async with AsyncExitStack() as stack:
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
            nc = await _unless_stopped(connect(self.config.nats, servers), stop)
            if nc is None:
                log.info("stopped before NATS could be reached")
                return
            self.nc = nc
            stack.push_async_callback(self._close_nats)
            self._nats_health = await stack.enter_async_context(
                NatsHealth(nc, self.config.nats.ready_grace)
            )
            js = self.nc.jetstream()
            await ensure_streams(js, self.config)
            self._db = await self._in_db(TimedDatabase, Path(self.config.storage.path))
            self._db.commit_histogram = self.metrics.commit_seconds
            stack.push_async_callback(self._close_db)
            problems = await self._in_db(self._db.integrity_check)
            if problems:
                raise RuntimeError(f"database integrity check failed: {'; '.join(problems)}")
            self._pipeline = Pipeline(
                self._db, self.subjects, held_max_wait=self.config.pipeline.held_max_wait
            )
            # Queries read the same file through their own read-only connection; they
            # stop before the database closes (the exit stack unwinds in reverse).
            self.queries = await QueryService.start(
                self.nc, Path(self.config.storage.path), self.subjects, self.partition
            )
            stack.push_async_callback(self.queries.stop)
            self._publisher = Publisher(js, self.config)
            consumer = PullConsumer(js, self.config)
            stack.push_async_callback(consumer.close)
            await self._resume_consumer(js, consumer, stop)
            left = await self._flush_outbox(stop)
            if left:
                log.info("published outputs a previous run had committed but not sent", count=left)
            # A restart (after an upgrade, say) retries every parked room first.
            for room_id in self.pipeline.parked_room_ids():
                await self._retry_room(room_id, stop)
            retry_subscription = await nc.subscribe(
                self.subjects.admin("retry", self.partition), cb=self._on_retry_request
            )
            stack.push_async_callback(_unsubscribe, retry_subscription)
            self._consumer_running = not stop.is_set()
            self.ready.set()
            log.info(
                "worker ready",
                storage=str(self._db.path),
                input_stream=self.config.streams.input,
                filter_subject=self.config.consumer.filter_subject,
            )
            # Stop is checked between batches: a fetch waits at most fetch_timeout, and
            # a batch in hand is always finished, so shutdown never strands a message.
            reconnects = nc.stats["reconnects"]
            while not stop.is_set():
                if not nc.is_connected:
                    await self._wait_for_nats(stop)
                    continue
                if nc.stats["reconnects"] != reconnects:
                    # Anything in flight when the connection dropped may be lost.
                    reconnects = nc.stats["reconnects"]
                    await self._settled()
                    await self._resume_consumer(js, consumer, stop)
                    await self._flush_outbox(stop)
                    continue
                try:
                    messages = await consumer.fetch_batch()
                except NATS_ERRORS as exc:
                    log.warning("fetching inputs failed; retrying", error=repr(exc))
                    await _sleep_unless_stopped(self.config.consumer.fetch_timeout, stop)
                    continue
                if messages:
                    await self._handle(messages, stop)
                else:
                    await self._settled()
                    if nc.is_connected:
                        self.metrics.consumer_lag.set(0)
                    await self._forget_published()
                await self._release_held(stop)
                await self._answer_retry_requests(stop)
            self._consumer_running = False
            await self._settled()
            await self._forget_published()
            log.info("worker stopping")

    async def _handle(self, messages: list[Msg], stop: asyncio.Event) -> None:
        """Process one fetched batch and settle every message in it.

        A transient database fault retries the same batch in place: handing it back
        (nak) would let the inputs after it overtake it, and a room's inputs must be
        processed in stream order.
        """
        inbound = [
            InboundMessage(m.subject, m.data, m.metadata.sequence.stream if m.metadata else 0)
            for m in messages
        ]
        self.metrics.batch_messages.observe(len(messages))
        delay = TRANSIENT_RETRY_DELAY
        while True:
            started = time.perf_counter()
            try:
                dispositions = await self._in_db(self.pipeline.process_batch, inbound)
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.metrics.transient_retries.inc()
                if stop.is_set():
                    log.warning("transient database fault while stopping; batch handed back")
                    await _settle_all(messages, Msg.nak)
                    return
                log.warning("transient database fault; retrying the batch", error=str(exc))
                await _settle_all(messages, Msg.in_progress)
                await _sleep_unless_stopped(delay, stop)
                delay = min(delay * 2, TRANSIENT_RETRY_MAX_DELAY)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        last = messages[-1].metadata
        if last is not None and last.num_pending is not None:
            self.metrics.consumer_lag.set(last.num_pending)
        # The batch is committed: settling it (acks, outputs) overlaps the next batch's
        # processing, but never the settling of the batch before (outputs keep order).
        await self._settled()
        rows = self.pipeline.emitted
        self._settling = asyncio.create_task(self._settle(messages, dispositions, rows, stop))

    async def _settled(self) -> None:
        """Wait for the last batch's acks and outputs; raises what settling raised."""
        task, self._settling = self._settling, None
        if task is not None:
            await task

    async def _settle(
        self,
        messages: list[Msg],
        dispositions: list[Disposition],
        rows: list[tuple[int, str, str, bytes]],
        stop: asyncio.Event,
    ) -> None:
        # A failed ack loses nothing: the input comes back (after a rewind or ack_wait)
        # and is recognised as a duplicate.
        for m, disposition in zip(messages, dispositions, strict=True):
            with contextlib.suppress(*NATS_ERRORS):
                await (m.ack() if disposition is Disposition.ACK else m.term())
        self.batches += 1
        await self._publish_emitted(rows, stop)
        async with self._progress:
            self._progress.notify_all()

    async def _forget_published(self) -> None:
        try:
            await self._in_db(self.pipeline.forget_published)
        except Exception as exc:
            if not is_transient(exc):
                raise
            # The rows stay; the next transaction deletes them.
            log.warning("could not delete published outputs yet", error=str(exc))

    async def _on_retry_request(self, msg: Msg) -> None:
        """`<prefix>.admin.retry` with {"room_id": ...}: queued for the loop, which owns
        the database thread's transactions and the order of outputs."""
        try:
            body = msgpack.unpackb(msg.data, raw=False) if msg.data else {}
            room_id = body.get("room_id") if isinstance(body, dict) else None
        except Exception:
            room_id = None
        if not isinstance(room_id, str) or not room_id:
            await _reply(msg, {"error": "bad_request", "message": "room_id is required"})
            return
        self._retry_requests.put_nowait((room_id, msg))

    async def _answer_retry_requests(self, stop: asyncio.Event) -> None:
        while not self._retry_requests.empty() and not stop.is_set():
            room_id, msg = self._retry_requests.get_nowait()
            if room_id not in self.pipeline.parked_room_ids():
                answer: dict[str, Any] = {
                    "error": "not_parked",
                    "message": f"room {room_id} is not parked",
                }
            else:
                answer = await self._retry_room(room_id, stop)
            await _reply(msg, answer)

    async def _retry_room(self, room_id: str, stop: asyncio.Event) -> dict[str, Any]:
        """Process a parked room's inputs from the one that failed, a transaction at a
        time, publishing each one's outputs; the reply map of `roomserver retry`."""
        log.info("retrying a parked room", room_id=room_id)
        processed = 0
        while True:
            step = await self._in_db_retrying(lambda: self.pipeline.retry_parked(room_id), stop)
            rows = self.pipeline.emitted
            await self._settled()
            await self._publish_emitted(rows, stop)
            processed += step.processed
            if step.error is not None or step.unparked or stop.is_set():
                break
        async with self._progress:
            self._progress.notify_all()
        if step.unparked:
            log.info("parked room retried; it runs again", room_id=room_id, inputs=processed)
        return {
            "room_id": room_id,
            "processed": processed,
            "parked": not step.unparked,
            "error": step.error,
        }

    async def _in_db_retrying(self, fn: Callable[[], R], stop: asyncio.Event) -> R:
        """`_in_db`, retried with back-off while the database is busy or locked."""
        delay = TRANSIENT_RETRY_DELAY
        while True:
            try:
                return await self._in_db(fn)
            except Exception as exc:
                if not is_transient(exc) or stop.is_set():
                    raise
                self.metrics.transient_retries.inc()
                log.warning("transient database fault; retrying", error=str(exc))
                await _sleep_unless_stopped(delay, stop)
                delay = min(delay * 2, TRANSIENT_RETRY_MAX_DELAY)

    async def _release_held(self, stop: asyncio.Event) -> None:
        """Process held events that have waited `pipeline.held_max_wait` (at most once a
        second; the check is a count in memory when nothing is held)."""
        now = time.monotonic()
        if not self.pipeline.held_count or now - self._held_checked < HELD_CHECK_INTERVAL:
            return
        self._held_checked = now
        released = await self._in_db(self.pipeline.release_expired)
        if released:
            log.info("processed held events that waited too long", count=released)
            await self._settled()
            await self._publish_emitted(self.pipeline.emitted, stop)
            async with self._progress:
                self._progress.notify_all()

    async def _publish_emitted(
        self, rows: list[tuple[int, str, str, bytes]], stop: asyncio.Event
    ) -> None:
        """Publish the outputs the last transaction committed.

        The pipeline hands them over, so the usual case costs no read of the outbox;
        their rows are deleted in the next transaction. After any failure, or while
        older outputs are still waiting, the outbox itself is drained instead, oldest
        first, so outputs never overtake each other.
        """
        if not rows:
            return
        if self._outbox_backlog or self._publisher is None:
            await self._flush_outbox(stop)
            return
        started = time.perf_counter()
        try:
            await self._while_connected(
                self._publisher.publish_many(
                    Outgoing(subject, payload, msg_id) for _, subject, msg_id, payload in rows
                )
            )
        except Exception as exc:
            self.metrics.publish_retries.inc()
            log.warning("publishing outputs failed; draining the outbox", error=repr(exc))
            self._outbox_backlog = True
            await self._flush_outbox(stop)
            return
        self.metrics.publish_seconds.observe(time.perf_counter() - started)
        self.pipeline.mark_published(rows[-1][0])
        self.metrics.outbox_depth.set(0)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until `predicate` holds after some batch (for tests and tools that feed
        the worker and need to know it has caught up)."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(predicate), timeout)

    async def _flush_outbox(self, stop: asyncio.Event) -> int:
        """Publish everything committed but not yet published, oldest first; returns
        how many outputs were published.

        While NATS is away it waits instead of publishing into the client's buffer, and
        nothing new is fetched meanwhile, so memory stays bounded by one batch. When
        stopping it gives up after one failed attempt: the outbox is durable, and the
        next start publishes what is left.
        """
        assert self._db is not None and self._publisher is not None and self.nc is not None
        db, publisher, nc = self._db, self._publisher, self.nc
        delay = 0.2
        published = 0
        while True:
            rows = await self._in_db(db.outbox_pending, OUTBOX_CHUNK)
            depth = len(rows)
            if depth == OUTBOX_CHUNK:
                depth = await self._in_db(db.outbox_depth)
            self.metrics.outbox_depth.set(depth)
            if not rows:
                self._outbox_backlog = False
                return published
            if not nc.is_connected and not await self._wait_for_nats(stop):
                return published
            started = time.perf_counter()
            try:
                await self._while_connected(
                    publisher.publish_many(
                        Outgoing(subject, payload, msg_id) for _, subject, msg_id, payload in rows
                    )
                )
            except Exception as exc:
                self.metrics.publish_retries.inc()
                log.warning("publishing outputs failed; retrying", error=repr(exc), delay=delay)
                if stop.is_set() or nc.is_closed:
                    return published
                await _sleep_unless_stopped(delay, stop)
                delay = min(delay * 2, 2.0)
                continue
            self.metrics.publish_seconds.observe(time.perf_counter() - started)
            delay = 0.2
            published += len(rows)
            await self._in_db(db.outbox_delete_through, rows[-1][0])

    async def _while_connected(self, awaitable: Awaitable[R]) -> R:
        """Await ``awaitable``, giving up as soon as the connection drops: JetStream's
        acks for publishes in flight then never come, and waiting out their timeout
        would only delay the retry after the reconnection."""
        assert self.nc is not None
        task = asyncio.ensure_future(awaitable)
        while True:
            done, _ = await asyncio.wait({task}, timeout=NATS_POLL_INTERVAL)
            if done:
                return task.result()
            if not self.nc.is_connected:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                raise nats.errors.ConnectionReconnectingError

    async def _resume_consumer(
        self, js: JetStreamContext, consumer: PullConsumer, stop: asyncio.Event
    ) -> None:
        """(Re)bind the consumer so that delivery starts at the oldest unacknowledged
        input (see worker.bus.rewind); retried until JetStream answers.

        The old subscription goes first: messages it had buffered predate the rewind
        and would otherwise be taken before the older ones the rewind brings back. The
        new one fetches nothing until the rewind is done.
        """
        delay = 0.1
        while not stop.is_set():
            try:
                await consumer.close()
                # Created (or updated) first: the server answers a reset of a consumer
                # that does not exist with silence, not an error.
                await consumer.start()
                if self._can_rewind():
                    await rewind_to_ack_floor(js, consumer.stream, consumer.durable)
                    self.metrics.consumer_rewinds.inc()
                return
            except NATS_ERRORS as exc:
                if isinstance(exc, nats.errors.ConnectionClosedError):
                    raise
                log.warning("input consumer not available yet; retrying", error=repr(exc))
                await _sleep_unless_stopped(delay, stop)
                delay = min(delay * 2, 5.0)

    def _can_rewind(self) -> bool:
        assert self.nc is not None
        version = self.nc.connected_server_version
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

    async def _wait_for_nats(self, stop: asyncio.Event) -> bool:
        """Wait until NATS is connected (True) or the worker is stopped (False)."""
        assert self.nc is not None
        nc = self.nc
        if not nc.is_connected:
            log.warning("NATS unavailable; waiting for the connection to return")
        while not nc.is_connected and not nc.is_closed and not stop.is_set():
            await _sleep_unless_stopped(NATS_POLL_INTERVAL, stop)
        return nc.is_connected

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
            await self._in_db(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)


async def _reply(msg: Msg, body: dict[str, Any]) -> None:
    """Answer a request (a request published without a reply subject gets none)."""
    if msg.reply:
        with contextlib.suppress(*NATS_ERRORS):
            await msg.respond(msgpack.packb(body, use_bin_type=True))


async def _unsubscribe(subscription: Any) -> None:
    with contextlib.suppress(*NATS_ERRORS):
        await subscription.unsubscribe()


async def _settle_all(messages: list[Msg], action: Callable[[Msg], Awaitable[None]]) -> None:
    for message in messages:
        with contextlib.suppress(*NATS_ERRORS):
            await action(message)


async def _sleep_unless_stopped(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _unless_stopped(awaitable: Awaitable[R], stop: asyncio.Event) -> R | None:
    """The result of ``awaitable``, or None if ``stop`` is set first (it is cancelled)."""
    task = asyncio.ensure_future(awaitable)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None
