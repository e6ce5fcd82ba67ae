"""The pieces of state resolution v2: splitting, auth difference, subgraph, orderings,
iterative auth checks, and what happens with unknown and rejected events."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest

from worker.matrix.events import Event, StateKey, StateMap
from worker.matrix.room_versions import RoomVersion, get_room_version
from worker.matrix.state_res import (
    EventSource,
    analyse_conflicts,
    auth_difference,
    mainline_order,
    resolve_state,
    reverse_topological_power_order,
    split_conflicted,
    split_conflicted_v1,
)
from worker.matrix.state_res.iterative import PartialState, iterative_auth_checks

V10 = get_room_version("10")
ALICE = "@alice:example.com"
BOB = "@bob:example.com"
ROOM = "!room:example.com"


def make(
    event_id: str,
    event_type: str = "m.room.member",
    state_key: str | None = "",
    *,
    auth: Sequence[str] = (),
    sender: str = ALICE,
    content: Mapping[str, Any] | None = None,
    ts: int = 0,
    version: RoomVersion = V10,
) -> Event:
    pdu: dict[str, Any] = {
        "type": event_type,
        "sender": sender,
        "room_id": ROOM,
        "content": dict(content or {}),
        "origin_server_ts": ts,
        "depth": 1,
        "prev_events": [],
        "auth_events": list(auth),
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    return Event(event_id, version, pdu)


def index(events: Iterable[Event]) -> dict[str, Event]:
    return {event.event_id: event for event in events}


# -- splitting --------------------------------------------------------------------------


def test_split_v2_counts_a_missing_key_as_conflicted() -> None:
    a = {("t", ""): "$1", ("u", ""): "$2", ("only_a", ""): "$3"}
    b = {("t", ""): "$1", ("u", ""): "$4"}
    unconflicted, conflicted = split_conflicted([a, b])
    assert unconflicted == {("t", ""): "$1"}
    assert conflicted == {("u", ""): {"$2", "$4"}, ("only_a", ""): {"$3"}}


def test_split_v1_only_counts_different_events_as_conflicted() -> None:
    a = {("t", ""): "$1", ("u", ""): "$2", ("only_a", ""): "$3"}
    b = {("t", ""): "$1", ("u", ""): "$4"}
    c = {("u", ""): "$5"}
    unconflicted, conflicted = split_conflicted_v1([a, b, c])
    assert unconflicted == {("t", ""): "$1", ("only_a", ""): "$3"}
    assert conflicted == {("u", ""): {"$2", "$4", "$5"}}


# -- auth difference and conflicted subgraph --------------------------------------------


def _chain_events() -> dict[str, Event]:
    """A ← B ← C ← D, and E citing C and B (Synapse's auth difference cases)."""
    return index(
        [
            make("$A", "a"),
            make("$B", "b", auth=["$A"]),
            make("$C", "c", auth=["$B"]),
            make("$D", "d", auth=["$C"]),
            make("$E", "e", auth=["$C", "$B"]),
        ]
    )


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        ([{"a": "$A", "b": "$B"}, {"c": "$C"}], {"$C"}),
        ([{"a": "$A", "b": "$B"}, {"c": "$C", "d": "$D"}], {"$C", "$D"}),
        ([{"a": "$A", "b": "$B", "e": "$E"}, {"c": "$C", "d": "$D"}], {"$D", "$E"}),
    ],
)
def test_auth_difference_synapse_cases(sets: list[dict[str, str]], expected: set[str]) -> None:
    events = _chain_events()
    state_sets = [{(k, ""): v for k, v in s.items()} for s in sets]
    assert auth_difference(V10, state_sets, events.get) == expected


def _closure(events: Mapping[str, Event], ids: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(ids)
    while stack:
        event_id = stack.pop()
        if event_id not in seen:
            seen.add(event_id)
            event = events.get(event_id)
            if event is not None:
                stack.extend(event.auth_event_ids)
    return seen


def _random_room(rng: random.Random) -> tuple[dict[str, Event], list[StateMap]]:
    """A random auth DAG over a few keys, and state maps drawn from it."""
    events: dict[str, Event] = {}
    ids: list[str] = []
    keys = [f"k{i}" for i in range(rng.randint(3, 9))]
    for n in range(rng.randint(5, 40)):
        cited = rng.sample(ids, min(len(ids), rng.randint(0, 3)))
        if ids and rng.random() < 0.1:
            cited.append(f"$unknown{n}")  # cited but never stored
        event = make(f"${n}", rng.choice(keys), auth=cited)
        events[event.event_id] = event
        ids.append(event.event_id)
    by_key: dict[StateKey, list[str]] = {}
    for event in events.values():
        by_key.setdefault(event.key, []).append(event.event_id)
    common = {key: rng.choice(options) for key, options in by_key.items()}
    state_sets = []
    for _ in range(rng.randint(2, 4)):
        state = dict(common)
        for key, options in by_key.items():
            roll = rng.random()
            if roll < 0.3:
                state[key] = rng.choice(options)
            elif roll < 0.4:
                del state[key]
        state_sets.append(state)
    return events, state_sets


@pytest.mark.parametrize("seed", range(300))
def test_auth_difference_and_subgraph_match_brute_force(seed: int) -> None:
    """The walk over conflicted chains only equals whole-chain set algebra."""
    rng = random.Random(seed)
    events, state_sets = _random_room(rng)
    unconflicted, conflicted = split_conflicted(state_sets)
    if not conflicted:
        return
    chains = [_closure(events, state.values()) for state in state_sets]
    brute_difference = set().union(*chains) - set(chains[0]).intersection(*chains[1:])
    conflicted_ids = set().union(*conflicted.values())
    brute_subgraph = {
        event_id
        for event_id in _closure(events, conflicted_ids)
        if _closure(events, [event_id]) & conflicted_ids
    }

    def auth_chain(ids: Iterable[str]) -> set[str]:
        ids = set(ids)
        return _closure(events, ids) - ids | {a for i in ids for a in events[i].auth_event_ids}

    for fast_path in (None, auth_chain):
        for with_subgraph in (False, True):
            source = EventSource(V10, events.get)
            found = analyse_conflicts(
                state_sets,
                unconflicted,
                conflicted,
                source,
                with_subgraph=with_subgraph,
                auth_chain=fast_path,
            )
            # Conflicted events are in the full conflicted set either way.
            assert found.auth_difference - conflicted_ids == brute_difference - conflicted_ids
            assert found.conflicted_subgraph == (brute_subgraph if with_subgraph else set())


def test_superseded_event_in_an_unconflicted_chain_is_not_in_the_difference() -> None:
    """Only probing the unconflicted events' chains finds that $old is in every chain."""
    events = index(
        [
            make("$root", "root"),
            make("$old", "t", auth=["$root"]),
            make("$u", "u", auth=["$old"]),  # unconflicted, cites the superseded $old
            make("$new", "t", auth=["$old"]),
            make("$x1", "x", auth=["$new"]),
            make("$x2", "x", auth=["$root"]),
        ]
    )
    a = {("u", ""): "$u", ("t", ""): "$new", ("x", ""): "$x1"}
    b = {("u", ""): "$u", ("t", ""): "$new", ("x", ""): "$x2"}
    assert auth_difference(V10, [a, b], events.get) == {"$x1", "$x2"}
    # With no unconflicted event citing them, $new and $old are only in one chain.
    only_x = [{("x", ""): "$x1"}, {("x", ""): "$x2"}]
    assert auth_difference(V10, only_x, events.get) == {"$x1", "$x2", "$new", "$old"}


# -- orderings --------------------------------------------------------------------------


def test_reverse_topological_power_order_breaks_ties_by_event_id() -> None:
    """Synapse's lexicographical sort case: equal power and timestamps."""
    graph = {"l": ["o"], "m": ["n", "o"], "n": ["o"], "o": [], "p": ["o"]}
    events = index(
        make(f"${n}", "m.room.power_levels", auth=[f"${a}" for a in graph[n]]) for n in graph
    )
    source = EventSource(V10, events.get)
    order = reverse_topological_power_order(events, set(events), source)
    assert order == ["$o", "$l", "$n", "$m", "$p"]


def test_reverse_topological_power_order_prefers_power_then_age() -> None:
    create = make("$create", "m.room.create", content={"creator": ALICE})
    pl = make(
        "$pl",
        "m.room.power_levels",
        auth=["$create"],
        content={"users": {ALICE: 100, BOB: 50}},
    )
    late_admin = make("$a", "m.room.join_rules", auth=["$create", "$pl"], ts=9)
    early_mod = make("$b", "m.room.join_rules", auth=["$create", "$pl"], sender=BOB, ts=1)
    early_nobody = make("$c", "m.room.join_rules", auth=["$create", "$pl"], sender="@x:y", ts=1)
    later_nobody = make("$d", "m.room.join_rules", auth=["$create", "$pl"], sender="@x:y", ts=2)
    events = index([create, pl, late_admin, early_mod, early_nobody, later_nobody])
    conflicted = ["$a", "$b", "$c", "$d"]
    order = reverse_topological_power_order(
        conflicted, set(conflicted), EventSource(V10, events.get)
    )
    assert order == ["$a", "$b", "$c", "$d"]
    # The auth DAG comes first: $pl, in the set, precedes everything citing it.
    order = reverse_topological_power_order(
        conflicted, {*conflicted, "$pl"}, EventSource(V10, events.get)
    )
    assert order == ["$pl", "$a", "$b", "$c", "$d"]


def test_mainline_order() -> None:
    """Events on older power levels come first; no power levels at all comes before all."""
    p1 = make("$p1", "m.room.power_levels")
    p2 = make("$p2", "m.room.power_levels", auth=["$p1"])
    p3 = make("$p3", "m.room.power_levels", auth=["$p2"])
    side = make("$side", "m.room.power_levels", auth=["$p1"])  # a fork off the mainline
    events = index(
        [
            p1,
            p2,
            p3,
            side,
            make("$on_p3", "m.room.topic", auth=["$p3"], ts=1),
            make("$on_p2_late", "m.room.topic", auth=["$p2"], ts=5),
            make("$on_p2_early", "m.room.topic", auth=["$p2"], ts=4),
            make("$on_side", "m.room.topic", auth=["$side"], ts=0),
            make("$on_none_b", "m.room.topic", ts=3),
            make("$on_none_a", "m.room.topic", ts=3),
        ]
    )
    to_sort = ["$on_p3", "$on_p2_late", "$on_p2_early", "$on_side", "$on_none_b", "$on_none_a"]
    order = mainline_order(to_sort, "$p3", EventSource(V10, events.get))
    assert order == [
        "$on_none_a",
        "$on_none_b",
        "$on_side",  # via $side it reaches $p1, the oldest mainline event
        "$on_p2_early",
        "$on_p2_late",
        "$on_p3",
    ]
    assert mainline_order([], "$p3", EventSource(V10, events.get)) == []


# -- iterative auth checks, unknown and rejected events ----------------------------------


def _small_room() -> dict[str, Event]:
    return index(
        [
            make("$create", "m.room.create", content={"creator": ALICE, "room_version": "10"}),
            make(
                "$alice", "m.room.member", ALICE, auth=["$create"], content={"membership": "join"}
            ),
            make(
                "$pl",
                "m.room.power_levels",
                auth=["$create", "$alice"],
                content={"users": {ALICE: 100}},
            ),
            make(
                "$jr",
                "m.room.join_rules",
                auth=["$create", "$alice", "$pl"],
                content={"join_rule": "public"},
            ),
            make(
                "$bob",
                "m.room.member",
                BOB,
                sender=BOB,
                auth=["$create", "$pl", "$jr"],
                content={"membership": "join"},
            ),
            make(
                "$pl_bob",
                "m.room.power_levels",
                auth=["$create", "$alice", "$pl"],
                content={"users": {ALICE: 100, BOB: 100}},
                ts=1,
            ),
            make(
                "$topic_bob", "m.room.topic", sender=BOB, auth=["$create", "$pl_bob", "$bob"], ts=5
            ),
            make("$topic_alice", "m.room.topic", auth=["$create", "$pl", "$alice"], ts=4),
        ]
    )


def test_rejected_auth_events_are_not_used() -> None:
    events = _small_room()
    for rejected, admitted in ((set(), True), ({"$pl_bob"}, False)):
        source = EventSource(V10, events.get, rejected.__contains__)
        state = PartialState({("m.room.create", ""): "$create"})
        iterative_auth_checks(["$topic_bob"], state, source)
        assert (state.get(("m.room.topic", "")) == "$topic_bob") is admitted


def test_rejected_events_are_never_admitted() -> None:
    events = _small_room()
    base = {
        ("m.room.create", ""): "$create",
        ("m.room.member", ALICE): "$alice",
        ("m.room.member", BOB): "$bob",
        ("m.room.join_rules", ""): "$jr",
        ("m.room.power_levels", ""): "$pl_bob",
    }
    a = {**base, ("m.room.topic", ""): "$topic_bob"}
    b = {**base, ("m.room.topic", ""): "$topic_alice"}
    assert resolve_state(V10, [a, b], events.get)[("m.room.topic", "")] == "$topic_bob"
    resolved = resolve_state(V10, [a, b], events.get, is_rejected={"$topic_bob"}.__contains__)
    assert resolved[("m.room.topic", "")] == "$topic_alice"


def test_unknown_events() -> None:
    """Unknown conflicted events are dropped; unknown unconflicted entries are kept."""
    events = _small_room()
    base = {
        ("m.room.create", ""): "$create",
        ("m.room.member", ALICE): "$alice",
        ("m.room.power_levels", ""): "$pl",
        ("x.unknown", ""): "$never_stored",
    }
    a = {**base, ("m.room.topic", ""): "$topic_alice"}
    b = {**base, ("m.room.topic", ""): "$also_never_stored"}
    resolved = resolve_state(V10, [a, b], events.get)
    assert resolved == a
    only_unknown = resolve_state(V10, [base, b], events.get)
    assert only_unknown == base


def test_trivial_inputs() -> None:
    events = _small_room()
    state = {("m.room.create", ""): "$create"}
    assert resolve_state(V10, [], events.get) == {}
    single = resolve_state(V10, [state], events.get)
    assert single == state and single is not state
    assert resolve_state(V10, [state, dict(state)], events.get) == state
