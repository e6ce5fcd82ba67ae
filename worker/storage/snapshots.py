"""Reading snapshots: the one logic the writer (`StateStore`) and the reader share.

A snapshot's state is its blocks merged in order. How the bytes are fetched differs
(the writer's synchronous connection, the reader's aiosqlite one), so this module does
no I/O: `SnapshotCache` says which blocks it lacks, the caller fetches them its own way
and hands them back (`add_fetched`), and `SnapshotCache.assemble` merges and caches.
Both sides therefore cache the same things (merged states, block lists, packed blocks,
each bounded by entries) and decode them with the same `merge_blocks`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from worker.storage.blocks import NidState, entry_count, merge_blocks
from worker.storage.database import StorageError
from worker.storage.lru import LruByWeight

#: What a block weighs beyond its entries, in entries: its key, bytes object and
#: LRU slots (two dicts' entries and index slots, an ordering node) cost about two
#: entries' worth. Weighed at one, the memory benchmark's small rooms (blocks of one to
#: three entries) kept ~41,000 blocks, just under 43,690, where a dict's table
#: doubles: the blocks' two tables then went from 7.5 to 13.6 MiB on a resize that
#: found a few more blocks held (issue 11, fifth part, in docs/performance.md).
BLOCK_WEIGHT: Final = 2


class SnapshotCache:
    """Merged states, block lists and packed blocks, each an LRU bounded by entries.

    Everything cached is immutable once committed (a snapshot's blocks and a block's
    bytes never change), so nothing needs invalidating except after a rollback on the
    write side, when NIDs may be reused (`clear`). States handed out are shared with
    the cache: callers treat them as read-only.
    """

    def __init__(self, state_entries: int, block_entries: int, block_list_entries: int) -> None:
        self._states: LruByWeight[int, NidState] = LruByWeight(state_entries)
        self._block_lists: LruByWeight[int, list[int]] = LruByWeight(block_list_entries)
        self._blocks: LruByWeight[int, bytes] = LruByWeight(block_entries)

    def caches(self) -> dict[str, LruByWeight[int, Any]]:
        """The LRUs by name, for tests that check their bounds."""
        return {"states": self._states, "block_lists": self._block_lists, "blocks": self._blocks}

    def clear(self) -> None:
        self._states.clear()
        self._block_lists.clear()
        self._blocks.clear()

    def state(self, snapshot_nid: int) -> NidState | None:
        return self._states.get(snapshot_nid)

    def remember_state(self, snapshot_nid: int, state: NidState) -> None:
        self._states.put(snapshot_nid, state, len(state) + 1)

    def block_nids(self, snapshot_nid: int) -> list[int] | None:
        """The snapshot's block NIDs, oldest first, if cached (shared: do not change)."""
        return self._block_lists.get(snapshot_nid)

    def remember_block_nids(self, snapshot_nid: int, block_nids: list[int]) -> list[int]:
        self._block_lists.put(snapshot_nid, block_nids, len(block_nids) + 1)
        return block_nids

    def block(self, block_nid: int) -> bytes | None:
        return self._blocks.get(block_nid)

    def remember_block(self, block_nid: int, packed: bytes) -> None:
        self._blocks.put(block_nid, packed, entry_count(packed) + BLOCK_WEIGHT)

    def held_blocks(self, block_nids: Sequence[int]) -> tuple[dict[int, bytes], list[int]]:
        """The blocks cached now, and the NIDs of those to fetch (then `add_fetched`).

        The caller keeps the first dict until `assemble`: a block evicted meanwhile (by
        another coroutine on the read side) is then still at hand.
        """
        held: dict[int, bytes] = {}
        missing: list[int] = []
        for block_nid in block_nids:
            packed = self._blocks.get(block_nid)
            if packed is None:
                missing.append(block_nid)
            else:
                held[block_nid] = packed
        return held, missing

    def add_fetched(
        self, held: dict[int, bytes], missing: Sequence[int], fetched: Mapping[int, bytes]
    ) -> None:
        """Cache the blocks fetched for `missing` and add them to `held`.

        Raises StorageError naming those not fetched: a snapshot refers to blocks that
        are not stored.
        """
        lost = [block_nid for block_nid in missing if block_nid not in fetched]
        if lost:
            raise StorageError(f"state blocks {lost} are referenced but not stored")
        for block_nid, packed in fetched.items():
            self.remember_block(block_nid, packed)
        held.update(fetched)

    def assemble(
        self, snapshot_nid: int, block_nids: Sequence[int], blocks: Mapping[int, bytes]
    ) -> NidState:
        """Merge the snapshot's blocks (all of them in `blocks`: the held ones and the
        fetched ones), cache the state and return it."""
        state = merge_blocks(blocks[block_nid] for block_nid in block_nids)
        self.remember_state(snapshot_nid, state)
        return state
