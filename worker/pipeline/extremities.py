"""Forward extremities and the room's current state, moved by each accepted `new` event.

An accepted `new` event replaces its prev events (and what it reaches through
soft-failed ones) among the room's forward extremities; the room's current state is
then the state after the one extremity left, or the resolution of several. The
`new_room_event` output says what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from worker.input.decode import InputMessage
from worker.input.outputs import OutputBuilder
from worker.pipeline.limits import MaybeSet
from worker.pipeline.outbox import Outbox
from worker.pipeline.state import EventStates
from worker.storage.database import Database, EventRow, RoomRow
from worker.storage.events import EventStore, StoredEvent
from worker.storage.membership_index import MEMBER_TYPE_NID
from worker.storage.schema import STATUS_ACCEPTED, STATUS_SOFT_FAILED
from worker.storage.state import StateStore


class Extremities:
    """Advances a room's forward extremities and current state."""

    def __init__(
        self,
        db: Database,
        state: StateStore,
        events: EventStore,
        states: EventStates,
        outbox: Outbox,
        outputs: OutputBuilder,
        forget_rooms: Callable[[], None],
        budget: int,
    ) -> None:
        self.db = db
        self.state = state
        self.events = events
        self.states = states
        self.outbox = outbox
        self.outputs = outputs
        #: Drops cached room rows; they are updated in place, so undone work must not
        #: leave them behind.
        self._forget_rooms = forget_rooms
        #: Prev events that stored events named while they were unknown. When one
        #: arrives it may already have children, and then it is no forward extremity.
        #: Mirrored from their table while they fit the budget.
        self.awaited_prevs = MaybeSet("awaited prev events", db.awaited_prevs.all(), budget)

    def await_prevs(self, event_ids: list[str], child_nid: int) -> None:
        """The event `child_nid` was processed without these prev events (forced out of
        hold, or with the state supplied): when one arrives, its children are already
        there."""
        if event_ids:
            self.db.awaited_prevs.add(event_ids, child_nid)
            self.awaited_prevs.add(event_ids)

    def advance(
        self,
        stored: StoredEvent,
        room: RoomRow,
        inp: InputMessage,
        prev_rows: Mapping[str, EventRow],
    ) -> None:
        """A `new` accepted event: forward extremities, current state, the output;
        `prev_rows` are the stored rows of its prev events."""
        event, row = stored.event, stored.row
        latest = _after_the_one_extremity(row.nid, room, prev_rows)
        if latest is None:
            latest = self._latest_after(stored, room, prev_rows)
        old_snapshot = room.snapshot_nid
        last_sent = room.last_sent_event_nid
        linear = len(latest) == 1 and latest[0] == row.nid
        if linear:
            new_snapshot = row.after_snapshot_nid
            # The event itself is the one extremity: its ID is in hand, and so is the
            # last event sent's when it is the prev event (a linear room).
            latest_ids = [event.event_id]
            last_sent_id = None
            if last_sent:
                for prev in prev_rows.values():
                    if prev.nid == last_sent:
                        last_sent_id = prev.event_id
                        break
                else:
                    last_sent_id = self.events.ids_of([last_sent]).get(last_sent)
        else:
            latest_rows = [self.events.by_nid(nid).row for nid in latest]
            snapshots = list(dict.fromkeys(r.after_snapshot_nid for r in latest_rows))
            new_snapshot = self.states.resolve_and_store(room, snapshots)
            ids = self.events.ids_of([*latest, last_sent] if last_sent else latest)
            latest_ids = [ids[nid] for nid in latest]
            last_sent_id = ids.get(last_sent)
        if old_snapshot != new_snapshot:
            adds, removes, own_key_only = self._state_change(
                old_snapshot, new_snapshot, stored, linear
            )
            self._index_memberships(room.nid, stored, adds, removes, own_key_only)
        else:
            # The current state did not move (a message event): nothing to index.
            adds, removes = [], []
        self.outbox.emit(
            self.outputs.new_room_event(
                room_id=event.room_id,
                room_version=room.room_version,
                event_id=event.event_id,
                pdu=event.pdu,
                latest_event_ids=latest_ids,
                adds_state_event_ids=adds,
                removes_state_event_ids=removes,
                last_sent_event_id=last_sent_id,
                send_as_server=inp.send_as_server,
                transaction_id=inp.transaction_id,
            )
        )
        room.latest_event_nids = latest
        room.snapshot_nid = new_snapshot
        room.last_sent_event_nid = row.nid
        if row.depth > room.depth:
            room.depth = row.depth
        self.db.update_room(room)
        self.db.on_rollback(self._forget_rooms)

    def _latest_after(
        self, stored: StoredEvent, room: RoomRow, prev_rows: Mapping[str, EventRow]
    ) -> list[int]:
        """The room's forward extremities once `stored` is accepted: the old ones it
        does not replace, and itself unless accepted children of it are stored."""
        prev_nids: set[int] = set()
        soft_failed = False
        for row in prev_rows.values():
            prev_nids.add(row.nid)
            if row.status == STATUS_SOFT_FAILED:
                soft_failed = True
        if soft_failed:
            prev_nids |= self._behind_soft_failed(prev_rows.values())
        latest = [nid for nid in room.latest_event_nids if nid not in prev_nids]
        event_id = stored.event.event_id
        if not latest or not self._has_accepted_children(self._stop_awaiting(event_id)):
            latest.append(stored.row.nid)
        return latest

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

    def _stop_awaiting(self, event_id: str) -> list[int]:
        """An awaited prev event has arrived: delete its rows from the awaited prev
        events, and return the NIDs of the stored events that named it (none when it
        certainly was not awaited, so no stored event names it)."""
        if not self.awaited_prevs.may_contain(event_id):
            return []
        children = self.db.children_of(event_id)
        self.db.awaited_prevs.remove(event_id)
        self.awaited_prevs.discard(event_id)
        self.db.on_rollback(lambda: self.awaited_prevs.add([event_id]))
        return children

    def _has_accepted_children(self, children: list[int]) -> bool:
        """Whether accepted events already name the arriving event as a prev event (it
        arrived after children that were processed without it). Like Synapse, rejected,
        soft-failed and outlier children do not count."""
        return any(self.events.by_nid(nid).row.status == STATUS_ACCEPTED for nid in children)

    def _index_memberships(
        self,
        room_nid: int,
        stored: StoredEvent,
        adds: list[str],
        removes: list[str],
        own_key_only: bool,
    ) -> None:
        """Keep the index of users' rooms in step with the current state's change.

        When the change is only the event itself taking its own key's place, the index
        needs no read: an event of another type than m.room.member changes no row (the
        event it replaces has its type too, and only member events have rows), and a
        member event with a string membership is exactly the row the general path would
        read back from its stored JSON."""
        if own_key_only:
            row, event = stored.row, stored.event
            if row.type_nid != MEMBER_TYPE_NID:
                return
            membership = event.content.get("membership")
            user_id = event.state_key
            if isinstance(membership, str) and user_id is not None:
                self.db.index_member_replacement(room_nid, user_id, membership, row.nid)
                return
        self.db.index_memberships(room_nid, adds, removes)

    def _state_change(
        self, old_snapshot: int, new_snapshot: int, stored: StoredEvent, linear: bool
    ) -> tuple[list[str], list[str], bool]:
        """Event IDs added to and removed from the room's current state (which moved:
        the snapshots differ), and whether the change is only `stored` itself in the
        place of its key's previous event."""
        old = self.state.load(old_snapshot)
        new = self.state.load(new_snapshot)
        row = stored.row
        key = (row.type_nid, row.state_key_nid)
        if linear and stored.row.before_snapshot_nid == old_snapshot:
            # The room's state moved by this one event: only its own key can differ.
            added_nids = [new[key]] if new.get(key) != old.get(key) and key in new else []
            removed_nids = [old[key]] if added_nids and key in old else []
            own_key_only = added_nids == [row.nid]
        else:
            # Only the keys the two snapshots' own blocks set can differ (after a
            # resolution: the branches' changes since they parted), not the room's.
            differing = sorted(self.state.differing_keys([old_snapshot, new_snapshot]))
            added_nids = [new[k] for k in differing if k in new]
            removed_nids = [old[k] for k in differing if k in old]
            own_key_only = False
        ids = self.events.ids_of(added_nids + removed_nids)
        return [ids[n] for n in added_nids], [ids[n] for n in removed_nids], own_key_only


def _after_the_one_extremity(
    nid: int, room: RoomRow, prev_rows: Mapping[str, EventRow]
) -> list[int] | None:
    """The forward extremities after event `nid` when its one prev event is the room's
    one extremity, and not soft-failed (a linear room): the event alone. What
    `Extremities._latest_after` finds then, without its sets and look-ups: every old
    extremity is replaced and none is left, so the event is one whatever its children.
    None when the case is another."""
    latest = room.latest_event_nids
    if len(prev_rows) != 1 or len(latest) != 1:
        return None
    for prev in prev_rows.values():
        if prev.nid == latest[0] and prev.status != STATUS_SOFT_FAILED:
            return [nid]
    return None
