"""Forks, kinds and redactions through the pipeline, on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

from tests.harness.pipeline import ALICE, SUBJECTS, Harness
from worker.matrix.state_res import resolve_state
from worker.pipeline import Disposition, Pipeline
from worker.storage.schema import STATUS_OUTLIER

BOB = "@bob:example.org"
CAROL = "@carol:other.org"


def _state(h: Harness, snapshot: int) -> dict[tuple[str, str], str]:
    return h.pipeline.to_state_map(h.pipeline.state.load(snapshot))


def _current(h: Harness) -> dict[tuple[str, str], str]:
    room = h.db.get_room(h.room_id)
    assert room is not None
    return _state(h, room.snapshot_nid)


def test_fork_and_merge(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    join_bob = h.builder.join(BOB)
    base = join_bob.event_id
    left = h.builder.state_event(ALICE, "m.room.topic", "", {"topic": "left"}, prev_events=[base])
    right = h.builder.state_event(ALICE, "m.room.name", "", {"name": "right"}, prev_events=[base])
    merge = h.builder.message(BOB, "merge", prev_events=[left.event_id, right.event_id])
    h.outbox()
    for event in (join_bob, left, right):
        assert h.send(event) is Disposition.ACK
    outputs = [body for _, body in h.outbox()]
    assert outputs[-1]["event_id"] == right.event_id
    assert sorted(outputs[-1]["latest_event_ids"]) == sorted([left.event_id, right.event_id])
    assert outputs[-1]["adds_state_event_ids"] == [right.event_id]
    assert outputs[-1]["removes_state_event_ids"] == []
    state = _current(h)
    assert state[("m.room.topic", "")] == left.event_id
    assert state[("m.room.name", "")] == right.event_id
    assert h.send(merge) is Disposition.ACK
    [(_, body)] = h.outbox()
    assert body["latest_event_ids"] == [merge.event_id]
    assert body["adds_state_event_ids"] == [] and body["removes_state_event_ids"] == []
    row = h.db.get_event_row(merge.event_id)
    assert row is not None
    before_merge = _state(h, row.before_snapshot_nid)
    expected = resolve_state(
        h.builder.room_version,
        [h.builder.state_after(left.event_id), h.builder.state_after(right.event_id)],
        lambda eid: h.builder.event(eid) if eid in {e.event_id for e in h.builder.events} else None,
    )
    assert before_merge == expected


def test_concurrent_ban_and_power_change_resolves_like_the_resolver(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    joins = [h.builder.join(BOB), h.builder.join(CAROL)]
    promote = h.builder.power_levels(ALICE, {"users": {ALICE: 100, BOB: 50}})
    for event in (*joins, promote):
        assert h.send(event) is Disposition.ACK
    base = promote.event_id
    # Bob (50) bans Carol; concurrently Alice demotes Bob.
    ban = h.builder.ban(BOB, CAROL, prev_events=[base])
    demote = h.builder.power_levels(ALICE, {"users": {ALICE: 100, BOB: 0}}, prev_events=[base])
    after = h.builder.message(ALICE, "after", prev_events=[ban.event_id, demote.event_id])
    for event in (ban, demote, after):
        assert h.send(event) is Disposition.ACK
    row = h.db.get_event_row(after.event_id)
    assert row is not None
    events = {e.event_id: e for e in h.builder.events}
    expected = resolve_state(
        h.builder.room_version,
        [h.builder.state_after(ban.event_id), h.builder.state_after(demote.event_id)],
        events.get,
    )
    assert _state(h, row.before_snapshot_nid) == expected
    # v2: the power levels change sorts first, so Bob's ban is not authorised in the
    # resolved state and Carol stays joined.
    assert expected[("m.room.member", CAROL)] == joins[1].event_id


def test_rejected_event_never_enters_state(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    join = h.builder.join(BOB)
    topic = h.builder.state_event(BOB, "m.room.topic", "", {"topic": "bob's"})
    assert h.send(join) is Disposition.ACK
    h.outbox()
    assert h.send(topic) is Disposition.ACK
    [(_, body)] = h.outbox()
    assert body["type"] == "rejected_event"
    assert body["soft_failed"] is False
    assert BOB in body["reason"] and "m.room.topic" in body["reason"]
    assert ("m.room.topic", "") not in _current(h)
    room = h.db.get_room(h.room_id)
    assert room is not None
    latest = h.db.event_ids_of(room.latest_event_nids)
    assert topic.event_id not in latest.values()


def test_soft_failed_event_has_state_but_is_not_an_extremity(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    join = h.builder.join(BOB)
    assert h.send(join) is Disposition.ACK
    base = join.event_id
    ban = h.builder.ban(ALICE, BOB, prev_events=[base])
    # Bob speaks on a branch that does not see the ban: allowed there, not now.
    late = h.builder.message(BOB, "late", prev_events=[base])
    assert h.send(ban) is Disposition.ACK
    h.outbox()
    assert h.send(late) is Disposition.ACK
    [(_, body)] = h.outbox()
    assert body["type"] == "rejected_event" and body["soft_failed"] is True
    row = h.db.get_event_row(late.event_id)
    assert row is not None and row.before_snapshot_nid != 0
    room = h.db.get_room(h.room_id)
    assert room is not None
    assert list(h.db.event_ids_of(room.latest_event_nids).values()) == [ban.event_id]


def test_join_over_federation_with_outliers_and_supplied_state(tmp_path: Path) -> None:
    source = Harness(tmp_path / "source")  # builds the room; its pipeline is not used
    join = source.builder.join(BOB)
    msg = source.builder.message(BOB, "hello from bob")
    # A second worker database that has never seen the room: the auth chain and state
    # arrive as outliers, then Bob's message with the state before it supplied.
    h = Harness(tmp_path / "joined", room=source.builder)
    for event in (*source.bootstrap, join):
        assert h.send(event, kind="outlier", room_version="10") is Disposition.ACK
    assert h.outbox() == []
    row = h.db.get_event_row(join.event_id)
    assert row is not None and row.status == STATUS_OUTLIER and row.before_snapshot_nid == 0
    state_ids = list(source.builder.state_after(join.event_id).values())
    assert h.send(msg, state_event_ids=state_ids) is Disposition.ACK
    [(_, body)] = h.outbox()
    assert body["type"] == "new_room_event"
    assert body["latest_event_ids"] == [msg.event_id]
    assert sorted(body["adds_state_event_ids"]) == sorted(state_ids)
    msg_row = h.db.get_event_row(msg.event_id)
    assert msg_row is not None
    assert _state(h, msg_row.before_snapshot_nid) == source.builder.state_after(join.event_id)


def test_old_event_gets_state_but_never_becomes_an_extremity(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.outbox()
    old = h.builder.message(ALICE, "backfilled", prev_events=[h.bootstrap[1].event_id])
    assert h.send(old, kind="old") is Disposition.ACK
    [(_, body)] = h.outbox()
    assert body["type"] == "old_room_event" and body["event_id"] == old.event_id
    row = h.db.get_event_row(old.event_id)
    assert row is not None and row.before_snapshot_nid != 0
    room = h.db.get_room(h.room_id)
    assert room is not None
    assert list(h.db.event_ids_of(room.latest_event_nids).values()) == [h.bootstrap[-1].event_id]


def test_redaction_rewrites_the_target_and_keeps_its_state(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    topic = h.builder.state_event(ALICE, "m.room.topic", "", {"topic": "secret"})
    message = h.builder.message(ALICE, "oops")
    redact_msg = h.builder.redaction(ALICE, message.event_id)
    redact_topic = h.builder.redaction(ALICE, topic.event_id)
    h.outbox()
    for event in (topic, message, redact_msg, redact_topic):
        assert h.send(event) is Disposition.ACK
    bodies = [body for _, body in h.outbox()]
    redacted = [b for b in bodies if b["type"] == "redacted_event"]
    assert [(b["redacted_event_id"], b["redaction_event_id"]) for b in redacted] == [
        (message.event_id, redact_msg.event_id),
        (topic.event_id, redact_topic.event_id),
    ]
    stored = h.pipeline.events.by_id(message.event_id)
    assert stored is not None and stored.event.content == {}
    assert _current(h)[("m.room.topic", "")] == topic.event_id


def test_redaction_before_its_target_applies_when_the_target_arrives(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    target = h.builder.message(ALICE, "later")
    redaction = h.builder.redaction(ALICE, target.event_id, prev_events=[h.head])
    h.outbox()
    assert h.send(redaction) is Disposition.ACK
    assert [b["type"] for _, b in h.outbox()] == ["new_room_event"]
    assert h.send(target) is Disposition.ACK
    bodies = [b for _, b in h.outbox()]
    assert [b["type"] for b in bodies] == ["new_room_event", "redacted_event"]
    stored = h.pipeline.events.by_id(target.event_id)
    assert stored is not None and stored.event.content == {}


def test_redaction_from_another_server_without_power_is_not_applied(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    join = h.builder.join(CAROL)
    message = h.builder.message(ALICE, "mine")
    sneaky = h.builder.redaction(CAROL, message.event_id)
    for event in (join, message, sneaky):
        assert h.send(event) is Disposition.ACK
    assert "redacted_event" not in [b["type"] for _, b in h.outbox()]
    stored = h.pipeline.events.by_id(message.event_id)
    assert stored is not None and stored.event.content["body"] == "mine"


def test_redaction_waiting_for_its_target_survives_a_restart(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    target = h.builder.message(ALICE, "later")
    redaction = h.builder.redaction(ALICE, target.event_id, prev_events=[h.head])
    assert h.send(redaction) is Disposition.ACK
    h.outbox()
    # A new pipeline over the same database: it must still know the target is awaited.
    h.pipeline = Pipeline(h.db, SUBJECTS)
    assert h.send(target) is Disposition.ACK
    assert [b["type"] for _, b in h.outbox()] == ["new_room_event", "redacted_event"]
