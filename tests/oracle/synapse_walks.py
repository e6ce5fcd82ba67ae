"""Synapse's event-graph walks as an oracle for `worker.matrix.event_walks`.

Synapse answers `/get_missing_events` and `/backfill` from SQL over two tables
(`synapse/storage/databases/main/event_federation.py`): `_get_missing_events` and
`_get_backfill_events` (with `_get_connected_prev_event_backfill_results_txn`). Those
transaction functions are called here unchanged, as unbound methods, on a real SQLite
database holding the columns they read of `events` and `event_edges`; the stand-in for
the store object carries only what they touch (`database_engine`, `db_pool`'s static
`simple_select_one_txn`, and the prev-event step). `get_backfill_events` then sorts the
IDs by depth and stream ordering, both descending; `backfill` does the same.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

from synapse.storage.database import DatabasePool
from synapse.storage.databases.main.event_federation import EventFederationWorkerStore

_SCHEMA = """
CREATE TABLE events (
    event_id TEXT PRIMARY KEY, room_id TEXT NOT NULL, type TEXT NOT NULL,
    depth INTEGER NOT NULL, stream_ordering INTEGER NOT NULL UNIQUE,
    outlier BOOLEAN NOT NULL
);
CREATE TABLE event_edges (
    event_id TEXT NOT NULL, prev_event_id TEXT NOT NULL, is_state BOOLEAN NOT NULL DEFAULT 0
);
CREATE INDEX ev_edges_id ON event_edges(event_id);
CREATE INDEX ev_edges_prev_id ON event_edges(prev_event_id);
"""


@dataclass(frozen=True)
class StoredEvent:
    """One row of `events` and its `event_edges` (prev events, which may be unknown)."""

    event_id: str
    room_id: str
    depth: int
    stream_ordering: int
    prev_event_ids: tuple[str, ...]
    outlier: bool = False


class SynapseWalks:
    """A SQLite database of events and edges, walked by Synapse's own functions."""

    def __init__(self, events: Iterable[StoredEvent]) -> None:
        self._db = sqlite3.connect(":memory:")
        self._db.executescript(_SCHEMA)
        events = list(events)
        self._depth = {e.event_id: (e.depth, e.stream_ordering) for e in events}
        self._db.executemany(
            "INSERT INTO events VALUES (?, ?, 'm.room.message', ?, ?, ?)",
            [(e.event_id, e.room_id, e.depth, e.stream_ordering, e.outlier) for e in events],
        )
        self._db.executemany(
            "INSERT INTO event_edges (event_id, prev_event_id) VALUES (?, ?)",
            [(e.event_id, prev) for e in events for prev in dict.fromkeys(e.prev_event_ids)],
        )
        store = SimpleNamespace(
            database_engine=SimpleNamespace(supports_using_any_list=False),
            db_pool=SimpleNamespace(simple_select_one_txn=DatabasePool.simple_select_one_txn),
        )
        store._get_connected_prev_event_backfill_results_txn = lambda txn, event_id, limit: (
            EventFederationWorkerStore._get_connected_prev_event_backfill_results_txn(
                store,  # type: ignore[arg-type]
                txn,
                event_id,
                limit,
            )
        )
        self._store = store

    def close(self) -> None:
        self._db.close()

    def missing_events(
        self, room_id: str, earliest: Sequence[str], latest: Sequence[str], limit: int
    ) -> list[str]:
        return list(
            EventFederationWorkerStore._get_missing_events(
                self._store,  # type: ignore[arg-type]
                self._db.cursor(),  # type: ignore[arg-type]
                room_id,
                list(earliest),
                list(latest),
                limit,
            )
        )

    def backfill(self, room_id: str, seeds: Sequence[str], limit: int) -> list[str]:
        ids = EventFederationWorkerStore._get_backfill_events(
            self._store,  # type: ignore[arg-type]
            self._db.cursor(),  # type: ignore[arg-type]
            room_id,
            list(seeds),
            limit,
        )
        # `get_backfill_events`: sorted by (-depth, -stream_ordering).
        return sorted(ids, key=lambda eid: (-self._depth[eid][0], -self._depth[eid][1]))
