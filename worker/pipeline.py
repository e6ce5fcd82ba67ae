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
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Final

import structlog

from worker.bus.subjects import Subjects
from worker.input.acl import refuse_denied_origin
from worker.input.decode import InputMessage, Kind, decode_input
from worker.input.errors import DeadLetter
from worker.input.outputs import Output, OutputBuilder
from worker.matrix.auth import AuthError, auth_types_for_event, check_auth, validate_auth_events
from worker.matrix.auth.power_levels import PowerLevels
from worker.matrix.events import CREATE, REDACTION, Event, StateKey, StateMap
from worker.matrix.hashes import compute_event_id
from worker.matrix.pdu import PduError, parse_pdu, room_version_of_create
from worker.matrix.redaction import redact
from worker.matrix.room_versions import RoomVersion, UnknownRoomVersion, get_room_version
from worker.matrix.state_res import resolve_state
from worker.storage.blocks import NidState, NidStateKey
from worker.storage.database import (
    Database,
    EventRow,
    RoomRow,
    StorageError,
    is_transient,
    storage_fault,
)
from worker.storage.events import EventStore, StoredEvent, encode_event_json
from worker.storage.parked import ParkedStore
from worker.storage.schema import (
    STATUS_ACCEPTED,
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


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """What the consumer hands over: the bytes and where they came from."""

    subject: str
    data: bytes
    stream_sequence: int


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


class Disposition(Enum):
    #: Processed (or recognised as a duplicate): acknowledge.
    ACK = "ack"
    #: Dead-lettered: terminate, never redeliver.
    TERM = "term"


@dataclass(slots=True)
class Counters:
    processed: int = 0
    rejected: int = 0
    soft_failed: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    #: Inputs kept whole for a parked room (the failed one included).
    parked: int = 0
    #: Dead letters by their code (`bad_msgpack`, `internal_error`, ...).
    dead_letter_codes: dict[str, int] = field(default_factory=dict)

    def add(self, other: Counters) -> None:
        self.processed += other.processed
        self.rejected += other.rejected
        self.soft_failed += other.soft_failed
        self.dead_lettered += other.dead_lettered
        self.duplicates += other.duplicates
        self.parked += other.parked
        for code, count in other.dead_letter_codes.items():
            self.dead_letter_codes[code] = self.dead_letter_codes.get(code, 0) + count


@dataclass(frozen=True, slots=True)
class RetryStep:
    """What one transaction of a parked room's retry did."""

    #: Parked inputs processed (and removed from the room's waiting inputs).
    processed: int
    #: The room has no waiting inputs left and is no longer parked.
    unparked: bool
    #: The error that parked the room again, if one did.
    error: str | None


@dataclass(slots=True)
class _Verdict:
    status: int = STATUS_ACCEPTED
    reason: str | None = None

    def reject(self, status: int, reason: str) -> None:
        if self.status == STATUS_ACCEPTED:
            self.status, self.reason = status, reason


class Pipeline:
    def __init__(
        self,
        db: Database,
        subjects: Subjects,
        held_max_wait: float = 60.0,
        clock: Callable[[], int] | None = None,
    ) -> None:
        #: Milliseconds since the epoch, for holding events: the wall clock, or the
        #: stream's when rebuilding (worker.rebuild).
        self.clock = clock or _wall_clock_ms
        self.db = db
        #: How long an event may wait for missing prev events before it is processed
        #: with the state that is known.
        self.held_max_wait_ms = int(held_max_wait * 1000)
        #: Held events whose missing prev events have all arrived, to process next.
        self._releasable: deque[str] = deque()
        self.held_count = db.held_count()
        #: Rooms by ID; rows are updated in place and dropped whenever work is undone.
        self._rooms: dict[str, RoomRow] = {}
        #: Outbox rows (seq, subject, msg ID, payload) written by the last batch.
        self.emitted: list[tuple[int, str, str, bytes]] = []
        #: Events named by a redaction before they were stored: only these need a look
        #: in the redactions table when they arrive. Entries are never removed (a
        #: rolled-back application must be found again), so a stale one costs a query.
        self._late_redaction_targets: set[str] = set(db.redaction_targets_not_stored())
        #: Prev events that stored events named while they were unknown. When one
        #: arrives it may already have children, and then it is no forward extremity.
        #: Stale entries (after a rollback) only cost a query.
        self._awaited_prevs: set[str] = set(db.awaited_prev_events())
        self._subject_rooms: dict[str, str | None] = {}
        #: Written only by the caller's thread (mark_published) and only read here, and
        #: `_deleted_through` only by the database thread, so neither update is lost
        #: while a batch runs beside the publishing of the one before.
        self._published_through = 0
        self._deleted_through = 0
        self.subjects = subjects
        self.state = StateStore(db)
        self.events = EventStore(db)
        self.outputs = OutputBuilder(subjects)
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

        Afterwards `emitted` holds the outbox rows the batch committed, so the caller
        can publish them without reading them back."""
        self.emitted = []
        self.batch_counters = Counters()
        try:
            with self.db.transaction():
                self._forget_published()
                results = []
                for message in messages:
                    results.append(self._process_message(message))
                    self._process_released()
            self.counters.add(self.batch_counters)
            return results
        finally:
            self._releasable.clear()
            self.held_count = self.db.held_count()

    def release_expired(self, now_ms: int | None = None) -> int:
        """Process held events that waited longer than `held_max_wait` with the state
        that is known (see `_state_before`); returns how many were released."""
        if not self.held_count:
            return 0
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        self.emitted = []
        self.batch_counters = Counters()
        try:
            with self.db.transaction():
                self._forget_published()
                expired = self.db.held_expired(now_ms - self.held_max_wait_ms)
                for event_id in expired:
                    self._release(event_id, force=True)
                    self._process_released()
            self.counters.add(self.batch_counters)
        finally:
            self._releasable.clear()
            self.held_count = self.db.held_count()
        return len(expired)

    def _process_released(self) -> None:
        while self._releasable:
            self._release(self._releasable.popleft(), force=False)

    def _release(self, event_id: str, *, force: bool) -> None:
        held = self.db.unhold(event_id)
        if held is not None:
            self.held_count -= 1
            subject, sequence, payload = held
            log.info("releasing held event", event_id=event_id, forced=force)
            self._process_message(InboundMessage(subject, payload, sequence), force=force)

    def mark_published(self, through_seq: int) -> None:
        """Outbox rows up to `through_seq` are published; they are deleted in the next
        transaction rather than in one of their own (one fsync fewer per batch)."""
        if through_seq > self._published_through:
            self._published_through = through_seq

    def forget_published(self) -> None:
        """Delete published outbox rows now, in a transaction of their own.

        Called when the worker is idle or stopping: a published row left behind would be
        published again at the next start, which JetStream drops as a duplicate only
        inside its duplicate window."""
        if self._published_through > self._deleted_through:
            with self.db.transaction():
                self._forget_published()

    def _forget_published(self) -> None:
        through = self._published_through
        if through > self._deleted_through:
            self.db.outbox_delete_through(through)
            self._deleted_through = through

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
        emitted_before = len(self.emitted)
        try:
            with self.db.savepoint():
                self._process(message, force=force)
            self.batch_counters.processed += 1
            return Disposition.ACK
        except DeadLetter as dead:
            del self.emitted[emitted_before:]
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
            del self.emitted[emitted_before:]
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
        self._rooms.clear()
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
        self.emitted = []
        self.batch_counters = Counters()
        self._retrying, self._retry_failure = room_id, None
        processed = 0
        unparked = False
        try:
            try:
                with self.db.transaction():
                    self._forget_published()
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
            self.emitted = []
            self.state.forget_caches()
            self.events.forget_caches()
            self._rooms.clear()
            with self.db.transaction():
                self._record_failure(failure)
            return RetryStep(0, False, failure.error)
        finally:
            self._retrying = None
            self._releasable.clear()
            self.held_count = self.db.held_count()

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
        self._emit(
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

    def _emit(self, output: Output) -> None:
        seq = self.db.outbox_add(output.subject, output.msg_id, output.payload)
        self.emitted.append((seq, output.subject, output.msg_id, output.payload))

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
        refuse_denied_origin(inp.origin, room, self.state, self.events)
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
        ) or (self.held_count and self.db.is_held(event.event_id)):
            self.batch_counters.duplicates += 1
            log.debug("duplicate event ignored", kind=inp.kind.value, **ids)
            return
        if room is None:
            room = self.db.create_room(event.room_id, version.identifier)
            self._rooms[room.room_id] = room
            self.db.on_rollback(self._rooms.clear)
        if inp.kind is not Kind.OUTLIER and inp.state_event_ids is None and not force:
            missing = self._prevs_without_state(event)
            if missing:
                self.db.hold_event(
                    event_id=event.event_id,
                    room_nid=room.nid,
                    missing=missing,
                    subject=message.subject,
                    stream_sequence=message.stream_sequence,
                    payload=message.data,
                    now_ms=self.clock(),
                )
                self.held_count += 1
                log.info("holding event until its prev events arrive", missing=missing, **ids)
                return

        verdict = _Verdict()
        checked = self._authorize_against_auth_events(event, room, verdict)
        if inp.kind is Kind.OUTLIER:
            status = STATUS_OUTLIER if verdict.status == STATUS_ACCEPTED else verdict.status
            self._store(event, room, status, verdict.reason, 0, 0, existing)
            log.debug("stored outlier", status=status, reason=verdict.reason, **ids)
            return

        before = self._state_before(event, inp, room)
        if verdict.status == STATUS_ACCEPTED:
            self._authorize(
                event, self.state.load(before), verdict, STATUS_REJECTED, "before it", checked
            )
        # Soft-fail check against the room's current state, when there is one: a room
        # joined over federation has none until its first `new` event.
        if (
            inp.kind is Kind.NEW
            and verdict.status == STATUS_ACCEPTED
            and room.latest_event_nids
            and room.snapshot_nid != before
        ):
            current = self.state.load(room.snapshot_nid)
            self._authorize(event, current, verdict, STATUS_SOFT_FAILED, "current")

        stored = self._store(event, room, verdict.status, verdict.reason, before, before, existing)
        stored = self._state_after(stored, room)
        after = stored.row.after_snapshot_nid
        self._wake_held(event.event_id)
        if force or inp.state_event_ids is not None:
            # Processed without all its prev events: remember the ones still unknown.
            awaited = self._prevs_without_state(event)
            if awaited:
                self.db.add_awaited_prev_events(awaited)
                self._awaited_prevs.update(awaited)

        if verdict.status == STATUS_REJECTED or verdict.status == STATUS_SOFT_FAILED:
            soft = verdict.status == STATUS_SOFT_FAILED
            if soft:
                self.batch_counters.soft_failed += 1
            else:
                self.batch_counters.rejected += 1
            log.info("event not accepted", soft_failed=soft, reason=verdict.reason, **ids)
            self._emit(
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
            self._emit(
                self.outputs.old_room_event(
                    room_id=event.room_id, event_id=event.event_id, pdu=event.pdu
                )
            )
        else:
            self._advance_room(stored, room, after, inp)
        # Redactions come after the event's own output, so consumers see the event
        # first and then learn that it was redacted.
        if event.type == REDACTION:
            self._record_redaction(stored, room, before)
        self._apply_pending_redactions(stored, room)

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

    # -- authorization ------------------------------------------------------------

    def _authorize_against_auth_events(
        self, event: Event, room: RoomRow, verdict: _Verdict
    ) -> dict[StateKey, str] | None:
        """Checks against the event's own auth events (the first two of the spec's
        checks on receipt); failing makes the event rejected.

        Returns the auth state that passed, as IDs, so that an identical state before
        the event need not be checked again."""
        is_create = event.type == CREATE and event.state_key == ""
        if is_create and self._room_create_nid(room) is not None:
            verdict.reject(STATUS_REJECTED, f"room {event.room_id} already has a create event")
            return None
        found = self.events.many_by_id(event.auth_event_ids)
        auth_events = {
            eid: (found[eid].event if eid in found else None) for eid in event.auth_event_ids
        }
        rejected = {eid for eid, s in found.items() if s.row.status == STATUS_REJECTED}
        try:
            validate_auth_events(event, auth_events, rejected)
            auth_state: dict[StateKey, Event] = {
                e.key: e for e in auth_events.values() if e is not None and e.is_state
            }
            if event.room_version.room_id_from_create and event.type != CREATE:
                create = self.events.by_id("$" + event.room_id[1:])
                if create is None or create.row.status == STATUS_REJECTED:
                    raise AuthError(
                        f"the room's create event ${event.room_id[1:]} is not an accepted event"
                    )
                auth_state[(CREATE, "")] = create.event
            check_auth(event, auth_state)
        except AuthError as exc:
            verdict.reject(STATUS_REJECTED, f"against its auth events: {exc.reason}")
            return None
        return {key: e.event_id for key, e in auth_state.items()}

    def _authorize(
        self,
        event: Event,
        state: NidState,
        verdict: _Verdict,
        status: int,
        which: str,
        already_passed: Mapping[StateKey, str] | None = None,
    ) -> None:
        auth_state = self._auth_state(event, state)
        if already_passed is not None and already_passed == {
            key: e.event_id for key, e in auth_state.items()
        }:
            return  # the same auth state already passed: the rules are deterministic
        try:
            check_auth(event, auth_state)
        except AuthError as exc:
            verdict.reject(status, f"against the state {which}: {exc.reason}")

    def _auth_state(self, event: Event, state: NidState) -> dict[StateKey, Event]:
        """The auth-relevant part of a NID state map, as events."""
        keys = auth_types_for_event(
            event.room_version, event.type, event.state_key, event.sender, event.content
        )
        keys.add((CREATE, ""))
        result: dict[StateKey, Event] = {}
        for event_type, state_key in keys:
            type_nid = self.db.type_nid(event_type, create=False)
            sk_nid = self.db.state_key_nid(state_key, create=False)
            if type_nid and sk_nid:
                event_nid = state.get((type_nid, sk_nid))
                if event_nid:
                    result[(event_type, state_key)] = self.events.by_nid(event_nid).event
        return result

    def _room_create_nid(self, room: RoomRow) -> int | None:
        state = self.state.load(room.snapshot_nid)
        create_nid = state.get((1, 1))
        if create_nid:
            return create_nid
        return self.db.room_create_event_nid(room.nid)

    # -- state ----------------------------------------------------------------------

    def _state_before(self, event: Event, inp: InputMessage, room: RoomRow) -> int:
        """The snapshot of the state before a timeline event."""
        if inp.state_event_ids is not None:
            return self._supplied_state(inp.state_event_ids, room)
        if not event.prev_event_ids:
            return 0
        prevs = {
            eid: row
            for eid, row in self.events.rows(event.prev_event_ids).items()
            if row.status != STATUS_OUTLIER
        }
        if not prevs:
            # Released after waiting, with no prev event known: the room's current
            # state is the best knowledge there is (soft-fail checks still apply).
            return room.snapshot_nid
        # Prev events still unknown after the wait are left out, as Matrix servers do
        # when they cannot fetch them.
        snapshots = list(
            dict.fromkeys(
                prevs[eid].after_snapshot_nid for eid in event.prev_event_ids if eid in prevs
            )
        )
        if len(snapshots) == 1:
            return snapshots[0]
        return self._resolve_snapshots(room, snapshots)

    def _prevs_without_state(self, event: Event) -> list[str]:
        """Prev events that are unknown, or known only as outliers (no state)."""
        if not event.prev_event_ids:
            return []
        rows = self.events.rows(event.prev_event_ids)
        return [
            eid
            for eid in event.prev_event_ids
            if eid not in rows or rows[eid].status == STATUS_OUTLIER
        ]

    def _wake_held(self, event_id: str) -> None:
        """Queue held events that were waiting only for `event_id`."""
        if not self.held_count:
            return
        for held_id in self.db.held_waiting_on(event_id):
            self.db.drop_held_wait(event_id, held_id)
            if not self.db.held_waits_remaining(held_id):
                self._releasable.append(held_id)

    def _supplied_state(self, state_event_ids: Sequence[str], room: RoomRow) -> int:
        rows = self.db.get_event_rows(state_event_ids)
        missing = [eid for eid in state_event_ids if eid not in rows]
        if missing:
            raise DeadLetter(
                "missing_state_events",
                f"state_event_ids lists events that are not stored: {', '.join(missing[:10])}",
            )
        state: NidState = {}
        for eid in state_event_ids:
            row = rows[eid]
            if not row.state_key_nid:
                raise DeadLetter("bad_input", f"state_event_ids lists {eid}, not a state event")
            if row.room_nid != room.nid:
                raise DeadLetter("bad_input", f"state_event_ids lists {eid} of another room")
            state[(row.type_nid, row.state_key_nid)] = row.nid
        return self.state.store_full(room.nid, state, room.snapshot_nid)

    def _resolve_snapshots(self, room: RoomRow, snapshots: Sequence[int]) -> int:
        """Resolve several snapshots with the room version's algorithm and store the
        result as a delta on the closest of them."""
        if len(snapshots) == 1:
            return snapshots[0]
        resolved = self.resolve_snapshots(room, snapshots)
        closest = min(
            snapshots,
            key=lambda s: _difference_size(self.state.load(s), resolved),
        )
        return self.state.store_full(room.nid, resolved, closest)

    def resolve_snapshots(self, room: RoomRow, snapshots: Sequence[int]) -> NidState:
        """The resolution of several snapshots as a NID state map; writes nothing
        (also used by `roomserver verify`).

        The resolver works on Matrix strings. Most events it returns come from one of
        the input states, whose NIDs are at hand; but v2 and v2.1 may also admit an
        event from the auth difference or the conflicted subgraph that is in none of
        them (a state the room passed through on one branch), which is looked up in
        the event store, keys included, since every event it can return is stored."""
        if len(set(snapshots)) == 1:
            return dict(self.state.load(snapshots[0]))
        states = [self.state.load(s) for s in snapshots]
        nids: set[int] = set()
        for state in states:
            nids.update(state.values())
        ids = self.events.ids_of(nids)
        back: dict[str, tuple[NidStateKey, int]] = {}
        for state in states:
            for key, nid in state.items():
                back[ids[nid]] = (key, nid)
        resolved = resolve_state(
            get_room_version(room.room_version),
            [self._named(state, ids) for state in states],
            self._event_for_resolution,
            is_rejected=self._is_rejected,
        )
        elsewhere = [event_id for event_id in resolved.values() if event_id not in back]
        if elsewhere:
            rows = self.events.rows(elsewhere)
            for event_id in elsewhere:
                row = rows.get(event_id)
                if row is None or not row.state_key_nid:
                    raise StorageError(
                        f"state resolution chose {event_id}, which is not a stored state event"
                    )
                back[event_id] = ((row.type_nid, row.state_key_nid), row.nid)
        return dict(back[event_id] for event_id in resolved.values())

    def _named(self, state: NidState, ids: Mapping[int, str]) -> StateMap:
        type_name, sk_name = self.db.type_name, self.db.state_key_name
        return {(type_name(t), sk_name(k)): ids[e] for (t, k), e in state.items()}

    def _event_for_resolution(self, event_id: str) -> Event | None:
        stored = self.events.by_id(event_id)
        return stored.event if stored is not None else None

    def _is_rejected(self, event_id: str) -> bool:
        stored = self.events.by_id(event_id)
        return stored is not None and stored.row.status == STATUS_REJECTED

    def to_state_map(self, state: NidState) -> StateMap:
        """A NID state map in Matrix strings: (type, state key) → event ID."""
        return self._named(state, self.events.ids_of(state.values()))

    def _state_after(self, stored: StoredEvent, room: RoomRow) -> StoredEvent:
        """Store the state after an event: before plus itself if it is an accepted or
        soft-failed state event (soft-failed events still count for their children).

        The event row needs its own NID inside the snapshot, so it is written first
        with after = before and updated here, in the database and in the cache."""
        row = stored.row
        if not row.state_key_nid or row.status == STATUS_REJECTED:
            return stored
        after = self.state.derive(
            room.nid, row.before_snapshot_nid, {(row.type_nid, row.state_key_nid): row.nid}
        )
        self.db.set_after_snapshot(row.nid, after)
        updated = StoredEvent(replace(row, after_snapshot_nid=after), stored.event)
        self.events.remember(updated)
        return updated

    # -- storing --------------------------------------------------------------------

    def _store(
        self,
        event: Event,
        room: RoomRow,
        status: int,
        reason: str | None,
        before: int,
        after: int,
        existing: EventRow | None,
    ) -> StoredEvent:
        type_nid = self.db.type_nid(event.type, create=True)
        sk = event.state_key
        sk_nid = self.db.state_key_nid(sk, create=True) if sk is not None else 0
        auth_rows = self.events.rows(event.auth_event_ids)
        auth_nids = [auth_rows[e].nid for e in event.auth_event_ids if e in auth_rows]
        if existing is not None:
            self.db.promote_outlier(existing.nid, status, reason, before, after)
            nid = existing.nid
            self.events.invalidate(nid)
        else:
            nid = self.db.insert_event(
                event_id=event.event_id,
                room_nid=room.nid,
                type_nid=type_nid,
                state_key_nid=sk_nid,
                depth=event.depth,
                status=status,
                reason=reason,
                before_snapshot_nid=before,
                after_snapshot_nid=after,
                auth_event_nids=auth_nids,
                prev_event_ids=event.prev_event_ids,
                json_bytes=encode_event_json(event.pdu),
            )
        row = EventRow(
            nid,
            event.event_id,
            room.nid,
            type_nid,
            sk_nid,
            event.depth,
            status,
            reason,
            before,
            after,
        )
        stored = StoredEvent(row, event)
        self.events.remember(stored)
        return stored

    def _advance_room(
        self, stored: StoredEvent, room: RoomRow, after: int, inp: InputMessage
    ) -> None:
        """A `new` accepted event: forward extremities, current state, the output."""
        event = stored.event
        prev_rows = self.events.rows(event.prev_event_ids)
        prev_nids = {row.nid for row in prev_rows.values()}
        prev_nids |= self._behind_soft_failed(prev_rows.values())
        latest = [nid for nid in room.latest_event_nids if nid not in prev_nids]
        if not latest or not self._has_accepted_children(event.event_id):
            latest.append(stored.row.nid)
        old_snapshot = room.snapshot_nid
        linear = latest == [stored.row.nid]
        if linear:
            new_snapshot = after
        else:
            latest_rows = [self.events.by_nid(nid).row for nid in latest]
            snapshots = list(dict.fromkeys(r.after_snapshot_nid for r in latest_rows))
            new_snapshot = self._resolve_snapshots(room, snapshots)
        adds, removes = self._state_change(old_snapshot, new_snapshot, stored, linear)
        self.db.index_memberships(room.nid, adds, removes)
        ids = self.events.ids_of(
            [*latest, *([room.last_sent_event_nid] if room.last_sent_event_nid else [])]
        )
        self._emit(
            self.outputs.new_room_event(
                room_id=event.room_id,
                room_version=room.room_version,
                event_id=event.event_id,
                pdu=event.pdu,
                latest_event_ids=[ids[nid] for nid in latest],
                adds_state_event_ids=adds,
                removes_state_event_ids=removes,
                last_sent_event_id=ids.get(room.last_sent_event_nid),
                send_as_server=inp.send_as_server,
                transaction_id=inp.transaction_id,
            )
        )
        room.latest_event_nids = latest
        room.snapshot_nid = new_snapshot
        room.last_sent_event_nid = stored.row.nid
        room.depth = max(room.depth, event.depth)
        self.db.update_room(room)
        self.db.on_rollback(self._rooms.clear)

    def _behind_soft_failed(self, prev_rows: Iterable[EventRow]) -> set[int]:
        """NIDs of the events an accepted event reaches back to through soft-failed
        prev events: they are no forward extremities any more either.

        Synapse's rule (`_get_prevs_before_rejected`, used when it calculates new
        extremities): from the new event's prev events, every soft-failed one adds its
        own prev events, recursively, stopping at the first events that are not
        soft-failed; outliers are not walked through. Its query would walk through
        rejected events as well, but Synapse stores no prev edges for a rejected
        event, so in effect a rejected prev event ends the walk, and so it does here.
        Without the walk, an event built on a soft-failed one would leave the
        soft-failed event's parent as an extremity beside it, its own ancestor."""
        found: set[int] = set()
        seen: set[str] = set()
        frontier = [row.nid for row in prev_rows if row.status == STATUS_SOFT_FAILED]
        while frontier:
            prev_ids = [p for p in self.db.prev_event_ids_of(frontier) if p not in seen]
            seen.update(prev_ids)
            rows = self.events.rows(prev_ids).values()
            found.update(row.nid for row in rows)
            frontier = [row.nid for row in rows if row.status == STATUS_SOFT_FAILED]
        return found

    def _has_accepted_children(self, event_id: str) -> bool:
        """Whether accepted events already name this one as a prev event (it arrived
        after children that were processed without it). Like Synapse, rejected,
        soft-failed and outlier children do not count."""
        if event_id not in self._awaited_prevs:
            return False
        self.db.remove_awaited_prev_event(event_id)
        children = self.db.children_of(event_id)
        return any(self.events.by_nid(nid).row.status == STATUS_ACCEPTED for nid in children)

    def _state_change(
        self, old_snapshot: int, new_snapshot: int, stored: StoredEvent, linear: bool
    ) -> tuple[list[str], list[str]]:
        """Event IDs added to and removed from the room's current state."""
        if old_snapshot == new_snapshot:
            return [], []
        old = self.state.load(old_snapshot)
        new = self.state.load(new_snapshot)
        row = stored.row
        key = (row.type_nid, row.state_key_nid)
        if linear and stored.row.before_snapshot_nid == old_snapshot:
            # The room's state moved by this one event: only its own key can differ.
            added_nids = [new[key]] if new.get(key) != old.get(key) and key in new else []
            removed_nids = [old[key]] if added_nids and key in old else []
        else:
            added_nids = [nid for k, nid in new.items() if old.get(k) != nid]
            removed_nids = [nid for k, nid in old.items() if new.get(k) != nid]
        ids = self.events.ids_of(added_nids + removed_nids)
        return [ids[n] for n in added_nids], [ids[n] for n in removed_nids]

    # -- redactions ------------------------------------------------------------------

    def _record_redaction(self, stored: StoredEvent, room: RoomRow, before: int) -> None:
        """Remember an accepted redaction; apply it now if its target is stored.

        Whether the sender may redact others' events is decided against the state
        before the redaction, as the spec's "handling redactions" asks.
        """
        event = stored.event
        target = event.redacts
        if target is None:
            return
        may_redact_any = self._sender_may_redact_any(event, self.state.load(before))
        self.db.add_redaction(target, stored.row.nid, may_redact_any)
        target_stored = self.events.by_id(target)
        if target_stored is not None:
            self._apply_redaction(target_stored, stored, may_redact_any, room)
        else:
            self._late_redaction_targets.add(target)

    def _apply_pending_redactions(self, stored: StoredEvent, room: RoomRow) -> None:
        if stored.event.event_id not in self._late_redaction_targets:
            return
        for redaction_nid, may_redact_any in self.db.redactions_of(stored.event.event_id):
            redaction = self.events.by_nid(redaction_nid)
            if redaction.row.nid != stored.row.nid:
                self._apply_redaction(stored, redaction, may_redact_any, room)

    def _apply_redaction(
        self, target: StoredEvent, redaction: StoredEvent, may_redact_any: bool, room: RoomRow
    ) -> None:
        if target.row.room_nid != room.nid:
            return
        if not may_redact_any and _domain(target.event.sender) != _domain(redaction.event.sender):
            return
        redacted_pdu = redact(target.event.pdu, target.event.room_version)
        self.db.replace_event_json(
            target.row.nid, encode_event_json(redacted_pdu), redaction.event.event_id
        )
        self.events.invalidate(target.row.nid)
        self._emit(
            self.outputs.redacted_event(
                room_id=room.room_id,
                redacted_event_id=target.event.event_id,
                redaction_event_id=redaction.event.event_id,
            )
        )

    def _sender_may_redact_any(self, event: Event, state: NidState) -> bool:
        levels = PowerLevels(self._auth_state(event, state), event.room_version)
        return levels.user_level(event.sender) >= levels.named("redact")


def _domain(user_id: str) -> str:
    return user_id.partition(":")[2]


def _difference_size(a: Mapping[tuple[int, int], int], b: Mapping[tuple[int, int], int]) -> int:
    return sum(1 for k, v in b.items() if a.get(k) != v) + sum(1 for k in a if k not in b)
