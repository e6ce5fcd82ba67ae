"""`roomserver rebuild`: a partition's database made again from the input stream.

With the input stream retained (limits retention, the default), the stream is the
source of truth: replaying a partition's inputs in stream order through the same
pipeline gives the same events, statuses and states as the live worker reached. The
replay reads with an ephemeral consumer (the live worker's durable consumer is not
touched), writes a fresh database in another directory, and publishes nothing: its
outputs were published by the live worker, and the outbox rows are dropped.

Held events are the one timing-dependent part: the live worker processes an event
whose prev events never came once it has waited `pipeline.held_max_wait` of wall-clock
time. The replay runs on the stream's clock instead: each input is held at the time
NATS stored it, held events are released when the stream time of the next batch is
`held_max_wait` past that, and those still held at the end are released if they have
waited that long by the wall clock now. When the live worker kept up with the stream
this releases at the same points; when it lagged, `roomserver diff` shows the rooms
that came out differently (docs/operations.md#rebuild-a-partition-from-the-stream).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from worker.bus.subjects import Subjects
from worker.config import Config
from worker.pipeline import InboundMessage, Pipeline
from worker.storage.database import DB_FILENAME, Database
from worker.storage.inspection import Inspector
from worker.storage.lock import StorageLock

log = structlog.get_logger(__name__)

BATCH = 256
FETCH_TIMEOUT = 2.0


class RebuildError(RuntimeError):
    """The rebuild cannot start (the target holds a database, the stream is missing)."""


@dataclass(frozen=True, slots=True)
class Rebuilt:
    inputs: int
    last_sequence: int
    rooms: int
    seconds: float


def input_filter(config: Config, partition: int | None) -> str:
    """The input subjects of ``partition`` (all inputs without partitions)."""
    subjects = Subjects(config.streams.subject_prefix)
    if partition is None:
        return config.consumer.filter_subject
    return subjects.partition_inputs(partition)


class StreamClock:
    """The rebuild's notion of now: the stream time of the inputs being processed."""

    def __init__(self) -> None:
        self.now_ms = 0

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, messages: list[Msg]) -> None:
        for message in messages:
            if message.metadata is not None and message.metadata.timestamp is not None:
                stamp = int(message.metadata.timestamp.timestamp() * 1000)
                self.now_ms = max(self.now_ms, stamp)


async def rebuild(nc: NATS, config: Config, partition: int | None, into: Path) -> Rebuilt:
    """Replay the inputs of ``partition`` (all, without partitions) stored in the input
    stream up to now into a fresh database under ``into``."""
    if (into / DB_FILENAME).exists():
        raise RebuildError(f"{into} already holds a database; rebuild into an empty directory")
    started = time.monotonic()
    subscription = await _subscribe(nc.jetstream(), config, partition)
    subjects = Subjects(config.streams.subject_prefix)
    clock = StreamClock()
    with StorageLock(into):
        db = Database(into)
        try:
            pipeline = Pipeline(
                db, subjects, held_max_wait=config.pipeline.held_max_wait, clock=clock
            )
            inputs, last = await _replay(subscription, pipeline, clock)
            _finish(pipeline)
        finally:
            db.close()
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
    with Inspector.open(into) as inspector:
        rooms = len(inspector.rows.rooms())
    log.info("rebuilt", partition=partition, into=str(into), inputs=inputs, rooms=rooms)
    return Rebuilt(inputs, last, rooms, time.monotonic() - started)


async def _subscribe(
    js: JetStreamContext, config: Config, partition: int | None
) -> JetStreamContext.PullSubscription:
    """An ephemeral consumer that reads the partition's stored inputs from the first,
    acknowledging nothing (the live worker's durable consumer is left alone)."""
    return await js.pull_subscribe(
        input_filter(config, partition),
        stream=config.streams.input,
        config=api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=60.0,
            replay_policy=api.ReplayPolicy.INSTANT,
        ),
    )


async def _replay(
    subscription: JetStreamContext.PullSubscription, pipeline: Pipeline, clock: StreamClock
) -> tuple[int, int]:
    """Process every input pending when the replay starts, in batches; how many there
    were and the stream sequence of the last one."""
    info = await subscription.consumer_info()
    remaining = info.num_pending or 0
    inputs = last = 0
    while remaining > 0:
        try:
            messages = await subscription.fetch(min(BATCH, remaining), FETCH_TIMEOUT)
        except TimeoutError:
            continue
        last = _process(pipeline, clock, messages)
        inputs += len(messages)
        remaining -= len(messages)
    return inputs, last


def _process(pipeline: Pipeline, clock: StreamClock, messages: list[Msg]) -> int:
    """One batch, at the stream time of its inputs; its last stream sequence."""
    before = clock.now_ms
    clock.advance(messages[:1])
    if before:
        # Between batches, as the live worker looks between its batches.
        pipeline.release_expired(now_ms=clock.now_ms)
    clock.advance(messages)
    inbound = [
        InboundMessage(m.subject, m.data, m.metadata.sequence.stream if m.metadata else 0)
        for m in messages
    ]
    # Synchronously: the database belongs to this thread, and nothing else
    # runs meanwhile (the connection's pings wait a batch at most).
    pipeline.process_batch(inbound)
    _drop_outputs(pipeline)
    return inbound[-1].stream_sequence


def _finish(pipeline: Pipeline) -> None:
    """After the last input: release what is held past its wait as of now, and drop
    the outputs that produced (the live worker published them)."""
    pipeline.release_expired(now_ms=int(time.time() * 1000))
    _drop_outputs(pipeline)
    pipeline.outbox.forget_published()


def _drop_outputs(pipeline: Pipeline) -> None:
    """The live worker published these; the rebuild only needs the state."""
    if pipeline.outbox.emitted:
        pipeline.outbox.mark_published(pipeline.outbox.emitted[-1].seq)
