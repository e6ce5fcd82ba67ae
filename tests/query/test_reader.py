"""The reader decodes snapshots exactly as the writer stored them: removals, merged
tiers and shared blocks included, with caches large, tiny (evicting all the time) or
emptied between questions."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path

import msgpack

from tests.query.scenario import build_story
from worker.bus.subjects import Subjects
from worker.pipeline import InboundMessage, Pipeline
from worker.storage.blocks import NidState, merge_blocks
from worker.storage.database import DB_FILENAME, Database
from worker.storage.reader import AFTER, BEFORE, Reader, RoomRows
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


def test_room_rows_never_wait_for_a_lock(tmp_path: Path) -> None:
    """A room's row is read on the event loop's own thread (`RoomRows`), so that read
    must never wait for a lock: while another connection holds the database's
    exclusive lock it answers None at once, and the reader goes through aiosqlite,
    which waits as configured. SQLite's `busy_timeout` pragma: "If the argument N is
    zero then busy_timeout ... turns off all busy handlers"; its `locking_mode`
    pragma: "In EXCLUSIVE locking mode, the database connection never releases
    file-locks ... The first time the database is written, an exclusive lock is
    obtained and held." """
    db = Database(tmp_path)
    with db.transaction():
        room = db.create_room("!r:example.org", "10")
    db.close()
    rows = RoomRows(tmp_path / DB_FILENAME)
    locker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
    try:
        locker.execute("PRAGMA locking_mode=EXCLUSIVE")
        locker.execute("BEGIN EXCLUSIVE")
        began = time.monotonic()
        assert rows.get("!r:example.org") is None
        assert time.monotonic() - began < 1.0  # not the reader's 10 s busy_timeout
        locker.execute("ROLLBACK")
        locker.close()
        found = rows.get("!r:example.org")
        assert found is not None and [r[0] for r in found] == [room.nid]
        # Its page cache is bounded below SQLite's default once it has read.
        assert rows._conn.execute("PRAGMA cache_size").fetchone() == (-256,)
    finally:
        locker.close()
        rows.close()


async def test_room_row_read_through_aiosqlite_while_locked(tmp_path: Path) -> None:
    """When the room's row cannot be read at once (`RoomRows.get` answers None under
    another connection's exclusive lock), the reader reads it through aiosqlite, which
    waits for the lock (busy_timeout) and so still answers: the same snapshot NID as
    when nothing is locked."""
    db = Database(tmp_path)
    with db.transaction():
        room = db.create_room("!r:example.org", "10")
    db.close()
    # Locked before the reader opens: a WAL database's connections hold a shared lock
    # on its index once they have read, which an exclusive locker could not get past.
    locker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    reader = await Reader.open(tmp_path)
    try:
        asking = asyncio.ensure_future(reader.snapshot_at("!r:example.org"))
        # One turn of the loop runs the task up to its first suspension: past the
        # row read on this thread (refused: locked), waiting on aiosqlite's thread.
        await asyncio.sleep(0)
        assert not asking.done()
        locker.execute("ROLLBACK")
        locker.close()
        assert await asking == (room.snapshot_nid, None)
        assert reader._room_rows.get("!r:example.org") is not None
    finally:
        locker.close()
        await reader.close()
