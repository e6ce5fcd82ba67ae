"""State snapshots: correctness against a direct replay, the 64-block cap, sharing,
and the write cost that must not grow with the room."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.storage.blocks import (
    FANOUT,
    MAX_BLOCKS,
    merge_blocks,
    pack_entries,
    pack_nids,
    plan_merge,
    tier,
    unpack_nids,
)
from worker.storage.database import Database
from worker.storage.state import StateStore


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    db = Database(tmp_path)
    room = db.create_room("!room:test", "10")
    assert room.nid == 1
    return StateStore(db)


def test_entries_round_trip_and_removals() -> None:
    entries = {(5, 9): 100, (1, 1): 1, (5, 2): 0}
    state = {(5, 2): 7, (3, 3): 3}
    merged = merge_blocks([pack_entries(state), pack_entries(entries)])
    assert merged == {(5, 9): 100, (1, 1): 1, (3, 3): 3}
    # A merged run keeps its removals; a key removed and then set again is set.
    run = merge_blocks([pack_entries(entries), pack_entries({(1, 1): 0})], keep_removed=True)
    assert run == {(5, 9): 100, (1, 1): 0, (5, 2): 0}
    again = merge_blocks([pack_entries(entries), pack_entries({(5, 2): 8})])
    assert again == {(5, 9): 100, (1, 1): 1, (5, 2): 8}


def test_packed_forms_are_little_endian_int64s() -> None:
    """The stored bytes mean the same on any host (`roomserver verify` and the reader
    decode them with the same codec)."""
    assert pack_nids([1, 258]) == bytes([1, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0])
    assert unpack_nids(pack_nids([3, -1, 2**40])) == [3, -1, 2**40]
    assert pack_entries({(1, 2): 3}) == b"".join(n.to_bytes(8, "little") for n in (1, 2, 3))
    with pytest.raises(ValueError):
        merge_blocks([b"\x00" * 25])


def test_tiers() -> None:
    assert tier(1) == 0
    assert tier(FANOUT - 1) == 0
    assert tier(FANOUT) == 1
    assert tier(FANOUT**2) == 2


@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=0, max_size=200))
def test_plan_merge_always_brings_the_list_under_the_cap(sizes: list[int]) -> None:
    counts = list(sizes)
    while (n := plan_merge(counts)) > 0:
        assert 2 <= n <= len(counts)
        counts[-n:] = [sum(counts[-n:])]
    assert len(counts) <= MAX_BLOCKS


def test_linear_room_matches_direct_replay_and_stays_under_64_blocks(store: StateStore) -> None:
    rng = random.Random(7)
    db = store.db
    with db.transaction():
        replay: dict[tuple[int, int], int] = {}
        snapshot = 0
        history: list[tuple[int, dict[tuple[int, int], int]]] = []
        next_event = 1
        members = 2000
        for step in range(members + 8000):
            if step < members:
                key = (5, 1000 + step)  # a join
            else:
                key = rng.choice([(9, 1), (8, 1), (5, 1000 + rng.randrange(members))])
            replay[key] = next_event
            snapshot = store.derive(1, snapshot, {key: next_event})
            next_event += 1
            assert len(store.block_list(snapshot)) <= MAX_BLOCKS
            if step % 997 == 0:
                history.append((snapshot, dict(replay)))
        history.append((snapshot, dict(replay)))
    store.forget_caches()  # read back from SQLite, not from the cache
    for snap, expected in history:
        assert store.load(snap) == expected
    changes = members + 8000
    per_change = store.stats.triples_written / changes
    assert per_change <= 4.0, per_change
    print(f"triples written per state change: {per_change:.2f}")


def test_small_change_shares_blocks_with_parent(store: StateStore) -> None:
    with store.db.transaction():
        base = 0
        for i in range(100):
            base = store.derive(1, base, {(5, 100 + i): i + 1})
        child = store.derive(1, base, {(9, 1): 500})
    parent_blocks = [nid for nid, _ in store.block_list(base)]
    child_blocks = [nid for nid, _ in store.block_list(child)]
    # 100 single-entry deltas leave six merged blocks of 16 and four small ones; one
    # more change appends exactly one block and shares all the parent's.
    assert len(parent_blocks) == 10
    assert child_blocks[:-1] == parent_blocks
    assert len(child_blocks) == 11


def test_fork_from_old_snapshot_and_removal(store: StateStore) -> None:
    with store.db.transaction():
        a = store.derive(1, 0, {(1, 1): 1, (5, 10): 2})
        b = store.derive(1, a, {(5, 11): 3})
        c = store.derive(1, a, {(5, 10): 0, (9, 1): 4})  # fork from a, remove a key
        same = store.derive(1, b, {(5, 11): 3})
    store.forget_caches()
    assert store.load(b) == {(1, 1): 1, (5, 10): 2, (5, 11): 3}
    assert store.load(c) == {(1, 1): 1, (9, 1): 4}
    assert same == b


def test_identical_states_share_one_snapshot(store: StateStore) -> None:
    with store.db.transaction():
        a = store.derive(1, 0, {(1, 1): 1})
        x = store.derive(1, a, {(9, 1): 2})
        y = store.derive(1, a, {(9, 1): 2})
    assert x == y


def test_store_full_writes_a_delta_not_a_copy(store: StateStore) -> None:
    with store.db.transaction():
        base = store.derive(1, 0, {(5, i): i for i in range(1, 3001)})
        written_before = store.stats.triples_written
        target = dict(store.load(base))
        target[(5, 7)] = 9999
        del target[(5, 8)]
        snap = store.store_full(1, target, base)
    assert store.stats.triples_written - written_before <= 2
    store.forget_caches()
    assert store.load(snap) == target


def _whole_state_differences(states: list[dict[tuple[int, int], int]]) -> set[tuple[int, int]]:
    """Keys not held by every state with the same event, by comparing whole maps."""
    keys: set[tuple[int, int]] = set().union(*states)
    return {k for k in keys if len({s.get(k) for s in states}) > 1}


def test_differing_keys_from_block_lists_equal_whole_state_comparison(store: StateStore) -> None:
    """`differing_keys` looks only at the blocks past the lists' shared prefix; on random
    trees of snapshots (forks from old snapshots, removals, merges of trailing blocks
    large enough to rewrite shared blocks) it finds exactly the keys a comparison of
    the whole states finds."""
    rng = random.Random(7)
    snapshots = [0]
    with store.db.transaction():
        for _ in range(600):
            parent = rng.choice(snapshots[-20:] if rng.random() < 0.8 else snapshots)
            delta = {
                (rng.randrange(1, 4), rng.randrange(1, 200)): rng.choice(
                    (0, rng.randrange(1, 9999))
                )
                for _ in range(rng.choice((1, 1, 1, 3, 40)))
            }
            snapshots.append(store.derive(1, parent, delta))
    store.forget_caches()
    for _ in range(300):
        chosen = rng.sample(snapshots, rng.choice((2, 2, 3)))
        expected = _whole_state_differences([store.load(s) for s in chosen])
        assert store.differing_keys(chosen) == expected
