"""Room state at events: loading snapshots into maps and writing new ones as deltas.

A state map here is keyed by NIDs, `(type NID, state key NID) → event NID`; turning
NIDs into Matrix strings is left to the callers that need them (outputs, queries), so
the hot path never touches strings for state it does not look at.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from worker.storage.blocks import (
    NidState,
    NidStateKey,
    block_hash,
    entry_count,
    merge_blocks,
    pack_entries,
    plan_merge,
    snapshot_hash,
)
from worker.storage.database import Database, StorageError
from worker.storage.snapshots import SnapshotCache

#: Block lists cost ~8 bytes a block; 100,000 blocks' worth is under a MB.
BLOCK_LIST_CACHE_ENTRIES = 100_000


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

    #: Decoded states cost ~100 bytes an entry. Every state change makes a new state, so
    #: this bounds memory, not the working set: the hot states are the rooms' heads and
    #: fork points, a few per active room. ~300,000 entries is ~30 MB.
    STATE_CACHE_ENTRIES = 300_000
    #: Packed blocks are what a cold state is rebuilt from: 24 bytes an entry, plus some
    #: 150 bytes of object and LRU overhead a block, so small rooms' blocks (2–3
    #: entries) cost ~90 bytes a unit of weight; 200,000 is ~18 MB
    #: (tests/storage/test_cache_memory.py). A million let the worker grow by ~70 MB
    #: through a run over 10,000 small rooms (bench/memory_bench.py).
    BLOCK_CACHE_ENTRIES = 200_000

    def __init__(
        self,
        db: Database,
        cache_entries: int = STATE_CACHE_ENTRIES,
        block_cache_entries: int = BLOCK_CACHE_ENTRIES,
    ) -> None:
        self.db = db
        self.stats = WriteStats()
        self.cache = SnapshotCache(cache_entries, block_cache_entries, BLOCK_LIST_CACHE_ENTRIES)

    def forget_caches(self) -> None:
        """Drop everything cached; used after a rollback, when NIDs may be reused."""
        self.cache.clear()

    # -- reading ------------------------------------------------------------------

    def load(self, snapshot_nid: int) -> NidState:
        """The state map of a snapshot (read-only; shared with the cache)."""
        if snapshot_nid == 0:
            return {}
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
        blocks = self.block_list(parent_snapshot_nid)
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
        snapshot_nid = self.db.block_rows.put_snapshot(
            snapshot_hash(room_nid, block_nids), room_nid, block_nids
        )
        self.db.on_rollback(self.forget_caches)
        self.stats.snapshots_created += 1
        new_state = dict(parent_state)
        for key, event_nid in effective.items():
            if event_nid:
                new_state[key] = event_nid
            else:
                new_state.pop(key, None)
        self.cache.remember_state(snapshot_nid, new_state)
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
