"""The pipeline's entry points: a batch, the release of held events, a parked room's retry.

Each runs one transaction (worker.pipeline.batch) and each input in it a savepoint:
the input's recipe (worker.pipeline.recipe) either completes, or is undone and then
dead-lettered (bad input) or parks its room (a bug). Transient and storage faults are
no input's fault and propagate to the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import structlog

from worker.bus.subjects import Subjects
from worker.input.errors import DeadLetter
from worker.input.outputs import OutputBuilder
from worker.matrix.events import StateMap
from worker.pipeline.acl import OriginAcl
from worker.pipeline.authorize import Authorizer
from worker.pipeline.batch import Batch, Counters, Disposition, InboundMessage, Stopwatch
from worker.pipeline.extremities import Extremities
from worker.pipeline.held import HeldEvents
from worker.pipeline.limits import CacheLimits
from worker.pipeline.outbox import Outbox
from worker.pipeline.parking import RETRY_CHUNK, Parking, RetryStep
from worker.pipeline.recipe import Parts, Recipe
from worker.pipeline.redactions import Redactions
from worker.pipeline.resolution import NidResolver
from worker.pipeline.rooms import Rooms
from worker.pipeline.state import EventStates
from worker.pipeline.store import EventWriter
from worker.storage.blocks import NidState
from worker.storage.cache_budget import DEFAULT_BUDGET, CacheBudget
from worker.storage.database import Database, RoomRow, is_transient, storage_fault
from worker.storage.events import EventStore
from worker.storage.state import StateStore

log = structlog.get_logger(__name__)

#: Asked, with how many of a batch's inputs its transaction did, for inputs to go on
#: with before it commits, and their budget (seconds of work, as `Batch.budget`): the
#: input loop's way to have cheap rooms' inputs that came in while an expensive room's
#: transaction ran share its commit rather than wait for it and then for one of their
#: own (worker.runner.fairness). They must be of rooms none of the batch's inputs is
#: of: the inputs the batch did not reach are left for a later one. Asked again, with
#: the same inputs to give, if the batch runs again with savepoints.
FollowUps = Callable[[int], tuple[Sequence[InboundMessage], float | None]]


class Pipeline:
    """The writer: owns the parts and runs inputs through them in the database thread."""

    def __init__(
        self,
        db: Database,
        subjects: Subjects,
        held_max_wait: float = 60.0,
        limits: CacheLimits | None = None,
        clock: Callable[[], int] | None = None,
        budget: CacheBudget | None = None,
    ) -> None:
        """`budget` (`storage.cache_mb`) bounds every cache of the pipeline and its
        stores; without one they have the default budget's bounds. `limits` overrides
        the pipeline's own (tests set tiny ones)."""
        if limits is None:
            limits = CacheLimits() if budget is None else CacheLimits.of_budget(budget)
        self.db = db
        self.subjects = subjects
        self.state = StateStore(db, budget=budget or DEFAULT_BUDGET)
        self.events = EventStore(db, budget=budget or DEFAULT_BUDGET)
        self.outputs = OutputBuilder(subjects, (budget or DEFAULT_BUDGET).bound("output_subjects"))
        #: Outputs written in the open transaction, and what is published.
        self.outbox = Outbox(db)
        self.batch = Batch(db, self.outbox, self.outputs)
        self.rooms = Rooms(db, subjects, limits)
        self.held = HeldEvents(db, held_max_wait, clock)
        self.authorize = Authorizer(
            db, self.state, self.events, (budget or DEFAULT_BUDGET).bound("passed_auth")
        )
        self.resolver = NidResolver(db, self.state, self.events, budget)
        self.states = EventStates(
            db,
            self.state,
            self.events,
            self.resolver,
            (budget or DEFAULT_BUDGET).bound("resolved_snapshots"),
        )
        self.extremities = Extremities(
            db,
            self.state,
            self.events,
            self.states,
            self.outbox,
            self.outputs,
            self.rooms.forget,
            limits.awaited_prevs,
        )
        self.recipe = Recipe(
            Parts(
                db=db,
                batch=self.batch,
                acl=OriginAcl(self.state, self.events),
                rooms=self.rooms,
                held=self.held,
                authorize=self.authorize,
                states=self.states,
                writer=EventWriter(db, self.events),
                extremities=self.extremities,
                redactions=Redactions(
                    db,
                    self.state,
                    self.events,
                    self.authorize,
                    self.outbox,
                    self.outputs,
                    limits.redaction_targets,
                ),
                outbox=self.outbox,
                outputs=self.outputs,
            )
        )
        self.parking = Parking(db, self.batch, self.recipe.event_id_of)
        #: Each input in a savepoint (True), or unguarded (see `process_batch`).
        self._careful = True
        #: Batches run again with savepoints since the start (tests read it).
        self.redone = 0

    # -- entry points -----------------------------------------------------------

    def process_batch(
        self, messages: Sequence[InboundMessage], follow: FollowUps | None = None
    ) -> list[Disposition]:
        """Process a batch in one transaction; transient faults propagate for a retry.

        With a `batch.budget` the transaction commits once that much work is spent, after
        one input at least: the dispositions then cover only the first inputs, and the
        caller hands the rest to the next batch; `batch.stopwatch.laps` holds what each
        input took. Afterwards `outbox.emitted` holds the outbox rows the batch
        committed, so the caller can publish them without reading them back.

        `follow`, if given, is asked, once the inputs of `messages` the transaction
        reaches are done, for inputs to go on with in the same transaction before it
        commits (see `FollowUps`): the dispositions then cover the first inputs of
        `messages` and after them the first ones of the follow-ups.

        The inputs run without savepoints first (see `Unguarded`): an input that fails
        after writing undoes the whole transaction, and the batch runs again with one
        savepoint per input, which is what decides its dispositions then."""
        self._careful = False
        try:
            return self._batch(messages, follow)
        except _UndoBatch as undo:
            # Run again outside this handler: an error of the second run (a parked
            # room's traceback) must not carry this one as its context.
            reason = repr(undo.__cause__)
        finally:
            self._careful = True
        log.info("batch run again with savepoints", reason=reason)
        self.redone += 1
        return self._batch(messages, follow)

    def _batch(
        self, messages: Sequence[InboundMessage], follow: FollowUps | None
    ) -> list[Disposition]:
        with self._transaction():
            try:
                self.recipe.prefetch(messages)
                results: list[Disposition] = []
                stopwatch = self.batch.start_stopwatch()
                self._run_inputs(messages, stopwatch, results)
                more, budget = follow(len(results)) if follow is not None else ((), None)
                if more:
                    # The inputs left of `messages` keep their parses for the next batch.
                    self.recipe.prefetch([*messages[len(results) :], *more])
                    stopwatch.renew(budget)
                    self._run_inputs(more, stopwatch, results)
                stopwatch.finish()
            finally:
                self.recipe.forget_prefetched()
        return results

    def _run_inputs(
        self, messages: Sequence[InboundMessage], stopwatch: Stopwatch, results: list[Disposition]
    ) -> None:
        """Process `messages` in order into `results` until the stopwatch says the
        transaction's budget is spent."""
        held = self.held
        for message in messages:
            results.append(self._process_message(message))
            if held.count:  # nothing is woken while nothing is held
                self._process_woken()
            if stopwatch.lap():
                break

    def release_expired(self, now_ms: int | None = None) -> int:
        """Process held events that waited longer than `held_max_wait` with the state
        that is known (see `EventStates.before`); returns how many were released."""
        if not self.held.count:
            return 0
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        with self._transaction():
            expired = self.held.expired(now_ms)
            for event_id in expired:
                self._release(event_id, force=True)
                self._process_woken()
        return len(expired)

    def retry_parked(self, room_id: str, limit: int = RETRY_CHUNK) -> RetryStep:
        """Process up to `limit` of a parked room's inputs, in order, in one transaction
        (see `Parking.retry`)."""

        def process(message: InboundMessage) -> None:
            self._process_message(message)
            self._process_woken()

        def undo() -> None:
            self.outbox.begin()
            self._forget_caches()

        return self.parking.retry(room_id, limit, self._transaction, process, undo)

    # -- what the worker, metrics and tools read ---------------------------------

    @property
    def counters(self) -> Counters:
        """Totals over committed transactions (what metrics show)."""
        return self.batch.totals

    @property
    def held_count(self) -> int:
        return self.held.count

    @property
    def held_max_wait_ms(self) -> int:
        return self.held.max_wait_ms

    @property
    def parked_count(self) -> int:
        return self.parking.count

    def parked_room_ids(self) -> list[str]:
        return self.parking.room_ids()

    def resolve_snapshots(self, room: RoomRow, snapshots: Sequence[int]) -> NidState:
        """The resolution of several snapshots of `room`; writes nothing."""
        return self.resolver.resolve(room.room_version, snapshots)

    def to_state_map(self, state: NidState) -> StateMap:
        """A NID state map in Matrix strings: (type, state key) → event ID."""
        return self.resolver.to_state_map(state)

    # -- inputs -------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            with self.batch.transaction():
                yield
        finally:
            self.held.settle()

    def _process_woken(self) -> None:
        while (event_id := self.held.next_woken()) is not None:
            self._release(event_id, force=False)

    def _release(self, event_id: str, *, force: bool) -> None:
        message = self.held.release(event_id, forced=force)
        if message is not None:
            self._process_message(message, force=force)

    def _process_message(self, message: InboundMessage, *, force: bool = False) -> Disposition:
        """One input in its savepoint, and what becomes of it."""
        room_id = self.rooms.of_subject(message.subject)
        if self.parking.intercept(room_id, message):
            return Disposition.ACK
        emitted_before = self.outbox.mark()
        scope = self.db.savepoint() if self._careful else self.db.unguarded()
        try:
            with scope:
                self.recipe.process(message, room_id, force=force)
            self.batch.counts.processed += 1
            return Disposition.ACK
        except DeadLetter as dead:
            if not scope.undone:
                raise _UndoBatch from dead
            self.outbox.undo_to(emitted_before)
            self.batch.dead_letter(message, room_id, dead.code, dead.message)
            disposition = Disposition.TERM
        except Exception as exc:
            # Busy or locked: the batch is retried. A full or failing disk: the worker
            # stops. Neither is the input's fault, and the transaction may be gone.
            if (
                is_transient(exc)
                or storage_fault(exc, self.db.path) is not None
                or not self.db.in_transaction
            ):
                raise
            if not scope.undone:
                raise _UndoBatch from exc
            self.outbox.undo_to(emitted_before)
            disposition = self._failed(message, room_id, exc)
        self._forget_caches()
        return disposition

    def _failed(self, message: InboundMessage, room_id: str | None, exc: Exception) -> Disposition:
        """An unexpected error on one input: park its room, or dead-letter it if the
        subject names no room (nothing ran: there is no room to stop)."""
        if room_id is not None:
            self.parking.park(room_id, message, exc)
            return Disposition.ACK
        log.exception("unexpected error on one input", subject=message.subject)
        self.batch.dead_letter(
            message, None, "internal_error", f"the worker failed on this input: {exc!r}"
        )
        return Disposition.TERM

    def _forget_caches(self) -> None:
        """Work was undone: cached rows and states may describe it."""
        self.state.forget_caches()
        self.events.forget_caches()
        self.rooms.forget()


class _UndoBatch(Exception):
    """An input that ran without a savepoint failed after writing: only undoing the
    whole transaction undoes its writes (see `Pipeline.process_batch`)."""
