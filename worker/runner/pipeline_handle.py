"""What the running parts hold of the pipeline: requests, and the counts it last reported.

The input loop, the outbox relay, the held-event timer and parked-room retries all
reach the pipeline through one `PipelineHandle`, with async methods, whether the
pipeline runs in a process of its own (worker.runner.pipeline_process, the default:
the event loop and the pipeline then each have a core and a GIL) or in the database
thread of this process (`LocalPipeline`, for tests that look inside the pipeline).
Requests are answered one at a time, in the order they were made, as the single
database thread answered them before. The counts metrics and tests read (`counters`,
`held_count`, parked rooms) are those the last request that could change them
reported; the loop reads them after its own requests, so they are never behind what
it has seen.

During a batch the pipeline may ask for inputs to go on with before it commits
(worker.runner.pipeline_server.Follow): the handle answers with what the caller's
`follow_ups` gives (`_answer`).

A batch's result comes back before its commit is durable, with a ticket
(worker.runner.syncer): `durable` waits until the pipeline has reported the ticket
synced, which it does on its own, between requests or during one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Final

import structlog

from worker.metrics import WorkerMetrics
from worker.pipeline import Counters, InboundMessage, OutboxRow, Pipeline, RetryStep
from worker.runner.common import (
    TRANSIENT_RETRY_DELAY,
    DbThread,
    next_delay,
    sleep_unless_stopped,
)
from worker.runner.parse_ahead import ParseAhead
from worker.runner.pipeline_server import (
    BatchResult,
    Follow,
    FollowUp,
    PipelineServer,
    Reply,
    Request,
    SharedFlags,
)
from worker.runner.syncer import Notice
from worker.storage.database import is_transient

log = structlog.get_logger(__name__)

#: The caller's answer, in the event loop, when a batch that did this many of its inputs
#: asks for inputs to go on with: them (of rooms none of the batch's inputs is of), and
#: their budget.
FollowUps = Callable[[int], tuple[list[InboundMessage], float | None]]


class PipelineHandle(ABC):
    """The pipeline as the event loop sees it (see the module docstring)."""

    def __init__(self, metrics: WorkerMetrics, flags: SharedFlags) -> None:
        self.metrics = metrics
        #: The interrupt (`interrupt.set()` makes the transaction under way commit after
        #: its current input) and the live count of inputs done (`reached`).
        self.interrupt = flags
        #: Totals over committed transactions, as last reported (one object, updated in
        #: place, as the pipeline's own is).
        self.counters = Counters()
        self.held_count = 0
        self._parked: list[str] = []
        #: The database file, once open.
        self.path: Path | None = None
        self._published_through = 0
        #: One request at a time, in the order they come.
        self._turn = asyncio.Lock()
        #: The inputs in hand, parsed here (see worker.runner.parse_ahead).
        self.parse_ahead = ParseAhead()
        #: The last ticket reported durable, or the error that ended syncing (or the
        #: pipeline); `_synced` is set at each report (and replaced by a clear one).
        self._durable = 0
        self._sync_failed: BaseException | None = None
        self._synced = asyncio.Event()
        #: The batch under way's `follow_ups`, and the inputs it was given by them.
        self._follow_ups: FollowUps | None = None
        self._followed: list[InboundMessage] = []

    # -- what the loop, metrics and tests read -------------------------------------

    @property
    def is_open(self) -> bool:
        return self.path is not None

    @property
    def parked_count(self) -> int:
        return len(self._parked)

    def parked_room_ids(self) -> list[str]:
        return list(self._parked)

    def reached(self) -> int:
        """How many inputs the transaction under way has done so far."""
        return self.interrupt.reached()

    async def durable(self, ticket: int) -> None:
        """Wait until the commit of `ticket` (a `BatchResult.ticket`) is on disk;
        raises what ended syncing if it failed, or the pipeline if it died."""
        while self._durable < ticket:
            if self._sync_failed is not None:
                raise self._sync_failed
            await self._synced.wait()

    def _on_durable(self, notice: Notice) -> None:
        """A report of the pipeline's syncer (in the event loop's thread)."""
        if isinstance(notice, BaseException):
            if self._sync_failed is None:
                self._sync_failed = notice
        else:
            self._durable = max(self._durable, notice)
        synced, self._synced = self._synced, asyncio.Event()
        synced.set()

    def mark_published(self, through_seq: int) -> None:
        """Outbox rows up to `through_seq` are published: told to the pipeline with the
        next request, and deleted by the transaction after it."""
        self._published_through = max(self._published_through, through_seq)

    # -- requests ------------------------------------------------------------------

    async def open(
        self, path: Path, subject_prefix: str, held_max_wait: float, cache_mb: int
    ) -> None:
        """Open the database (integrity-checked) and build the pipeline, its caches
        within `cache_mb`."""
        opened = await self._request("open", str(path), subject_prefix, held_max_wait, cache_mb)
        self.path = Path(opened)

    async def process_batch(
        self,
        messages: Sequence[InboundMessage],
        budget: float | None,
        follow_ups: FollowUps | None = None,
        always: bool = False,
    ) -> BatchResult:
        """One transaction over `messages` (see `Pipeline.process_batch`); transient
        faults propagate for the caller to retry.

        With `follow_ups`, the transaction asks it for inputs to go on with once its own
        are done, if it was interrupted meanwhile or if `always` (`Follow`); the result's
        `first` then tells how many of `messages` it did, and the dispositions after
        those are of the inputs `follow_ups` gave."""
        batch = _tuples(messages)
        hints = self.parse_ahead.hints(messages)
        follow = Follow.NEVER
        if follow_ups is not None:
            follow = Follow.ALWAYS if always else Follow.IF_GIVEN_WAY
        self._follow_ups, self._followed = follow_ups, []
        try:
            result: BatchResult = await self._request("process_batch", batch, budget, hints, follow)
        finally:
            self._follow_ups = None
        if result.first is None:
            self.parse_ahead.forget(messages[: len(result.dispositions)])
        else:
            self.parse_ahead.forget(messages[: result.first])
            self.parse_ahead.forget(self._followed[: len(result.dispositions) - result.first])
        self.parse_ahead.learn(result.versions)
        return result

    def _answer(self, done: int) -> FollowUp | None:
        """The answer to the batch under way asking for inputs to go on with, having
        done `done` of its own (in the event loop's thread). The batch waits for it, so
        it is given whatever happens: none if the caller's `follow_ups` fails."""
        follow_ups = self._follow_ups
        if follow_ups is None:
            return None
        try:
            messages, budget = follow_ups(done)
            if not messages:
                return None
            answer = FollowUp(_tuples(messages), self.parse_ahead.hints(messages), budget)
        except Exception:
            log.exception("choosing inputs to follow a batch failed; it commits without")
            return None
        self._followed = messages
        return answer

    async def release_expired(self) -> tuple[int, list[OutboxRow]]:
        """Held events released for having waited too long, and the rows committed."""
        released: tuple[int, list[OutboxRow]] = await self._request("release_expired")
        return released

    async def retry_parked(
        self, room_id: str, stop: asyncio.Event
    ) -> tuple[RetryStep, list[OutboxRow]]:
        """One transaction of a parked room's retry, retried while the database is busy."""
        delay = TRANSIENT_RETRY_DELAY
        while True:
            try:
                step: tuple[RetryStep, list[OutboxRow]] = await self._request(
                    "retry_parked", room_id
                )
                return step
            except Exception as exc:
                if not is_transient(exc) or stop.is_set():
                    raise
                self.metrics.transient_retries.inc()
                log.warning("transient database fault; retrying", error=str(exc))
                await sleep_unless_stopped(delay, stop)
                delay = next_delay(delay)

    async def outbox_pending(self, limit: int) -> list[OutboxRow]:
        rows: list[OutboxRow] = await self._request("outbox_pending", limit)
        return rows

    async def outbox_depth(self) -> int:
        depth: int = await self._request("outbox_depth")
        return depth

    async def outbox_delete_through(self, seq: int) -> None:
        await self._request("outbox_delete_through", seq)

    async def forget_published(self) -> None:
        await self._request("forget_published")

    async def close(self) -> None:
        """Close the database (the pipeline's process or thread goes with `stop`)."""
        self.parse_ahead.close()
        if self.path is not None:
            self.path = None
            await self._request("close")

    @abstractmethod
    async def stop(self) -> None:
        """Close the database if open and end the pipeline's process or thread."""

    # -------------------------------------------------------------------------------

    async def _request(self, name: str, *args: Any) -> Any:
        async with self._turn:
            reply = await self._exchange(Request(name, args, self._published_through))
        for seconds in reply.commit_seconds:
            self.metrics.commit_seconds.observe(seconds)
        # Batch sizes before the counts, so that metrics never show the counts
        # without their batch.
        for size in reply.batch_sizes:
            self.metrics.batch_messages.observe(size)
        if reply.snapshot is not None:
            _update(self.counters, reply.snapshot.counters)
            self.held_count = reply.snapshot.held_count
            self._parked = reply.snapshot.parked_room_ids
        return reply.value

    @abstractmethod
    async def _exchange(self, request: Request) -> Reply:
        """Have `request` answered where the pipeline runs."""


def _tuples(messages: Sequence[InboundMessage]) -> list[tuple[str, bytes, int]]:
    """`messages` as a request carries them."""
    return [(m.subject, m.data, m.stream_sequence) for m in messages]


def _update(counters: Counters, reported: Counters) -> None:
    for name in _COUNTER_FIELDS:
        setattr(counters, name, getattr(reported, name))


_COUNTER_FIELDS: Final = tuple(f.name for f in fields(Counters))


class LocalPipeline(PipelineHandle):
    """The pipeline in this process's database thread (tests that look inside it)."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        flags = SharedFlags()
        super().__init__(metrics, flags)
        self.server = PipelineServer(flags, self._from_syncer, self._ask)
        self._thread = DbThread()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _from_syncer(self, notice: Notice) -> None:
        """The syncer's report, from its thread, handed to the event loop's."""
        loop = self._loop
        if loop is not None:
            # Not once the loop is closed (the last sync of a stop that outlived it).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_durable, notice)

    def _ask(self, done: int) -> FollowUp | None:
        """The batch under way asks, from the database thread, for inputs to go on
        with: answered in the event loop's thread, which is not blocked (it awaits the
        batch)."""
        loop = self._loop
        if loop is None:
            return None
        answer: concurrent.futures.Future[FollowUp | None] = concurrent.futures.Future()

        def reply() -> None:
            answer.set_result(self._answer(done))

        loop.call_soon_threadsafe(reply)
        return answer.result()

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline itself (tests read its state; only while nothing runs)."""
        assert self.server.pipeline is not None, "the pipeline's database is not open"
        return self.server.pipeline

    async def stop(self) -> None:
        try:
            await self.close()
        finally:
            self._thread.shutdown()

    async def _exchange(self, request: Request) -> Reply:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return await self._thread.run(self.server.handle, request)
