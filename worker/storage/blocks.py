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
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence

#: The contract's bound on blocks per snapshot.
MAX_BLOCKS = 64
#: Blocks of one tier merged together. With 16, four tiers cover 65,536 entries with
#: at most 15 blocks each, so tiering alone stays under MAX_BLOCKS for large rooms.
FANOUT = 16

#: Stored NID lists and blocks are little-endian int64s (the native order of the hosts
#: this runs on; swapped on a big-endian one so the file means the same everywhere).
NID_BYTES = 8
#: Bytes per packed (type NID, state key NID, event NID) triple.
TRIPLE_BYTES = 3 * NID_BYTES
_BIG_ENDIAN = sys.byteorder == "big"

#: (type NID, state key NID) → event NID (0 = removed).
NidStateKey = tuple[int, int]
NidState = dict[NidStateKey, int]


def _int64s(blob: bytes) -> list[int]:
    values = array("q")
    values.frombytes(blob)
    if _BIG_ENDIAN:
        values.byteswap()
    return values.tolist()


def _bytes(values: array[int]) -> bytes:
    if _BIG_ENDIAN:
        values.byteswap()
    return values.tobytes()


def pack_nids(nids: Iterable[int]) -> bytes:
    """A NID list (a snapshot's blocks, forward extremities, auth events) as int64s."""
    return _bytes(array("q", nids))


def unpack_nids(blob: bytes) -> list[int]:
    """The inverse of `pack_nids`; ValueError if `blob` is not whole int64s."""
    return _int64s(blob)


def entry_count(packed: bytes) -> int:
    """Entries in a packed block."""
    return len(packed) // TRIPLE_BYTES


def pack_entries(entries: Mapping[NidStateKey, int]) -> bytes:
    """Sorted triples, so equal blocks have equal bytes and dedupe by hash. (The
    triples are flattened in one list comprehension and the array made from it at
    once: an `extend` call per entry cost half again as much for a merged block.)"""
    return _bytes(
        array(
            "q",
            [
                nid
                for (type_nid, sk_nid), event_nid in sorted(entries.items())
                for nid in (type_nid, sk_nid, event_nid)
            ],
        )
    )


def merge_blocks(blocks: Iterable[bytes], *, keep_removed: bool = False) -> NidState:
    """The state of packed blocks applied oldest first: a later entry overrides an
    earlier one for the same key, and an event NID of 0 removes the key.

    This is the one decoder of blocks: loading a snapshot (writer and reader), merging
    trailing blocks and `roomserver verify` all use it. With `keep_removed` the 0
    entries stay in the result, as a merge of trailing blocks must keep them (they
    still remove keys set by the blocks before the merged run). Dropping them at the
    end equals dropping them on the way: only a key's last value counts.
    """
    state: NidState = {}
    for packed in blocks:
        values = _int64s(packed)
        if len(values) % 3:
            raise ValueError(f"a state block of {len(packed)} bytes is not whole triples")
        state.update(zip(zip(values[0::3], values[1::3], strict=True), values[2::3], strict=True))
    if not keep_removed and 0 in state.values():
        state = {key: event_nid for key, event_nid in state.items() if event_nid}
    return state


def block_keys(packed: bytes) -> Iterable[NidStateKey]:
    """The (type NID, state key NID) keys a packed block sets or removes."""
    values = _int64s(packed)
    return zip(values[0::3], values[1::3], strict=True)


def block_hash(packed: bytes) -> bytes:
    return hashlib.sha256(packed).digest()


def snapshot_hash(room_nid: int, packed_block_nids: bytes) -> bytes:
    """The hash a snapshot is deduplicated by, of its room and its packed block list
    (`pack_nids`: the caller stores the same bytes)."""
    return hashlib.sha256(room_nid.to_bytes(8, "little") + packed_block_nids).digest()


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
    # A block is of the last one's tier or lower exactly when it is smaller than the
    # next tier's least size.
    ceiling = FANOUT ** (tier(counts[-1]) + 1)
    run = 1
    while run < n and counts[-1 - run] < ceiling:
        run += 1
    if run >= FANOUT:
        return run
    if n > MAX_BLOCKS:
        # Shapes that defeat tiering (a large delta after many small ones) still
        # must respect the cap: merge just enough trailing blocks to get back to it.
        return n - MAX_BLOCKS + 1
    return 0
