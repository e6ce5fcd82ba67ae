"""The path of one input, as the spec's checks on receipt order it:

    decode → validate → (hold) → authorize → compute state → store → publish

`Recipe.process` reads top to bottom as that list; each step is one of the parts in
this package. It runs inside the input's savepoint (see worker.pipeline.process): a
`DeadLetter` it raises terminates the input, any other error parks its room.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import structlog

from worker.input.decode import InputMessage, Kind, decode_input
from worker.input.errors import DeadLetter
from worker.input.outputs import OutputBuilder
from worker.input.parse_hint import ParseHint, hinted_event
from worker.matrix.events import CREATE, Event
from worker.matrix.hashes import compute_event_id
from worker.matrix.pdu import PduError, parse_pdu
from worker.matrix.room_versions import RoomVersion
from worker.pipeline.acl import OriginAcl
from worker.pipeline.authorize import Authorizer, Verdict
from worker.pipeline.batch import Batch, InboundMessage
from worker.pipeline.extremities import Extremities
from worker.pipeline.held import HeldEvents
from worker.pipeline.outbox import Outbox
from worker.pipeline.redactions import Redactions
from worker.pipeline.rooms import Rooms
from worker.pipeline.state import EventStates
from worker.pipeline.store import EventWriter
from worker.storage.database import Database, EventRow, RoomRow
from worker.storage.events import StoredEvent
from worker.storage.schema import STATUS_OUTLIER, STATUS_REJECTED, STATUS_SOFT_FAILED

log = structlog.get_logger(__name__)


class _Valid(NamedTuple):
    """A decoded input whose event parsed and belongs to the subject's room (a named
    tuple, like `_Parsed`: one is made per input, in one step)."""

    inp: InputMessage
    event: Event
    version: RoomVersion
    #: The room's row, unless the room is not stored yet.
    room: RoomRow | None


@dataclass(frozen=True, slots=True)
class Parts:
    """The pipeline's parts the recipe calls, one per step."""

    db: Database
    batch: Batch
    acl: OriginAcl
    rooms: Rooms
    held: HeldEvents
    authorize: Authorizer
    states: EventStates
    writer: EventWriter
    extremities: Extremities
    redactions: Redactions
    outbox: Outbox
    outputs: OutputBuilder


class _Parsed(NamedTuple):
    """An input decoded and parsed ahead of its turn (see `Recipe.prefetch`)."""

    inp: InputMessage
    version: RoomVersion
    event: Event
    #: Whether the room was stored when the input was parsed: then it still is in the
    #: input's turn (stored before the transaction that parsed it, or one before it),
    #: and `Rooms.version_for` gives the same version again (a stored room's version
    #: never changes).
    room_stored: bool


class _BatchRoom(NamedTuple):
    """A room of the batch being parsed ahead (see `Recipe._decoded`)."""

    #: The version its inputs other than a create event are parsed with.
    version: RoomVersion
    #: Whether it was stored when the batch was parsed (else its create is in the batch).
    stored: bool


class Recipe:
    """Processes one input with the pipeline's parts."""

    def __init__(self, parts: Parts) -> None:
        self.p = parts
        #: The open batch's inputs, decoded and parsed ahead (by `prefetch`).
        self._parsed: dict[InboundMessage, _Parsed] = {}
        #: Event IDs of the batch that were not stored when it started; each answers
        #: one duplicate check, the first (a later one may follow a write of it).
        self._absent: set[str] = set()
        #: The open batch's inputs parsed where the worker fetched them (set by its
        #: caller: worker.input.parse_hint), used by `prefetch`.
        self.hints: Mapping[InboundMessage, ParseHint] = {}

    def prefetch(self, messages: Sequence[InboundMessage]) -> None:
        """Decode and parse a batch's inputs ahead, and learn in one query which of
        their events are not stored yet: one statement per batch instead of one per
        input for the duplicate check.

        Runs inside the batch's transaction, before any input. Parsing is pure, so an
        input processed later with the same room version uses the result as is; an input
        that fails here is simply processed as if it had not been seen (its error, if
        any, is raised in its own turn, in its own savepoint).

        A transaction whose budget is spent leaves some of its inputs to the next one,
        which is offered them again: their parses are kept for it (they are pure), so
        that an input is decoded and parsed once however many transactions it is
        offered to. Only the parses of `messages` are kept, which bounds them by a
        batch."""
        kept, self._parsed = self._parsed, {}
        self._absent = set()
        ids: list[str] = []
        rooms: dict[str, _BatchRoom] = {}
        for message in messages:
            parsed = kept.get(message)
            if parsed is None:
                parsed = self._parse(message, rooms)
                if parsed is None:
                    continue
            self._parsed[message] = parsed
            ids.append(parsed.event.event_id)
        if ids:
            self._absent = set(ids).difference(self.p.db.get_event_rows(ids))

    def _parse(self, message: InboundMessage, rooms: dict[str, _BatchRoom]) -> _Parsed | None:
        """The input decoded and its event parsed, or None if either fails; `rooms`
        (filled here, see `_decoded`) holds the batch's rooms by input subject."""
        try:
            decoded = self._decoded(message, rooms)
            if decoded is None:
                return None
            inp, version, room_stored = decoded
            hint = self.hints.get(message)
            event = hinted_event(inp, version, hint) if hint is not None else None
            if event is None:
                event = parse_pdu(inp.event, version, float_free=inp.float_free)
        except Exception:  # raised again in the input's own turn, in its savepoint
            return None
        return _Parsed(inp, version, event, room_stored)

    def _decoded(
        self, message: InboundMessage, rooms: dict[str, _BatchRoom] | None = None
    ) -> tuple[InputMessage, RoomVersion, bool] | None:
        """The input decoded, with the version of its room and whether the room is
        stored (None if its subject names no room); raises what decoding raises.

        `rooms` (a batch's, by input subject) answers for the inputs after the first
        of a room that is not a create event (`Rooms.version_for` reads nothing else of
        them), without looking the subject and the room up again:
        - a stored room's version (it never changes, nor does a room stop being stored);
        - for a room not stored yet whose create event came earlier in the batch, the
          create's version: by the input's turn the create is stored, and its room's
          version is the one its inputs are parsed with. Without this, each such input
          (all those of a new room's first batch) would be decoded here in vain, and
          decoded and parsed again in its turn."""
        inp = decode_input(message.data)
        raw = inp.event
        is_create = raw.get("type") == CREATE and raw.get("state_key") == ""
        if rooms and not is_create:
            known = rooms.get(message.subject)
            if known is not None:
                return inp, known.version, known.stored
        room_id = self.p.rooms.of_subject(message.subject)
        if room_id is None:
            return None
        version, room = self.p.rooms.version_for(inp, room_id)
        if rooms is not None and (room is not None) is not is_create:
            # A stored room (seen through an input other than a create), or a room
            # created by this input (by the first, if several claim to).
            rooms.setdefault(message.subject, _BatchRoom(version, room is not None))
        return inp, version, room is not None

    def forget_prefetched(self) -> None:
        """The batch is over (or undone): which events were stored no longer holds.
        The parses of the inputs it did not reach stay for the next batch (see
        `prefetch`)."""
        self._absent = set()

    def process(
        self, message: InboundMessage, subject_room: str | None, *, force: bool = False
    ) -> None:
        """One input; `subject_room` is the room its subject names (`Rooms.of_subject`),
        `force` processes a held event without its missing prev events."""
        valid = self._validated(message, subject_room)
        inp, event = valid.inp, valid.event
        existing = self._existing(event.event_id)
        # Neither stored nor anything held: no duplicate (the common case, without a call).
        if (existing is not None or self.p.held.count) and self._is_duplicate(valid, existing):
            return
        room = valid.room
        if room is None:
            room = self.p.rooms.create(event.room_id, valid.version)
        # The prev events' rows, read once for the hold, the state before and the
        # forward extremities: nothing this input does changes them.
        prev_rows = self.p.states.prev_rows(event) if inp.kind is not Kind.OUTLIER else {}
        if not force and self._held(message, valid, room, prev_rows):
            return
        verdict = Verdict()
        checked = self.p.authorize.against_auth_events(event, room, verdict)
        if inp.kind is Kind.OUTLIER:
            self._store_outlier(event, room, verdict, existing)
            return
        before = self.p.states.before(event, inp, room, prev_rows)
        self.p.authorize.against_state_before(event, before, verdict, checked)
        if inp.kind is Kind.NEW:
            self.p.authorize.against_current_state(event, room, before, verdict)
        stored = self.p.writer.store(
            event,
            room,
            verdict.status,
            verdict.reason,
            before,
            existing,
            self.p.states.after,
            verdict.cited,
        )
        if self.p.held.count:  # nothing held, nothing to wake
            self.p.held.wake(event.event_id)
        if force or inp.state_event_ids is not None:
            # Processed without all its prev events: remember the ones still unknown.
            missing = self.p.states.prevs_without_state(event, prev_rows)
            self.p.extremities.await_prevs(missing, stored.row.nid)
        self._publish(stored, room, verdict, inp, before, prev_rows)

    def event_id_of(self, message: InboundMessage) -> str | None:
        """The input's event ID for the operator, if it can be read at all."""
        try:
            decoded = self._decoded(message)
            return None if decoded is None else compute_event_id(decoded[0].event, decoded[1])
        except Exception:
            return None

    def _existing(self, event_id: str) -> EventRow | None:
        """The stored row of an event (None if not stored), for the duplicate check."""
        if event_id in self._absent:
            # Not stored when the batch started, and not checked since: not stored (every
            # write of an event follows its check).
            self._absent.discard(event_id)
            return None
        return self.p.db.get_event_row(event_id)

    def _validated(self, message: InboundMessage, subject_room: str | None) -> _Valid:
        """Decode the input and parse its event, for the room its subject names."""
        parsed = self._parsed.pop(message, None)
        inp = parsed.inp if parsed is not None else decode_input(message.data)
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
        if parsed is not None and parsed.room_stored:
            # The room was stored when the input was parsed, and so still is: its version
            # is the one the input was parsed with (see `_Parsed.room_stored`).
            version, room = parsed.version, self.p.rooms.get(subject_room)
        else:
            version, room = self.p.rooms.version_for(inp, subject_room)
        if inp.origin is not None:  # an input without an origin is not checked
            self.p.acl.refuse_denied(inp.origin, room)
        try:
            if parsed is not None and parsed.version.identifier == version.identifier:
                event = parsed.event
            else:
                event = parse_pdu(inp.event, version, float_free=inp.float_free)
        except PduError as exc:
            raise DeadLetter(exc.code, exc.message) from None
        if event.room_id != subject_room:
            raise DeadLetter(
                "wrong_room",
                f"the subject names room {subject_room} but event {event.event_id} "
                f"is in {event.room_id}",
            )
        return _Valid(inp, event, version, room)

    def _is_duplicate(self, valid: _Valid, existing: EventRow | None) -> bool:
        """Stored already (an outlier only counts for another outlier), or held."""
        event_id = valid.event.event_id
        if (
            existing is not None
            and not (existing.status == STATUS_OUTLIER and valid.inp.kind is not Kind.OUTLIER)
        ) or self.p.held.is_held(event_id):
            self.p.batch.counts.duplicates += 1
            log.debug("duplicate event ignored", kind=valid.inp.kind.value, **_ids(valid.event))
            return True
        return False

    def _held(
        self,
        message: InboundMessage,
        valid: _Valid,
        room: RoomRow,
        prev_rows: Mapping[str, EventRow],
    ) -> bool:
        """Hold a timeline event whose prev events have no state yet (unless the input
        supplies the state before it)."""
        if valid.inp.kind is Kind.OUTLIER or valid.inp.state_event_ids is not None:
            return False
        missing = self.p.states.prevs_without_state(valid.event, prev_rows)
        if missing:
            self.p.held.hold(valid.event.event_id, room, missing, message)
        return bool(missing)

    def _store_outlier(
        self, event: Event, room: RoomRow, verdict: Verdict, existing: EventRow | None
    ) -> None:
        status = STATUS_OUTLIER if verdict.accepted else verdict.status
        self.p.writer.store(event, room, status, verdict.reason, 0, existing, cited=verdict.cited)
        log.debug("stored outlier", status=status, reason=verdict.reason, **_ids(event))

    def _publish(
        self,
        stored: StoredEvent,
        room: RoomRow,
        verdict: Verdict,
        inp: InputMessage,
        before: int,
        prev_rows: Mapping[str, EventRow],
    ) -> None:
        """The outputs the event owes: rejected, old, or new (which advances the room);
        then its redactions, after the event's own output, so consumers see the event
        first and then learn that it was redacted."""
        event = stored.event
        if verdict.status == STATUS_REJECTED or verdict.status == STATUS_SOFT_FAILED:
            self._not_accepted(event, verdict, inp)
            return
        if inp.kind is Kind.OLD:
            self.p.outbox.emit(
                self.p.outputs.old_room_event(
                    room_id=event.room_id, event_id=event.event_id, pdu=event.pdu
                )
            )
        else:
            self.p.extremities.advance(stored, room, inp, prev_rows)
        self.p.redactions.on_accepted(stored, room, before)

    def _not_accepted(self, event: Event, verdict: Verdict, inp: InputMessage) -> None:
        soft = verdict.status == STATUS_SOFT_FAILED
        if soft:
            self.p.batch.counts.soft_failed += 1
        else:
            self.p.batch.counts.rejected += 1
        log.info("event not accepted", soft_failed=soft, reason=verdict.reason, **_ids(event))
        self.p.outbox.emit(
            self.p.outputs.rejected_event(
                room_id=event.room_id,
                event_id=event.event_id,
                kind=inp.kind.value,
                soft_failed=soft,
                reason=verdict.reason or "",
            )
        )


def _ids(event: Event) -> dict[str, str]:
    """The IDs log lines carry (bound per line: binding them eagerly would cost on
    every event)."""
    return {"room_id": event.room_id, "event_id": event.event_id}
