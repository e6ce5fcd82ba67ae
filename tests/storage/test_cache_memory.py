"""The writer's state caches, filled to their default budgets with small rooms' states
and blocks, cost no more memory than their documented budget (docs/storage.md, Caches):
the budgets are counted in entries, so what an entry really costs is measured here.

Small rooms are the expensive shape per entry: a block of two or three entries carries
the same object and LRU overhead as one of sixty. Before the block budget was lowered
from 1,000,000 to 200,000 entries, blocks alone came to ~88 MiB, and over 10,000
small rooms (bench/memory_bench.py) the worker kept growing, by half between the second
and the last tenth of the run, to 219 MiB.

Each cache is filled to a tenth of its budget with the same shapes and its traced
allocations scaled up: the cost is linear in the items held.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

from worker.bus.subjects import Subjects
from worker.pipeline.limits import CacheLimits
from worker.pipeline.rooms import Rooms
from worker.storage.blocks import pack_entries
from worker.storage.database import Database
from worker.storage.events import EventStore
from worker.storage.snapshots import SnapshotCache
from worker.storage.state import BLOCK_LIST_CACHE_ENTRIES, StateStore

MIB = 2**20
SCALE = 10
#: The documented budgets (docs/storage.md), in MiB at the default entry bounds.
STATES_MIB = 60
BLOCKS_MIB = 20
BLOCK_LISTS_MIB = 10
FIRST_NID = 1_000_000
SUBJECTS = Subjects("rs")


def _traced(fill: Callable[[SnapshotCache], None]) -> tuple[int, SnapshotCache]:
    """Bytes allocated (and still held) by `fill` on a cache with the default bounds
    divided by SCALE."""
    cache = SnapshotCache(
        StateStore.STATE_CACHE_ENTRIES // SCALE,
        StateStore.BLOCK_CACHE_ENTRIES // SCALE,
        BLOCK_LIST_CACHE_ENTRIES // SCALE,
    )
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill(cache)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before, cache


def _full(cache: SnapshotCache, name: str) -> None:
    lru = cache.caches()[name]
    assert lru.budget - lru.weight < lru.budget // 10, (name, lru.weight, lru.budget)


def test_small_room_states_fit_their_budget() -> None:
    def fill(cache: SnapshotCache) -> None:
        # 13 entries: a small room's create, power levels, join rules, topic, name and
        # members; every key and event NID its own (the worst case: no sharing).
        for s in range(StateStore.STATE_CACHE_ENTRIES // SCALE // 10):
            first = FIRST_NID + s * 13
            cache.remember_state(
                FIRST_NID + s, {(300 + k % 7, first + k): first + k for k in range(13)}
            )

    used, cache = _traced(fill)
    _full(cache, "states")
    assert used * SCALE <= STATES_MIB * MIB, used * SCALE / MIB


def test_small_room_blocks_fit_their_budget() -> None:
    def fill(cache: SnapshotCache) -> None:
        for b in range(StateStore.BLOCK_CACHE_ENTRIES // SCALE):
            first = FIRST_NID + b * 3
            cache.remember_block(
                FIRST_NID + b, pack_entries({(300 + k, first + k): first + k for k in range(3)})
            )

    used, cache = _traced(fill)
    _full(cache, "blocks")
    assert used * SCALE <= BLOCKS_MIB * MIB, used * SCALE / MIB


def test_block_lists_fit_their_budget() -> None:
    def fill(cache: SnapshotCache) -> None:
        for s in range(BLOCK_LIST_CACHE_ENTRIES // SCALE):
            cache.remember_block_nids(FIRST_NID + s, [FIRST_NID + s + i for i in range(6)])

    used, cache = _traced(fill)
    _full(cache, "block_lists")
    assert used * SCALE <= BLOCK_LISTS_MIB * MIB, used * SCALE / MIB


#: The per-room caches of the write path at their default bounds (room rows, input
#: subjects, room versions), in MiB: ~5.6 measured, at 10,000 rooms each. Their bounds
#: are counted in rooms, so a worker that meets more rooms keeps only the latest; at
#: 100,000 subjects and room versions they came to ~45 MiB, a sixth of a 250 MB
#: worker, for rooms no longer written to.
ROOM_CACHES_MIB = 8


def test_per_room_caches_fit_their_budget(tmp_path: Path) -> None:
    """Each cache is filled past its bound with rooms of its own (a tenth of the rooms
    the bound allows, measured, then scaled): what it holds at the bound is the cost."""
    db = Database(tmp_path)
    limits = CacheLimits()
    rooms = Rooms(db, SUBJECTS, limits)
    events = EventStore(db)
    count = max(limits.rooms, limits.subjects, EventStore.ROOM_VERSION_CACHE_SIZE) // SCALE
    with db.transaction():
        made = [db.create_room(f"!{n:018d}abcdefgh:example.org", "10") for n in range(count)]
    bounded = [
        (rooms.cached_rooms, limits.rooms),
        (rooms.subject_rooms, limits.subjects),
        (events._room_versions, EventStore.ROOM_VERSION_CACHE_SIZE),
    ]
    for cache, bound in bounded:
        cache.budget = bound // SCALE
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for room in made:
            # The row as a room with one forward extremity holds it.
            room.latest_event_nids.append(FIRST_NID + room.nid)
            rooms.cached_rooms.put(room.room_id, room, 1)
            assert rooms.of_subject(SUBJECTS.input(room.room_id)) == room.room_id
            assert events.room_version(room.nid).identifier == "10"
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    for cache, bound in bounded:
        assert len(cache) == bound // SCALE, (len(cache), bound)
    assert used * SCALE <= ROOM_CACHES_MIB * MIB, used * SCALE / MIB


#: Derived states (`StateStore.derived`) of small rooms at their default bound, in MiB:
#: ~17 measured (~63 bytes a unit of weight; a small room's derived state weighs ~12).
DERIVED_MIB = 24


def test_small_room_derived_states_fit_their_budget(tmp_path: Path) -> None:
    """Rooms shaped as bench/memory_bench.py's (a linear room's state changes: its
    bootstrap, ten members joining, a topic, a name and profile changes), each state
    change derived from the last, until the derived states fill a tenth of their bound.
    The block caches are kept to one item, so what is measured is the derived states."""
    db = Database(tmp_path)
    store = StateStore(db, cache_entries=StateStore.STATE_CACHE_ENTRIES // SCALE)
    store.cache.caches()["blocks"].budget = 1
    store.cache.caches()["block_lists"].budget = 1
    event_nid = FIRST_NID
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with db.transaction():
            for r in range(120):
                room = db.create_room(f"!{r:018d}abcdefgh:example.org", "10")
                members = [(2, 100 + r * 11 + m) for m in range(11)]
                changes = [(1, 1), members[0], (3, 1), (4, 1), *members[1:], (5, 1), (6, 1)]
                snapshot = 0
                for key in [*changes, *members[1:8]]:
                    event_nid += 1
                    snapshot = store.derive(room.nid, snapshot, {key: event_nid})
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    derived = store.derived
    assert derived.budget - derived.weight < derived.budget // 10, (derived.weight, derived.budget)
    assert used * SCALE <= DERIVED_MIB * MIB, used * SCALE / MIB
