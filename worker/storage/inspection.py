"""Operator inspection of the database: `roomserver stats`, `graph` and `verify`'s reads.

These tools look inside this worker's storage (whole-table counts, snapshot and block
NIDs, every row for a consistency check), which the query service never needs. They
run as one-off commands, so they use a plain synchronous `sqlite3` connection opened
read-only (`mode=ro` and `query_only`): looking can never change the file, and the
worker may keep running beside them (WAL).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.storage.blocks import merge_blocks, unpack_nids
from worker.storage.database import RoomRow, json_list, quick_check
from worker.storage.id_keys import BY_IDS, id_keys_params
from worker.storage.id_keys import register as register_id_key
from worker.storage.reader import (
    HELD_IN_ROOM,
    HELD_ORDER,
    HELD_SQL,
    READ_ONLY_PRAGMAS,
    HeldRecord,
    ReadError,
    existing_database,
    held_records,
    read_only_uri,
)
from worker.storage.schema import (
    STATUS_NAMES,
    STATUS_OUTLIER,
    STATUS_REJECTED,
    STATUS_SOFT_FAILED,
)


@dataclass(frozen=True, slots=True)
class StoreStats:
    rooms: int
    events: int
    rejected: int
    soft_failed: int
    outliers: int
    held: int
    snapshots: int
    blocks: int
    block_entries: int
    block_bytes: int
    outbox: int
    #: Size of the database file plus its WAL, in bytes.
    file_bytes: int


@dataclass(frozen=True, slots=True)
class GraphEvent:
    event_id: str
    type: str
    state_key: str | None
    depth: int
    status: str
    reason: str | None
    before_snapshot: int
    after_snapshot: int
    prev_event_ids: list[str]
    redacted_by: str | None


@dataclass(frozen=True, slots=True)
class RoomGraph:
    """What `roomserver graph` draws: the newest events of a room and their state.

    Snapshot and block NIDs appear here, and only here: the graph is a tool for
    looking inside this worker's storage, not part of the contract.
    """

    room_id: str
    room_version: str
    events: list[GraphEvent]
    latest_event_ids: list[str]
    current_snapshot: int
    #: Snapshot NID → its block NIDs, oldest first.
    snapshots: dict[int, list[int]]
    #: Block NID → entry count.
    block_sizes: dict[int, int]
    held: list[HeldRecord]
    #: Events stored in the room but left out by the limit.
    omitted: int
    #: Prev events named by the listed (or held) events that are stored but not
    #: listed; the other prev events named are not stored at all.
    stored_elsewhere: set[str]


#: What `roomserver verify` needs of an event row: (room NID, type NID, state key NID,
#: status, before snapshot NID, after snapshot NID).
EventFacts = tuple[int, int, int, int, int, int]


class _OverConnection:
    """Reads over a read-only connection that another part opened and closes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """One read transaction, so that several statements see the same commit."""
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._conn.execute(sql, params).fetchall()


class StoredRows(_OverConnection):
    """Every row as stored, for `roomserver verify` (consistency checks over NIDs) and
    `roomserver diff` (contents by event ID): `Inspector.rows`."""

    # -- roomserver verify ---------------------------------------------------------------

    def integrity_problems(self) -> list[str]:
        """SQLite's own check (empty when healthy)."""
        return quick_check(self._conn)

    def event_facts(self) -> dict[int, EventFacts]:
        """Every event NID → (room, type, state key, status, before, after) NIDs."""
        return {
            int(row[0]): (row[1], row[2], row[3], row[4], row[5], row[6])
            for row in self._conn.execute(
                "SELECT nid, room_nid, type_nid, state_key_nid, status, before_snapshot_nid, "
                "after_snapshot_nid FROM events"
            )
        }

    def event_id_faults(self) -> tuple[list[tuple[str, int]], list[tuple[int, str]]]:
        """The event IDs stored more than once, with their row counts, and the rows
        whose `id_key` is not their ID's key. Since schema version 5 no unique index
        refuses a second row of an ID (`worker.storage.id_keys`): the pipeline's own
        duplicate check keeps each event stored once, and this proves it did."""
        with self._snapshot():
            repeated = self._rows(
                "SELECT event_id, count(*) FROM events GROUP BY event_id HAVING count(*) > 1"
            )
            wrong_keys = self._rows(
                "SELECT nid, event_id FROM events WHERE id_key != event_key(event_id)"
            )
        return (
            [(str(event_id), int(count)) for event_id, count in repeated],
            [(int(nid), str(event_id)) for nid, event_id in wrong_keys],
        )

    def type_nids(self) -> set[int]:
        return {int(row[0]) for row in self._conn.execute("SELECT nid FROM event_types")}

    def state_key_nids(self) -> set[int]:
        return {int(row[0]) for row in self._conn.execute("SELECT nid FROM state_keys")}

    def event_nids_with_json(self) -> set[int]:
        return {int(row[0]) for row in self._conn.execute("SELECT event_nid FROM event_json")}

    def blocks(self) -> Iterator[tuple[int, int, bytes]]:
        """Every state block as stored: (NID, recorded entry count, packed entries)."""
        for nid, count, entries in self._conn.execute(
            "SELECT nid, entry_count, entries FROM state_blocks"
        ):
            yield int(nid), int(count), bytes(entries)

    def snapshots(self) -> Iterator[tuple[int, int, bytes]]:
        """Every snapshot as stored: (NID, room NID, packed block NIDs)."""
        for nid, room_nid, block_nids in self._conn.execute(
            "SELECT nid, room_nid, block_nids FROM state_snapshots"
        ):
            yield int(nid), int(room_nid), bytes(block_nids)

    def rooms(self) -> list[RoomRow]:
        """Every room row (forward extremities decoded), in NID order."""
        return [
            RoomRow(nid, room_id, version, snapshot, unpack_nids(latest), last_sent, depth)
            for nid, room_id, version, snapshot, latest, last_sent, depth in self._conn.execute(
                "SELECT nid, room_id, room_version, snapshot_nid, latest_event_nids, "
                "last_sent_event_nid, depth FROM rooms ORDER BY nid"
            )
        ]

    # -- roomserver diff: what a database holds, without its NIDs ---------------------------

    def contents(self) -> StoreContents:
        """Every event's room, status and states before and after it, and every room's
        version, forward extremities and current state, all by event ID and
        (type, state key): two databases built from the same inputs may number things
        differently, yet must hold the same contents."""
        with self._snapshot():
            names = {int(n): str(v) for n, v in self._rows("SELECT nid, name FROM event_types")}
            keys = {int(n): str(v) for n, v in self._rows("SELECT nid, state_key FROM state_keys")}
            ids = {int(n): str(v) for n, v in self._rows("SELECT nid, event_id FROM events")}
            blocks = {int(nid): bytes(entries) for nid, _, entries in self.blocks()}
            snapshots = {int(nid): unpack_nids(packed) for nid, _, packed in self.snapshots()}
            rooms = self.rooms()
            event_rows = self._rows(
                "SELECT e.event_id, r.room_id, e.status, e.before_snapshot_nid, "
                "e.after_snapshot_nid FROM events e JOIN rooms r ON r.nid = e.room_nid"
            )
        states: dict[int, StateMap] = {0: {}}

        def state(snapshot_nid: int) -> StateMap:
            if snapshot_nid not in states:
                merged = merge_blocks(blocks[b] for b in snapshots[snapshot_nid])
                states[snapshot_nid] = {(names[t], keys[k]): ids[e] for (t, k), e in merged.items()}
            return states[snapshot_nid]

        return StoreContents(
            events={
                str(event_id): StoredEvent(
                    str(room_id),
                    STATUS_NAMES.get(int(status), "unknown"),
                    state(int(before)),
                    state(int(after)),
                )
                for event_id, room_id, status, before, after in event_rows
            },
            rooms={
                room.room_id: StoredRoom(
                    room.room_version,
                    sorted(ids[nid] for nid in room.latest_event_nids),
                    state(room.snapshot_nid),
                )
                for room in rooms
            },
        )


class Inspector(_OverConnection):
    """A read-only look at one worker's database. Use `Inspector.open(path)` and
    `close()` (or `with`). It reads the overview (`stats`, `graph`) itself; the
    row-by-row reads of `verify` and `diff` are `rows`, over the same connection."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        super().__init__(conn)
        self.path = path
        self.rows = StoredRows(conn)

    @classmethod
    def open(cls, storage_path: Path) -> Inspector:
        """Open the database under `storage_path` read-only (ReadError `no_database`
        when there is none)."""
        path = existing_database(storage_path)
        conn = sqlite3.connect(read_only_uri(path), uri=True, isolation_level=None)
        register_id_key(conn)
        try:
            for pragma in READ_ONLY_PRAGMAS:
                conn.execute(pragma)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _room(self, room_id: str) -> tuple[int, str, int, bytes]:
        """(room NID, version, current snapshot NID, packed latest NIDs)."""
        rows = self._rows(
            "SELECT nid, room_version, snapshot_nid, latest_event_nids FROM rooms "
            "WHERE room_id = ?",
            (room_id,),
        )
        if not rows:
            raise ReadError("unknown_room", f"room {room_id} is not known to this worker")
        nid, version, snapshot, latest = rows[0]
        return int(nid), str(version), int(snapshot), bytes(latest)

    # -- roomserver stats ---------------------------------------------------------------

    def stats(self) -> StoreStats:
        """Counts for `roomserver stats`, from one read transaction so they agree."""
        with self._snapshot():
            (row,) = self._rows(
                "SELECT (SELECT count(*) FROM rooms), (SELECT count(*) FROM events), "
                "(SELECT count(*) FROM events WHERE status = ?), "
                "(SELECT count(*) FROM events WHERE status = ?), "
                "(SELECT count(*) FROM events WHERE status = ?), "
                "(SELECT count(*) FROM held_events), (SELECT count(*) FROM state_snapshots), "
                "(SELECT count(*) FROM state_blocks), "
                "(SELECT coalesce(sum(entry_count), 0) FROM state_blocks), "
                "(SELECT coalesce(sum(length(entries)), 0) FROM state_blocks), "
                "(SELECT count(*) FROM outbox)",
                (STATUS_REJECTED, STATUS_SOFT_FAILED, STATUS_OUTLIER),
            )
        file_bytes = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                file_bytes += os.stat(str(self.path) + suffix).st_size
        counts = [int(v) for v in row]
        return StoreStats(
            rooms=counts[0],
            events=counts[1],
            rejected=counts[2],
            soft_failed=counts[3],
            outliers=counts[4],
            held=counts[5],
            snapshots=counts[6],
            blocks=counts[7],
            block_entries=counts[8],
            block_bytes=counts[9],
            outbox=counts[10],
            file_bytes=file_bytes,
        )

    # -- roomserver graph ---------------------------------------------------------------

    def graph(self, room_id: str, *, limit: int = 1000) -> RoomGraph:
        """The room's newest `limit` events (0: all) with their prev events and the
        snapshots and blocks their state uses, read in one transaction."""
        with self._snapshot():
            room_nid, version, current, packed_latest = self._room(room_id)
            ((total,),) = self._rows("SELECT count(*) FROM events WHERE room_nid = ?", (room_nid,))
            rows = self._rows(
                "SELECT e.nid, e.event_id, t.name, k.state_key, e.depth, e.status, e.reason, "
                "e.before_snapshot_nid, e.after_snapshot_nid, e.redacted_by, "
                "(SELECT json_group_array(g.prev_event_id) FROM event_edges g "
                "WHERE g.event_nid = e.nid) "
                "FROM events e JOIN event_types t ON t.nid = e.type_nid "
                "LEFT JOIN state_keys k ON k.nid = e.state_key_nid "
                "WHERE e.room_nid = ? ORDER BY e.nid DESC LIMIT ?",
                (room_nid, limit if limit > 0 else -1),
            )
            latest_nids = unpack_nids(packed_latest)
            latest = self._event_ids(latest_nids)
            events = [_graph_event(row) for row in reversed(rows)]
            snapshot_nids = (
                {current} | {e.before_snapshot for e in events} | {e.after_snapshot for e in events}
            )
            snapshot_nids.discard(0)
            snapshots, block_sizes = self._snapshots_and_blocks(snapshot_nids)
            held = held_records(self._rows(HELD_SQL + HELD_IN_ROOM + HELD_ORDER, (room_nid,)))
            listed = {e.event_id for e in events}
            named = {p for e in events for p in e.prev_event_ids} | {
                m for h in held for m in h.missing_prev_event_ids
            }
            stored_elsewhere = self._stored(named - listed)
        return RoomGraph(
            room_id=room_id,
            room_version=version,
            events=events,
            latest_event_ids=[latest[n] for n in latest_nids],
            current_snapshot=current,
            snapshots=snapshots,
            block_sizes=block_sizes,
            held=held,
            omitted=int(total) - len(events),
            stored_elsewhere=stored_elsewhere,
        )

    def _snapshots_and_blocks(
        self, snapshot_nids: Iterable[int]
    ) -> tuple[dict[int, list[int]], dict[int, int]]:
        """The snapshots' block lists, and the entry count of every block they use."""
        snapshots = {
            int(nid): unpack_nids(blob)
            for nid, blob in self._rows(
                "SELECT nid, block_nids FROM state_snapshots "
                "WHERE nid IN (SELECT value FROM json_each(?))",
                (json_list(snapshot_nids),),
            )
        }
        block_nids = {b for blocks in snapshots.values() for b in blocks}
        block_sizes = {
            int(nid): int(count)
            for nid, count in self._rows(
                "SELECT nid, entry_count FROM state_blocks "
                "WHERE nid IN (SELECT value FROM json_each(?))",
                (json_list(block_nids),),
            )
        }
        return snapshots, block_sizes

    def _stored(self, event_ids: Iterable[str]) -> set[str]:
        """Those of the event IDs that are stored (in any room)."""
        return {
            str(row[0])
            for row in self._rows(
                "SELECT event_id FROM events WHERE " + BY_IDS,
                id_keys_params(list(event_ids)),
            )
        }

    def _event_ids(self, nids: Sequence[int]) -> dict[int, str]:
        found = {
            int(nid): str(event_id)
            for nid, event_id in self._rows(
                "SELECT nid, event_id FROM events WHERE nid IN (SELECT value FROM json_each(?))",
                (json_list(nids),),
            )
        }
        absent = [nid for nid in nids if nid not in found]
        if absent:
            raise ReadError("internal_error", f"NIDs {absent[:10]} are referenced but not stored")
        return found


StateMap = dict[tuple[str, str], str]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    room_id: str
    status: str
    state_before: StateMap
    state_after: StateMap


@dataclass(frozen=True, slots=True)
class StoredRoom:
    room_version: str
    forward_extremities: list[str]
    current_state: StateMap


@dataclass(frozen=True, slots=True)
class StoreContents:
    """A database's contents by event ID and (type, state key): `StoredRows.contents`."""

    events: dict[str, StoredEvent]
    rooms: dict[str, StoredRoom]


def _graph_event(row: Sequence[Any]) -> GraphEvent:
    _, event_id, type_name, state_key, depth, status, reason, before, after, redacted, prevs = row
    return GraphEvent(
        event_id=str(event_id),
        type=str(type_name),
        state_key=None if state_key is None else str(state_key),
        depth=int(depth),
        status=STATUS_NAMES.get(int(status), "unknown"),
        reason=reason,
        before_snapshot=int(before),
        after_snapshot=int(after),
        prev_event_ids=list(json.loads(prevs)),
        redacted_by=redacted,
    )
