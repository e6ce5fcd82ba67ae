"""What the write path remembers about events that have not arrived yet: accepted
redactions whose target is still unknown, and prev events named but never stored."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence


class Redactions:
    """Accepted redactions by target event ID, kept so that a target arriving later is
    redacted as it is stored."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def add(self, target_event_id: str, redaction_nid: int, may_redact_any: bool) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO redactions (target_event_id, redaction_event_nid, "
            "may_redact_any) VALUES (?, ?, ?)",
            (target_event_id, redaction_nid, int(may_redact_any)),
        )

    def targets_not_stored(self) -> list[str]:
        """Targets of accepted redactions that have not arrived yet."""
        return [
            row[0]
            for row in self.conn.execute(
                "SELECT DISTINCT target_event_id FROM redactions r WHERE NOT EXISTS "
                "(SELECT 1 FROM events e WHERE e.id_key = event_key(r.target_event_id) "
                "AND e.event_id = r.target_event_id)"
            )
        ]

    def of(self, target_event_id: str) -> list[tuple[int, bool]]:
        """(redaction NID, may redact any) for accepted redactions naming the target."""
        return [
            (int(row[0]), bool(row[1]))
            for row in self.conn.execute(
                "SELECT redaction_event_nid, may_redact_any FROM redactions "
                "WHERE target_event_id = ?",
                (target_event_id,),
            )
        ]


class AwaitedPrevEvents:
    """Prev events named by stored events but not stored themselves (or only as
    outliers), each with the stored events processed without it; one arriving later
    may change the room's forward extremities, and those events are its children."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def add(self, event_ids: Sequence[str], child_nid: int) -> None:
        """The stored event `child_nid` was processed without these prev events."""
        self.conn.executemany(
            "INSERT OR IGNORE INTO awaited_prev_events (event_id, child_event_nid) VALUES (?, ?)",
            [(event_id, child_nid) for event_id in event_ids],
        )

    def all(self) -> list[str]:
        return [
            row[0] for row in self.conn.execute("SELECT DISTINCT event_id FROM awaited_prev_events")
        ]

    def children(self, event_id: str) -> list[int]:
        """NIDs of the stored events processed while `event_id` was awaited."""
        return [
            row[0]
            for row in self.conn.execute(
                "SELECT child_event_nid FROM awaited_prev_events WHERE event_id = ?",
                (event_id,),
            )
        ]

    def remove(self, event_id: str) -> None:
        self.conn.execute("DELETE FROM awaited_prev_events WHERE event_id = ?", (event_id,))
