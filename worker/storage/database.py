"""The write-side database: the write connection (`worker.storage.connection`) with the
event, room and NID tables, and the focused stores the pipeline reaches through it
(`db.held`, `db.outbox`, `db.block_rows`, `db.redactions`, `db.awaited_prevs`).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.storage.awaiting import AwaitedPrevEvents, Redactions
from worker.storage.block_rows import BlockRows
from worker.storage.blocks import pack_nids, unpack_nids
from worker.storage.cache_budget import DEFAULT_BUDGET
from worker.storage.connection import (
    MultiRowInsert,
    WriteConnection,
    insert_rowid,
    json_list,
    open_connection,
    quick_check,
)
from worker.storage.faults import StorageError, StorageFault, is_transient, storage_fault
from worker.storage.held import HeldStore
from worker.storage.id_keys import id_key, keys_json
from worker.storage.lru import LruByWeight
from worker.storage.membership_index import apply_member_replacement, apply_state_change
from worker.storage.outbox import OutboxRow, OutboxStore
from worker.storage.schema import (
    EMPTY_STATE_KEY_NID,
    STATUS_REJECTED,
    WELL_KNOWN_TYPES,
    create_schema,
)

#: Names the rest of the worker imports from here (the write side's one module).
__all__ = [
    "DB_FILENAME",
    "Database",
    "EventRow",
    "OutboxRow",
    "RoomRow",
    "StorageError",
    "StorageFault",
    "is_transient",
    "json_list",
    "open_connection",
    "quick_check",
    "storage_fault",
]

DB_FILENAME = "roomserver.db"
#: Names cached per NID table (event types, state keys), in each direction: the default
#: budget's share (worker.storage.cache_budget). A state key is mostly a user ID; a
#: name costs ~230 bytes with the LRU's entry in each direction.
NID_CACHE_ENTRIES = DEFAULT_BUDGET.bound("nid_names")


@dataclass(slots=True)
class RoomRow:
    nid: int
    room_id: str
    room_version: str
    snapshot_nid: int
    latest_event_nids: list[int]
    last_sent_event_nid: int
    depth: int


@dataclass(slots=True, unsafe_hash=True)
class EventRow:
    """An event's row without its JSON, compared and hashed by its values.

    Slotted and not frozen: one is made for every event stored and every row read, and
    its fields are read far more often still. A frozen dataclass sets each of its ten
    fields through `object.__setattr__` (about four times the cost of a plain slot
    store), and a named tuple's fields are descriptor calls the interpreter does not
    specialize, where reading a slot is. Rows are never changed once made (they are
    shared by the caches): treat them as frozen."""

    nid: int
    event_id: str
    room_nid: int
    type_nid: int
    state_key_nid: int
    depth: int
    status: int
    reason: str | None
    before_snapshot_nid: int
    after_snapshot_nid: int


def event_row(values: tuple[Any, ...]) -> EventRow:
    """An `EventRow` of its ten values in column order (a row as read)."""
    return EventRow(*values)


#: A room row's changing columns (see `Database.update_room`): the latest event NIDs
#: are packed when the row is written, once per transaction.
_RoomUpdate = tuple[int, tuple[int, ...], int, int]
_UPDATE_ROOM = (
    "UPDATE rooms SET snapshot_nid = ?, latest_event_nids = ?, last_sent_event_nid = ?, "
    "depth = ? WHERE nid = ?"
)


def _room_update_row(nid: int, update: _RoomUpdate) -> tuple[int, bytes, int, int, int]:
    """The parameters of `_UPDATE_ROOM` for one room's change."""
    snapshot_nid, latest, last_sent, depth = update
    return (snapshot_nid, pack_nids(latest), last_sent, depth, nid)


_INSERT_JSON = MultiRowInsert("INSERT INTO event_json (event_nid, json)", 2)
_INSERT_EDGES = MultiRowInsert("INSERT OR IGNORE INTO event_edges (event_nid, prev_event_id)", 2)

_EVENT_COLUMNS = (
    "nid, event_id, room_nid, type_nid, state_key_nid, depth, status, reason, "
    "before_snapshot_nid, after_snapshot_nid"
)


class Database(WriteConnection):
    """The write path's database: events, rooms and the NID caches that front them on
    the write connection, plus one store per other family of tables, all sharing the
    connection and so the batch's transaction."""

    def __init__(self, storage_path: Path, nid_cache_entries: int = NID_CACHE_ENTRIES) -> None:
        super().__init__(storage_path / DB_FILENAME)
        create_schema(self.conn)
        self.held = HeldStore(self.conn)
        self.outbox = OutboxStore(self.conn, self.writes)
        self.block_rows = BlockRows(self.conn, self.writes)
        self.redactions = Redactions(self.conn)
        self.awaited_prevs = AwaitedPrevEvents(self.conn)
        #: Room rows changed in the open transaction, by NID: (snapshot NID, packed
        #: latest event NIDs, last sent event NID, depth), written at its commit.
        self._room_updates: dict[int, _RoomUpdate] = {}
        self.before_commit(self._write_room_updates)
        #: The NID the next event will get (see `next_event_nid`); None: read it again.
        self._next_event_nid: int | None = None
        self.after_begin(self._forget_next_event_nid)
        #: The JSON (by event NID) and prev-event rows of the events inserted in the open
        #: transaction and not written yet (see `insert_event`).
        self._deferred_json: dict[int, bytes] = {}
        self._deferred_edges: list[tuple[int, str]] = []
        self.before_commit(self.write_deferred)
        self.at_savepoint_bounds(self.write_deferred)
        self._types = _NidTable(
            self,
            "event type",
            WELL_KNOWN_TYPES,
            select_nid="SELECT nid FROM event_types WHERE name = ?",
            select_name="SELECT name FROM event_types WHERE nid = ?",
            insert="INSERT INTO event_types (name) VALUES (?)",
            limit=nid_cache_entries,
        )
        self._state_keys = _NidTable(
            self,
            "state key",
            {"": EMPTY_STATE_KEY_NID},
            select_nid="SELECT nid FROM state_keys WHERE state_key = ?",
            select_name="SELECT state_key FROM state_keys WHERE nid = ?",
            insert="INSERT INTO state_keys (state_key) VALUES (?)",
            limit=nid_cache_entries,
        )

    # -- NIDs -----------------------------------------------------------------

    def type_nid(self, name: str, *, create: bool) -> int:
        return self._types.nid(name, create=create)

    def type_name(self, nid: int) -> str:
        return self._types.name(nid)

    def state_key_nid(self, key: str, *, create: bool) -> int:
        return self._state_keys.nid(key, create=create)

    def state_key_name(self, nid: int) -> str:
        return self._state_keys.name(nid)

    def nid_caches(self) -> dict[str, LruByWeight[Any, Any]]:
        """The NID tables' caches by name (for the tests of their bounds)."""
        return {
            "type_nids": self._types._nids,
            "type_names": self._types._names,
            "state_key_nids": self._state_keys._nids,
            "state_key_names": self._state_keys._names,
        }

    # -- rooms ------------------------------------------------------------------

    def get_room(self, room_id: str) -> RoomRow | None:
        row = self.conn.execute(
            "SELECT nid, room_id, room_version, snapshot_nid, latest_event_nids, "
            "last_sent_event_nid, depth FROM rooms WHERE room_id = ?",
            (room_id,),
        ).fetchone()
        if row is None:
            return None
        nid = row[0]
        update = self._room_updates.get(nid)
        if update is not None:
            # Changed in the open transaction, not written yet (see `update_room`).
            snapshot_nid, latest, last_sent, depth = update
            return RoomRow(nid, row[1], row[2], snapshot_nid, list(latest), last_sent, depth)
        return RoomRow(nid, row[1], row[2], row[3], unpack_nids(row[4]), row[5], row[6])

    def create_room(self, room_id: str, room_version: str) -> RoomRow:
        nid = insert_rowid(
            self.conn,
            "INSERT INTO rooms (room_id, room_version) VALUES (?, ?)",
            (room_id, room_version),
        )
        return RoomRow(nid, room_id, room_version, 0, [], 0, 0)

    def update_room(self, room: RoomRow) -> None:
        """Record the room's new current state, extremities and depth.

        Inside a transaction the row is written once, at the commit, however many of
        the batch's events changed it (a linear room changes it with every event);
        `get_room` reads the change meanwhile, and an input whose savepoint is undone
        takes its change back with it."""
        update = (
            room.snapshot_nid,
            tuple(room.latest_event_nids),
            room.last_sent_event_nid,
            room.depth,
        )
        if not self._in_txn:
            self.conn.execute(_UPDATE_ROOM, _room_update_row(room.nid, update))
            return
        nid = room.nid
        previous = self._room_updates.get(nid)
        self._room_updates[nid] = update
        self.on_rollback(lambda: self._restore_room_update(nid, previous))

    def _restore_room_update(self, nid: int, previous: _RoomUpdate | None) -> None:
        if previous is None:
            self._room_updates.pop(nid, None)
        else:
            self._room_updates[nid] = previous

    def _write_room_updates(self) -> None:
        if self._room_updates:
            self.conn.executemany(
                _UPDATE_ROOM,
                [_room_update_row(nid, update) for nid, update in self._room_updates.items()],
            )
            self._room_updates = {}

    def room_version_of_nid(self, room_nid: int) -> str:
        row = self.conn.execute(
            "SELECT room_version FROM rooms WHERE nid = ?", (room_nid,)
        ).fetchone()
        if row is None:
            raise StorageError(f"room NID {room_nid} is referenced but not stored")
        return str(row[0])

    # -- events -----------------------------------------------------------------

    def get_event_row(self, event_id: str) -> EventRow | None:
        row = self.conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE id_key = ? AND event_id = ?",
            (id_key(event_id), event_id),
        ).fetchone()
        return event_row(row) if row is not None else None

    def get_event_row_by_nid(self, nid: int) -> EventRow | None:
        row = self.conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE nid = ?", (nid,)
        ).fetchone()
        return event_row(row) if row is not None else None

    def get_event_rows(self, event_ids: Collection[str]) -> dict[str, EventRow]:
        wanted = event_ids if isinstance(event_ids, (set, frozenset, dict)) else set(event_ids)
        return {
            row[1]: event_row(row)
            for row in self.conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events "
                "WHERE id_key IN (SELECT value FROM json_each(?))",
                (keys_json(event_ids),),
            )
            if row[1] in wanted
        }

    def event_ids_of(self, nids: Iterable[int]) -> dict[int, str]:
        return {
            nid: event_id
            for nid, event_id in self.conn.execute(
                "SELECT nid, event_id FROM events WHERE nid IN (SELECT value FROM json_each(?))",
                (json_list(nids),),
            )
        }

    def next_event_nid(self) -> int:
        """The NID the next event inserted will get.

        It is the one SQLite itself would give an INTEGER PRIMARY KEY left out, one more
        than the highest stored, so inserting with it stores the same row; knowing it
        first lets the state after a state event (which holds the event's own NID) be
        written before the event's row, which then needs no update. Counted from the
        last insert inside a transaction (where no other connection writes), and read
        again after anything is undone."""
        nid = self._next_event_nid
        if nid is None or not self._in_txn:
            nid = int(
                self.conn.execute("SELECT coalesce(max(nid), 0) + 1 FROM events").fetchone()[0]
            )
            self._next_event_nid = nid
        return nid

    def _forget_next_event_nid(self) -> None:
        self._next_event_nid = None

    def insert_event(
        self,
        *,
        event_id: str,
        room_nid: int,
        type_nid: int,
        state_key_nid: int,
        depth: int,
        status: int,
        reason: str | None,
        before_snapshot_nid: int,
        after_snapshot_nid: int,
        auth_event_nids: Sequence[int],
        prev_event_ids: Sequence[str],
        json_bytes: bytes,
        nid: int | None = None,
    ) -> int:
        """Insert an event; returns its NID. A caller that needed the NID first passes
        the one `next_event_nid` gave (any other is refused: the row would not be the
        one SQLite numbers itself)."""
        expected = self.next_event_nid()
        if nid is None:
            nid = expected
        elif nid != expected:
            raise StorageError(f"event NID {nid} is not the next one, {expected}")
        self.writes.execute(
            "INSERT INTO events (nid, event_id, id_key, room_nid, type_nid, state_key_nid, "
            "depth, status, reason, before_snapshot_nid, after_snapshot_nid, auth_event_nids, "
            "received_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                nid,
                event_id,
                id_key(event_id),
                room_nid,
                type_nid,
                state_key_nid,
                depth,
                status,
                reason,
                before_snapshot_nid,
                after_snapshot_nid,
                pack_nids(auth_event_nids),
                int(time.time() * 1000),
            ),
        )
        self._next_event_nid = nid + 1
        if not self._in_txn:
            self._write_rows([(nid, json_bytes)], [(nid, prev) for prev in prev_event_ids])
            return nid
        # The event's JSON and prev-event rows wait for the commit (or the input's
        # savepoint's release), to be written with the other events' in one statement
        # per table: the rows are only read by the few methods that write them first.
        self._deferred_json[nid] = json_bytes
        if len(prev_event_ids) == 1:
            self._deferred_edges.append((nid, prev_event_ids[0]))
        else:
            self._deferred_edges.extend([(nid, prev) for prev in prev_event_ids])
        self.on_rollback_once(self._forget_inserts)
        return nid

    def write_deferred(self) -> None:
        """Write the rows `insert_event` left for later: before the commit, as an input's
        savepoint begins and before its release, and before a read of `event_json` or
        `event_edges` on this connection (every such read calls this first, except
        `event_json`, which reads the rows waiting directly)."""
        if self._deferred_json or self._deferred_edges:
            self._write_rows(list(self._deferred_json.items()), self._deferred_edges)
            self._deferred_json = {}
            self._deferred_edges = []

    def _write_rows(
        self, json_rows: Sequence[tuple[int, bytes]], edge_rows: Sequence[tuple[int, str]]
    ) -> None:
        _INSERT_JSON.run(self.writes, json_rows)
        _INSERT_EDGES.run(self.writes, edge_rows)

    def _forget_inserts(self) -> None:
        """Events inserted in the undone transaction or savepoint: their NIDs are given
        out again and their waiting rows are dropped. (Rows wait only while the input
        that inserted them runs, in a savepoint, since each release writes them; or,
        without savepoints, in a transaction whose undoing drops them all.)"""
        self._next_event_nid = None
        self._deferred_json = {}
        self._deferred_edges = []

    def event_json(self, nid: int) -> bytes:
        waiting = self._deferred_json.get(nid)
        if waiting is not None:
            return waiting
        row = self.conn.execute(
            "SELECT json FROM event_json WHERE event_nid = ?", (nid,)
        ).fetchone()
        if row is None:
            raise StorageError(f"event NID {nid} has no stored JSON")
        return bytes(row[0])

    def replace_event_json(self, nid: int, json_bytes: bytes, redacted_by: str) -> None:
        self.write_deferred()
        self.conn.execute("UPDATE event_json SET json = ? WHERE event_nid = ?", (json_bytes, nid))
        self.conn.execute("UPDATE events SET redacted_by = ? WHERE nid = ?", (redacted_by, nid))

    def promote_outlier(
        self, nid: int, status: int, reason: str | None, before: int, after: int
    ) -> None:
        """An outlier re-sent as a timeline event gains its state and status."""
        self.conn.execute(
            "UPDATE events SET status = ?, reason = ?, before_snapshot_nid = ?, "
            "after_snapshot_nid = ? WHERE nid = ?",
            (status, reason, before, after, nid),
        )

    def room_create_event_nid(self, room_nid: int) -> int | None:
        """The room's stored, non-rejected create event, if any (outliers included)."""
        row = self.conn.execute(
            "SELECT nid FROM events WHERE room_nid = ? AND type_nid = ? AND state_key_nid = ? "
            "AND status != ? LIMIT 1",
            (room_nid, WELL_KNOWN_TYPES["m.room.create"], EMPTY_STATE_KEY_NID, STATUS_REJECTED),
        ).fetchone()
        return int(row[0]) if row is not None else None

    def children_of(self, event_id: str) -> list[int]:
        """NIDs of stored timeline events naming `event_id` as a prev event, for an
        event that arrives after them (an awaited prev event).

        They are the events processed while it was awaited (`db.awaited_prevs`), not
        read from `event_edges`: a stored event naming a prev event not stored yet (or
        stored only as an outlier) was either processed without it, and so recorded
        there, or is an outlier itself (a child that does not count; re-sent as a
        timeline event, it is processed, and recorded, then). An index of `event_edges`
        by prev event, which would answer for any event, cost each stored event a
        write of a random leaf of it."""
        return self.awaited_prevs.children(event_id)

    def prev_event_ids_of(self, nids: Sequence[int]) -> list[str]:
        """The prev event IDs the stored events with these NIDs name (known or not)."""
        self.write_deferred()
        return [
            row[0]
            for row in self.conn.execute(
                "SELECT prev_event_id FROM event_edges "
                "WHERE event_nid IN (SELECT value FROM json_each(?))",
                (json_list(nids),),
            )
        ]

    # -- the index of users' rooms ------------------------------------------------

    def index_memberships(self, room_nid: int, adds: Sequence[str], removes: Sequence[str]) -> None:
        """Follow a change of the room's current state in `user_room_memberships`
        (event IDs added to and removed from it), in the open transaction."""
        if adds:
            self.write_deferred()  # the added events' rows are read with their JSON
        apply_state_change(self.conn, room_nid, adds, removes)

    def index_member_replacement(
        self, room_nid: int, user_id: str, membership: str, event_nid: int
    ) -> None:
        """`index_memberships` for a change that only replaces one user's member event
        with another one in hand (the common case of a linear room): one write, no read."""
        apply_member_replacement(self.writes, room_nid, user_id, membership, event_nid)


class _NidTable:
    """One string ↔ NID table (event types or state keys) with its two-way cache.

    A NID made inside a transaction is forgotten if that transaction rolls back, since
    SQLite may hand the same rowid to a different string afterwards.
    """

    def __init__(
        self,
        db: Database,
        what: str,
        preassigned: dict[str, int],
        *,
        select_nid: str,
        select_name: str,
        insert: str,
        limit: int,
    ) -> None:
        self._db = db
        self._what = what
        # Each direction is an LRU of `limit` names; one evicted is read again (the
        # preassigned ones are rows too).
        self._nids: LruByWeight[str, int] = LruByWeight(limit)
        self._names: LruByWeight[int, str] = LruByWeight(limit)
        for name, nid in preassigned.items():
            self._remember(name, nid)
        #: The preassigned names, which never change: the common event types are found
        #: here at a dict's cost, without the LRU's recency update.
        self._fixed = dict(preassigned)
        self._select_nid = select_nid
        self._select_name = select_name
        self._insert = insert

    def nid(self, name: str, *, create: bool) -> int:
        nid = self._fixed.get(name) or self._nids.get(name)
        if nid is not None:
            return nid
        conn = self._db.conn
        row = conn.execute(self._select_nid, (name,)).fetchone()
        if row is None:
            if not create:
                return 0
            created = insert_rowid(conn, self._insert, (name,))
            self._db.on_rollback(lambda: self._forget(name, created))
            nid = created
        else:
            nid = int(row[0])
        self._remember(name, nid)
        return nid

    def name(self, nid: int) -> str:
        name = self._names.get(nid)
        if name is None:
            row = self._db.conn.execute(self._select_name, (nid,)).fetchone()
            if row is None:
                raise StorageError(f"{self._what} NID {nid} is referenced but not stored")
            name = str(row[0])
            self._remember(name, nid)
        return name

    def _remember(self, name: str, nid: int) -> None:
        self._nids.put(name, nid)
        self._names.put(nid, name)

    def _forget(self, name: str, nid: int) -> None:
        """Both directions go, even if one was already evicted (the NID is passed in)."""
        self._nids.discard(name)
        self._names.discard(nid)
