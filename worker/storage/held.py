"""The held events' tables: inputs kept whole until their missing prev events arrive
(`held_events`), and which missing event each one still waits for (`held_waits`)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence


class HeldStore:
    """The SQL of held events, on the write connection (see `worker.pipeline.held` for
    when events are held, woken and released)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def add(
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

    def contains(self, event_id: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM held_events WHERE event_id = ?", (event_id,)
        ).fetchone()
        return row is not None

    def waiting_on(self, event_id: str) -> list[str]:
        """Held events that named `event_id` as a missing prev event."""
        return [
            row[0]
            for row in self.conn.execute(
                "SELECT held_event_id FROM held_waits WHERE missing_event_id = ?", (event_id,)
            )
        ]

    def drop_wait(self, missing_event_id: str, held_event_id: str) -> None:
        self.conn.execute(
            "DELETE FROM held_waits WHERE missing_event_id = ? AND held_event_id = ?",
            (missing_event_id, held_event_id),
        )

    def waits_remaining(self, held_event_id: str) -> int:
        return int(
            self.conn.execute(
                "SELECT count(*) FROM held_waits WHERE held_event_id = ?", (held_event_id,)
            ).fetchone()[0]
        )

    def expired(self, before_ms: int, limit: int = 1000) -> list[str]:
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

    def remove(self, event_id: str) -> tuple[str, int, bytes] | None:
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

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM held_events").fetchone()[0])
