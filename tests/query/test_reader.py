"""The reader decodes snapshots exactly as the writer stored them: removals, merged
tiers and shared blocks included, with caches large, tiny (evicting all the time) or
emptied between questions."""

from __future__ import annotations

import random
from pathlib import Path

import msgpack

from tests.query.scenario import build_story
from worker.bus.subjects import Subjects
from worker.pipeline import InboundMessage, Pipeline
from worker.storage.blocks import NidState, merge_blocks
from worker.storage.database import Database
from worker.storage.reader import AFTER, BEFORE, Reader
from worker.storage.state import StateStore


async def test_snapshots_with_removals_and_merges(tmp_path: Path) -> None:
    db = Database(tmp_path)
    store = StateStore(db)
    rng = random.Random(5)
    model: NidState = {}
    snapshots: dict[int, NidState] = {}
    parent = 0
    with db.transaction():
        for step in range(400):
            delta: NidState = {}
            for _ in range(rng.choice([1, 1, 2, 5, 40])):
                key = (rng.randint(1, 6), rng.randint(1, 300))
                delta[key] = 0 if key in model and rng.random() < 0.3 else 1000 + step
            parent = store.derive(1, parent, delta)
            for key, event_nid in delta.items():
                if event_nid:
                    model[key] = event_nid
                else:
                    model.pop(key, None)
            snapshots[parent] = dict(model)
    assert store.stats.merges > 0
    # Some stored block must carry removals (event NID 0) for this test to mean much.
    removals = 0
    for (packed,) in db.conn.execute("SELECT entries FROM state_blocks"):
        entries = merge_blocks([packed], keep_removed=True)
        removals += sum(1 for v in entries.values() if v == 0)
    assert removals > 0
    for cache_entries in (2_000_000, 50):
        reader = await Reader.open(tmp_path, cache_entries=cache_entries)
        try:
            for _ in range(2):  # cold, then warm (or evicted, with the tiny cache)
                for snapshot_nid, expected in snapshots.items():
                    assert await reader.nid_state(snapshot_nid) == expected
            reader.clear_caches()
            last = max(snapshots)
            assert await reader.nid_state(last) == snapshots[last]
            assert await reader.nid_state(0) == {}
        finally:
            await reader.close()
    db.close()


async def test_named_state_at_every_event_with_tiny_caches(tmp_path: Path) -> None:
    story = build_story()
    db = Database(tmp_path)
    subjects = Subjects("rs")
    pipeline = Pipeline(db, subjects)
    pipeline.process_batch(
        [
            InboundMessage(subjects.input(story.room_id), msgpack.packb(inp), i)
            for i, inp in enumerate(story.inputs, start=1)
        ]
    )
    big = await Reader.open(tmp_path)
    tiny = await Reader.open(tmp_path, cache_entries=8)
    try:
        for name, event in story.named.items():
            if name == "outlier_topic":
                continue
            for at in (BEFORE, AFTER):
                expected = await big.state(story.room_id, event_id=event.event_id, at=at)
                got = await tiny.state(story.room_id, event_id=event.event_id, at=at)
                assert sorted(got.entries) == sorted(expected.entries), (name, at)
                row = db.get_event_row(event.event_id)
                assert row is not None
                snapshot = row.after_snapshot_nid if at == AFTER else row.before_snapshot_nid
                written = pipeline.to_state_map(pipeline.state.load(snapshot))
                assert {(t, s): e for t, s, e in got.entries} == written, (name, at)
        for user in ("@alice:example.org", "@dave:example.org", "@eve:example.org"):
            assert await tiny.membership(story.room_id, user) == await big.membership(
                story.room_id, user
            )
        assert await tiny.members(story.room_id) == await big.members(story.room_id)
        chain = await big.auth_chain([story.id("bob_says")])
        assert await tiny.auth_chain([story.id("bob_says")]) == chain
    finally:
        await big.close()
        await tiny.close()
        db.close()
