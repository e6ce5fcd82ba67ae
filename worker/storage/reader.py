"""The read side of the database: an async, read-only view for the query service.

Operator tools (`roomserver stats`, `graph`, `verify`) read through
`worker.storage.inspection` instead; what is here is what the service answers.

It opens its own `mode=ro` connection through aiosqlite, beside the writer's: WAL lets
it read committed data while the writer works, and a read-only connection can never
take the write lock or change a byte. Everything it returns is committed data.

What makes it fast is that almost everything it reads is immutable once committed:
blocks and snapshots are never rewritten, a NID always names the same type, state key
or event, and an event's auth events, state snapshots and membership never change
(a redaction keeps `membership`). So packed blocks, merged snapshot states
(`worker.storage.read_state`) and NID names (`worker.storage.read_names`) are cached
without any invalidation; only the room rows (current state, forward extremities) and
event JSON are read fresh each time.

A room's row, which every question about a room reads first, is read on the caller's
own thread through a second read-only connection (`RoomRows`): one indexed row, a few
microseconds, where a trip through aiosqlite's thread and back is two thread
hand-offs and a wake-up of the event loop (0.15 ms of CPU per query, and two waits for
a core on a busy machine). That connection never waits for a lock: when SQLite says
it is busy, the row is read through aiosqlite as before.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiosqlite

from worker.storage.blocks import NidState, unpack_nids
from worker.storage.cache_budget import DEFAULT_BUDGET, CacheBudget
from worker.storage.database import DB_FILENAME
from worker.storage.faults import ReadError as ReadError
from worker.storage.id_keys import BY_IDS, E_BY_IDS, SQL_FUNCTION, id_key, id_keys_params
from worker.storage.lru import LruByWeight
from worker.storage.read_names import NidNames
from worker.storage.read_state import StateReads
from worker.storage.read_state import StateTriple as StateTriple
from worker.storage.schema import STATUS_NAMES, STATUS_OUTLIER, WELL_KNOWN_TYPES

MEMBER_TYPE_NID: Final = WELL_KNOWN_TYPES["m.room.member"]

#: `at` values for state at an event.
BEFORE: Final = "before"
AFTER: Final = "after"


@dataclass(frozen=True, slots=True)
class StateView:
    room_id: str
    #: The event the state is at (None for the room's current state).
    event_id: str | None
    entries: list[StateTriple]


@dataclass(frozen=True, slots=True)
class EventRecord:
    event_id: str
    room_id: str
    #: The stored PDU (the redacted form once a redaction applied).
    event: dict[str, Any]
    status: str
    reason: str | None
    redacted_by: str | None


@dataclass(frozen=True, slots=True)
class LatestRecord:
    room_id: str
    room_version: str
    depth: int
    latest_event_ids: list[str]
    #: The room's current state, read from the same row (for `state_entries`).
    snapshot_nid: int


@dataclass(frozen=True, slots=True)
class MembershipRecord:
    room_id: str
    user_id: str
    #: join, invite, leave, ban, knock; None when the user has no membership event.
    membership: str | None
    event_id: str | None


@dataclass(frozen=True, slots=True)
class RoomRecord:
    room_id: str
    room_version: str
    events: int


@dataclass(frozen=True, slots=True)
class HeldRecord:
    event_id: str
    room_id: str
    #: The prev events that were missing when the event arrived.
    missing_prev_event_ids: list[str]
    #: Those of them still not stored.
    waiting_for: list[str]
    held_since_ms: int
    stream_sequence: int


#: Set on every read-only connection: refuse writes even if `mode=ro` were lost, and
#: wait for the writer's checkpoints rather than fail.
READ_ONLY_PRAGMAS: Final = ("PRAGMA query_only=1", "PRAGMA busy_timeout=10000")
#: The room-row connection: read-only and never waiting for a lock (set when it opens,
#: without reading the database).
ROOM_ROWS_PRAGMAS: Final = ("PRAGMA query_only=1", "PRAGMA busy_timeout=0")
#: ... and a page cache of 256 KiB instead of SQLite's 2 MiB: it reads the rooms table
#: and its index alone. Set at its first read (this pragma loads the schema, which
#: takes a lock).
ROOM_ROWS_CACHE_PRAGMA: Final = "PRAGMA cache_size=-256"
#: A room's row: (room NID, version, current snapshot NID, packed latest NIDs, depth).
ROOM_ROW_SQL: Final = (
    "SELECT nid, room_version, snapshot_nid, latest_event_nids, depth FROM rooms WHERE room_id = ?"
)


def existing_database(storage_path: Path) -> Path:
    """The database file under `storage_path`; ReadError(`no_database`) when there is
    none: the worker creates it on its first start, and a reader must never create an
    empty one by mistake."""
    path = Path(storage_path) / DB_FILENAME
    if not path.exists():
        raise ReadError(
            "no_database",
            f"there is no database at {path}: has the worker run with this storage path?",
        )
    return path


def read_only_uri(path: Path) -> str:
    """A URI that opens `path` read-only: such a connection can never take the write
    lock or change a byte."""
    return path.resolve().as_uri() + "?mode=ro"


#: Held events with their rooms and the prev events they still wait for; the reader and
#: `roomserver graph` (`worker.storage.inspection`) both list them with this.
HELD_SQL: Final = (
    "SELECT h.event_id, r.room_id, h.missing_prev_event_ids, h.held_since_ms, "
    "h.stream_sequence, (SELECT json_group_array(w.missing_event_id) FROM held_waits w "
    "WHERE w.held_event_id = h.event_id) "
    "FROM held_events h JOIN rooms r ON r.nid = h.room_nid "
)
HELD_IN_ROOM: Final = "WHERE h.room_nid = ? "
HELD_ORDER: Final = "ORDER BY h.held_since_ms, h.stream_sequence"


def held_records(rows: Iterable[Sequence[Any]]) -> list[HeldRecord]:
    """`HELD_SQL` rows as records."""
    return [
        HeldRecord(
            event_id=str(event_id),
            room_id=str(room),
            missing_prev_event_ids=list(json.loads(missing)),
            waiting_for=sorted(json.loads(waits)),
            held_since_ms=int(since),
            stream_sequence=int(sequence),
        )
        for event_id, room, missing, since, sequence, waits in rows
    ]


class RoomRows:
    """Rooms' rows read on the event loop's own thread, through a read-only connection
    that never waits: `get` returns None when SQLite is busy (the caller then reads
    through aiosqlite, which waits as configured)."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(
            read_only_uri(path), uri=True, isolation_level=None, check_same_thread=False
        )
        try:
            for pragma in ROOM_ROWS_PRAGMAS:
                self._conn.execute(pragma)
        except BaseException:
            self._conn.close()
            raise
        self._sized = False

    def get(self, room_id: str) -> list[Any] | None:
        """The room's rows (none or one); None when the database is busy."""
        try:
            if not self._sized:
                self._conn.execute(ROOM_ROWS_CACHE_PRAGMA)
                self._sized = True
            return self._conn.execute(ROOM_ROW_SQL, (room_id,)).fetchall()
        except sqlite3.OperationalError:
            return None

    def close(self) -> None:
        self._conn.close()


class Reader:
    """Read-only queries over one worker's database. Use `await Reader.open(path)`.

    Every public method is a coroutine; the connection's thread runs the SQL, and
    decoding happens in the caller's event loop on cached, immutable data.
    """

    def __init__(
        self, conn: aiosqlite.Connection, path: Path, cache_entries: int | None, budget: CacheBudget
    ) -> None:
        self._conn = conn
        self.path = path
        self._room_rows = RoomRows(path)
        if cache_entries is None:
            states = budget.bound("reader_states"), budget.bound("reader_blocks")
            lists, names = budget.bound("reader_block_lists"), budget.bound("reader_names")
        else:
            states = cache_entries, cache_entries
            lists, names = cache_entries // 10, max(cache_entries // 4, 1)
        #: NID facts, one entry each (an auth list weighs its length).
        self._names = NidNames(self.rows, names)
        self._states = StateReads(self.rows, self._names, *states, lists)

    @classmethod
    async def open(
        cls,
        storage_path: Path,
        *,
        cache_entries: int | None = None,
        budget: CacheBudget = DEFAULT_BUDGET,
    ) -> Reader:
        """Open the database under `storage_path` read-only (ReadError `no_database`
        when there is none). The caches' bounds are the `budget`'s shares, or
        `cache_entries` for merged states and for blocks each (tests set tiny ones),
        a tenth of it for block lists and a quarter for each map of names."""
        path = existing_database(storage_path)
        conn = await aiosqlite.connect(read_only_uri(path), uri=True, isolation_level=None)
        try:
            for pragma in READ_ONLY_PRAGMAS:
                await conn.execute(pragma)
            await conn.create_function(SQL_FUNCTION, 1, id_key, deterministic=True)
            return cls(conn, path, cache_entries, budget)
        except BaseException:
            await conn.close()
            raise

    async def close(self) -> None:
        self._room_rows.close()
        await self._conn.close()

    def clear_caches(self) -> None:
        """Forget everything decoded (the benchmark measures cold queries with this)."""
        for cache in self.caches().values():
            cache.clear()

    def caches(self) -> dict[str, LruByWeight[Any, Any]]:
        """Every cache, by name (for `clear_caches` and the tests of their bounds)."""
        return {**self._states.caches(), **self._names.caches()}

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """One statement's rows on the read-only connection (also for the federation
        reads, `worker.storage.federation_reads`, which share it)."""
        return list(await self._conn.execute_fetchall(sql, params))

    # -- rooms and state -------------------------------------------------------------------

    async def _room(self, room_id: str) -> tuple[int, str, int, bytes, int]:
        """(room NID, version, current snapshot NID, packed latest NIDs, depth)."""
        rows = self._room_rows.get(room_id)
        if rows is None:
            rows = await self.rows(ROOM_ROW_SQL, (room_id,))
        if not rows:
            raise ReadError("unknown_room", f"room {room_id} is not known to this worker")
        nid, version, snapshot, latest, depth = rows[0]
        return int(nid), str(version), int(snapshot), bytes(latest), int(depth)

    async def snapshot_at(
        self, room_id: str, event_id: str | None = None, at: str = BEFORE
    ) -> tuple[int, str | None]:
        """The snapshot NID of a room's current state, or of the state before/after one
        of its events; and that event's ID. A snapshot never changes, so what is
        derived from one may be cached under its NID."""
        room_nid, _, current, _, _ = await self._room(room_id)
        if event_id is None:
            return current, None
        rows = await self.rows(
            "SELECT room_nid, status, before_snapshot_nid, after_snapshot_nid "
            "FROM events WHERE id_key = ? AND event_id = ?",
            (id_key(event_id), event_id),
        )
        if not rows or rows[0][0] != room_nid:
            raise ReadError("unknown_event", f"event {event_id} is not stored in room {room_id}")
        _, status, before, after = rows[0]
        if status == STATUS_OUTLIER:
            raise ReadError(
                "no_state",
                f"event {event_id} is an outlier: it is stored without the state around it",
            )
        return int(after if at == AFTER else before), event_id

    async def nid_state(self, snapshot_nid: int) -> NidState:
        """A snapshot's state as NIDs, `(type NID, state key NID) → event NID`, for
        tools and tests inside the worker (shared with the cache: do not change it)."""
        return await self._states.load(snapshot_nid)

    async def state(
        self,
        room_id: str,
        *,
        event_id: str | None = None,
        at: str = BEFORE,
        types: Sequence[str] | None = None,
        keys: Sequence[tuple[str, str]] | None = None,
    ) -> StateView:
        """The room's current state, or the state before/after one of its events,
        optionally only the given types and (type, state key) pairs."""
        snapshot_nid, at_event = await self.snapshot_at(room_id, event_id, at)
        return StateView(room_id, at_event, await self.state_entries(snapshot_nid, types, keys))

    async def state_entries(
        self,
        snapshot_nid: int,
        types: Sequence[str] | None = None,
        keys: Sequence[tuple[str, str]] | None = None,
    ) -> list[StateTriple]:
        """A snapshot's entries (those of the given types and keys, if any are given),
        in no particular order."""
        state = await self._states.filtered(await self._states.load(snapshot_nid), types, keys)
        return await self._states.triples(state)

    # -- events ----------------------------------------------------------------------------

    async def events(self, event_ids: Sequence[str]) -> tuple[list[EventRecord], list[str]]:
        """Stored events with their status, in the order asked; and the unknown IDs."""
        rows = await self.rows(
            "SELECT e.event_id, r.room_id, e.status, e.reason, e.redacted_by, j.json "
            "FROM events e JOIN rooms r ON r.nid = e.room_nid "
            "JOIN event_json j ON j.event_nid = e.nid "
            "WHERE " + E_BY_IDS,
            id_keys_params(event_ids),
        )
        by_id = {
            str(event_id): EventRecord(
                event_id=str(event_id),
                room_id=str(room_id),
                event=json.loads(pdu),
                status=STATUS_NAMES.get(int(status), "unknown"),
                reason=reason,
                redacted_by=redacted_by,
            )
            for event_id, room_id, status, reason, redacted_by, pdu in rows
        }
        found = [by_id[e] for e in dict.fromkeys(event_ids) if e in by_id]
        missing = [e for e in dict.fromkeys(event_ids) if e not in by_id]
        return found, missing

    async def latest(self, room_id: str) -> LatestRecord:
        """Forward extremities, depth, version and current snapshot, from one row so
        they agree with each other."""
        _, version, snapshot_nid, packed, depth = await self._room(room_id)
        latest_nids = unpack_nids(packed)
        ids = await self._names.event_ids_of(latest_nids)
        return LatestRecord(room_id, version, depth, [ids[n] for n in latest_nids], snapshot_nid)

    # -- membership ------------------------------------------------------------------------

    async def membership(
        self, room_id: str, user_id: str, *, event_id: str | None = None, at: str = BEFORE
    ) -> MembershipRecord:
        """One user's membership in the room's current state (or at an event)."""
        snapshot_nid, _ = await self.snapshot_at(room_id, event_id, at)
        state = await self._states.load(snapshot_nid)
        sk_nid = (await self._names.state_key_nids_of([user_id])).get(user_id, 0)
        member_nid = state.get((MEMBER_TYPE_NID, sk_nid), 0) if sk_nid else 0
        if not member_nid:
            return MembershipRecord(room_id, user_id, None, None)
        membership = (await self._names.memberships_of([member_nid]))[member_nid]
        ids = await self._names.event_ids_of([member_nid])
        return MembershipRecord(room_id, user_id, membership or None, ids[member_nid])

    async def members(
        self,
        room_id: str,
        *,
        membership: str = "join",
        event_id: str | None = None,
        at: str = BEFORE,
    ) -> list[str]:
        """User IDs whose membership is `membership` (joined, by default), sorted."""
        snapshot_nid, _ = await self.snapshot_at(room_id, event_id, at)
        state = await self._states.load(snapshot_nid)
        members = {s: e for (t, s), e in state.items() if t == MEMBER_TYPE_NID}
        if not members:
            return []
        memberships = await self._names.memberships_of(members.values())
        chosen = [s for s, e in members.items() if memberships[e] == membership]
        names = await self._names.state_keys_of(chosen)
        return sorted(names[s] for s in chosen)

    # -- rooms, auth chains, held events ----------------------------------------------------

    async def rooms(self) -> list[RoomRecord]:
        rows = await self.rows(
            "SELECT r.room_id, r.room_version, "
            "(SELECT count(*) FROM events e WHERE e.room_nid = r.nid) "
            "FROM rooms r ORDER BY r.room_id"
        )
        return [RoomRecord(str(r), str(v), int(n)) for r, v, n in rows]

    async def auth_chain(self, event_ids: Sequence[str]) -> list[str]:
        """The union of the events' auth chains (their auth events, recursively; not
        the events themselves unless one is in another's chain), sorted."""
        rows = await self.rows(
            "SELECT nid, event_id FROM events WHERE " + BY_IDS,
            id_keys_params(event_ids),
        )
        known = {str(event_id): int(nid) for nid, event_id in rows}
        missing = [e for e in dict.fromkeys(event_ids) if e not in known]
        if missing:
            raise ReadError("unknown_event", f"events not stored: {', '.join(missing[:20])}")
        chain: set[int] = set()
        frontier = set(known.values())
        while frontier:
            auth = await self._names.auth_events_of(frontier)
            step = {a for nid in frontier for a in auth[nid]}
            frontier = step - chain
            chain |= frontier
        ids = await self._names.event_ids_of(chain)
        return sorted(ids[nid] for nid in chain)

    async def held(self, room_id: str | None = None) -> list[HeldRecord]:
        """Events waiting for missing prev events, oldest first (one room, or all)."""
        if room_id is None:
            return held_records(await self.rows(HELD_SQL + HELD_ORDER))
        room_nid, *_ = await self._room(room_id)
        return held_records(await self.rows(HELD_SQL + HELD_IN_ROOM + HELD_ORDER, (room_nid,)))
