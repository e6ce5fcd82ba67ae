"""Redactions: remembered when accepted, applied to their target once both are stored.

A redaction may arrive before its target; it is recorded either way and applied when
the target is stored, which replaces the target's JSON with its redacted form and
emits a `redacted_event` output after the event's own.
"""

from __future__ import annotations

from worker.input.outputs import OutputBuilder
from worker.matrix.auth.power_levels import PowerLevels
from worker.matrix.events import REDACTION, Event
from worker.matrix.redaction import redact
from worker.pipeline.authorize import Authorizer
from worker.pipeline.limits import MaybeSet
from worker.pipeline.outbox import Outbox
from worker.storage.database import Database, RoomRow
from worker.storage.events import EventStore, StoredEvent, encode_event_json
from worker.storage.state import StateStore, StateView


class Redactions:
    """Records accepted redactions and applies them to stored targets."""

    def __init__(
        self,
        db: Database,
        state: StateStore,
        events: EventStore,
        authorizer: Authorizer,
        outbox: Outbox,
        outputs: OutputBuilder,
        budget: int,
    ) -> None:
        self.db = db
        self.state = state
        self.events = events
        self.authorizer = authorizer
        self.outbox = outbox
        self.outputs = outputs
        #: Events named by a redaction before they were stored: only these need a look
        #: in the redactions table when they arrive. Entries are never removed (a
        #: rolled-back application must be found again), so a stale one costs a query;
        #: mirrored from the table while they fit the budget.
        self._late_targets = MaybeSet(
            "late redaction targets", db.redactions.targets_not_stored(), budget
        )

    def on_accepted(self, stored: StoredEvent, room: RoomRow, before: int) -> None:
        """An accepted timeline event is stored and its own output emitted: record it
        if it is a redaction, and apply the redactions that were waiting for it."""
        if stored.event.type == REDACTION:
            self._record(stored, room, before)
        if self._late_targets.may_contain(stored.event.event_id):
            self._apply_pending(stored, room)

    def _record(self, stored: StoredEvent, room: RoomRow, before: int) -> None:
        """Remember an accepted redaction; apply it now if its target is stored.

        Whether the sender may redact others' events is decided against the state
        before the redaction, as the spec's "handling redactions" asks.
        """
        event = stored.event
        target = event.redacts
        if target is None:
            return
        may_redact_any = self._sender_may_redact_any(event, self.state.load(before))
        self.db.redactions.add(target, stored.row.nid, may_redact_any)
        target_stored = self.events.by_id(target)
        if target_stored is not None:
            self._apply(target_stored, stored, may_redact_any, room)
        else:
            self._late_targets.add([target])

    def _apply_pending(self, stored: StoredEvent, room: RoomRow) -> None:
        """Apply the redactions that named this event before it was stored (the caller
        asks only when the late targets may hold it)."""
        for redaction_nid, may_redact_any in self.db.redactions.of(stored.event.event_id):
            redaction = self.events.by_nid(redaction_nid)
            if redaction.row.nid != stored.row.nid:
                self._apply(stored, redaction, may_redact_any, room)

    def _apply(
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
        self.outbox.emit(
            self.outputs.redacted_event(
                room_id=room.room_id,
                redacted_event_id=target.event.event_id,
                redaction_event_id=redaction.event.event_id,
            )
        )

    def _sender_may_redact_any(self, event: Event, state: StateView) -> bool:
        levels = PowerLevels(self.authorizer.auth_state(event, state), event.room_version)
        return levels.user_level(event.sender) >= levels.named("redact")


def _domain(user_id: str) -> str:
    return user_id.partition(":")[2]
