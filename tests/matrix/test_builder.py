"""RoomBuilder produces PDUs that the receiving side accepts, in every room version."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import pytest

from worker.matrix.auth import check_auth, validate_auth_events
from worker.matrix.builder import RoomBuilder
from worker.matrix.events import Event, StateMap
from worker.matrix.hashes import decode_base64, reference_hash
from worker.matrix.pdu import parse_pdu, room_version_of_create
from worker.matrix.room_versions import ROOM_VERSIONS, RoomVersion

ALICE = "@alice:example.org"
BOB = "@bob:example.com"
CAROL = "@carol:example.net"
ALL = list(ROOM_VERSIONS.values())


def accepted(builder: RoomBuilder, make: Callable[[], Event]) -> Event:
    """Build an event, then check it as a receiving server would."""
    state_before: StateMap = builder.current_state
    event = make()
    parsed = parse_pdu(copy.deepcopy(dict(event.pdu)), builder.room_version)
    assert parsed.event_id == event.event_id
    assert not parsed.redacted
    assert parsed.pdu == event.pdu
    known = {event_id: builder.event(event_id) for event_id in event.auth_event_ids}
    validate_auth_events(parsed, known, set())
    check_auth(parsed, {key: builder.event(eid) for key, eid in state_before.items()})
    return event


@pytest.mark.parametrize("version", ALL, ids=lambda v: f"v{v.identifier}")
def test_a_room_in_every_version(version: RoomVersion) -> None:
    room = RoomBuilder(version, ALICE)
    create = accepted(room, lambda: room.create())
    assert room_version_of_create(dict(create.pdu)) is version
    accepted(room, lambda: room.join(ALICE))
    accepted(room, lambda: room.power_levels(ALICE))
    accepted(room, lambda: room.join_rules(ALICE, "invite"))
    accepted(room, lambda: room.invite(ALICE, BOB))
    accepted(room, lambda: room.join(BOB))
    accepted(room, lambda: room.state_event(ALICE, "m.room.topic", "", {"topic": "Hi"}))
    message = accepted(room, lambda: room.message(BOB, "hello"))
    accepted(room, lambda: room.redaction(ALICE, message.event_id, reason="spam"))
    accepted(room, lambda: room.kick(ALICE, BOB, reason="bye"))
    accepted(room, lambda: room.ban(ALICE, CAROL))
    accepted(room, lambda: room.leave(ALICE))
    if version.knock:
        other = RoomBuilder(version, ALICE)
        other.create()
        other.join(ALICE)
        other.power_levels(ALICE)
        other.join_rules(ALICE, "knock")
        knock = accepted(other, lambda: other.knock(CAROL))
        assert knock.membership == "knock"
    events = room.events
    assert [e.depth for e in events] == list(range(1, len(events) + 1))
    assert all(e.room_id == room.room_id for e in events)
    timestamps = [e.origin_server_ts for e in events]
    assert timestamps == sorted(set(timestamps))
    for previous, event in itertools.pairwise(events):
        assert event.prev_event_ids == (previous.event_id,)
    assert room.extremities == [events[-1].event_id]


@pytest.mark.parametrize("version", ALL, ids=lambda v: f"v{v.identifier}")
def test_auth_events_come_from_the_selection_rules(version: RoomVersion) -> None:
    room = RoomBuilder(version, ALICE)
    create, join, power, rules = room.bootstrap()
    assert create.auth_event_ids == ()
    create_ref = () if version.room_id_from_create else (create.event_id,)
    assert set(join.auth_event_ids) == set(create_ref)
    assert set(power.auth_event_ids) == {*create_ref, join.event_id}
    bob = room.join(BOB)
    assert set(bob.auth_event_ids) == {*create_ref, power.event_id, rules.event_id}
    message = room.message(BOB)
    assert set(message.auth_event_ids) == {*create_ref, power.event_id, bob.event_id}


def test_v12_room_id_and_creators() -> None:
    room = RoomBuilder("12", ALICE)
    with pytest.raises(ValueError):
        _ = room.room_id
    create = room.create(additional_creators=[BOB])
    assert "room_id" not in create.pdu
    assert room.room_id == "!" + create.event_id[1:]
    assert create.content["additional_creators"] == [BOB]
    assert "creator" not in create.content
    join = room.join(ALICE)
    assert join.pdu["room_id"] == room.room_id
    assert create.event_id not in join.auth_event_ids
    assert room.default_power_levels()["users"] == {}
    with pytest.raises(ValueError):
        RoomBuilder("12", ALICE, room_id="!x:y")
    with pytest.raises(ValueError):
        RoomBuilder("11", ALICE).create(additional_creators=[BOB])


def test_old_versions_name_the_creator() -> None:
    assert RoomBuilder("10", ALICE).create().content["creator"] == ALICE
    assert "creator" not in RoomBuilder("11", ALICE).create().content


@pytest.mark.parametrize("identifier", ["1", "2"])
def test_legacy_references_carry_reference_hashes(identifier: str) -> None:
    room = RoomBuilder(identifier, ALICE)
    create, join, *_ = room.bootstrap()
    assert join.pdu["event_id"] == join.event_id
    assert join.event_id.endswith(":example.org")
    [[prev_id, prev_hash]] = join.pdu["prev_events"]
    assert prev_id == create.event_id
    assert decode_base64(prev_hash["sha256"]) == reference_hash(create.pdu, room.room_version)
    message = room.message(ALICE, "x")
    assert len({e.event_id for e in room.events}) == len(room.events)
    assert message.redacts is None


def test_redaction_format_follows_the_version() -> None:
    for identifier, in_content in (("10", False), ("11", True)):
        room = RoomBuilder(identifier, ALICE)
        room.bootstrap()
        target = room.message(ALICE)
        redaction = room.redaction(ALICE, target.event_id)
        assert redaction.redacts == target.event_id
        assert ("redacts" in redaction.content) is in_content
        assert ("redacts" in redaction.pdu) is not in_content


def test_same_script_same_ids() -> None:
    def script() -> list[str]:
        room = RoomBuilder("10", ALICE)
        room.bootstrap()
        room.join(BOB)
        room.message(BOB, "hi")
        return [e.event_id for e in room.events]

    assert script() == script()
    other = RoomBuilder("10", ALICE, start_ts=5)
    other.bootstrap()
    assert [e.event_id for e in other.events] != script()[:4]


def test_forks_and_merges() -> None:
    room = RoomBuilder("11", ALICE)
    _, _, power, _ = room.bootstrap()
    base = room.join(BOB)
    base_state = room.state_after(base.event_id)
    # Two branches on the same parent, each seeing base's state.
    topic_a = room.state_event(
        ALICE, "m.room.topic", "", {"topic": "A"}, prev_events=[base.event_id]
    )
    topic_b = room.state_event(BOB, "m.room.name", "", {"name": "B"}, prev_events=[base.event_id])
    assert topic_a.depth == topic_b.depth == base.depth + 1
    assert set(room.extremities) == {topic_a.event_id, topic_b.event_id}
    assert room.state_after(topic_b.event_id) == base_state | {
        ("m.room.name", ""): topic_b.event_id
    }
    assert ("m.room.topic", "") not in room.state_after(topic_b.event_id)
    # A merge over both, on a state the test chooses (as state resolution would).
    merged_state = room.state_after(topic_a.event_id) | {("m.room.name", ""): topic_b.event_id}
    merge = room.message(ALICE, "merged", state=merged_state)
    assert set(merge.prev_event_ids) == {topic_a.event_id, topic_b.event_id}
    assert merge.depth == base.depth + 2
    assert room.extremities == [merge.event_id]
    assert power.event_id in merge.auth_event_ids
    # A branch on an older event, with that event's state: Bob is not joined there.
    old = room.message(ALICE, "old branch", prev_events=[power.event_id])
    assert old.depth == power.depth + 1
    assert set(room.extremities) == {merge.event_id, old.event_id}
    assert ("m.room.member", BOB) not in room.state_after(old.event_id)
    assert base.event_id not in old.auth_event_ids


def test_explicit_fields_and_extras() -> None:
    room = RoomBuilder("9", ALICE, ts_step=10)
    room.bootstrap()
    event = room.message(
        ALICE,
        "x",
        auth_events=["$custom"],
        prev_events=["$unknown"],
        depth=99,
        origin_server_ts=42,
        extra={"origin": "example.org"},
    )
    assert event.auth_event_ids == ("$custom",)
    assert event.prev_event_ids == ("$unknown",)
    assert (event.depth, event.origin_server_ts) == (99, 42)
    assert event.pdu["origin"] == "example.org"
    assert parse_pdu(copy.deepcopy(dict(event.pdu)), room.room_version).event_id == event.event_id
    join = room.join(BOB, join_authorised_via_users_server=ALICE, content={"displayname": "B"})
    assert join.content == {
        "membership": "join",
        "displayname": "B",
        "join_authorised_via_users_server": ALICE,
    }
    alice_member = room.current_state[("m.room.member", ALICE)]
    assert alice_member in join.auth_event_ids


def test_keep_history_false_keeps_only_current_state() -> None:
    room = RoomBuilder("10", ALICE, keep_history=False)
    create, *_ = room.bootstrap()
    assert room.current_state[("m.room.create", "")] == create.event_id
    with pytest.raises(KeyError):
        room.state_after(create.event_id)
    assert len(room.pdus) == 4
