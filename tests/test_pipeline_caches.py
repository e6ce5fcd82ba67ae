"""The pipeline's own caches stay within their bounds however many rooms pass through,
and what they forget is asked of the database instead, with the same results."""

from __future__ import annotations

import time
from pathlib import Path

import msgpack

from worker.bus.subjects import Subjects
from worker.matrix.builder import RoomBuilder
from worker.matrix.events import Event
from worker.pipeline import Disposition, InboundMessage, Pipeline
from worker.pipeline.limits import CacheLimits
from worker.storage.database import Database

SUBJECTS = Subjects("rs")
ALICE = "@alice:example.org"
ROOMS = 30
BOUND = 5


def _send(pipeline: Pipeline, event: Event, seq: int) -> Disposition:
    data = msgpack.packb({"event": dict(event.pdu)}, use_bin_type=True)
    message = InboundMessage(SUBJECTS.input(event.room_id), data, seq)
    [disposition] = pipeline.process_batch([message])
    return disposition


def test_caches_stay_bounded_over_many_rooms(tmp_path: Path) -> None:
    db = Database(tmp_path)
    limits = CacheLimits(rooms=BOUND, subjects=BOUND, awaited_prevs=BOUND)
    pipeline = Pipeline(db, SUBJECTS, limits=limits)
    seq = 0
    rooms: list[tuple[str, Event, Event]] = []
    for i in range(ROOMS):
        builder = RoomBuilder("10", ALICE, start_ts=1_700_000_000_000 + i)
        for event in builder.bootstrap():
            seq += 1
            assert _send(pipeline, event, seq) is Disposition.ACK
        # A child whose parent is late: held, then processed without it, so the
        # parent becomes an awaited prev event (one per room, more than the bound).
        late = builder.message(ALICE, "late parent")
        child = builder.message(ALICE, "child")
        seq += 1
        assert _send(pipeline, child, seq) is Disposition.ACK
        rooms.append((builder.room_id, late, child))
    assert pipeline.held_count == ROOMS
    wait = pipeline.held_max_wait_ms + 1000
    assert pipeline.release_expired(int(time.time() * 1000) + wait) == ROOMS

    room_ids = [room_id for room_id, _, _ in rooms]
    cached = [r for r in room_ids if pipeline.rooms.cached_rooms.get(r) is not None]
    assert 0 < len(cached) <= BOUND
    subjects = [SUBJECTS.input(r) for r in room_ids]
    named = [s for s in subjects if pipeline.rooms.subject_rooms.get(s) is not None]
    assert 0 < len(named) <= BOUND
    awaited = pipeline.extremities.awaited_prevs
    assert len(awaited) <= BOUND and not awaited.mirroring

    # Beyond the bound the table answers: each late parent, arriving after its
    # accepted child, is stored but is no forward extremity (the child stays one).
    for room_id, late, child in rooms:
        seq += 1
        assert _send(pipeline, late, seq) is Disposition.ACK
        room = db.get_room(room_id)
        assert room is not None
        latest = set(pipeline.events.ids_of(room.latest_event_nids).values())
        assert latest == {child.event_id}
    assert db.awaited_prevs.all() == []
    db.close()


def test_a_filter_within_its_bound_mirrors_the_table(tmp_path: Path) -> None:
    """The same late parent, with room to spare: the filter answers from memory and
    forgets the parent once it has arrived."""
    db = Database(tmp_path)
    pipeline = Pipeline(db, SUBJECTS, limits=CacheLimits(awaited_prevs=BOUND))
    builder = RoomBuilder("10", ALICE)
    seq = 0
    for event in builder.bootstrap():
        seq += 1
        assert _send(pipeline, event, seq) is Disposition.ACK
    late = builder.message(ALICE, "late parent")
    child = builder.message(ALICE, "child")
    assert _send(pipeline, child, seq + 1) is Disposition.ACK
    wait = pipeline.held_max_wait_ms + 1000
    assert pipeline.release_expired(int(time.time() * 1000) + wait) == 1
    awaited = pipeline.extremities.awaited_prevs
    assert awaited.mirroring and awaited.may_contain(late.event_id) and len(awaited) == 1
    assert _send(pipeline, late, seq + 2) is Disposition.ACK
    assert not awaited.may_contain(late.event_id)
    room = db.get_room(builder.room_id)
    assert room is not None
    assert set(pipeline.events.ids_of(room.latest_event_nids).values()) == {child.event_id}
    db.close()
