"""Events whose prev events are unknown are held, never dropped: released when the
missing events arrive, or processed with what is known after the configured wait."""

from __future__ import annotations

import time
from pathlib import Path

from tests.harness.pipeline import ALICE, Harness
from worker.pipeline import Disposition


def _types(h: Harness) -> list[tuple[str, str]]:
    return [(body["type"], body["event_id"]) for _, body in h.outbox()]


def test_out_of_order_events_are_released_in_order(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.outbox()
    a = h.builder.message(ALICE, "a")
    b = h.builder.state_event(ALICE, "m.room.topic", "", {"topic": "b"})
    c = h.builder.message(ALICE, "c")
    assert h.send(c) is Disposition.ACK
    assert h.send(b) is Disposition.ACK
    assert h.outbox() == []
    assert h.pipeline.held_count == 2
    assert h.send(c) is Disposition.ACK  # a held event sent again is a duplicate
    assert h.pipeline.counters.duplicates == 1
    assert h.send(a) is Disposition.ACK
    assert _types(h) == [
        ("new_room_event", a.event_id),
        ("new_room_event", b.event_id),
        ("new_room_event", c.event_id),
    ]
    assert h.pipeline.held_count == 0
    topic = h.db.get_room(h.room_id)
    assert topic is not None
    state = h.pipeline.to_state_map(h.pipeline.state.load(topic.snapshot_nid))
    assert state[("m.room.topic", "")] == b.event_id


def test_held_event_is_processed_with_known_state_after_the_wait(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.outbox()
    lost = h.builder.message(ALICE, "never published")
    orphan = h.builder.message(ALICE, "orphan")
    assert h.send(orphan) is Disposition.ACK
    assert h.outbox() == []
    now = int(time.time() * 1000)
    assert h.pipeline.release_expired(now) == 0  # not waited long enough yet
    assert h.pipeline.release_expired(now + h.pipeline.held_max_wait_ms + 1000) == 1
    [(kind, event_id)] = _types(h)
    assert (kind, event_id) == ("new_room_event", orphan.event_id)
    assert h.pipeline.held_count == 0
    assert h.db.get_event_row(lost.event_id) is None


def test_a_late_parent_of_a_released_event_is_no_forward_extremity(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.outbox()
    late = h.builder.message(ALICE, "late parent")
    child = h.builder.message(ALICE, "child")
    assert h.send(child) is Disposition.ACK
    wait = h.pipeline.held_max_wait_ms + 1000
    assert h.pipeline.release_expired(int(time.time() * 1000) + wait) == 1
    [(_, released)] = [(t, e) for t, e in _types(h)]
    assert released == child.event_id
    # The parent arrives after its child was processed without it: it is stored and
    # published, but the child, not the parent, stays a forward extremity.
    assert h.send(late) is Disposition.ACK
    bodies = [body for _, body in h.outbox()]
    assert [b["event_id"] for b in bodies] == [late.event_id]
    assert bodies[0]["latest_event_ids"] == [child.event_id]
    room = h.db.get_room(h.room_id)
    assert room is not None
    assert list(h.db.event_ids_of(room.latest_event_nids).values()) == [child.event_id]
