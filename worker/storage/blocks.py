"""Packing of state blocks and the tiered policy that keeps snapshots at ≤ 64 blocks.

A snapshot is an ordered list of blocks; a later block overrides an earlier one for
the same (type, state key), and an entry whose event NID is 0 removes the key. New
state is written as a small delta block appended to the parent's list. When blocks
pile up, *recent small* blocks are merged, tiered like an LSM tree: once `FANOUT`
trailing blocks share a size tier they become one block of the next tier. Each entry
is therefore rewritten about log_FANOUT(room size) times over its life, instead of
the whole room state being copied whenever the list is full — the cost of a state
change stays small however large the room grows.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Mapping, Sequence

#: The contract's bound on blocks per snapshot.
MAX_BLOCKS = 64
#: Blocks of one tier merged together. With 16, four tiers cover 65,536 entries with
#: at most 15 blocks each, so tiering alone stays under MAX_BLOCKS for large rooms.
FANOUT = 16

#: (type NID, state key NID) → event NID (0 = removed).
NidStateKey = tuple[int, int]
NidState = dict[NidStateKey, int]


def pack_nids(nids: Iterable[int]) -> bytes:
    return array("q", nids).tobytes()


def unpack_nids(blob: bytes) -> list[int]:
    values = array("q")
    values.frombytes(blob)
    return values.tolist()


def pack_entries(entries: Mapping[NidStateKey, int]) -> bytes:
    """Sorted triples, so equal blocks have equal bytes and dedupe by hash."""
    flat = array("q")
    for (type_nid, sk_nid), event_nid in sorted(entries.items()):
        flat.extend((type_nid, sk_nid, event_nid))
    return flat.tobytes()


def unpack_entries_into(blob: bytes, state: NidState, *, drop_removed: bool = True) -> None:
    """Apply a block's triples on top of `state` (later blocks override earlier ones)."""
    flat = array("q")
    flat.frombytes(blob)
    it = iter(flat)
    for type_nid, sk_nid, event_nid in zip(it, it, it, strict=True):
        if event_nid or not drop_removed:
            state[(type_nid, sk_nid)] = event_nid
        else:
            state.pop((type_nid, sk_nid), None)


def block_hash(packed: bytes) -> bytes:
    return hashlib.sha256(packed).digest()


def snapshot_hash(room_nid: int, block_nids: Sequence[int]) -> bytes:
    return hashlib.sha256(room_nid.to_bytes(8, "little") + pack_nids(block_nids)).digest()


def tier(entry_count: int) -> int:
    """Size tier: 0 for fewer than FANOUT entries, 1 below FANOUT², and so on."""
    level = 0
    limit = FANOUT
    while entry_count >= limit:
        level += 1
        limit *= FANOUT
    return level


def plan_merge(counts: Sequence[int]) -> int:
    """How many trailing blocks to merge into one, given the block sizes oldest first.

    Returns 0 when no merge is due. Called repeatedly by the writer, each merge
    shrinking the list, until it returns 0.
    """
    n = len(counts)
    if n < 2:
        return 0
    last_tier = tier(counts[-1])
    run = 1
    while run < n and tier(counts[-1 - run]) <= last_tier:
        run += 1
    if run >= FANOUT:
        return run
    if n > MAX_BLOCKS:
        # Shapes that defeat tiering (a large delta after many small ones) still
        # must respect the cap: merge just enough trailing blocks to get back to it.
        return n - MAX_BLOCKS + 1
    return 0
