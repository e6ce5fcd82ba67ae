"""State resolution v1 (room version 1): depth and SHA-1 orderings, the auth-event passes."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from worker.matrix.events import Event, StateMap
from worker.matrix.room_versions import get_room_version
from worker.matrix.state_res import resolve_state

V1 = get_room_version("1")
ALICE = "@alice:example.com"
BOB = "@bob:example.com"
DAVE = "@dave:example.com"
ROOM = "!room:example.com"
PL = ("m.room.power_levels", "")
TOPIC = ("m.room.topic", "")


def make(
    name: str,
    event_type: str,
    state_key: str,
    sender: str,
    content: Mapping[str, Any],
    depth: int,
    auth: Sequence[str] = (),
) -> Event:
    event_id = f"${name}:example.com"
    pdu = {
        "event_id": event_id,
        "type": event_type,
        "state_key": state_key,
        "sender": sender,
        "room_id": ROOM,
        "content": dict(content),
        "depth": depth,
        "origin_server_ts": depth,
        "prev_events": [],
        "auth_events": [[a, {}] for a in auth],
    }
    return Event(event_id, V1, pdu)


def room(*extra: Event) -> tuple[dict[str, Event], StateMap]:
    """alice (100), bob (50) and dave (0) in a public room; the base state."""
    join = {"membership": "join"}
    events = [
        make("create", "m.room.create", "", ALICE, {"creator": ALICE}, 1),
        make("alice", "m.room.member", ALICE, ALICE, join, 2, ["$create:example.com"]),
        make(
            "pl0",
            "m.room.power_levels",
            "",
            ALICE,
            {"users": {ALICE: 100, BOB: 50}},
            3,
            ["$create:example.com", "$alice:example.com"],
        ),
        make("jr", "m.room.join_rules", "", ALICE, {"join_rule": "public"}, 4),
        make("bob", "m.room.member", BOB, BOB, join, 5),
        make("dave", "m.room.member", DAVE, DAVE, join, 6),
        *extra,
    ]
    by_id = {event.event_id: event for event in events}
    base = {event.key: event.event_id for event in events[:6]}
    return by_id, base


def _id(name: str) -> str:
    return f"${name}:example.com"


def power(name: str, sender: str, users: Mapping[str, int], depth: int) -> Event:
    return make(name, "m.room.power_levels", "", sender, {"users": dict(users)}, depth)


def test_power_levels_apply_in_depth_order_while_allowed() -> None:
    # alice promotes bob (depth 7); bob, now 100, may then set dave to 100 (depth 8).
    promote = power("promote", ALICE, {ALICE: 100, BOB: 100}, 7)
    by_bob = power("by_bob", BOB, {ALICE: 100, BOB: 100, DAVE: 100}, 8)
    events, base = room(promote, by_bob)
    states = [{**base, PL: _id("promote")}, {**base, PL: _id("by_bob")}]
    assert resolve_state(V1, states, events.get)[PL] == _id("by_bob")


def test_power_levels_stop_at_the_first_refused() -> None:
    # alice demotes bob (depth 7); bob's own change (depth 8) then fails: the demotion stays.
    demote = power("demote", ALICE, {ALICE: 100, BOB: 0}, 7)
    by_bob = power("by_bob", BOB, {ALICE: 100, BOB: 50, DAVE: 50}, 8)
    events, base = room(demote, by_bob)
    states = [{**base, PL: _id("demote")}, {**base, PL: _id("by_bob")}]
    assert resolve_state(V1, states, events.get)[PL] == _id("demote")
    # The shallowest event is taken unchecked: with bob's change shallower, alice's
    # demotion comes second and is allowed.
    by_bob_early = power("by_bob_early", BOB, {ALICE: 100, BOB: 50, DAVE: 50}, 6)
    events, base = room(demote, by_bob_early)
    states = [{**base, PL: _id("demote")}, {**base, PL: _id("by_bob_early")}]
    assert resolve_state(V1, states, events.get)[PL] == _id("demote")


def test_other_events_take_the_deepest_allowed() -> None:
    by_bob = make("t_bob", "m.room.topic", "", BOB, {"topic": "b"}, 7)
    by_dave = make("t_dave", "m.room.topic", "", DAVE, {"topic": "d"}, 8)  # dave may not
    events, base = room(by_bob, by_dave)
    states = [{**base, TOPIC: _id("t_bob")}, {**base, TOPIC: _id("t_dave")}]
    assert resolve_state(V1, states, events.get)[TOPIC] == _id("t_bob")


def test_other_events_fall_back_to_the_shallowest_when_none_is_allowed() -> None:
    first = make("t_first", "m.room.topic", "", DAVE, {"topic": "1"}, 7)
    second = make("t_second", "m.room.topic", "", DAVE, {"topic": "2"}, 8)
    events, base = room(first, second)
    states = [{**base, TOPIC: _id("t_first")}, {**base, TOPIC: _id("t_second")}]
    assert resolve_state(V1, states, events.get)[TOPIC] == _id("t_first")


def test_equal_depth_goes_to_the_smallest_sha1() -> None:
    topics = [make(f"t{i}", "m.room.topic", "", ALICE, {"topic": str(i)}, 7) for i in range(4)]
    events, base = room(*topics)
    states = [{**base, TOPIC: topic.event_id} for topic in topics]
    winner = min(topics, key=lambda t: hashlib.sha1(t.event_id.encode()).hexdigest())
    assert resolve_state(V1, states, events.get)[TOPIC] == winner.event_id


def test_a_key_missing_from_some_states_is_not_a_conflict() -> None:
    by_dave = make("t_dave", "m.room.topic", "", DAVE, {"topic": "d"}, 8)
    events, base = room(by_dave)
    states = [{**base, TOPIC: _id("t_dave")}, base]
    # v1 keeps it although dave could not have sent it (v2 would drop it).
    assert resolve_state(V1, states, events.get)[TOPIC] == _id("t_dave")
    v2 = get_room_version("2")
    events_v2 = {event_id: Event(event_id, v2, event.pdu) for event_id, event in events.items()}
    assert TOPIC not in resolve_state(v2, states, events_v2.get)
