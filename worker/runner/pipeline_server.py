"""The writer's pipeline behind named requests, where its connection lives.

The pipeline and the writer's SQLite connection live in one place: a process of their
own (worker.runner.pipeline_process) or the database thread of the worker's process
(worker.runner.pipeline_handle.LocalPipeline, for tests that look inside). Either way
the event loop asks for work with a `Request` and gets a `Reply`, which carries what
the loop needs without asking again: the batch's dispositions, laps and outbox rows,
the counts metrics show, and the durations to observe. Everything in them pickles, so
the same requests cross a pipe unchanged.

Two numbers are shared without a request (`SharedFlags`): the interrupt the input
loop sets when a transaction should give way, and how many inputs the transaction
under way has done; both are read while a transaction runs.

A batch may go on, before it commits, with inputs the event loop gives it then
(`Follow`): cheap rooms' inputs that came in while an expensive room's transaction ran
share its commit, rather than wait for it and for one of their own
(worker.runner.fairness). The pipeline asks for them once the batch's own inputs are
done (`PipelineServer.ask`: a message to the event loop and its answer, mid-request).

A batch's commit returns before it is on disk (worker.runner.syncer): its result
carries a ticket, and the syncer's thread tells the loop (`on_durable`) once the ticket
is durable; the loop acknowledges and publishes the batch only then. Every other
request is answered once everything committed so far is durable, as before.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from typing import Any, Final

import structlog

from worker.bus.subjects import Subjects
from worker.input.parse_hint import ParseHint
from worker.metrics import TimedDatabase
from worker.pipeline import (
    Counters,
    Disposition,
    InboundMessage,
    OutboxRow,
    Pipeline,
    RetryStep,
)
from worker.runner.syncer import Notice, Syncer
from worker.storage.cache_budget import CacheBudget
from worker.storage.durability import WalSync

log = structlog.get_logger(__name__)

#: Requests after which the counts metrics show may have changed (the others only read
#: or delete published outbox rows).
_CHANGING: Final = frozenset({"open", "process_batch", "release_expired", "retry_parked"})
#: Requests answered before what they committed is durable (see the module docstring).
_UNSYNCED: Final = frozenset({"open", "process_batch", "close"})


class SharedFlags:
    """The interrupt (cell 0) and the inputs done by the transaction under way (cell
    1), in memory both sides see: a ctypes array in one process, or one over a memfd
    mapped by the pipeline's process too. Word-sized stores
    and loads need no lock here: each cell has one writer, and a reader acts on a value
    a moment old at worst (a lap late to give way, an input late in the count)."""

    def __init__(self, cells: ctypes.Array[ctypes.c_long] | None = None) -> None:
        self.cells = cells if cells is not None else (ctypes.c_long * 2)()

    # The interrupt: set by the input loop, read by the stopwatch (batch.Interrupt).
    def is_set(self) -> bool:
        return self.cells[0] != 0

    def set(self) -> None:
        self.cells[0] = 1

    def clear(self) -> None:
        self.cells[0] = 0

    # How many inputs the transaction under way has done (Stopwatch.on_lap).
    def reached(self) -> int:
        return int(self.cells[1])

    def set_reached(self, count: int) -> None:
        self.cells[1] = count


class Follow(IntEnum):
    """Whether a batch asks the event loop for inputs to go on with once its own are
    done (`FollowUp`)."""

    #: Never: the batch commits what it did.
    NEVER = 0
    #: If the event loop interrupted it (cheaper rooms' inputs came in meanwhile).
    IF_GIVEN_WAY = 1
    #: In any case (a costlier room's turn while cheaper inputs wait).
    ALWAYS = 2


@dataclass(frozen=True, slots=True)
class FollowUp:
    """The event loop's answer to a batch asking for inputs to go on with: they are of
    rooms none of the batch's own inputs is of, in the order to process them, with
    their parse hints (worker.runner.parse_ahead) and their budget."""

    messages: list[tuple[str, bytes, int]]
    hints: list[ParseHint | None]
    budget: float | None


@dataclass(frozen=True, slots=True)
class Request:
    #: The name of a PipelineServer method (one of `PipelineServer.REQUESTS`).
    name: str
    args: tuple[Any, ...]
    #: Outbox rows published so far (`Outbox.mark_published` rides with every request;
    #: they are deleted by the next transaction).
    published_through: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The pipeline's counts as of the end of a request (what metrics and tests read)."""

    counters: Counters
    held_count: int
    parked_room_ids: list[str]


@dataclass(frozen=True, slots=True)
class Reply:
    value: Any
    #: None after requests that cannot change the counts.
    snapshot: Snapshot | None
    #: COMMIT durations (seconds) and inputs per committed batch since the last reply,
    #: for the metrics' histograms.
    commit_seconds: list[float]
    batch_sizes: list[float]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What `process_batch` did: the dispositions of the inputs it reached (the first
    ones offered), what each took (the stopwatch's laps) and the outbox rows it
    committed, to publish without reading them back, once `ticket` is durable."""

    dispositions: list[Disposition]
    laps: list[float]
    rows: list[OutboxRow]
    #: The syncer's ticket of its commit (0: nothing to wait for).
    ticket: int = 0
    #: The room versions, by input subject, of rooms whose inputs came without a hint
    #: for their version (worker.runner.parse_ahead learns them).
    versions: dict[str, str] = field(default_factory=dict)
    #: If the batch went on with follow-ups (`FollowUp`): how many of its own inputs it
    #: did; the dispositions and laps after those are the follow-ups' first ones.
    first: int | None = None

    def __reduce__(self) -> tuple[Callable[..., BatchResult], tuple[Any, ...]]:
        """Pickled with its rows as plain tuples: a NamedTuple pickles through a Python
        call per row (`__getnewargs__`, ~5 us: a reply of 256 rows took 1.4 ms to
        pickle, 0.13 ms as tuples), in the pipeline's process, the bottleneck."""
        rows = list(map(tuple, self.rows))
        return _batch_result, (
            self.dispositions,
            self.laps,
            rows,
            self.ticket,
            self.versions,
            self.first,
        )


def _batch_result(
    dispositions: list[Disposition],
    laps: list[float],
    rows: list[tuple[int, str, str, bytes]],
    ticket: int,
    versions: dict[str, str],
    first: int | None,
) -> BatchResult:
    """A `BatchResult` unpickled (see `BatchResult.__reduce__`)."""
    rows_ = list(map(OutboxRow._make, rows))
    return BatchResult(dispositions, laps, rows_, ticket, versions, first)


@dataclass(slots=True)
class _Recorded:
    """Observations (durations, batch sizes) kept until the next reply (stands for a
    Histogram)."""

    values: list[float] = field(default_factory=list)

    def observe(self, amount: float) -> None:
        self.values.append(amount)

    def take(self) -> list[float]:
        values, self.values = self.values, []
        return values


class PipelineServer:
    """Answers requests with the pipeline; runs in the thread that owns the connection."""

    REQUESTS: Final = frozenset(
        {
            "open",
            "process_batch",
            "release_expired",
            "retry_parked",
            "outbox_pending",
            "outbox_depth",
            "outbox_delete_through",
            "forget_published",
            "close",
        }
    )

    def __init__(
        self,
        flags: SharedFlags,
        on_durable: Callable[[Notice], None] = lambda notice: None,
        ask: Callable[[int], FollowUp | None] = lambda done: None,
    ) -> None:
        self.flags = flags
        #: Called in the syncer's thread with each ticket made durable (or its error);
        #: by default nobody listens (a caller that does not wait for durability).
        self.on_durable = on_durable
        #: Asks the event loop, during a batch that did `done` of its inputs, for inputs
        #: to go on with (`Follow`); by default there are none.
        self.ask = ask
        #: None until `open` (and after `close`).
        self.pipeline: Pipeline | None = None
        self._syncer: Syncer | None = None
        self._wal: WalSync | None = None
        self._commits = _Recorded()
        self._batch_sizes = _Recorded()

    def handle(self, request: Request) -> Reply:
        """Run one request; its errors propagate (transient ones are retried by the
        caller, as they were when the pipeline ran in the caller's own process)."""
        if request.name not in self.REQUESTS:
            raise ValueError(f"unknown pipeline request {request.name!r}")
        if self.pipeline is not None:
            self.pipeline.outbox.mark_published(request.published_through)
        method: Callable[..., Any] = getattr(self, request.name)
        value = method(*request.args)
        if self._syncer is not None and request.name not in _UNSYNCED:
            self._syncer.wait(self._syncer.committed())
        snapshot = self._snapshot() if request.name in _CHANGING else None
        return Reply(value, snapshot, self._commits.take(), self._batch_sizes.take())

    # -- requests -------------------------------------------------------------------

    def open(self, path: str, subject_prefix: str, held_max_wait: float, cache_mb: int) -> str:
        """Open the database (after SQLite's integrity check) and build the pipeline,
        its caches within `cache_mb` (worker.storage.cache_budget); returns the database
        file's path."""
        budget = CacheBudget(cache_mb)
        db = TimedDatabase(Path(path), budget.bound("nid_names"))
        try:
            problems = db.integrity_check()
            if problems:
                raise RuntimeError(f"database integrity check failed: {'; '.join(problems)}")
            pipeline = Pipeline(
                db, Subjects(subject_prefix), held_max_wait=held_max_wait, budget=budget
            )
        except BaseException:
            db.close()
            raise
        db.commit_histogram = self._commits
        pipeline.batch.committed = self._batch_sizes.observe
        pipeline.batch.interrupt = self.flags
        pipeline.batch.on_lap = self.flags.set_reached
        self.pipeline = pipeline
        self._wal = db.defer_sync()
        self._syncer = Syncer(self._wal.sync, self.on_durable)
        return str(db.path)

    def process_batch(
        self,
        messages: list[tuple[str, bytes, int]],
        budget: float | None,
        hints: list[ParseHint | None] | None = None,
        follow: Follow = Follow.NEVER,
    ) -> BatchResult:
        """One transaction over `messages`, their events parsed from `hints` where the
        caller parsed them (worker.input.parse_hint), and then over the inputs the event
        loop gives to follow them, if `follow` says to ask."""
        pipeline = self._pipeline()
        pipeline.batch.budget = budget
        self.flags.set_reached(0)
        inbound = _inbound(messages)
        hints = hints if hints is not None else [None] * len(inbound)
        pipeline.recipe.hints = {m: h for m, h in zip(inbound, hints, strict=True) if h is not None}
        asking = _Asking(self, pipeline, follow) if follow is not Follow.NEVER else None
        try:
            dispositions = pipeline.process_batch(inbound, asking)
        finally:
            pipeline.recipe.hints = {}
        ticket = self._syncer.committed() if self._syncer is not None else 0
        rows = pipeline.outbox.emitted
        first = None
        if asking is not None and asking.inbound:
            first = asking.done
            inbound = inbound + asking.inbound
            hints = hints + asking.hints
        versions = _unhinted_versions(pipeline, inbound, hints)
        laps = pipeline.batch.stopwatch.laps
        return BatchResult(dispositions, laps, rows, ticket, versions, first)

    def release_expired(self) -> tuple[int, list[OutboxRow]]:
        """Held events released, and the outbox rows their transaction committed."""
        pipeline = self._pipeline()
        released = pipeline.release_expired()
        return released, (pipeline.outbox.emitted if released else [])

    def retry_parked(self, room_id: str) -> tuple[RetryStep, list[OutboxRow]]:
        pipeline = self._pipeline()
        step = pipeline.retry_parked(room_id)
        return step, pipeline.outbox.emitted

    def outbox_pending(self, limit: int) -> list[OutboxRow]:
        return self._pipeline().db.outbox.pending(limit)

    def outbox_depth(self) -> int:
        return self._pipeline().db.outbox.depth()

    def outbox_delete_through(self, seq: int) -> None:
        self._pipeline().db.outbox.delete_through(seq)

    def forget_published(self) -> None:
        self._pipeline().outbox.forget_published()

    def close(self) -> None:
        """Close the database, once what was committed is durable."""
        pipeline, self.pipeline = self.pipeline, None
        syncer, self._syncer = self._syncer, None
        try:
            if syncer is not None:
                syncer.close()
        finally:
            if self._wal is not None:
                self._wal.close()
                self._wal = None
            if pipeline is not None:
                pipeline.db.close()

    # -------------------------------------------------------------------------------

    def _pipeline(self) -> Pipeline:
        if self.pipeline is None:
            raise RuntimeError("the pipeline's database is not open")
        return self.pipeline

    def _snapshot(self) -> Snapshot | None:
        pipeline = self.pipeline
        if pipeline is None:
            return None
        totals = pipeline.counters
        counters = replace(totals, dead_letter_codes=dict(totals.dead_letter_codes))
        return Snapshot(counters, pipeline.held_count, pipeline.parked_room_ids())


def _inbound(messages: list[tuple[str, bytes, int]]) -> list[InboundMessage]:
    return [InboundMessage(subject, data, seq) for subject, data, seq in messages]


class _Asking:
    """A batch's `worker.pipeline.process.FollowUps`: asks the event loop once, the
    first time the batch's own inputs are done, and gives the same answer if the batch
    runs again with savepoints."""

    def __init__(self, server: PipelineServer, pipeline: Pipeline, follow: Follow) -> None:
        self._server = server
        self._pipeline = pipeline
        self._follow = follow
        self._asked = False
        #: The follow-ups given, and their hints and budget.
        self.inbound: list[InboundMessage] = []
        self.hints: list[ParseHint | None] = []
        self._budget: float | None = None
        #: How many of the batch's own inputs the last run did before asking.
        self.done = 0

    def __call__(self, done: int) -> tuple[Sequence[InboundMessage], float | None]:
        self.done = done
        if not self._asked:
            self._asked = True
            self._ask(done)
        return self.inbound, self._budget

    def _ask(self, done: int) -> None:
        server = self._server
        flags = server.flags
        if self._follow is Follow.IF_GIVEN_WAY and not flags.is_set():
            return
        answer = server.ask(done)
        if answer is None or not answer.messages:
            return
        # The event loop no longer interrupts this transaction (it stopped the timer
        # before it answered): what set the flag is served by these inputs.
        flags.clear()
        self.inbound = _inbound(answer.messages)
        self.hints = answer.hints
        self._budget = answer.budget
        recipe = self._pipeline.recipe
        given = {m: h for m, h in zip(self.inbound, self.hints, strict=True) if h is not None}
        recipe.hints = {**recipe.hints, **given}


def _unhinted_versions(
    pipeline: Pipeline, inbound: list[InboundMessage], hints: list[ParseHint | None]
) -> dict[str, str]:
    """The versions of the stored rooms, by input subject, whose first input in the
    batch came without a hint for that version: what the caller's guess lacked."""
    versions: dict[str, str] = {}
    seen: set[str] = set()
    for message, hint in zip(inbound, hints, strict=True):
        subject = message.subject
        if subject in seen:
            continue
        seen.add(subject)
        room_id = pipeline.rooms.of_subject(subject)
        room = pipeline.rooms.get(room_id) if room_id is not None else None
        if room is not None and (hint is None or hint[0] != room.room_version):
            versions[subject] = room.room_version
    return versions
