"""Every storage cache that grows with the data stays under its configured bound, on
the write side (NID tables, room versions, snapshot states and blocks) and on the read
side, while what it answers stays right after evictions."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from worker.storage.blocks import NidState
from worker.storage.database import Database, StorageError
from worker.storage.events import EventStore
from worker.storage.lru import LruByWeight
from worker.storage.reader import Reader
from worker.storage.schema import STATUS_ACCEPTED
from worker.storage.state import StateStore

ROOMS = 120
KEYS_PER_ROOM = 25


def assert_bounded(caches: Mapping[str, LruByWeight[Any, Any]]) -> None:
    for name, cache in caches.items():
        # One item heavier than the whole budget is kept alone; nothing else may pass it.
        assert cache.weight <= cache.budget or len(cache) == 1, (name, cache.weight, cache.budget)


def fill(
    tmp_path: Path,
) -> tuple[dict[int, NidState], dict[int, str], dict[str, int], dict[int, str]]:
    """Many rooms, each with its own event type and state keys, through tiny caches.
    Returns each snapshot's state, the state key of each NID, the type NIDs and the
    event IDs."""
    db = Database(tmp_path, nid_cache_entries=40)
    store = StateStore(db, cache_entries=300, block_cache_entries=300)
    events = EventStore(db, room_version_cache_size=10)
    writer_caches = {
        **db.nid_caches(),
        **store.cache.caches(),
        "derived_states": store.derived,
        "room_versions": events._room_versions,
    }
    states: dict[int, NidState] = {}
    keys: dict[int, str] = {}
    types: dict[str, int] = {}
    with db.transaction():
        for r in range(ROOMS):
            room = db.create_room(f"!room{r}:test", "10" if r % 2 else "9")
            type_name = f"org.example.kind{r}"
            types[type_name] = db.type_nid(type_name, create=True)
            snapshot = 0
            for k in range(KEYS_PER_ROOM):
                key = f"@user{r}-{k}:test"
                sk_nid = db.state_key_nid(key, create=True)
                keys[sk_nid] = key
                event_nid = db.insert_event(
                    event_id=f"$e{r}-{k}",
                    room_nid=room.nid,
                    type_nid=types[type_name],
                    state_key_nid=sk_nid,
                    depth=k + 1,
                    status=STATUS_ACCEPTED,
                    reason=None,
                    before_snapshot_nid=snapshot,
                    after_snapshot_nid=0,
                    auth_event_nids=[],
                    prev_event_ids=[],
                    json_bytes=b"{}",
                )
                snapshot = store.derive(room.nid, snapshot, {(types[type_name], sk_nid): event_nid})
                states[snapshot] = dict(store.load(snapshot))
            assert events.room_version(room.nid).identifier == ("10" if r % 2 else "9")
            assert_bounded(writer_caches)
    # After all that eviction, every answer is still the stored one.
    for sk_nid, key in keys.items():
        assert db.state_key_name(sk_nid) == key
        assert db.state_key_nid(key, create=False) == sk_nid
    for type_name, type_nid in types.items():
        assert db.type_name(type_nid) == type_name
    for snapshot, state in states.items():
        assert store.load(snapshot) == state
    assert_bounded(writer_caches)
    assert len(db.nid_caches()["state_key_names"]) == 40
    event_ids = db.event_ids_of({e for state in states.values() for e in state.values()})
    db.close()
    return states, keys, types, event_ids


@pytest.mark.slow  # thousands of state events through tiny caches: seconds
async def test_caches_stay_bounded_on_both_sides(tmp_path: Path) -> None:
    states, keys, types, event_ids = fill(tmp_path)
    type_names = {nid: name for name, nid in types.items()}
    reader = await Reader.open(tmp_path, cache_entries=200)
    try:
        for _ in range(2):
            for snapshot, state in states.items():
                entries = await reader.state_entries(snapshot)
                assert sorted(entries) == sorted(
                    (type_names[t], keys[s], event_ids[e]) for (t, s), e in state.items()
                )
                assert await reader.nid_state(snapshot) == state
                last_key = max(keys[s] for _, s in state)
                some_type = type_names[next(iter(state))[0]]
                filtered = await reader.state_entries(snapshot, [some_type], [("x", last_key)])
                assert len(filtered) == len(state)
                assert_bounded(reader.caches())
    finally:
        await reader.close()


def test_a_rolled_back_nid_is_forgotten_in_both_directions(tmp_path: Path) -> None:
    """SQLite hands a rolled-back rowid to the next insert, so a name cached for it must
    go, even when the other direction of the cache had already evicted it."""
    db = Database(tmp_path, nid_cache_entries=2)
    with pytest.raises(RuntimeError), db.transaction():
        a = db.state_key_nid("@a:test", create=True)
        db.state_key_nid("@b:test", create=True)
        assert db.state_key_name(a) == "@a:test"  # NID → name used, so it stays there
        db.state_key_nid("@c:test", create=True)  # name → NID evicts "@a:test"
        raise RuntimeError("undo")
    with pytest.raises(StorageError):
        db.state_key_name(a)  # no such row any more: no stale name either
    with db.transaction():
        z = db.state_key_nid("@z:test", create=True)
    assert z == a
    assert db.state_key_name(a) == "@z:test"
    assert db.state_key_nid("@a:test", create=False) == 0
    db.close()
