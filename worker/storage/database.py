"""The write-side database: one synchronous SQLite connection, owned by one thread.

Why not aiosqlite here: a fetched batch is one transaction, and the events in it
depend on each other (an event's prev event is usually earlier in the same batch), so
every read must see the batch's uncommitted writes, through the same connection. Doing
each of the ~10 statements per event as an awaited thread hop would cost more than the
statement itself. The pipeline instead runs a whole batch inside this connection's
thread (see `worker.pipeline`) and the asyncio side only moves bytes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

from worker.storage.blocks import pack_nids, unpack_nids
from worker.storage.lru import LruByWeight
from worker.storage.membership_index import apply_state_change
from worker.storage.schema import (
    EMPTY_STATE_KEY_NID,
    STATUS_REJECTED,
    WELL_KNOWN_TYPES,
    create_schema,
)

DB_FILENAME = "roomserver.db"
#: Names cached per NID table (event types, state keys), in each direction. A state key
#: is mostly a user ID (~40 bytes); 200,000 of them cost some 40 MB at most.
NID_CACHE_ENTRIES = 200_000


class StorageError(RuntimeError):
    """A fault in the stored data itself (not a transient database condition)."""


#: SQLite's primary result codes (https://sqlite.org/rescode.html) that the worker tells
#: apart; an extended code carries its primary one in the low byte.
SQLITE_READONLY: Final = 8
SQLITE_IOERR: Final = 10
SQLITE_CORRUPT: Final = 11
SQLITE_FULL: Final = 13
SQLITE_CANTOPEN: Final = 14
SQLITE_NOTADB: Final = 26
_TRANSIENT_CODES: Final = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
#: Faults of the disk or the file, not of an input: what the operator must fix, in words.
_STORAGE_FAULTS: Final = {
    SQLITE_FULL: ("the disk is full", "free space and restart"),
    SQLITE_IOERR: ("the disk failed to read or write", "check the disk and restart"),
    SQLITE_CORRUPT: (
        "the database is damaged",
        "restore a backup or rebuild it (docs/operations.md) and restart",
    ),
    SQLITE_NOTADB: (
        "the file is not an SQLite database",
        "restore a backup or rebuild it (docs/operations.md) and restart",
    ),
    SQLITE_CANTOPEN: ("the database cannot be opened", "check the path and its permissions"),
    SQLITE_READONLY: ("the database is read-only", "make it writable and restart"),
}


def _primary_code(exc: BaseException) -> int | None:
    """SQLite's primary result code of an sqlite3 error (None for anything else)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or not isinstance(code, int):
        return None
    return code & 0xFF


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth retrying as it is: SQLITE_BUSY or SQLITE_LOCKED (another
    connection holds a lock), never a fault of the data or the disk."""
    return _primary_code(exc) in _TRANSIENT_CODES


class StorageFault(RuntimeError):
    """The disk or the database file failed (full, I/O error, damaged, unreadable): no
    input is to blame and none may be dead-lettered for it; the worker stops."""

    def __init__(self, cause: str, code_name: str, path: Path, advice: str) -> None:
        super().__init__(f"storage fault: {cause} ({code_name}) writing {path}; {advice}")
        self.code_name = code_name
        self.path = path


def storage_fault(exc: BaseException, path: Path) -> StorageFault | None:
    """The StorageFault an sqlite3 error stands for, or None if it is not one."""
    if isinstance(exc, StorageFault):
        return exc
    code = _primary_code(exc)
    if code not in _STORAGE_FAULTS:
        return None
    cause, advice = _STORAGE_FAULTS[code]
    # The extended name (SQLITE_IOERR_WRITE) starts with the primary one.
    name = getattr(exc, "sqlite_errorname", None) or f"SQLite result code {code}"
    return StorageFault(cause, name, path, advice)


@dataclass(slots=True)
class RoomRow:
    nid: int
    room_id: str
    room_version: str
    snapshot_nid: int
    latest_event_nids: list[int]
    last_sent_event_nid: int
    depth: int


class OutboxRow(NamedTuple):
    """One output waiting in the outbox (a tuple, so rows unpack as before)."""

    seq: int
    subject: str
    msg_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class EventRow:
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


_EVENT_COLUMNS = (
    "nid, event_id, room_nid, type_nid, state_key_nid, depth, status, reason, "
    "before_snapshot_nid, after_snapshot_nid"
)


def open_connection(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database with the pragmas the worker relies on.

    WAL lets readers run beside the writer; `synchronous=FULL` makes a commit durable
    before the input is acknowledged, as the contract requires.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=OFF")
    # 16 MiB of page cache: the writer touches recent pages and index paths; a larger
    # cache mostly grows the process with the database file for little speed.
    conn.execute("PRAGMA cache_size=-16384")
    for suffix in ("", "-wal", "-shm"):
        candidate = Path(str(path) + suffix)
        if candidate.exists():
            os.chmod(candidate, 0o600)
    return conn


def quick_check(conn: sqlite3.Connection) -> list[str]:
    """SQLite's own check of a connection's database: the problems found (empty when
    healthy). The worker runs it at start-up, `roomserver verify` on its read-only
    connection."""
    problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    return [] if problems == ["ok"] else problems


class Database:
    """Every SQL statement of the write path, and the NID caches that front them.

    Caches are only ever filled from committed or in-transaction data; when a
    transaction rolls back, anything learned inside it is forgotten (SQLite reuses
    rolled-back rowids, so a stale NID mapping would point at the wrong row).
    """

    def __init__(self, storage_path: Path, nid_cache_entries: int = NID_CACHE_ENTRIES) -> None:
        self.path = storage_path / DB_FILENAME
        self.conn = open_connection(self.path)
        create_schema(self.conn)
        self._types = _NidTable(
            self,
            "event type",
            WELL_KNOWN_TYPES,
            select_nid="SELECT nid FROM event_types WHERE name = ?",
            select_name="SELECT name FROM event_types WHERE nid = ?",
            insert="INSERT INTO event_types (name) VALUES (?) RETURNING nid",
            limit=nid_cache_entries,
        )
        self._state_keys = _NidTable(
            self,
            "state key",
            {"": EMPTY_STATE_KEY_NID},
            select_nid="SELECT nid FROM state_keys WHERE state_key = ?",
            select_name="SELECT state_key FROM state_keys WHERE nid = ?",
            insert="INSERT INTO state_keys (state_key) VALUES (?) RETURNING nid",
            limit=nid_cache_entries,
        )
        self._in_txn = False
        self._broken = False
        self._rollback_hooks: list[Callable[[], None]] = []

    def close(self) -> None:
        self.conn.close()

    def integrity_check(self) -> list[str]:
        """SQLite's own check; returns the problems found (empty when healthy)."""
        return quick_check(self.conn)

    # -- transactions -------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._in_txn:
            raise RuntimeError("nested transaction")
        self.conn.execute("BEGIN IMMEDIATE")
        self._in_txn = True
        self._broken = False
        self._rollback_hooks = []
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            # After some faults (a full disk, an I/O error) SQLite has already rolled the
            # transaction back itself, and a ROLLBACK would only fail with "no transaction
            # is active", hiding the error that matters: the one being raised.
            if self.conn.in_transaction:
                with suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            self._forget_uncommitted()
            raise
        finally:
            self._in_txn = False
            self._rollback_hooks = []

    @property
    def in_transaction(self) -> bool:
        """Whether the batch's transaction is still open (SQLite may have ended it)."""
        return self._in_txn and not self._broken and self.conn.in_transaction

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Undo one input's writes on failure while keeping the batch's transaction.

        If SQLite ended the whole transaction (see `transaction`), there is nothing to
        roll back to: the error goes up as it is and the batch fails."""
        hooks_before = len(self._rollback_hooks)
        self.conn.execute("SAVEPOINT one_input")
        try:
            yield
            self.conn.execute("RELEASE one_input")
        except BaseException:
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK TO one_input")
                    self.conn.execute("RELEASE one_input")
                except sqlite3.Error:
                    # The input's writes could not be undone: the batch must not go on
                    # (see `in_transaction`); the error being raised is the one to report.
                    self._broken = True
            for hook in self._rollback_hooks[hooks_before:]:
                hook()
            del self._rollback_hooks[hooks_before:]
            raise

    def on_rollback(self, hook: Callable[[], None]) -> None:
        """Register cache cleanup to run if the current transaction is undone."""
        if self._in_txn:
            self._rollback_hooks.append(hook)

    def _forget_uncommitted(self) -> None:
        for hook in self._rollback_hooks:
            hook()

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
        return RoomRow(row[0], row[1], row[2], row[3], unpack_nids(row[4]), row[5], row[6])

    def create_room(self, room_id: str, room_version: str) -> RoomRow:
        nid = self.conn.execute(
            "INSERT INTO rooms (room_id, room_version) VALUES (?, ?) RETURNING nid",
            (room_id, room_version),
        ).fetchone()[0]
        return RoomRow(nid, room_id, room_version, 0, [], 0, 0)

    def update_room(self, room: RoomRow) -> None:
        self.conn.execute(
            "UPDATE rooms SET snapshot_nid = ?, latest_event_nids = ?, "
            "last_sent_event_nid = ?, depth = ? WHERE nid = ?",
            (
                room.snapshot_nid,
                pack_nids(room.latest_event_nids),
                room.last_sent_event_nid,
                room.depth,
                room.nid,
            ),
        )

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
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id = ?", (event_id,)
        ).fetchone()
        return EventRow(*row) if row is not None else None

    def get_event_row_by_nid(self, nid: int) -> EventRow | None:
        row = self.conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE nid = ?", (nid,)
        ).fetchone()
        return EventRow(*row) if row is not None else None

    def get_event_rows(self, event_ids: Iterable[str]) -> dict[str, EventRow]:
        return {
            row[1]: EventRow(*row)
            for row in self.conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events "
                "WHERE event_id IN (SELECT value FROM json_each(?))",
                (json_list(event_ids),),
            )
        }

    def event_ids_of(self, nids: Iterable[int]) -> dict[int, str]:
        return {
            nid: event_id
            for nid, event_id in self.conn.execute(
                "SELECT nid, event_id FROM events WHERE nid IN (SELECT value FROM json_each(?))",
                (json_list(nids),),
            )
        }

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
    ) -> int:
        nid = self.conn.execute(
            "INSERT INTO events (event_id, room_nid, type_nid, state_key_nid, depth, status, "
            "reason, before_snapshot_nid, after_snapshot_nid, auth_event_nids, received_ts) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING nid",
            (
                event_id,
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
        ).fetchone()[0]
        self.conn.execute(
            "INSERT INTO event_json (event_nid, json) VALUES (?, ?)", (nid, json_bytes)
        )
        if prev_event_ids:
            self.conn.executemany(
                "INSERT OR IGNORE INTO event_edges (event_nid, prev_event_id) VALUES (?, ?)",
                [(nid, prev) for prev in prev_event_ids],
            )
        return int(nid)

    def event_json(self, nid: int) -> bytes:
        row = self.conn.execute(
            "SELECT json FROM event_json WHERE event_nid = ?", (nid,)
        ).fetchone()
        if row is None:
            raise StorageError(f"event NID {nid} has no stored JSON")
        return bytes(row[0])

    def replace_event_json(self, nid: int, json_bytes: bytes, redacted_by: str) -> None:
        self.conn.execute("UPDATE event_json SET json = ? WHERE event_nid = ?", (json_bytes, nid))
        self.conn.execute("UPDATE events SET redacted_by = ? WHERE nid = ?", (redacted_by, nid))

    def set_after_snapshot(self, nid: int, snapshot_nid: int) -> None:
        self.conn.execute(
            "UPDATE events SET after_snapshot_nid = ? WHERE nid = ?", (snapshot_nid, nid)
        )

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

    def add_redaction(self, target_event_id: str, redaction_nid: int, may_redact_any: bool) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO redactions (target_event_id, redaction_event_nid, "
            "may_redact_any) VALUES (?, ?, ?)",
            (target_event_id, redaction_nid, int(may_redact_any)),
        )

    def add_awaited_prev_events(self, event_ids: Sequence[str]) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO awaited_prev_events (event_id) VALUES (?)",
            [(event_id,) for event_id in event_ids],
        )

    def awaited_prev_events(self) -> list[str]:
        return [row[0] for row in self.conn.execute("SELECT event_id FROM awaited_prev_events")]

    def remove_awaited_prev_event(self, event_id: str) -> None:
        self.conn.execute("DELETE FROM awaited_prev_events WHERE event_id = ?", (event_id,))

    def redaction_targets_not_stored(self) -> list[str]:
        """Targets of accepted redactions that have not arrived yet."""
        return [
            row[0]
            for row in self.conn.execute(
                "SELECT DISTINCT target_event_id FROM redactions WHERE target_event_id "
                "NOT IN (SELECT event_id FROM events)"
            )
        ]

    def redactions_of(self, target_event_id: str) -> list[tuple[int, bool]]:
        """(redaction NID, may redact any) for accepted redactions naming the target."""
        return [
            (int(row[0]), bool(row[1]))
            for row in self.conn.execute(
                "SELECT redaction_event_nid, may_redact_any FROM redactions "
                "WHERE target_event_id = ?",
                (target_event_id,),
            )
        ]

    def children_of(self, event_id: str) -> list[int]:
        """NIDs of stored events naming `event_id` as a prev event."""
        return [
            row[0]
            for row in self.conn.execute(
                "SELECT event_nid FROM event_edges WHERE prev_event_id = ?", (event_id,)
            )
        ]

    def prev_event_ids_of(self, nids: Sequence[int]) -> list[str]:
        """The prev event IDs the stored events with these NIDs name (known or not)."""
        return [
            row[0]
            for row in self.conn.execute(
                "SELECT prev_event_id FROM event_edges "
                "WHERE event_nid IN (SELECT value FROM json_each(?))",
                (json_list(nids),),
            )
        ]

    # -- state blocks and snapshots ----------------------------------------------

    def snapshot_block_nids(self, snapshot_nid: int) -> list[int]:
        row = self.conn.execute(
            "SELECT block_nids FROM state_snapshots WHERE nid = ?", (snapshot_nid,)
        ).fetchone()
        if row is None:
            raise StorageError(f"state snapshot {snapshot_nid} is referenced but not stored")
        return unpack_nids(row[0])

    def blocks(self, block_nids: Iterable[int]) -> dict[int, bytes]:
        """Block NID → packed entries."""
        return {
            nid: bytes(entries)
            for nid, entries in self.conn.execute(
                "SELECT nid, entries FROM state_blocks "
                "WHERE nid IN (SELECT value FROM json_each(?))",
                (json_list(block_nids),),
            )
        }

    def put_block(self, digest: bytes, entry_count: int, packed: bytes) -> tuple[int, bool]:
        """Store a block unless an identical one exists; returns (NID, newly written)."""
        row = self.conn.execute("SELECT nid FROM state_blocks WHERE hash = ?", (digest,)).fetchone()
        if row is not None:
            return int(row[0]), False
        nid = self.conn.execute(
            "INSERT INTO state_blocks (hash, entry_count, entries) VALUES (?, ?, ?) RETURNING nid",
            (digest, entry_count, packed),
        ).fetchone()[0]
        return int(nid), True

    def put_snapshot(self, digest: bytes, room_nid: int, block_nids: Sequence[int]) -> int:
        row = self.conn.execute(
            "SELECT nid FROM state_snapshots WHERE hash = ?", (digest,)
        ).fetchone()
        if row is not None:
            return int(row[0])
        nid = self.conn.execute(
            "INSERT INTO state_snapshots (hash, room_nid, block_nids) VALUES (?, ?, ?) "
            "RETURNING nid",
            (digest, room_nid, pack_nids(block_nids)),
        ).fetchone()[0]
        return int(nid)

    # -- held events ------------------------------------------------------------

    def hold_event(
        self,
        *,
        event_id: str,
        room_nid: int,
        missing: Sequence[str],
        subject: str,
        stream_sequence: int,
        payload: bytes,
        now_ms: int,
    ) -> None:
        self.conn.execute(
            "INSERT INTO held_events (event_id, room_nid, missing_prev_event_ids, subject, "
            "stream_sequence, payload, held_since_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                event_id,
                room_nid,
                json.dumps(list(missing)),
                subject,
                stream_sequence,
                payload,
                now_ms,
            ),
        )
        self.conn.executemany(
            "INSERT OR IGNORE INTO held_waits (missing_event_id, held_event_id) VALUES (?, ?)",
            [(prev, event_id) for prev in missing],
        )

    def is_held(self, event_id: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM held_events WHERE event_id = ?", (event_id,)
        ).fetchone()
        return row is not None

    def held_waiting_on(self, event_id: str) -> list[str]:
        """Held events that named `event_id` as a missing prev event."""
        return [
            row[0]
            for row in self.conn.execute(
                "SELECT held_event_id FROM held_waits WHERE missing_event_id = ?", (event_id,)
            )
        ]

    def drop_held_wait(self, missing_event_id: str, held_event_id: str) -> None:
        self.conn.execute(
            "DELETE FROM held_waits WHERE missing_event_id = ? AND held_event_id = ?",
            (missing_event_id, held_event_id),
        )

    def held_waits_remaining(self, held_event_id: str) -> int:
        return int(
            self.conn.execute(
                "SELECT count(*) FROM held_waits WHERE held_event_id = ?", (held_event_id,)
            ).fetchone()[0]
        )

    def held_expired(self, before_ms: int, limit: int = 1000) -> list[str]:
        """Held events waiting since before `before_ms`, oldest first (none of parked
        rooms)."""
        return [
            row[0]
            for row in self.conn.execute(
                "SELECT event_id FROM held_events WHERE held_since_ms < ? "
                # A parked room's held events wait for the room (worker.storage.parked).
                "AND room_nid NOT IN (SELECT r.nid FROM rooms r "
                "JOIN parked_rooms p ON p.room_id = r.room_id) "
                "ORDER BY held_since_ms, stream_sequence LIMIT ?",
                (before_ms, limit),
            )
        ]

    def unhold(self, event_id: str) -> tuple[str, int, bytes] | None:
        """Remove a held event; its (subject, stream sequence, input payload)."""
        row = self.conn.execute(
            "SELECT subject, stream_sequence, payload FROM held_events WHERE event_id = ?",
            (event_id,),
        ).fetchone()
        if row is None:
            return None
        self.conn.execute("DELETE FROM held_events WHERE event_id = ?", (event_id,))
        self.conn.execute("DELETE FROM held_waits WHERE held_event_id = ?", (event_id,))
        return str(row[0]), int(row[1]), bytes(row[2])

    def held_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM held_events").fetchone()[0])

    # -- outbox -----------------------------------------------------------------

    def outbox_add(self, subject: str, msg_id: str, payload: bytes) -> int:
        """Queue an output; returns its outbox sequence number."""
        cursor = self.conn.execute(
            "INSERT INTO outbox (subject, msg_id, payload) VALUES (?, ?, ?)",
            (subject, msg_id, payload),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def outbox_pending(self, limit: int = 10_000) -> list[OutboxRow]:
        return [
            OutboxRow(row[0], row[1], row[2], bytes(row[3]))
            for row in self.conn.execute(
                "SELECT seq, subject, msg_id, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)
            )
        ]

    def outbox_delete_through(self, seq: int) -> None:
        """Forget published outputs; autocommits when called outside a transaction."""
        self.conn.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))

    def outbox_depth(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM outbox").fetchone()[0])

    # -- the index of users' rooms ------------------------------------------------

    def index_memberships(self, room_nid: int, adds: Sequence[str], removes: Sequence[str]) -> None:
        """Follow a change of the room's current state in `user_room_memberships`
        (event IDs added to and removed from it), in the open transaction."""
        apply_state_change(self.conn, room_nid, adds, removes)


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
        self._select_nid = select_nid
        self._select_name = select_name
        self._insert = insert

    def nid(self, name: str, *, create: bool) -> int:
        nid = self._nids.get(name)
        if nid is not None:
            return nid
        conn = self._db.conn
        row = conn.execute(self._select_nid, (name,)).fetchone()
        if row is None:
            if not create:
                return 0
            created = int(conn.execute(self._insert, (name,)).fetchone()[0])
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


def json_list(values: Iterable[int] | Iterable[str]) -> str:
    """A list of IDs as one SQL parameter, for `x IN (SELECT value FROM json_each(?))`.

    The one way storage passes ID lists to SQL: one statement for any number of values
    (no chunking under SQLite's variable limit), and one cached statement text.
    """
    return json.dumps(list(values))
