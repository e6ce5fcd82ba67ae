"""The rows of state blocks and snapshots: stored once per distinct content (by hash),
read by NID. Packing and the merge policy are `worker.storage.blocks`; the caches in
front of these rows are `worker.storage.state`."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from worker.storage.blocks import unpack_nids
from worker.storage.connection import json_list
from worker.storage.faults import StorageError


class BlockRows:
    """The SQL of `state_blocks` and `state_snapshots`, on the write connection."""

    def __init__(self, conn: sqlite3.Connection, writes: sqlite3.Cursor) -> None:
        self.conn = conn
        #: The write connection's cursor for writes whose rows are never read
        #: (`WriteConnection.writes`).
        self._writes = writes

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
        nid = self._insert_unless_stored(
            "INSERT OR IGNORE INTO state_blocks (hash, entry_count, entries) VALUES (?, ?, ?)",
            (digest, entry_count, packed),
        )
        if nid is not None:
            return nid, True
        return self._stored_nid("SELECT nid FROM state_blocks WHERE hash = ?", digest), False

    def put_snapshot(self, digest: bytes, room_nid: int, packed_block_nids: bytes) -> int:
        """Store a snapshot (its block NIDs packed by `pack_nids`, as hashed) unless an
        identical one exists; returns its NID."""
        nid = self._insert_unless_stored(
            "INSERT OR IGNORE INTO state_snapshots (hash, room_nid, block_nids) VALUES (?, ?, ?)",
            (digest, room_nid, packed_block_nids),
        )
        if nid is not None:
            return nid
        return self._stored_nid("SELECT nid FROM state_snapshots WHERE hash = ?", digest)

    def _insert_unless_stored(self, sql: str, params: tuple[object, ...]) -> int | None:
        """Insert a row unless one with the same hash is stored: the new row's NID, or
        None. Most rows are new (each state change makes a new block and snapshot), so
        the insert comes first and the look-up only follows a duplicate: one statement
        where a look-up before every insert made two. An ignored insert takes no NID."""
        cursor = self._writes
        cursor.execute(sql, params)
        return cursor.lastrowid if cursor.rowcount == 1 else None

    def _stored_nid(self, sql: str, digest: bytes) -> int:
        row = self.conn.execute(sql, (digest,)).fetchone()
        if row is None:
            # OR IGNORE also ignores a NOT NULL violation, which leaves no row either.
            raise StorageError(f"a state row with hash {digest.hex()} was neither stored nor found")
        return int(row[0])
