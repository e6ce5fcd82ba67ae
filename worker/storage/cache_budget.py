"""One memory budget for every bounded cache of a worker, shared out in fixed parts.

Each cache keeps its bound in its own unit (state entries, a block's entries, names,
parsed events, bytes), because that is what its hot path can weigh for free. What one
unit costs in memory was measured (tracemalloc and deep sizes of filled caches, in the
memory benchmark's small rooms, the shape with the most overhead a unit: see
docs/performance.md, Memory), so a part of the budget in bytes becomes a bound in
units: `bound = budget × part / unit bytes`. Filled together, the caches then hold
about the budget and no more (`tests/storage/test_cache_budget.py`), whatever the
rooms' shapes: a large room's units cost less than a small room's.

The operator sets one number, `storage.cache_mb`; the parts say how it is shared out.
The writer's half was chosen so that the memory benchmark (10,000 small rooms) fills
most of the caches it uses early in its run, while the fork benchmarks (a
100,000-member room) still find their states and resolutions cached; the query side's
half keeps the federation queries over a 10,000-member room in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: The default of `storage.cache_mb`. Half of it is the query side's: with less, the
#: federation queries over a 10,000-member room (states at 100 events, their names)
#: read again from SQLite on every ask (2–8 × slower in `make bench`). The writer's
#: half is what the memory benchmark fills (1,000,000 events in 10,000 rooms: RSS of
#: both processes ~175 MiB at its peak).
DEFAULT_CACHE_MB: Final = 256

#: The least `storage.cache_mb` accepted: below it the caches hold too little of even
#: one room to save any reads.
MIN_CACHE_MB: Final = 16

MIB: Final = 2**20


@dataclass(frozen=True, slots=True)
class Share:
    """One cache's part of the budget, and what a unit of its bound costs."""

    #: Fraction of the whole budget.
    part: float
    #: Bytes one unit of the cache's weight costs, measured in small rooms.
    unit_bytes: int
    #: Caches that split the part evenly, each with the same bound (a NID table's two
    #: directions, the resolver's memos).
    copies: int = 1


#: Every cache's share, writer side then query side. The parts add up to 1.
SHARES: Final[dict[str, Share]] = {
    # -- writer: worker.storage.state.StateStore (SnapshotCache and derived states)
    #: Merged states, by state entry.
    "states": Share(0.06, 130),
    #: States written by `derive`, by changes plus a share of the base.
    "derived": Share(0.04, 63),
    #: Packed blocks, by entry (plus two a block: `snapshots.BLOCK_WEIGHT`).
    "blocks": Share(0.04, 92),
    #: Snapshots' block lists, by block NID (plus one a list).
    "block_lists": Share(0.01, 40),
    # -- writer: worker.storage.events.EventStore
    #: Parsed events (with their rows), by event.
    "events": Share(0.1, 2_800),
    #: Event NID → event ID, by ID (a memo emptied when full).
    "event_ids": Share(0.0075, 190),
    #: Room NID → room version, by room (about as many rooms as the room rows).
    "room_versions": Share(0.00125, 150),
    # -- writer: worker.storage.database, the NID tables (types and state keys, both
    #    directions: four LRUs of names)
    "nid_names": Share(0.02, 230, copies=4),
    # -- writer: worker.pipeline (room rows, input subjects, resolution)
    #: Room rows with their forward extremities, by room.
    "room_rows": Share(0.005, 460),
    #: Input subject → room ID, by subject.
    "subjects": Share(0.0025, 300),
    #: Room ID → output subject (`OutputBuilder`), by room: the subject string and
    #: its slot (~125 bytes measured; the room ID is shared with the room's other
    #: entries).
    "output_subjects": Share(0.00125, 130),
    #: Passes against the auth events remembered by the authorizer, by pass (~1.3 KB:
    #: the key, the auth state as NIDs both ways, weak references to the cited events).
    "passed_auth": Share(0.02, 1_300),
    #: Resolutions, by differing state entry.
    "resolutions": Share(0.02, 150),
    #: Resolved snapshots by their inputs, by resolution.
    "resolved_snapshots": Share(0.0025, 270),
    #: Auth chains of settled events, by event ID in a chain.
    "auth_chains": Share(0.02, 55),
    #: The resolver's nine memos of facts about settled events (each emptied when
    #: full, all with the same bound): its unit is one entry in each, ~4,800 bytes
    #: together: a parsed event (~2.8 KB when the event LRU no longer holds it) and its
    #: usable key (~130), auth outcomes (~570), auth types, power levels parents, power
    #: events, key names and NIDs, witnesses (~110–310 each).
    "event_memos": Share(0.04, 4_800),
    #: The rooms' auth DAGs read upwards (`AuthCiters`), by state event indexed.
    "auth_citers": Share(0.02, 210),
    #: The awaited-prev-events and late-redaction-target filters, by event ID
    #: mirrored (beyond it they stop mirroring and the table is asked).
    "filters": Share(0.01, 120, copies=2),
    # -- query side: worker.storage.reader and worker.query.service
    #: The reader's merged states, by state entry.
    "reader_states": Share(0.17875, 130),
    #: The reader's packed blocks, by entry (plus two a block: `snapshots.BLOCK_WEIGHT`).
    "reader_blocks": Share(0.09312, 92),
    #: The reader's block lists, by block NID.
    "reader_block_lists": Share(0.0025, 40),
    #: The reader's six NID maps (types, state keys, event IDs, memberships, auth
    #: events both ways), by entry.
    "reader_names": Share(0.25938, 230, copies=6),
    #: Whole states encoded for replies, by byte.
    "packed_states": Share(0.04625, 1),
}


@dataclass(frozen=True, slots=True)
class CacheBudget:
    """`storage.cache_mb` shared out: each cache's bound in its own unit."""

    mb: int = DEFAULT_CACHE_MB

    def bound(self, name: str) -> int:
        """The bound of one cache (of each copy, for a shared part), in its unit; at
        least 1, so that a cache always keeps the item in hand."""
        share = SHARES[name]
        return max(1, int(self.mb * MIB * share.part / share.copies / share.unit_bytes))

    def bounds(self) -> dict[str, int]:
        """Every cache's bound by name (the worker logs them when it starts)."""
        return {name: self.bound(name) for name in SHARES}

    def bytes_of(self, name: str, units: int) -> int:
        """What `units` of a cache cost, by the measured unit cost."""
        return units * SHARES[name].unit_bytes


#: The budget at `DEFAULT_CACHE_MB`: what a cache owner built without a configured
#: budget (a test, `roomserver verify`) gets, and where the module constants that name
#: the default bounds come from.
DEFAULT_BUDGET: Final = CacheBudget()
