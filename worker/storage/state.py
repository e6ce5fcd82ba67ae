"""Room state at events: loading snapshots into maps and writing new ones as deltas.

A state map here is keyed by NIDs, `(type NID, state key NID) → event NID`; turning
NIDs into Matrix strings is left to the callers that need them (outputs, queries), so
the hot path never touches strings for state it does not look at.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from worker.storage.blocks import (
    NidState,
    NidStateKey,
    block_hash,
    block_keys,
    entry_count,
    merge_blocks,
    pack_entries,
    pack_nids,
    plan_merge,
    snapshot_hash,
)
from worker.storage.cache_budget import DEFAULT_BUDGET, CacheBudget
from worker.storage.database import Database, StorageError
from worker.storage.lru import BoundedMemo, LruByWeight
from worker.storage.snapshots import SnapshotCache

#: A state as `StateStore.load` gives it: a plain map, or a `DerivedState` on one.
StateView = Mapping[NidStateKey, int]

#: Snapshots whose (block NID, entry count) list `derive` keeps (a few hundred bytes
#: each): the next state of a room derives from its last one.
DERIVED_BLOCK_LISTS = 1_000
#: Block lists, by block NID (~40 bytes each with the list's own overhead in small
#: rooms: worker.storage.cache_budget).
BLOCK_LIST_CACHE_ENTRIES = DEFAULT_BUDGET.bound("block_lists")


class DerivedState(Mapping[NidStateKey, int]):
    """A state written by `derive`: a plain map it shares and the changes on it.

    Copying the parent's map for every state event costs the room's size (a 100,000
    entry dict copy is milliseconds); this costs the changes since the last plain map.
    Once those outgrow about the square root of the map (`_flat_after`), `derive` makes
    a plain map again, so copies stay rare and lookups two dict probes at most.
    """

    __slots__ = ("_len", "base", "changes")

    def __init__(self, base: NidState, changes: NidState, length: int | None = None) -> None:
        #: Never changed: shared with the cache and with other derived states.
        self.base = base
        #: Key → event NID, 0 where the key is removed.
        self.changes = changes
        if length is None:
            length = len(base)
            for key, event_nid in changes.items():
                if key in base:
                    length -= not event_nid
                else:
                    length += bool(event_nid)
        #: The number of keys held; `derive` passes it, counted from the parent's and
        #: the few changes it adds, rather than over all the changes again.
        self._len = length

    def get(self, key: NidStateKey, default: int | None = None) -> int | None:  # type: ignore[override]
        event_nid = self.changes.get(key)
        if event_nid is None:
            return self.base.get(key, default)
        return event_nid or default

    def __getitem__(self, key: NidStateKey) -> int:
        event_nid = self.changes.get(key)
        if event_nid is None:
            return self.base[key]
        if not event_nid:
            raise KeyError(key)
        return event_nid

    def __contains__(self, key: object) -> bool:
        event_nid = self.changes.get(key)  # type: ignore[call-overload]
        return key in self.base if event_nid is None else bool(event_nid)

    def __iter__(self) -> Iterator[NidStateKey]:
        changes = self.changes
        for key in self.base:
            if key not in changes:
                yield key
        for key, event_nid in changes.items():
            if event_nid:
                yield key

    def __len__(self) -> int:
        return self._len

    def flat(self) -> NidState:
        state = dict(self.base)
        for key, event_nid in self.changes.items():
            if event_nid:
                state[key] = event_nid
            else:
                state.pop(key, None)
        return state


def _flat_after(base_size: int) -> int:
    """Changes a `DerivedState` may hold before a plain map is made: a copy of the base
    every ~√(2n) changes and a copy of the changes each time cost √(2n) per change
    together, the least over both (n = 100,000: ~450 entries instead of 100,000)."""
    return max(64, math.isqrt(2 * base_size))


@dataclass(slots=True)
class WriteStats:
    """Counters for the benchmark and metrics: what state writes cost."""

    snapshots_created: int = 0
    blocks_written: int = 0
    triples_written: int = 0
    merges: int = 0


class StateStore:
    """Snapshots and blocks, with caches sized by state entries.

    Cached state maps are shared: callers must treat what `load` returns as
    read-only and copy before changing it.
    """

    #: Decoded states cost ~130 bytes an entry. Every state change makes a new state, so
    #: this bounds memory, not the working set: the hot states are the rooms' heads and
    #: fork points, a few per active room. The default budget's share is ~15 MiB.
    STATE_CACHE_ENTRIES = DEFAULT_BUDGET.bound("states")
    #: Packed blocks are what a cold state is rebuilt from: 24 bytes an entry, plus some
    #: 150 bytes of object and LRU overhead a block, so small rooms' blocks (2–3
    #: entries) cost ~90 bytes a unit of weight (tests/storage/test_cache_memory.py).
    #: A million let the worker grow by ~70 MB through a run over 10,000 small rooms
    #: (bench/memory_bench.py); the default budget's share is ~10 MiB.
    BLOCK_CACHE_ENTRIES = DEFAULT_BUDGET.bound("blocks")

    def __init__(
        self,
        db: Database,
        cache_entries: int | None = None,
        block_cache_entries: int | None = None,
        budget: CacheBudget = DEFAULT_BUDGET,
    ) -> None:
        """`cache_entries` bounds merged and derived states alike and
        `block_cache_entries` the blocks (tests set tiny bounds); left out, every bound
        is the `budget`'s share."""
        self.db = db
        self.stats = WriteStats()
        self.cache = SnapshotCache(
            cache_entries or budget.bound("states"),
            block_cache_entries or budget.bound("blocks"),
            budget.bound("block_lists"),
        )
        #: Derived states, weighed by their changes plus a share of the base they hold
        #: on to (bases are shared by up to ~√(2n) states).
        self.derived: LruByWeight[int, DerivedState] = LruByWeight(
            cache_entries or budget.bound("derived")
        )
        #: Snapshot NID → its (block NID, entry count) pairs, as `derive` wrote them:
        #: deriving from a snapshot then needs neither its blocks nor their sizes read
        #: (a linear room derives each state from the one derived last).
        self._derived_blocks: BoundedMemo[int, tuple[tuple[int, int], ...]] = BoundedMemo(
            DERIVED_BLOCK_LISTS
        )

    def forget_caches(self) -> None:
        """Drop everything cached; used after a rollback, when NIDs may be reused."""
        self.cache.clear()
        self.derived.clear()
        self._derived_blocks.clear()

    # -- reading ------------------------------------------------------------------

    def load(self, snapshot_nid: int) -> StateView:
        """The state map of a snapshot (read-only; shared with the cache)."""
        if snapshot_nid == 0:
            return {}
        derived = self.derived.get(snapshot_nid)
        if derived is not None:
            return derived
        state = self.cache.state(snapshot_nid)
        if state is None:
            block_nids = self._block_nids(snapshot_nid)
            state = self.cache.assemble(snapshot_nid, block_nids, self._blocks(block_nids))
        return state

    def block_list(self, snapshot_nid: int) -> list[tuple[int, int]]:
        """The snapshot's (block NID, entry count) pairs, oldest first."""
        if not snapshot_nid:
            return []
        block_nids = self._block_nids(snapshot_nid)
        blocks = self._blocks(block_nids)
        return [(nid, entry_count(blocks[nid])) for nid in block_nids]

    def differing_keys(self, snapshot_nids: Sequence[int]) -> set[NidStateKey]:
        """The keys not held by every one of the snapshots' states with the same event.

        A snapshot is its blocks applied in order, so a key that no block after the
        lists' common prefix sets has the same event in both states (the prefix's last
        one). Only the keys of the blocks past the shared prefix are compared: after a
        fork, the branches' own blocks, whatever the size of the room.
        """
        first = snapshot_nids[0]
        first_blocks = self._block_nids(first) if first else []
        first_state = self.load(first)
        first_get = first_state.get
        keys: set[NidStateKey] = set()
        #: The keys of the first list's blocks from a position on: the other lists
        #: usually part from it at the same block (the fork).
        first_tails: dict[int, set[NidStateKey]] = {}
        for other in dict.fromkeys(snapshot_nids[1:]):
            if other == first:
                continue
            other_blocks = self._block_nids(other) if other else []
            shared = 0
            for mine, theirs in zip(first_blocks, other_blocks, strict=False):
                if mine != theirs:
                    break
                shared += 1
            first_tail = first_tails.get(shared)
            if first_tail is None:
                first_tail = first_tails[shared] = self._keys_of(first_blocks[shared:])
            candidates = first_tail | self._keys_of(other_blocks[shared:])
            # A key already known to differ need not be compared again.
            candidates -= keys
            other_get = self.load(other).get
            keys.update([k for k in candidates if first_get(k) != other_get(k)])
        return keys

    def _keys_of(self, block_nids: list[int]) -> set[NidStateKey]:
        """The keys the blocks set or remove."""
        keys: set[NidStateKey] = set()
        for packed in self._blocks(block_nids).values():
            keys.update(block_keys(packed))
        return keys

    def _blocks(self, block_nids: list[int]) -> dict[int, bytes]:
        """Every listed block: from the cache, the others in one query."""
        held, missing = self.cache.held_blocks(block_nids)
        if missing:
            self.cache.add_fetched(held, missing, self.db.block_rows.blocks(missing))
        return held

    def _block_nids(self, snapshot_nid: int) -> list[int]:
        block_nids = self.cache.block_nids(snapshot_nid)
        if block_nids is None:
            block_nids = self.cache.remember_block_nids(
                snapshot_nid, self.db.block_rows.snapshot_block_nids(snapshot_nid)
            )
        return block_nids

    def _block(self, block_nid: int) -> bytes:
        packed = self.cache.block(block_nid)
        if packed is None:
            fetched = self.db.block_rows.blocks([block_nid])
            if block_nid not in fetched:
                raise StorageError(f"state block {block_nid} is referenced but not stored")
            packed = fetched[block_nid]
            self.cache.remember_block(block_nid, packed)
        return packed

    # -- writing ------------------------------------------------------------------

    def derive(
        self, room_nid: int, parent_snapshot_nid: int, delta: Mapping[NidStateKey, int]
    ) -> int:
        """A snapshot equal to the parent's state with `delta` applied (0 removes a key).

        Writes one small block for the delta, then merges trailing blocks as the
        tiered policy asks; an unchanged state returns the parent itself.
        """
        parent_state = self.load(parent_snapshot_nid)
        effective = {k: v for k, v in delta.items() if parent_state.get(k, 0) != v}
        if not effective:
            return parent_snapshot_nid
        known = self._derived_blocks.get(parent_snapshot_nid)
        blocks = list(known) if known is not None else self.block_list(parent_snapshot_nid)
        blocks.append(self._write_block(effective))
        while (count := plan_merge([size for _, size in blocks])) > 0:
            merged_from = len(blocks) - count
            # Removals stay in a merged run unless it starts the list: there they
            # have nothing left to remove.
            merged = merge_blocks(
                (self._block(block_nid) for block_nid, _ in blocks[merged_from:]),
                keep_removed=merged_from > 0,
            )
            blocks[merged_from:] = [self._write_block(merged)]
            self.stats.merges += 1
        block_nids = [nid for nid, _ in blocks]
        packed = pack_nids(block_nids)
        snapshot_nid = self.db.block_rows.put_snapshot(
            snapshot_hash(room_nid, packed), room_nid, packed
        )
        self.db.on_rollback_once(self.forget_caches)
        self._derived_blocks[snapshot_nid] = tuple(blocks)
        self.stats.snapshots_created += 1
        if isinstance(parent_state, DerivedState):
            base, changes = parent_state.base, dict(parent_state.changes)
        else:
            base = parent_state if isinstance(parent_state, dict) else dict(parent_state)
            changes = {}
        length = len(parent_state)
        for key, event_nid in effective.items():
            length += bool(event_nid) - (key in parent_state)
        changes.update(effective)
        derived = DerivedState(base, changes, length)
        if len(changes) > _flat_after(len(base)):
            self.cache.remember_state(snapshot_nid, derived.flat())
        else:
            weight = len(changes) + 1 + len(base) // 16
            self.derived.put(snapshot_nid, derived, weight)
        self.cache.remember_block_nids(snapshot_nid, block_nids)
        return snapshot_nid

    def store_full(
        self, room_nid: int, state: Mapping[NidStateKey, int], near_snapshot_nid: int
    ) -> int:
        """Store an arbitrary state (a resolution, a supplied state) as a delta on the
        closest known snapshot rather than as a full copy."""
        base = self.load(near_snapshot_nid)
        delta: NidState = {k: v for k, v in state.items() if base.get(k) != v}
        for key in base:
            if key not in state:
                delta[key] = 0
        return self.derive(room_nid, near_snapshot_nid, delta)

    def _write_block(self, entries: Mapping[NidStateKey, int]) -> tuple[int, int]:
        packed = pack_entries(entries)
        nid, fresh = self.db.block_rows.put_block(block_hash(packed), len(entries), packed)
        if fresh:
            self.stats.blocks_written += 1
            self.stats.triples_written += len(entries)
        self.cache.remember_block(nid, packed)
        return nid, len(entries)
