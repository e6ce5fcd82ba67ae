"""The input loop: fetch → process in the pipeline → settle → publish.

Fetched inputs are held in hand (up to consumer.max_ack_pending) and processed in
transactions: each takes them in the order worker.runner.fairness gives (rooms that had
little of the thread lately first, each room's inputs in stream order) and commits once
consumer.batch_budget seconds of work are spent, so a small room's input never waits
behind a whole batch of an expensive room's. A fetch is always under way while a
transaction is processed (one is started as soon as the last one is taken), so that
cheap rooms' inputs that come in meanwhile are seen and can cut it short; the
transaction then goes on with them before it commits (`_follow_ups`), so that they
share its commit rather than wait for it and for one of their own. While a
transaction runs the interpreter switches threads more often (SWITCH_INTERVAL), so
that, when the pipeline runs in this process's database thread, the event loop's
network work does not wait for its Python for the default 5 ms each time it wakes.
Once a transaction is committed, and its commit is on disk (the pipeline does not
wait for that: worker.runner.syncer), its acks and outputs are settled in the
background while the next ones are processed (the pipeline is the bottleneck; this
keeps it busy), each after the one before (outputs keep their order). A lost connection
rewinds the consumer to the oldest input not acknowledged, so nothing in flight is
lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from worker.bus.consumer import PullConsumer, stream_position
from worker.bus.rewind import rewind_to_ack_floor
from worker.config import Config
from worker.metrics import WorkerMetrics
from worker.pipeline import Disposition, InboundMessage
from worker.runner.common import (
    NATS_ERRORS,
    TRANSIENT_RETRY_DELAY,
    NatsLink,
    Progress,
    next_delay,
    settle,
    sleep_unless_stopped,
)
from worker.runner.fairness import InHand, Running, Scheduler, fits_in_budget, next_offered
from worker.runner.outbox_relay import OutboxRelay
from worker.runner.pipeline_handle import PipelineHandle
from worker.runner.pipeline_server import BatchResult
from worker.storage.database import OutboxRow, is_transient

log = structlog.get_logger(__name__)

#: nats-server version from which a consumer can be rewound (ADR-60).
REWIND_SERVER_VERSION = (2, 14)
#: Seconds after which a thread waiting for the GIL asks its holder for it while a
#: transaction runs (Python's default is 5 ms): the event loop wakes for every fetch,
#: ack and publish reply, and would otherwise wait that long behind the database
#: thread's pure-Python work (state resolution) each time.
SWITCH_INTERVAL = 0.0005
#: How each disposition settles its message.
_SETTLE: dict[Disposition, Callable[[Msg], Awaitable[None]]] = {
    Disposition.ACK: Msg.ack,
    Disposition.TERM: Msg.term,
}


#: Transactions running with SWITCH_INTERVAL (the input loops of this process), and the
#: interval to restore when none is.
_quick_switches: list[float] = []


@contextlib.contextmanager
def quick_thread_switches() -> Iterator[None]:
    """SWITCH_INTERVAL while inside (the interval is the process's: restored when the
    last transaction using it ends)."""
    if not _quick_switches:
        default = sys.getswitchinterval()
        sys.setswitchinterval(min(default, SWITCH_INTERVAL))
    else:
        default = _quick_switches[0]
    _quick_switches.append(default)
    try:
        yield
    finally:
        _quick_switches.pop()
        if not _quick_switches:
            sys.setswitchinterval(default)


class Settling:
    """Committed batches' acks and outputs, settled in the background one after the
    other, in commit order (outputs keep their order); the next transaction does not
    wait for them. How many wait is bounded by consumer.max_ack_pending: their inputs
    are not acknowledged yet."""

    def __init__(self) -> None:
        #: The settling of the last batch committed (it waits for the ones before).
        self._task: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        """Wait for every batch's acks and outputs; raises what settling raised."""
        task, self._task = self._task, None
        if task is not None:
            await task

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        """Settle a batch once the one before is settled (not if that failed: `wait`
        then raises its error)."""
        self._task = asyncio.ensure_future(self._after(self._task, work))

    @staticmethod
    async def _after(before: asyncio.Future[None] | None, work: Coroutine[Any, Any, None]) -> None:
        try:
            if before is not None:
                await before
        except BaseException:
            work.close()
            raise
        await work


class InputLoop:
    def __init__(
        self,
        config: Config,
        js: JetStreamContext,
        consumer: PullConsumer,
        link: NatsLink,
        pipeline: PipelineHandle,
        relay: OutboxRelay,
        progress: Progress,
        metrics: WorkerMetrics,
    ) -> None:
        self.config = config
        self.js = js
        self.consumer = consumer
        self.link = link
        self.pipeline = pipeline
        self.relay = relay
        self.progress = progress
        self.metrics = metrics
        self.settling = Settling()
        #: Fetched inputs not processed yet, in fetch order.
        self.in_hand: list[InHand] = []
        self.scheduler = Scheduler(patience=config.consumer.batch_patience)
        budget = config.consumer.batch_budget
        #: Most inputs in hand: with a budget, as many as JetStream hands out, so that
        #: cheap rooms' inputs are fetched past an expensive room's backlog; without
        #: one, a batch.
        self.capacity = config.consumer.max_ack_pending if budget else config.consumer.batch_size
        self._budget = budget or None
        #: Inputs offered to the next transaction: twice what the last one of its kind
        #: reached before its budget was spent, so that the work a batch does up front
        #: for all its inputs is not done for many it will not reach. Two kinds: a
        #: costlier group's turn while cheaper inputs wait (True), and the others.
        self._offered = dict.fromkeys((False, True), config.consumer.batch_size)
        #: Inputs the first group's turn while costlier inputs wait is offered at least:
        #: what fitted in the last such turn's budget (worker.runner.fairness.fits_in_budget).
        self._first_fits = 0
        #: The transaction under way (None between them, and without a budget).
        self._running: Running | None = None
        #: How many inputs of each room are in hand (the scheduler's rooms).
        self._rooms: Counter[str] = Counter()
        #: Before this (monotonic seconds) no input in hand is due for `_keep_alive`.
        self._next_touch = 0.0
        #: When the transaction under way gives way to cheaper inputs (see
        #: worker.runner.fairness.PATIENCE), if it is to.
        self._give_way: asyncio.TimerHandle | None = None
        #: The fetch under way, if any (it runs beside the database work).
        self._fetching: asyncio.Future[list[Msg]] | None = None
        #: Whether the loop is fetching (readiness).
        self.running = False
        self._warned_no_rewind = False

    async def run(
        self, stop: asyncio.Event, between_batches: Callable[[asyncio.Event], Awaitable[None]]
    ) -> None:
        """Fetch and process until `stop`; `between_batches` runs after every batch.

        Stop is checked between batches: a fetch waits at most fetch_timeout, and the
        inputs in hand are always finished, so shutdown never strands a message."""
        nc = self.link.nc
        self.running = not stop.is_set()
        reconnects = nc.stats["reconnects"]
        while not stop.is_set():
            if not nc.is_connected:
                await self.link.wait_connected(stop)
                continue
            if nc.stats["reconnects"] != reconnects:
                # Anything in flight when the connection dropped may be lost. What is in
                # hand stays: it is older than anything the rewind brings back, which
                # is processed again as duplicates.
                reconnects = nc.stats["reconnects"]
                await self._collect_fetch()
                await self.settling.wait()
                await self.resume(stop)
                await self.relay.drain(stop)
                continue
            if not await self._fetch(stop):
                continue
            if self.in_hand:
                await self._handle(stop)
                await self._keep_alive()
            await between_batches(stop)
        await self._collect_fetch()
        while self.in_hand:
            await self._handle(stop)
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

    def _start_fetch(self) -> None:
        """Start a fetch, unless one is under way or the hand is full."""
        room = self.capacity - len(self.in_hand)
        if self._fetching is None and room > 0:
            self._fetching = asyncio.ensure_future(self.consumer.fetch_batch(room))
            self._fetching.add_done_callback(self._on_fetched)

    async def _fetch(self, stop: asyncio.Event) -> bool:
        """Start a fetch if there is room in hand; take what it brought if it is done,
        or wait for it if nothing is in hand, and start the next one at once. False if
        the fetch failed."""
        self._start_fetch()
        if self._fetching is None or (self.in_hand and not self._fetching.done()):
            return True
        fetching, self._fetching = self._fetching, None
        try:
            messages = await fetching
        except NATS_ERRORS as exc:
            log.warning("fetching inputs failed; retrying", error=repr(exc))
            if not self.in_hand:
                await sleep_unless_stopped(self.config.consumer.fetch_timeout, stop)
            return False
        if messages:
            self._take(messages)
        elif not self.in_hand:
            await self.settling.wait()
            if self.link.nc.is_connected:
                self.metrics.consumer_lag.set(0)
            await self.relay.forget_published()
        # Under way while the next transaction runs: what comes in meanwhile is seen.
        self._start_fetch()
        return True

    def _on_fetched(self, fetching: asyncio.Future[list[Msg]]) -> None:
        """While a transaction runs: if the fetch brought inputs of rooms far cheaper
        than the one it is processing, have it commit after the input under way once
        they have waited the patience (consumer.batch_patience), so that they do not
        wait for the rest of its budget; if it brought other rooms' inputs while its
        budget is grown, once it has done the base budget
        (worker.runner.fairness.Scheduler.give_way).

        What it brought is also taken into the hand at once, and the next fetch started,
        if it has cheaper rooms' inputs, so that those arriving later in the transaction
        are in hand when it ends too, not one fetch (and one more transaction) later; or
        whatever its rooms while the hand lacks inputs for the next transaction: a fetch
        ends once it has delivered what the stream held when it was asked (the first
        input to come, if none), so what comes in after it would otherwise wait in the
        stream until the loop's next pass, and the process run the next transaction only
        after that round trip. Only that far: past it, a fetch's inputs of the same rooms
        stay in the stream, so that the hand does not fill up to consumer.max_ack_pending
        with one room's backlog (a clean stop finishes every input in hand)."""
        running = self._running
        if running is None or not running.offered:
            return
        if fetching.cancelled() or fetching.exception() is not None:
            return
        messages = fetching.result()
        now = time.monotonic()
        # Once it has asked for follow-ups it no longer gives way: it is processing the
        # cheap inputs it would give way to.
        when = None if running.followed else self.scheduler.give_way(messages, running, now)
        if when is not None:
            self._give_way_at(when)
        # Not if `_fetch` has it (it takes what it awaits).
        if (
            fetching is self._fetching
            and messages
            and (
                self._short_for_next(running)
                or self.scheduler.cheaper(messages, running.current(), now)
            )
        ):
            self._fetching = None
            self._take(messages)
            self._start_fetch()

    def _short_for_next(self, running: Running) -> bool:
        """Whether fewer inputs wait in hand, besides those offered to the transaction
        under way, than the next one may be offered."""
        waiting = len(self.in_hand) - len(running.offered) - len(running.follow)
        return waiting < max(self._offered.values())

    def _give_way_at(self, when: float) -> None:
        """Interrupt the transaction under way at `when` (monotonic seconds), or
        earlier if already due earlier."""
        loop = asyncio.get_running_loop()
        at = loop.time() + (when - time.monotonic())
        timer = self._give_way
        if timer is not None:
            if timer.when() <= at:
                return
            timer.cancel()
        self._give_way = loop.call_at(at, self.pipeline.interrupt.set)

    def _take(self, messages: list[Msg]) -> None:
        now = time.monotonic()
        pending = 0
        taken = []
        for message in messages:
            sequence, pending = stream_position(message)
            inbound = InboundMessage(message.subject, message.data, sequence)
            item = InHand(message, inbound, now, now)
            self.in_hand.append(item)
            self._rooms[item.subject] += 1
            taken.append(inbound)
        self.metrics.consumer_lag.set(pending)
        self.pipeline.parse_ahead.add(taken)

    async def _collect_fetch(self) -> None:
        """Wait for the fetch under way (never cancelled: messages it had taken would be
        lost until ack_wait) and keep what it brought."""
        fetching, self._fetching = self._fetching, None
        if fetching is None:
            return
        try:
            messages = await fetching
        except NATS_ERRORS as exc:
            log.warning("fetching inputs failed", error=repr(exc))
            return
        if messages:
            self._take(messages)

    async def _handle(self, stop: asyncio.Event) -> None:
        """One transaction over the inputs in hand, and the settling of those it did."""
        in_hand = self.in_hand
        ordered = self.scheduler.order(in_hand, time.monotonic(), self._rooms.keys())
        # In fetch order, what a transaction takes is the first inputs in hand.
        in_order = self.scheduler.fetch_order
        self.pipeline.interrupt.clear()
        costlier = first_only = False
        budget: float | None = None
        if self._budget is not None:
            ordered, costlier = self.scheduler.turn(ordered)
            # The first group's turn while costlier inputs wait (Scheduler.turn).
            first_only = not costlier and len(ordered) < len(in_hand)
            budget = self.scheduler.budget(
                len(ordered),
                len(in_hand),
                len(self._rooms),
                costlier,
                self._budget,
                self.config.consumer.batch_budget_alone,
            )
            limit = self._offered[costlier]
            if first_only:
                limit = max(limit, self._first_fits)
            ordered = ordered[:limit]
            self._running = Running(ordered, budget, self._budget, time.monotonic(), self._reached)
        running = self._running
        try:
            result = await self._process(ordered, budget, costlier, stop)
        finally:
            self._running = None
            self._stop_give_way()
        if result is None:
            return
        dispositions = result.dispositions
        gave_way = self.pipeline.interrupt.is_set()
        most = self.config.consumer.batch_size
        own = len(dispositions) if result.first is None else result.first
        offered = next_offered(own, costlier, gave_way or result.first is not None, most)
        if offered is not None:
            self._offered[costlier] = offered
        if first_only and not gave_way:
            self._first_fits = fits_in_budget(len(dispositions), sum(result.laps), budget, most)
        done = ordered[:own]
        if result.first is not None and running is not None:
            # Its follow-ups (`_follow_ups`) ran as a first group's turn would have.
            followed = running.follow[: len(dispositions) - own]
            done += followed
            if followed:
                spent = sum(result.laps[own:])
                self._first_fits = fits_in_budget(len(followed), spent, self._budget, most)
        self.scheduler.record(done, result.laps, time.monotonic())
        self._forget(done, in_order and not costlier and result.first is None)
        messages = [item.message for item in done]
        self.settling.start(
            self._settle_batch(messages, dispositions, result.rows, result.ticket, stop)
        )

    def _stop_give_way(self) -> None:
        if self._give_way is not None:
            self._give_way.cancel()
            self._give_way = None

    def _follow_ups(self, done: int) -> tuple[list[InboundMessage], float | None]:
        """The inputs the transaction under way, having done `done` of its own, goes on
        with before it commits, and their budget: the cheaper rooms' inputs in hand
        (worker.runner.fairness.Scheduler.follow_ups), as many as a first group's turn
        is offered. Asked by the pipeline (worker.runner.pipeline_handle.FollowUps)."""
        running = self._running
        if running is None or not running.offered:
            return [], None
        # From here on it does not give way: the cheap inputs it would give way to are
        # the ones it goes on with.
        running.followed = True
        self._stop_give_way()
        now = time.monotonic()
        follow = self.scheduler.follow_ups(self.in_hand, running, done, now)
        running.follow = follow[: max(self._offered[False], self._first_fits)]
        return [item.inbound for item in running.follow], self._budget

    def _reached(self) -> int:
        """How many inputs the transaction under way has done."""
        return self.pipeline.reached()

    def _forget(self, done: list[InHand], first: bool) -> None:
        """Take `done` out of the hand; `first`: they are its first inputs."""
        rooms = self._rooms
        for item in done:
            count = rooms[item.subject] - 1
            if count:
                rooms[item.subject] = count
            else:
                del rooms[item.subject]
        if first:
            del self.in_hand[: len(done)]
        else:
            finished = {id(item) for item in done}
            self.in_hand = [item for item in self.in_hand if id(item) not in finished]

    async def _keep_alive(self) -> None:
        """Tell JetStream that inputs held in hand for half of ack_wait are in progress,
        so that it does not deliver them again while they wait their turn."""
        now = time.monotonic()
        if now < self._next_touch:
            # None is due yet: as of the last look the oldest touch was this long
            # ago, and inputs come in, and are touched, only later.
            return
        limit = self.config.consumer.ack_wait / 2
        waiting = [item for item in self.in_hand if now - item.touched_at >= limit]
        if waiting:
            await settle([item.message for item in waiting], [Msg.in_progress] * len(waiting))
            for item in waiting:
                item.touched_at = now
        self._next_touch = min((item.touched_at for item in self.in_hand), default=now) + limit

    async def _process(
        self, ordered: list[InHand], budget: float | None, costlier: bool, stop: asyncio.Event
    ) -> BatchResult | None:
        """What the transaction did with the inputs it reached (the first ones of
        `ordered`, then those of `_follow_ups` it reached), once committed; None if
        everything in hand was handed back. A costlier turn (`costlier`) asks for
        follow-ups in any case, any other with a budget if it was interrupted.

        A transient database fault retries in place: handing the inputs back (nak)
        would let the ones after them overtake them, and a room's inputs must be
        processed in stream order."""
        inbound = [item.inbound for item in ordered]
        delay = TRANSIENT_RETRY_DELAY
        while True:
            started = time.perf_counter()
            running = self._running
            if running is not None:
                # A retry asks again.
                running.follow, running.followed = [], False
            follow_ups = self._follow_ups if running is not None else None
            try:
                with quick_thread_switches():
                    result = await self.pipeline.process_batch(
                        inbound, budget, follow_ups, always=costlier
                    )
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
                return result
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.metrics.transient_retries.inc()
                in_hand = [item.message for item in self.in_hand]
                if stop.is_set():
                    log.warning("transient database fault while stopping; inputs handed back")
                    self.in_hand = []
                    self._rooms.clear()
                    await settle(in_hand, [Msg.nak] * len(in_hand))
                    return None
                log.warning("transient database fault; retrying the batch", error=str(exc))
                await settle(in_hand, [Msg.in_progress] * len(in_hand))
                await sleep_unless_stopped(delay, stop)
                delay = next_delay(delay)

    async def _settle_batch(
        self,
        messages: list[Msg],
        dispositions: list[Disposition],
        rows: list[OutboxRow],
        ticket: int,
        stop: asyncio.Event,
    ) -> None:
        """Acknowledge a batch's inputs and publish its outputs once its commit is on
        disk (the pipeline goes on with the next batch meanwhile)."""
        await self.pipeline.durable(ticket)
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
