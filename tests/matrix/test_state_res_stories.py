"""Synapse's state resolution stories (tests/state/test_v2.py, test_v21.py) as events.

The seven v2 stories describe a room as events plus `prev_events` chains. They are
replayed the way Synapse's test does: events in lexicographic topological order, each
with `origin_server_ts` one more than the last, auth events chosen from the state before
it, the state after it being that state plus the event (no auth check, on purpose: the
stories are about what resolution makes of the branches). The expected answer is the
state at END, restricted to the keys the story names or that changed since START.

The two v2.1 stories give their state maps directly.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from worker.matrix.auth import auth_types_for_event
from worker.matrix.events import Event, StateKey, StateMap
from worker.matrix.room_versions import RoomVersion, StateResAlgorithm, get_room_version
from worker.matrix.state_res import resolve_state

ALICE = "@alice:example.com"
BOB = "@bob:example.com"
CHARLIE = "@charlie:example.com"
EVELYN = "@evelyn:example.com"
ZARA = "@zara:example.com"
ROOM_ID = "!test:example.com"

CREATE = "m.room.create"
MEMBER = "m.room.member"
POWER = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
TOPIC = "m.room.topic"
MESSAGE = "m.room.message"
JOIN = {"membership": "join"}


@dataclass(frozen=True)
class Node:
    id: str
    sender: str
    type: str
    state_key: str | None
    content: Mapping[str, Any] = field(default_factory=dict)


INITIAL = [
    Node("CREATE", ALICE, CREATE, "", {"creator": ALICE}),
    Node("IMA", ALICE, MEMBER, ALICE, JOIN),
    Node("IPOWER", ALICE, POWER, "", {"users": {ALICE: 100}}),
    Node("IJR", ALICE, JOIN_RULES, "", {"join_rule": "public"}),
    Node("IMB", BOB, MEMBER, BOB, JOIN),
    Node("IMC", CHARLIE, MEMBER, CHARLIE, JOIN),
    Node("IMZ", ZARA, MEMBER, ZARA, JOIN),
    Node("START", ZARA, MESSAGE, None),
    Node("END", ZARA, MESSAGE, None),
]
INITIAL_CHAIN = ["START", "IMZ", "IMC", "IMB", "IJR", "IPOWER", "IMA", "CREATE"]


@dataclass(frozen=True)
class Story:
    nodes: list[Node]
    #: Each chain [a, b, c] says a's prev events include b, and b's include c.
    chains: list[list[str]]
    expected: list[str]


STORIES: dict[str, Story] = {
    "ban_vs_pl": Story(
        [
            Node("PA", ALICE, POWER, "", {"users": {ALICE: 100, BOB: 50}}),
            Node("MA", ALICE, MEMBER, ALICE, JOIN),
            Node("MB", ALICE, MEMBER, BOB, {"membership": "ban"}),
            Node("PB", BOB, POWER, "", {"users": {ALICE: 100, BOB: 50}}),
        ],
        [["END", "MB", "MA", "PA", "START"], ["END", "PB", "PA"]],
        ["PA", "MA", "MB"],
    ),
    "join_rule_evasion": Story(
        [
            # Synapse's story really says "join_rules" here, so the rule is unreadable.
            Node("JR", ALICE, JOIN_RULES, "", {"join_rules": "private"}),
            Node("ME", EVELYN, MEMBER, EVELYN, JOIN),
        ],
        [["END", "JR", "START"], ["END", "ME", "START"]],
        ["JR"],
    ),
    "offtopic_pl": Story(
        [
            Node("PA", ALICE, POWER, "", {"users": {ALICE: 100, BOB: 50}}),
            Node("PB", BOB, POWER, "", {"users": {ALICE: 100, BOB: 50, CHARLIE: 50}}),
            Node("PC", CHARLIE, POWER, "", {"users": {ALICE: 100, BOB: 50, CHARLIE: 0}}),
        ],
        [["END", "PC", "PB", "PA", "START"], ["END", "PA"]],
        ["PC"],
    ),
    "topic_basic": Story(
        [
            Node("T1", ALICE, TOPIC, ""),
            Node("PA1", ALICE, POWER, "", {"users": {ALICE: 100, BOB: 50}}),
            Node("T2", ALICE, TOPIC, ""),
            Node("PA2", ALICE, POWER, "", {"users": {ALICE: 100, BOB: 0}}),
            Node("PB", BOB, POWER, "", {"users": {ALICE: 100, BOB: 50}}),
            Node("T3", BOB, TOPIC, ""),
        ],
        [["END", "PA2", "T2", "PA1", "T1", "START"], ["END", "T3", "PB", "PA1"]],
        ["PA2", "T2"],
    ),
    "topic_reset": Story(
        [
            Node("T1", ALICE, TOPIC, ""),
            Node("PA", ALICE, POWER, "", {"users": {ALICE: 100, BOB: 50}}),
            Node("T2", BOB, TOPIC, ""),
            Node("MB", ALICE, MEMBER, BOB, {"membership": "ban"}),
        ],
        [["END", "MB", "T2", "PA", "T1", "START"], ["END", "T1"]],
        ["T1", "MB", "PA"],
    ),
    "topic": Story(
        [
            Node("T1", ALICE, TOPIC, ""),
            Node("PA1", ALICE, POWER, "", {"users": {ALICE: 100, BOB: 50}}),
            Node("T2", ALICE, TOPIC, ""),
            Node("PA2", ALICE, POWER, "", {"users": {ALICE: 100, BOB: 0}}),
            Node("PB", BOB, POWER, "", {"users": {ALICE: 100, BOB: 50}}),
            Node("T3", BOB, TOPIC, ""),
            Node("MZ1", ZARA, MESSAGE, None),
            Node("T4", ALICE, TOPIC, ""),
        ],
        [
            ["END", "T4", "MZ1", "PA2", "T2", "PA1", "T1", "START"],
            ["END", "MZ1", "T3", "PB", "PA1"],
        ],
        ["T4", "PA2"],
    ),
    "mainline_sort": Story(
        [
            Node("T1", ALICE, TOPIC, ""),
            Node("PA1", ALICE, POWER, "", {"users": {ALICE: 100, BOB: 50}}),
            Node("T2", ALICE, TOPIC, ""),
            Node(
                "PA2",
                ALICE,
                POWER,
                "",
                {"users": {ALICE: 100, BOB: 50}, "events": {POWER: 100}},
            ),
            Node("PB", BOB, POWER, "", {"users": {ALICE: 100, BOB: 50}}),
            Node("T3", BOB, TOPIC, ""),
            Node("T4", ALICE, TOPIC, ""),
        ],
        [["END", "T3", "PA2", "T2", "PA1", "T1", "START"], ["END", "T4", "PB", "PA1"]],
        # T3 wins although T4 is later: T4 cites an older power levels event.
        ["T3", "PA2"],
    ),
}


def _event_id(node_id: str) -> str:
    return f"${node_id}:example.com"


def _topological(graph: Mapping[str, set[str]]) -> list[str]:
    """Parents first, ties broken by node ID (Synapse's lexicographical sort)."""
    waiting = {node: len(prevs) for node, prevs in graph.items()}
    children: dict[str, list[str]] = {}
    for node, prevs in graph.items():
        for prev in prevs:
            children.setdefault(prev, []).append(node)
    ready = [node for node, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = heapq.heappop(ready)
        order.append(node)
        for child in children.get(node, ()):
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, child)
    return order


def _refs(version: RoomVersion, event_ids: Sequence[str]) -> list[Any]:
    return [[e, {}] for e in event_ids] if version.auth_events_are_pairs else list(event_ids)


def replay_story(story: Story, version: RoomVersion) -> tuple[StateMap, StateMap]:
    """The states at START and at END."""
    nodes = {node.id: node for node in [*INITIAL, *story.nodes]}
    graph: dict[str, set[str]] = {node_id: set() for node_id in nodes}
    for chain in [INITIAL_CHAIN, *story.chains]:
        for child, parent in itertools.pairwise(chain):
            graph[child].add(parent)
    events: dict[str, Event] = {}
    state_after: dict[str, StateMap] = {}
    for ts, node_id in enumerate(_topological(graph)):
        node = nodes[node_id]
        prevs = sorted(graph[node_id])
        states = [state_after[p] for p in prevs]
        before = resolve_state(version, states, events.get) if states else {}
        keys = auth_types_for_event(version, node.type, node.state_key, node.sender, node.content)
        pdu: dict[str, Any] = {
            "type": node.type,
            "sender": node.sender,
            "room_id": ROOM_ID,
            "content": dict(node.content),
            "origin_server_ts": ts,
            "depth": ts + 1,
            "prev_events": _refs(version, [_event_id(p) for p in prevs]),
            "auth_events": _refs(version, sorted(before[k] for k in keys if k in before)),
        }
        if node.state_key is not None:
            pdu["state_key"] = node.state_key
        event = Event(_event_id(node_id), version, pdu)
        events[event.event_id] = event
        after = dict(before)
        if event.is_state:
            after[event.key] = event.event_id
        state_after[node_id] = after
    return state_after["START"], state_after["END"]


@pytest.mark.parametrize("version", ["2", "6", "10", "11"])
@pytest.mark.parametrize("name", sorted(STORIES))
def test_v2_story(name: str, version: str) -> None:
    story = STORIES[name]
    start, end = replay_story(story, get_room_version(version))
    expected: dict[StateKey, str] = {}
    nodes = {node.id: node for node in story.nodes}
    for node_id in story.expected:
        node = nodes[node_id]
        assert node.state_key is not None
        expected[(node.type, node.state_key)] = _event_id(node_id)
    changed = {k: v for k, v in end.items() if k in expected or start.get(k) != v}
    assert changed == expected


# -- v2.1 (room version 12) -----------------------------------------------------------

V12_CREATE_ID = "$e1_create"
V12_ROOM_ID = "!e1_create"
#: Room version 12 resolved with v2.0, to show each story needs what v2.1 changed.
AS_V2_0 = dataclasses.replace(get_room_version("12"), state_res=StateResAlgorithm.V2)


def _v12_events(
    rows: list[tuple[str, str, str, str, Mapping[str, Any], list[str]]],
) -> dict[str, Event]:
    """(id, type, state_key, sender, content, auth_events) rows as v12 events."""
    version = get_room_version("12")
    events: dict[str, Event] = {}
    for ts, (event_id, event_type, state_key, sender, content, auth) in enumerate(rows, 1):
        pdu: dict[str, Any] = {
            "type": event_type,
            "state_key": state_key,
            "sender": sender,
            "content": dict(content),
            "origin_server_ts": ts,
            "depth": 5,
            "prev_events": [],
            "auth_events": auth,
        }
        if event_type != CREATE:
            pdu["room_id"] = V12_ROOM_ID
        events[event_id] = Event(event_id, version, pdu)
    return events


def _state(events: Mapping[str, Event], ids: list[str]) -> StateMap:
    return {events[i].key: i for i in ids}


def test_v21_state_reset_replay_conflicted_subgraph() -> None:
    """Eve's rename cites old power levels; the subgraph must replay her first join."""
    events = _v12_events(
        [
            (V12_CREATE_ID, CREATE, "", ALICE, {"creator": ALICE}, []),
            ("$e2_ma", MEMBER, ALICE, ALICE, JOIN, []),
            ("$e3_power1", POWER, "", ALICE, {"users": {}}, ["$e2_ma"]),
            ("$e4_jr", JOIN_RULES, "", ALICE, {"join_rule": "public"}, ["$e2_ma", "$e3_power1"]),
            ("$e5_mb", MEMBER, BOB, BOB, JOIN, ["$e3_power1", "$e4_jr"]),
            ("$e6_mc", MEMBER, CHARLIE, CHARLIE, JOIN, ["$e3_power1", "$e4_jr"]),
            ("$e7_power2", POWER, "", ALICE, {"users": {BOB: 50}}, ["$e2_ma", "$e3_power1"]),
            (
                "$e8_power3",
                POWER,
                "",
                BOB,
                {"users": {BOB: 50, CHARLIE: 50}},
                ["$e5_mb", "$e7_power2"],
            ),
            ("$e9_me1", MEMBER, EVELYN, EVELYN, JOIN, ["$e8_power3", "$e4_jr"]),
            ("$e10_me2", MEMBER, EVELYN, EVELYN, JOIN, ["$e3_power1", "$e4_jr", "$e9_me1"]),
            ("$e11_mz", MEMBER, ZARA, ZARA, JOIN, ["$e8_power3", "$e4_jr"]),
        ]
    )
    common = [V12_CREATE_ID, "$e2_ma", "$e5_mb", "$e6_mc", "$e4_jr"]
    dodgy = _state(events, [*common, "$e10_me2", "$e3_power1"])
    sensible = _state(events, [*common, "$e11_mz", "$e8_power3"])
    expected = _state(events, [*common, "$e9_me1", "$e11_mz", "$e8_power3"])
    version = get_room_version("12")
    assert resolve_state(version, [dodgy, sensible], events.get) == expected
    assert resolve_state(version, [sensible, dodgy], events.get) == expected
    assert resolve_state(AS_V2_0, [dodgy, sensible], events.get) != expected


def test_v21_state_reset_start_empty_set() -> None:
    """Conflicting join rules whose senders' memberships agree must not reset to none."""
    events = _v12_events(
        [
            (V12_CREATE_ID, CREATE, "", ALICE, {"creator": ALICE}, []),
            ("$e2_ma1", MEMBER, ALICE, ALICE, JOIN, []),
            ("$e3_power", POWER, "", ALICE, {"users": {BOB: 100}}, ["$e2_ma1"]),
            ("$e4_jr1", JOIN_RULES, "", ALICE, {"join_rule": "public"}, ["$e2_ma1", "$e3_power"]),
            ("$e5_mb", MEMBER, BOB, BOB, JOIN, ["$e3_power", "$e4_jr1"]),
            ("$e6_jr2", JOIN_RULES, "", ALICE, {"join_rule": "invite"}, ["$e2_ma1", "$e3_power"]),
            ("$e7_ma2", MEMBER, ALICE, ALICE, {"membership": "leave"}, ["$e3_power", "$e2_ma1"]),
        ]
    )
    common = [V12_CREATE_ID, "$e7_ma2", "$e5_mb", "$e3_power"]
    correct = _state(events, [*common, "$e6_jr2"])
    incorrect = _state(events, [*common, "$e4_jr1"])
    version = get_room_version("12")
    assert resolve_state(version, [correct, incorrect], events.get) == correct
    assert resolve_state(version, [incorrect, correct], events.get) == correct
    assert resolve_state(AS_V2_0, [correct, incorrect], events.get) != correct
