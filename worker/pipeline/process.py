"""The path of one input, top to bottom:

    decode → validate → authorize → compute state → store → publish (via the outbox)

`Pipeline.process_batch` runs in the database thread: a fetched batch is one SQLite
transaction, each input inside it a savepoint, and every output an input owes is
written to the outbox in that same transaction. After the commit the caller acks the
inputs and publishes the outbox, so a crash at any point neither loses nor duplicates
an effect: uncommitted work is redelivered, committed work is recognised as a
duplicate, and unpublished outputs are still in the outbox at start-up.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import structlog

from worker.bus.subjects import Subjects
from worker.input.decode import InputMessage, Kind, decode_input
from worker.input.errors import DeadLetter
from worker.input.outputs import OutputBuilder
from worker.matrix.events import CREATE, StateMap
from worker.matrix.hashes import compute_event_id
from worker.matrix.pdu import PduError, parse_pdu, room_version_of_create
from worker.matrix.room_versions import RoomVersion, UnknownRoomVersion, get_room_version
from worker.pipeline.authorize import Authorizer, Verdict
from worker.pipeline.batch import Counters, Disposition, InboundMessage
from worker.pipeline.extremities import Extremities
from worker.pipeline.held import HeldEvents
from worker.pipeline.outbox import Outbox
from worker.pipeline.redactions import Redactions
from worker.pipeline.resolution import NidResolver
from worker.pipeline.state import EventStates
from worker.pipeline.store import EventWriter
from worker.storage.blocks import NidState
from worker.storage.database import (
    Database,
    RoomRow,
    is_transient,
    storage_fault,
)
from worker.storage.events import EventStore
from worker.storage.parked import ParkedStore
from worker.storage.schema import (
    STATUS_OUTLIER,
    STATUS_REJECTED,
    STATUS_SOFT_FAILED,
)
from worker.storage.state import StateStore

log = structlog.get_logger(__name__)

#: Input subjects remembered with their room (one per active room).
_SUBJECT_CACHE_SIZE: Final = 100_000
#: Parked inputs retried in one transaction.
RETRY_CHUNK: Final = 200


@dataclass(frozen=True, slots=True)
class _Failure:
    """Why a room is parked: what worker.storage.parked records."""

    room_id: str
    event_id: str | None
    stream_sequence: int
    error: str
    traceback: str
    now_ms: int


class _RetryFailed(Exception):
    """Undoes a parked room's retry transaction after one of its inputs failed again."""


@dataclass(frozen=True, slots=True)
class RetryStep:
    """What one transaction of a parked room's retry did."""

    #: Parked inputs processed (and removed from the room's waiting inputs).
    processed: int
    #: The room has no waiting inputs left and is no longer parked.
    unparked: bool
    #: The error that parked the room again, if one did.
    error: str | None


class Pipeline:
    def __init__(self, db: Database, subjects: Subjects, held_max_wait: float = 60.0) -> None:
        self.db = db
        self.subjects = subjects
        self.state = StateStore(db)
        self.events = EventStore(db)
        self.outputs = OutputBuilder(subjects)
        self.held = HeldEvents(db, held_max_wait)
        #: Rooms by ID; rows are updated in place and dropped whenever work is undone.
        self._rooms: dict[str, RoomRow] = {}
        #: Outputs written in the open transaction, and what is published.
        self.outbox = Outbox(db)
        self.authorize = Authorizer(db, self.state, self.events)
        self.resolver = NidResolver(db, self.state, self.events)
        self.states = EventStates(db, self.state, self.events, self.resolver)
        self.writer = EventWriter(db, self.events)
        self.extremities = Extremities(
            db,
            self.state,
            self.events,
            self.states,
            self.outbox,
            self.outputs,
            forget_rooms=self._forget_rooms,
        )
        self.redactions = Redactions(
            db, self.state, self.events, self.authorize, self.outbox, self.outputs
        )
        self._subject_rooms: dict[str, str | None] = {}
        #: Totals over committed transactions (what metrics show).
        self.counters = Counters()
        #: The open transaction's counts, added to the totals only once it commits, so
        #: that a batch retried after a transient fault is counted once.
        self.batch_counters = Counters()
        self.parked = ParkedStore(db)
        #: Rooms whose inputs wait for a retry (see worker.storage.parked).
        self._parked: set[str] = set(self.parked.room_ids())
        #: The parked room being retried, and how its retry failed.
        self._retrying: str | None = None
        self._retry_failure: _Failure | None = None

    # -- the batch --------------------------------------------------------------

    def process_batch(self, messages: Sequence[InboundMessage]) -> list[Disposition]:
        """Process a batch in one transaction; transient faults propagate for a retry.

        Afterwards `outbox.emitted` holds the outbox rows the batch committed, so the caller
        can publish them without reading them back."""
        self.outbox.begin()
        self.batch_counters = Counters()
        try:
            with self.db.transaction():
                self.outbox.delete_published()
                results = []
                for message in messages:
                    results.append(self._process_message(message))
                    self._process_released()
            self.counters.add(self.batch_counters)
            return results
        finally:
            self.held.settle()

    def release_expired(self, now_ms: int | None = None) -> int:
        """Process held events that waited longer than `held_max_wait` with the state
        that is known (see `_state_before`); returns how many were released."""
        if not self.held.count:
            return 0
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        self.outbox.begin()
        self.batch_counters = Counters()
        try:
            with self.db.transaction():
                self.outbox.delete_published()
                expired = self.held.expired(now_ms)
                for event_id in expired:
                    self._release(event_id, force=True)
                    self._process_released()
            self.counters.add(self.batch_counters)
        finally:
            self.held.settle()
        return len(expired)

    def _forget_rooms(self) -> None:
        self._rooms.clear()

    @property
    def held_count(self) -> int:
        return self.held.count

    @property
    def held_max_wait_ms(self) -> int:
        return self.held.max_wait_ms

    def _process_released(self) -> None:
        while (event_id := self.held.next_woken()) is not None:
            self._release(event_id, force=False)

    def _release(self, event_id: str, *, force: bool) -> None:
        message = self.held.release(event_id, forced=force)
        if message is not None:
            self._process_message(message, force=force)

    def _process_message(self, message: InboundMessage, *, force: bool = False) -> Disposition:
        room_id = self._room_of_subject(message.subject)
        if room_id is not None and room_id == self._retrying and self._retry_failure:
            return Disposition.ACK  # the failed retry is undone as a whole
        if room_id is not None and room_id in self._parked and room_id != self._retrying:
            # After the input that failed, in order, until the room is retried.
            self.parked.keep(room_id, message.subject, message.stream_sequence, message.data)
            self.batch_counters.parked += 1
            log.debug(
                "input kept for a parked room",
                room_id=room_id,
                stream_sequence=message.stream_sequence,
            )
            return Disposition.ACK
        emitted_before = self.outbox.mark()
        try:
            with self.db.savepoint():
                self._process(message, force=force)
            self.batch_counters.processed += 1
            return Disposition.ACK
        except DeadLetter as dead:
            self.outbox.undo_to(emitted_before)
            self._dead_letter(message, dead.code, dead.message)
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
            self.outbox.undo_to(emitted_before)
            if room_id is None:
                # No room to fork: the subject was unreadable before anything ran.
                log.exception("unexpected error on one input", subject=message.subject)
                self._dead_letter(
                    message, "internal_error", f"the worker failed on this input: {exc!r}"
                )
                disposition = Disposition.TERM
            else:
                self._park(room_id, message, exc)
                disposition = Disposition.ACK
        self.state.forget_caches()
        self.events.forget_caches()
        self._forget_rooms()
        return disposition

    # -- parked rooms -----------------------------------------------------------------

    @property
    def parked_count(self) -> int:
        return len(self._parked)

    def parked_room_ids(self) -> list[str]:
        return sorted(self._parked)

    def _park(self, room_id: str, message: InboundMessage, exc: Exception) -> None:
        """A bug, not bad input: keep the input whole and stop the room (its savepoint
        is already rolled back), so that nothing is built on a missing event."""
        event_id = self._event_id_of(message)
        failure = _Failure(
            room_id=room_id,
            event_id=event_id,
            stream_sequence=message.stream_sequence,
            error=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc)),
            now_ms=int(time.time() * 1000),
        )
        log.error(
            "room parked: an unexpected error on one of its inputs; the room's inputs are "
            "kept and wait for `roomserver retry` or a restart",
            room_id=room_id,
            event_id=event_id,
            stream_sequence=message.stream_sequence,
            error=failure.error,
            retry=room_id == self._retrying,
            exc_info=exc,
        )
        if room_id == self._retrying:
            # The retry's transaction is undone as a whole (see retry_parked).
            self._retry_failure = failure
            return
        self._record_failure(failure)
        self.parked.keep(room_id, message.subject, message.stream_sequence, message.data)
        self.batch_counters.parked += 1
        if room_id not in self._parked:
            self._parked.add(room_id)
            self.db.on_rollback(lambda: self._parked.discard(room_id))

    def _record_failure(self, failure: _Failure) -> None:
        self.parked.park(
            room_id=failure.room_id,
            event_id=failure.event_id,
            stream_sequence=failure.stream_sequence,
            error=failure.error,
            traceback=failure.traceback,
            now_ms=failure.now_ms,
        )

    def _event_id_of(self, message: InboundMessage) -> str | None:
        """The input's event ID for the operator, if it can be read at all."""
        try:
            inp = decode_input(message.data)
            room_id = self._room_of_subject(message.subject)
            if room_id is None:
                return None
            version, _ = self._room_version(inp, room_id)
            return compute_event_id(inp.event, version)
        except Exception:
            return None

    def retry_parked(self, room_id: str, limit: int = RETRY_CHUNK) -> RetryStep:
        """Process up to `limit` of a parked room's inputs, in order, in one transaction;
        the room is unparked with its last input. Transient faults propagate.

        If one fails again, the whole transaction is undone (events released from hold
        on the way included, so the order stays the one the room would have had) and
        only the new error is recorded: the room stays parked from the same input."""
        self.outbox.begin()
        self.batch_counters = Counters()
        self._retrying, self._retry_failure = room_id, None
        processed = 0
        unparked = False
        try:
            try:
                with self.db.transaction():
                    self.outbox.delete_published()
                    for parked in self.parked.inputs(room_id, limit):
                        message = InboundMessage(
                            parked.subject, parked.payload, parked.stream_sequence
                        )
                        self._process_message(message)
                        self.parked.remove_input(parked.seq)
                        processed += 1
                        self._process_released()
                        if self._retry_failure is not None:
                            raise _RetryFailed
                    if not self.parked.inputs(room_id, 1):
                        self.parked.unpark(room_id)
                        self._parked.discard(room_id)
                        self.db.on_rollback(lambda: self._parked.add(room_id))
                        unparked = True
                self.counters.add(self.batch_counters)
                return RetryStep(processed, unparked, None)
            except _RetryFailed:
                pass
            failure = self._retry_failure
            assert failure is not None
            self.outbox.begin()
            self.state.forget_caches()
            self.events.forget_caches()
            self._forget_rooms()
            with self.db.transaction():
                self._record_failure(failure)
            return RetryStep(0, False, failure.error)
        finally:
            self._retrying = None
            self.held.settle()

    def _dead_letter(self, message: InboundMessage, code: str, text: str) -> None:
        self.batch_counters.dead_lettered += 1
        codes = self.batch_counters.dead_letter_codes
        codes[code] = codes.get(code, 0) + 1
        room_id = self._room_of_subject(message.subject)
        log.warning(
            "dead letter",
            code=code,
            reason=text,
            subject=message.subject,
            stream_sequence=message.stream_sequence,
        )
        self.outbox.emit(
            self.outputs.dead_letter(
                room_id=room_id,
                code=code,
                message=text,
                subject=message.subject,
                stream_sequence=message.stream_sequence,
                payload=message.data,
            )
        )

    def _room_of_subject(self, subject: str) -> str | None:
        """The room an input subject names (None if it names none); remembered, since
        a room's inputs all share one subject."""
        if subject in self._subject_rooms:
            return self._subject_rooms[subject]
        try:
            room_id: str | None = self.subjects.room_of_input(subject)
        except ValueError:
            room_id = None
        if len(self._subject_rooms) >= _SUBJECT_CACHE_SIZE:
            self._subject_rooms.clear()
        self._subject_rooms[subject] = room_id
        return room_id

    # -- one input --------------------------------------------------------------

    def _process(self, message: InboundMessage, *, force: bool = False) -> None:
        inp = decode_input(message.data)
        subject_room = self._room_of_subject(message.subject)
        if subject_room is None:
            raise DeadLetter(
                "bad_subject", f"{message.subject} is not an input subject with a room token"
            )
        claimed_room = inp.event.get("room_id")
        if isinstance(claimed_room, str) and claimed_room != subject_room:
            raise DeadLetter(
                "wrong_room",
                f"the subject names room {subject_room} but the event is in {claimed_room}",
            )
        version, room = self._room_version(inp, subject_room)
        try:
            event = parse_pdu(inp.event, version)
        except PduError as exc:
            raise DeadLetter(exc.code, exc.message) from None
        if event.room_id != subject_room:
            raise DeadLetter(
                "wrong_room",
                f"the subject names room {subject_room} but event {event.event_id} "
                f"is in {event.room_id}",
            )
        # Log lines carry the IDs; binding them eagerly would cost on every event.
        ids = {"room_id": event.room_id, "event_id": event.event_id}
        existing = self.db.get_event_row(event.event_id)
        if (
            existing is not None
            and not (existing.status == STATUS_OUTLIER and inp.kind is not Kind.OUTLIER)
        ) or self.held.is_held(event.event_id):
            self.batch_counters.duplicates += 1
            log.debug("duplicate event ignored", kind=inp.kind.value, **ids)
            return
        if room is None:
            room = self.db.create_room(event.room_id, version.identifier)
            self._rooms[room.room_id] = room
            self.db.on_rollback(self._forget_rooms)
        if inp.kind is not Kind.OUTLIER and inp.state_event_ids is None and not force:
            missing = self.states.prevs_without_state(event)
            if missing:
                self.held.hold(event.event_id, room, missing, message)
                return

        verdict = Verdict()
        checked = self.authorize.against_auth_events(event, room, verdict)
        if inp.kind is Kind.OUTLIER:
            status = STATUS_OUTLIER if verdict.accepted else verdict.status
            self.writer.store(event, room, status, verdict.reason, 0, existing)
            log.debug("stored outlier", status=status, reason=verdict.reason, **ids)
            return

        before = self.states.before(event, inp, room)
        self.authorize.against_state_before(event, before, verdict, checked)
        if inp.kind is Kind.NEW:
            self.authorize.against_current_state(event, room, before, verdict)

        stored = self.writer.store(event, room, verdict.status, verdict.reason, before, existing)
        stored = self.states.after(stored, room)
        self.held.wake(event.event_id)
        if force or inp.state_event_ids is not None:
            # Processed without all its prev events: remember the ones still unknown.
            self.extremities.await_prevs(self.states.prevs_without_state(event))

        if verdict.status == STATUS_REJECTED or verdict.status == STATUS_SOFT_FAILED:
            soft = verdict.status == STATUS_SOFT_FAILED
            if soft:
                self.batch_counters.soft_failed += 1
            else:
                self.batch_counters.rejected += 1
            log.info("event not accepted", soft_failed=soft, reason=verdict.reason, **ids)
            self.outbox.emit(
                self.outputs.rejected_event(
                    room_id=event.room_id,
                    event_id=event.event_id,
                    kind=inp.kind.value,
                    soft_failed=soft,
                    reason=verdict.reason or "",
                )
            )
            return

        if inp.kind is Kind.OLD:
            self.outbox.emit(
                self.outputs.old_room_event(
                    room_id=event.room_id, event_id=event.event_id, pdu=event.pdu
                )
            )
        else:
            self.extremities.advance(stored, room, inp)
        # Redactions come after the event's own output, so consumers see the event
        # first and then learn that it was redacted.
        self.redactions.on_accepted(stored, room, before)

    # -- room and version ---------------------------------------------------------

    def _room_version(
        self, inp: InputMessage, subject_room: str
    ) -> tuple[RoomVersion, RoomRow | None]:
        """The version to parse the PDU with: the create event's, the stored room's, or
        the one the input names for a room not known yet."""
        raw = inp.event
        is_create = raw.get("type") == CREATE and raw.get("state_key") == ""
        room = self._rooms.get(subject_room)
        if room is None:
            room = self.db.get_room(subject_room)
            if room is not None:
                self._rooms[subject_room] = room
        try:
            if is_create:
                version = room_version_of_create(raw)
                if inp.room_version is not None and inp.room_version != version.identifier:
                    raise DeadLetter(
                        "bad_input",
                        f"room_version {inp.room_version!r} disagrees with the create event's "
                        f"{version.identifier!r}",
                    )
                return version, room
            if room is not None:
                return get_room_version(room.room_version), room
            if inp.room_version is None:
                raise DeadLetter(
                    "unknown_room",
                    f"room {subject_room} is not known: send its m.room.create first, or give "
                    "room_version in the input",
                )
            return get_room_version(inp.room_version), None
        except UnknownRoomVersion as exc:
            raise DeadLetter("unknown_room_version", str(exc)) from None
        except PduError as exc:
            raise DeadLetter(exc.code, exc.message) from None

    # -- state ----------------------------------------------------------------------

    def resolve_snapshots(self, room: RoomRow, snapshots: Sequence[int]) -> NidState:
        """The resolution of several snapshots of `room`; writes nothing."""
        return self.resolver.resolve(room.room_version, snapshots)

    def to_state_map(self, state: NidState) -> StateMap:
        """A NID state map in Matrix strings: (type, state key) → event ID."""
        return self.resolver.to_state_map(state)
