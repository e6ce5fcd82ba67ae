"""The read side's state: snapshots assembled from their blocks (as the writer's
`StateStore.load` does, through the same `SnapshotCache`), filtered by type and state
key, and named. Blocks and snapshots are never rewritten, so they are cached by NID
without invalidation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.storage.blocks import NidState, unpack_nids
from worker.storage.connection import json_list
from worker.storage.faults import ReadError, StorageError
from worker.storage.lru import LruByWeight
from worker.storage.read_names import NidNames, Rows
from worker.storage.snapshots import SnapshotCache

#: (event type, state key, event ID): one entry of a state, as queries return it.
StateTriple = tuple[str, str, str]


class StateReads:
    """Snapshot states by NID, and the named entries of one."""

    def __init__(
        self,
        rows: Rows,
        names: NidNames,
        state_entries: int,
        block_entries: int,
        block_list_entries: int,
    ) -> None:
        self._rows = rows
        self._names = names
        self._snapshots = SnapshotCache(state_entries, block_entries, block_list_entries)

    def caches(self) -> dict[str, LruByWeight[Any, Any]]:
        return self._snapshots.caches()

    async def load(self, snapshot_nid: int) -> NidState:
        """The snapshot's state map (shared with the cache: read-only)."""
        if snapshot_nid == 0:
            return {}
        cache = self._snapshots
        state = cache.state(snapshot_nid)
        if state is not None:
            return state
        block_nids = cache.block_nids(snapshot_nid)
        if block_nids is None:
            rows = await self._rows(
                "SELECT block_nids FROM state_snapshots WHERE nid = ?", (snapshot_nid,)
            )
            if not rows:
                raise ReadError(
                    "internal_error", f"state snapshot {snapshot_nid} is referenced but not stored"
                )
            block_nids = cache.remember_block_nids(snapshot_nid, unpack_nids(rows[0][0]))
        held, missing = cache.held_blocks(block_nids)
        if missing:
            rows = await self._rows(
                "SELECT nid, entries FROM state_blocks "
                "WHERE nid IN (SELECT value FROM json_each(?))",
                (json_list(missing),),
            )
            try:
                cache.add_fetched(held, missing, {int(n): bytes(b) for n, b in rows})
            except StorageError as exc:
                raise ReadError("internal_error", str(exc)) from exc
        return cache.assemble(snapshot_nid, block_nids, held)

    async def filtered(
        self,
        state: NidState,
        types: Sequence[str] | None,
        keys: Sequence[tuple[str, str]] | None,
    ) -> NidState:
        """The part of `state` matching any of the types or (type, state key) pairs."""
        if types is None and keys is None:
            return state
        result: NidState = {}
        if types:
            type_nids = set((await self._names.type_nids_of(types)).values())
            if type_nids:
                result.update({k: v for k, v in state.items() if k[0] in type_nids})
        if keys:
            type_map = await self._names.type_nids_of(t for t, _ in keys)
            key_map = await self._names.state_key_nids_of(s for _, s in keys)
            for event_type, state_key in keys:
                nid_key = (type_map.get(event_type, 0), key_map.get(state_key, 0))
                event_nid = state.get(nid_key)
                if event_nid:
                    result[nid_key] = event_nid
        return result

    async def triples(self, state: NidState) -> list[StateTriple]:
        # The hot path: every name already cached, looked up in the caches' live views
        # (no await in between, so nothing is evicted under it).
        names = self._names
        types, keys = names.type_names.view(), names.state_key_names.view()
        ids = names.event_ids.view()
        try:
            return [(types[t], keys[s], ids[e]) for (t, s), e in state.items()]
        except KeyError:
            named = await names.of_state(state)
            return [(named[0][t], named[1][s], named[2][e]) for (t, s), e in state.items()]
