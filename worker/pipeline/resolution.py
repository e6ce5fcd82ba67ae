"""State resolution over NID state maps: the one place the worker resolves stored state.

The writer resolves when forward extremities or prev events disagree; `roomserver
verify` resolves a room's extremities again to check its current state. Both use
`NidResolver`, which reads stored events and snapshots and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from worker.matrix.events import Event, StateMap
from worker.matrix.room_versions import get_room_version
from worker.matrix.state_res import resolve_state
from worker.storage.blocks import NidState, NidStateKey
from worker.storage.database import Database, StorageError
from worker.storage.events import EventStore
from worker.storage.schema import STATUS_REJECTED
from worker.storage.state import StateStore


class NidResolver:
    """The room version's resolution algorithm, given and giving NID state maps."""

    def __init__(self, db: Database, state: StateStore, events: EventStore) -> None:
        self.db = db
        self.state = state
        self.events = events

    def resolve(self, room_version: str, snapshots: Sequence[int]) -> NidState:
        """The resolution of several snapshots as a NID state map; writes nothing.

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
            get_room_version(room_version),
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

    def to_state_map(self, state: NidState) -> StateMap:
        """A NID state map in Matrix strings: (type, state key) → event ID."""
        return self._named(state, self.events.ids_of(state.values()))

    def _named(self, state: NidState, ids: Mapping[int, str]) -> StateMap:
        type_name, sk_name = self.db.type_name, self.db.state_key_name
        return {(type_name(t), sk_name(k)): ids[e] for (t, k), e in state.items()}

    def _event_for_resolution(self, event_id: str) -> Event | None:
        stored = self.events.by_id(event_id)
        return stored.event if stored is not None else None

    def _is_rejected(self, event_id: str) -> bool:
        stored = self.events.by_id(event_id)
        return stored is not None and stored.row.status == STATUS_REJECTED
