"""Synapse's in-memory rate on the benchmark's forked room: a second yardstick.

Only when the test-only `oracle` extra is installed (`import synapse` succeeds). The
events go, one at a time, through `tests.oracle.synapse_room.SynapseRoom`, which calls
Synapse's own functions in the order its federation handler does: the state before (its
state resolution v1/v2 over the prev events' state groups), `_check_event_auth`,
`_check_for_soft_fail`, the new forward extremities and the new current state. Stores
answer from dicts: no database, no signatures, no network, no caching of resolutions. So
it is the cost of Synapse's Matrix rules alone, an upper bound on what Synapse itself
could do with these events, against which the worker's full path (NATS in and out, SQLite
on disk) is compared.

The oracle's store finds the two extremity queries' rows by scanning every edge, which
is fine for the oracle's small rooms but grows with the square of the room; here the
rows are found through an index on the same edges (the SQL uses indexes too), so the
yardstick does not charge Synapse for the oracle's shortcut.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any


def synapse_available() -> bool:
    try:
        import synapse  # noqa: F401
    except ImportError:
        return False
    return True


def bench_synapse(pdus: Sequence[dict[str, Any]], room_version: str) -> dict[str, Any]:
    """Events per second through Synapse's handler functions, and its outcome counts."""
    from tests.oracle.synapse_room import SynapseRoom, _Store

    logging.getLogger("synapse").setLevel(logging.CRITICAL)

    class IndexedStore(_Store):
        """The oracle's store, with the edge rows looked up by event instead of scanned."""

        def __init__(self, room: SynapseRoom) -> None:
            super().__init__(room)
            self.children: dict[str, list[str]] = defaultdict(list)
            self.parents: dict[str, list[str]] = defaultdict(list)
            self.indexed = 0

        def _index(self) -> None:
            edges = self.room.edges
            for child, prev in edges[self.indexed :]:
                self.children[prev].append(child)
                self.parents[child].append(prev)
            self.indexed = len(edges)

        async def _get_events_which_are_prevs(self, event_ids: Iterable[str]) -> list[str]:
            self._index()
            room = self.room
            return [
                prev
                for prev in dict.fromkeys(event_ids)
                for child in self.children.get(prev, ())
                if child not in room.rejected and child not in room.soft_failed
            ]

        async def _get_prevs_before_rejected(
            self, event_ids: Iterable[str], include_soft_failed: bool = True
        ) -> set[str]:
            self._index()
            room = self.room
            existing: set[str] = set()
            to_check = set(event_ids)
            while to_check:
                rows = [(c, p) for c in to_check for p in self.parents.get(c, ())]
                to_check = set()
                for child, prev in rows:
                    if prev in existing:
                        continue
                    soft_failed = child in room.soft_failed
                    if (include_soft_failed and soft_failed) or child in room.rejected:
                        to_check.add(prev)
                        existing.add(prev)
            return existing

    room = SynapseRoom(room_version)
    room.store = IndexedStore(room)
    room._handler._store = room.store
    room._persister.main_store = room._persister.persist_events_store = room.store
    room._persister.state_store = room.store
    outcomes: Counter[str] = Counter()
    elapsed = 0.0
    for pdu in pdus:
        start = time.perf_counter()
        verdict = room.receive(pdu)
        elapsed += time.perf_counter() - start
        outcomes[verdict.outcome] += 1
    return {
        "events": len(pdus),
        "seconds": elapsed,
        "events_per_s": len(pdus) / elapsed,
        "outcomes": dict(outcomes),
    }
