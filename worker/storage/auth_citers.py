"""Which events cite an event among their auth events: a room's auth DAG read upwards.

State resolution asks whether an event lies in the auth chain of any event of the
state the inputs agree on. Walking down from every agreed event answers it, but that
costs the room's size each time. Walking up from the event instead, through the
events that cite it, stops at the first agreed event found, usually one step away.

The index is built per room from the stored rows on first use (their packed auth event
NIDs) and caught up on each use with the rows stored since (`nid` grows). It holds the
same edges as the events' `auth_events`: a row whose NIDs miss some of its auth events
(they were not stored when it was) has the rest looked up by ID, and IDs still unknown
are kept by ID until they arrive. Only state events are kept as citers: an agreed
event is a state event, and a path up to one passes through state events only, since
a state event that cites anything else (or an event of another room, which valid
events never do) marks the room incomplete, and callers walk down instead. Nothing
here is written to disk.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from worker.storage.blocks import NidStateKey, unpack_nids
from worker.storage.cache_budget import DEFAULT_BUDGET
from worker.storage.connection import json_list
from worker.storage.id_keys import BY_IDS, id_keys_params
from worker.storage.lru import LruByWeight

#: State events indexed over the rooms kept (least recently used room dropped first;
#: ~210 bytes each): the default cache budget's share (worker.storage.cache_budget). A
#: room larger than that alone is still kept while it is resolved.
STATE_EVENTS_KEPT = DEFAULT_BUDGET.bound("auth_citers")


@dataclass(slots=True)
class RoomCiters:
    """One room's auth edges read upwards."""

    #: The highest event NID read so far.
    last_nid: int = 0
    #: Auth event NID → NIDs of the room's events that cite it.
    by_nid: dict[int, list[int]] = field(default_factory=dict)
    #: Auth event ID not stored yet → NIDs of the events that cite it.
    by_id: dict[str, list[int]] = field(default_factory=dict)
    #: Event NID → its state key, for the room's state events (the only citers kept).
    keys: dict[int, NidStateKey] = field(default_factory=dict)
    #: False once a state event cites an event that is not a state event of this room,
    #: or one whose auth events cannot be read: the edges may then miss a path.
    complete: bool = True

    def add_edge(self, auth_nid: int, citer: int) -> None:
        if auth_nid not in self.keys:
            self.complete = False
            return
        self.by_nid.setdefault(auth_nid, []).append(citer)


class AuthCiters:
    """The per-room indexes, on the write connection."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        on_rollback: Callable[[Callable[[], None]], None],
        state_events: int = STATE_EVENTS_KEPT,
        *,
        write_deferred: Callable[[], None],
    ):
        """`write_deferred` writes the event rows the connection's owner holds back
        (`Database.write_deferred`): the index reads the events' JSON."""
        self.conn = conn
        self._on_rollback = on_rollback
        self._write_deferred = write_deferred
        #: Weighed by the state events each index holds (plus one), so one huge room
        #: and many small ones share the same memory.
        self._rooms: LruByWeight[int, RoomCiters] = LruByWeight(state_events)

    def clear(self) -> None:
        """Forget every room (after a rollback, when NIDs may be reused)."""
        self._rooms.clear()

    def room(self, room_nid: int) -> RoomCiters:
        """The room's index, caught up with every event stored in it so far."""
        citers = self._rooms.get(room_nid)
        if citers is None:
            citers = RoomCiters()
            self._rooms.put(room_nid, citers)
        indexed = len(citers.keys)
        self._catch_up(room_nid, citers)
        if len(citers.keys) != indexed:
            # Weighed again as it grew (which may push older rooms out).
            self._rooms.put(room_nid, citers, len(citers.keys) + 1)
        return citers

    def _catch_up(self, room_nid: int, citers: RoomCiters) -> None:
        self._write_deferred()
        rows = self.conn.execute(
            "SELECT e.nid, e.state_key_nid, e.type_nid, e.auth_event_nids, "
            "json_array_length(CAST(j.json AS TEXT), '$.auth_events') "
            "FROM events e LEFT JOIN event_json j ON j.event_nid = e.nid "
            "WHERE e.room_nid = ? AND e.nid > ? ORDER BY e.nid",
            (room_nid, citers.last_nid),
        ).fetchall()
        lacking: list[int] = []
        for nid, state_key_nid, type_nid, packed, auth_count in rows:
            if not state_key_nid:
                continue
            citers.keys[nid] = (type_nid, state_key_nid)
            auth_nids = unpack_nids(packed)
            for auth_nid in auth_nids:
                citers.add_edge(auth_nid, nid)
            if auth_count is None or auth_count != len(auth_nids):
                lacking.append(nid)
        if rows:
            citers.last_nid = rows[-1][0]
            self._on_rollback(self.clear)
        if lacking:
            self._add_by_id(room_nid, citers, lacking)
        if citers.by_id:
            self._settle_pending(room_nid, citers)

    def _add_by_id(self, room_nid: int, citers: RoomCiters, lacking: list[int]) -> None:
        """Rows stored before some of their auth events: read the IDs from the JSON,
        and note the edges by ID (`_settle_pending` turns the stored ones into NIDs)."""
        found = dict(
            self.conn.execute(
                "SELECT e.nid, json_extract(CAST(j.json AS TEXT), '$.auth_events') "
                "FROM events e LEFT JOIN event_json j ON j.event_nid = e.nid "
                "WHERE e.nid IN (SELECT value FROM json_each(?))",
                (json_list(lacking),),
            ).fetchall()
        )
        for nid in lacking:
            ids = _auth_ids(found.get(nid))
            if ids is None:
                citers.complete = False
                continue
            # The NIDs already read are among these IDs: an edge noted twice only
            # costs a walk a repeat visit.
            for event_id in ids:
                citers.by_id.setdefault(event_id, []).append(nid)

    def _settle_pending(self, room_nid: int, citers: RoomCiters) -> None:
        """Auth events noted by ID that are stored now become NID edges."""
        stored = self.conn.execute(
            "SELECT event_id, nid, room_nid FROM events WHERE " + BY_IDS,
            id_keys_params(list(citers.by_id)),
        ).fetchall()
        for event_id, nid, event_room in stored:
            citing = citers.by_id.pop(event_id)
            if event_room != room_nid:
                citers.complete = False
                continue
            for citer in citing:
                citers.add_edge(nid, citer)


def _auth_ids(raw: str | None) -> list[str] | None:
    """Auth event IDs from the JSON `auth_events` (IDs, or [ID, hashes] pairs)."""
    if raw is None:
        return None
    try:
        entries: Iterable[object] = json.loads(raw)
    except ValueError:
        return None
    ids: list[str] = []
    for entry in entries:
        if isinstance(entry, str):
            ids.append(entry)
        elif isinstance(entry, list) and entry and isinstance(entry[0], str):
            ids.append(entry[0])
        else:
            return None
    return ids
