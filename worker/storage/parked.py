"""Parked rooms: where a room's inputs wait, whole and in order, after a bug.

An unexpected exception while processing an input says nothing about the input: it is
a fault of the worker. Dead-lettering the input and carrying on would build the rest of
the room without it, a silent fork. Instead the room is parked: the failed input and
every later input of the room are kept here, acknowledged to JetStream only once stored
(in the batch's transaction), until the room is retried after a restart (an upgrade)
or by `roomserver retry`. Other rooms go on.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from worker.storage.database import Database


@dataclass(frozen=True, slots=True)
class ParkedInput:
    seq: int
    subject: str
    stream_sequence: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ParkedRoom:
    room_id: str
    event_id: str | None
    stream_sequence: int
    error: str
    traceback: str
    parked_at_ms: int
    failures: int
    #: Inputs waiting, the failed one included.
    inputs: int


class ParkedStore:
    """The parked tables, through the write-side connection (inside its transactions)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def park(
        self,
        *,
        room_id: str,
        event_id: str | None,
        stream_sequence: int,
        error: str,
        traceback: str,
        now_ms: int,
    ) -> None:
        """Park a room, or record a new failure of a parked room's retry."""
        self._db.conn.execute(
            "INSERT INTO parked_rooms (room_id, event_id, stream_sequence, error, traceback, "
            "parked_at_ms) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (room_id) DO UPDATE SET "
            "event_id = excluded.event_id, stream_sequence = excluded.stream_sequence, "
            "error = excluded.error, traceback = excluded.traceback, "
            "parked_at_ms = excluded.parked_at_ms, failures = failures + 1",
            (room_id, event_id, stream_sequence, error, traceback, now_ms),
        )

    def keep(self, room_id: str, subject: str, stream_sequence: int, payload: bytes) -> None:
        """Append an input to the room's waiting inputs (once per stream sequence)."""
        self._db.conn.execute(
            "INSERT OR IGNORE INTO parked_inputs (room_id, subject, stream_sequence, payload) "
            "VALUES (?, ?, ?, ?)",
            (room_id, subject, stream_sequence, payload),
        )

    def room_ids(self) -> list[str]:
        return [row[0] for row in self._db.conn.execute("SELECT room_id FROM parked_rooms")]

    def inputs(self, room_id: str, limit: int) -> list[ParkedInput]:
        """The room's oldest waiting inputs, in the order they arrived."""
        return [
            ParkedInput(int(row[0]), str(row[1]), int(row[2]), bytes(row[3]))
            for row in self._db.conn.execute(
                "SELECT seq, subject, stream_sequence, payload FROM parked_inputs "
                "WHERE room_id = ? ORDER BY seq LIMIT ?",
                (room_id, limit),
            )
        ]

    def remove_input(self, seq: int) -> None:
        self._db.conn.execute("DELETE FROM parked_inputs WHERE seq = ?", (seq,))

    def unpark(self, room_id: str) -> None:
        """The room's inputs are all processed: it runs normally again."""
        self._db.conn.execute("DELETE FROM parked_rooms WHERE room_id = ?", (room_id,))


def list_parked(conn: sqlite3.Connection, room_id: str | None = None) -> list[ParkedRoom]:
    """Parked rooms with their last failure, oldest first, on any connection (the CLI
    reads the file read-only beside the worker). A database from before parking
    existed has none."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'parked_rooms'"
    ).fetchone()
    if exists is None:
        return []
    rows = conn.execute(
        "SELECT p.room_id, p.event_id, p.stream_sequence, p.error, p.traceback, "
        "p.parked_at_ms, p.failures, "
        "(SELECT count(*) FROM parked_inputs i WHERE i.room_id = p.room_id) "
        "FROM parked_rooms p WHERE ? IS NULL OR p.room_id = ? ORDER BY p.parked_at_ms",
        (room_id, room_id),
    ).fetchall()
    return [
        ParkedRoom(
            str(r[0]), r[1], int(r[2]), str(r[3]), str(r[4]), int(r[5]), int(r[6]), int(r[7])
        )
        for r in rows
    ]
