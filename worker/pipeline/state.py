"""The state before and after an event, as stored snapshots.

The state before a timeline event is its prev events' state after (resolved when they
disagree), or the state an input supplies; the state after adds the event itself when
it is a state event that counts. Every state this computes is stored as a snapshot
(see worker.storage.state), a delta on the closest one already stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from worker.input.decode import InputMessage
from worker.input.errors import DeadLetter
from worker.matrix.events import Event
from worker.pipeline.resolution import NidResolver
from worker.storage.blocks import NidState, NidStateKey
from worker.storage.cache_budget import DEFAULT_BUDGET
from worker.storage.database import Database, EventRow, RoomRow
from worker.storage.events import EventStore
from worker.storage.lru import LruByWeight
from worker.storage.schema import STATUS_OUTLIER
from worker.storage.state import StateStore

#: Resolved snapshots kept by their inputs (see `EventStates.resolve_and_store`): the
#: default cache budget's share.
RESOLVED_SNAPSHOTS = DEFAULT_BUDGET.bound("resolved_snapshots")


class EventStates:
    """Computes and stores the snapshots before and after timeline events."""

    def __init__(
        self,
        db: Database,
        state: StateStore,
        events: EventStore,
        resolver: NidResolver,
        resolved_snapshots: int = RESOLVED_SNAPSHOTS,
    ) -> None:
        self.db = db
        self.state = state
        self.events = events
        self.resolver = resolver
        #: (room version, input snapshots in order) → the stored resolution. A forked
        #: room resolves its extremities' snapshots again after every event that does
        #: not change a branch's state; the same inputs give the same snapshot (same
        #: changes, same base, same blocks), so it is looked up instead of derived.
        self._resolved: LruByWeight[tuple[str, tuple[int, ...]], int] = LruByWeight(
            resolved_snapshots
        )

    def before(
        self,
        event: Event,
        inp: InputMessage,
        room: RoomRow,
        prev_rows: Mapping[str, EventRow],
    ) -> int:
        """The snapshot of the state before a timeline event; `prev_rows` are the
        stored rows of its prev events (`EventStates.prev_rows`)."""
        if inp.state_event_ids is not None:
            return self._supplied(inp.state_event_ids, room)
        prev_ids = event.prev_event_ids
        if len(prev_ids) == 1:
            # A linear room: the state before is the one prev event's state after,
            # already in its row (one snapshot resolves to itself).
            row = prev_rows.get(prev_ids[0])
            if row is not None and row.status != STATUS_OUTLIER:
                return row.after_snapshot_nid
        elif not prev_ids:
            return 0
        prevs = {eid: row for eid, row in prev_rows.items() if row.status != STATUS_OUTLIER}
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
        return self.resolve_and_store(room, snapshots)

    def after(
        self, room_nid: int, before: int, type_nid: int, state_key_nid: int, event_nid: int
    ) -> int:
        """Store the state after a state event that counts (accepted or soft-failed:
        soft-failed events still count for their children): the state before it plus
        itself. The caller (`EventWriter.store`) writes the event's row after this, with
        the snapshot returned, so the row needs no second write."""
        return self.state.derive(room_nid, before, {(type_nid, state_key_nid): event_nid})

    def prev_rows(self, event: Event) -> dict[str, EventRow]:
        """The stored rows of the event's prev events (the unknown ones left out)."""
        return self.events.rows(event.prev_event_ids) if event.prev_event_ids else {}

    def prevs_without_state(self, event: Event, prev_rows: Mapping[str, EventRow]) -> list[str]:
        """Prev events that are unknown, or known only as outliers (no state);
        `prev_rows` as in `before`."""
        # A loop, not a list comprehension: in the common case (none missing) it makes
        # nothing, where a comprehension is a call of its own, on every event.
        missing: list[str] = []
        for eid in event.prev_event_ids:
            row = prev_rows.get(eid)
            if row is None or row.status == STATUS_OUTLIER:
                missing.append(eid)
        return missing

    def resolve_and_store(self, room: RoomRow, snapshots: Sequence[int]) -> int:
        """Resolve several snapshots with the room version's algorithm and store the
        result as a delta on the closest of them (one snapshot is its own answer).

        Only the keys the snapshots disagree on can differ between the resolution and
        any of them, so the closest is the one that agrees with most of the resolved
        values of those keys (the first of equals, in the order given), and the delta
        is its differences there; the rest of the state is never looked at."""
        if len(snapshots) == 1:
            return snapshots[0]
        inputs = (room.room_version, tuple(snapshots))
        resolved = self._resolved.get(inputs)
        if resolved is not None:
            return resolved
        changes = self.resolver.changes(room.room_version, snapshots)
        if not changes:
            resolved = snapshots[0]
        else:
            states = {s: self.state.load(s) for s in snapshots}
            closest = min(snapshots, key=lambda s: _disagreements(states[s], changes))
            base = states[closest]
            delta = {key: nid for key, nid in changes.items() if base.get(key, 0) != nid}
            resolved = self.state.derive(room.nid, closest, delta)
        # Only what the resolver remembered is final (see `NidResolver.changes`); an
        # undone transaction may take the snapshot with it.
        if self.resolver.remembers(room.room_version, snapshots):
            self._resolved.put(inputs, resolved)
            self.db.on_rollback(self._resolved.clear)
        return resolved

    def _supplied(self, state_event_ids: Sequence[str], room: RoomRow) -> int:
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


def _disagreements(state: Mapping[NidStateKey, int], changes: Mapping[NidStateKey, int]) -> int:
    """How many of the resolved entries `changes` (0: absent) `state` does not hold."""
    return sum(1 for key, nid in changes.items() if state.get(key, 0) != nid)
