"""ruma's state resolution vectors (tests/fixtures/state_res/ruma-state-res, MIT).

Batch cases are replayed three ways, as ruma does: event by event along the DAG (the
state before an event is the resolution of the states after its prev events; the event
joins the state if it passes authorization there), file by file, and all at once (each
PDU its own one-entry state map next to the previous result). All three must give the
snapshot. The MSC4297 cases resolve two given state maps directly, under v2.0 (room
version 11) and v2.1 (room version 12), and must differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from worker.matrix.auth import auth_types_for_event, check_auth
from worker.matrix.auth.errors import AuthError
from worker.matrix.events import CREATE, Event, StateKey, StateMap
from worker.matrix.room_versions import get_room_version
from worker.matrix.state_res import resolve_state

ROOT = Path(__file__).parent.parent / "fixtures" / "state_res" / "ruma-state-res"
FIXTURES = ROOT / "fixtures"
SNAPSHOTS = ROOT / "snapshots"

BATCH_CASES: dict[str, list[str]] = {
    "minimal_private_chat": ["bootstrap-private-chat"],
    "minimal_public_chat": ["bootstrap-public-chat"],
    "origin_server_ts_tiebreak": ["bootstrap-private-chat", "origin-server-ts-tiebreak"],
    "ban_vs_power_levels": [
        "bootstrap-public-chat",
        "ban-vs-power-levels-alice",
        "ban-vs-power-levels-bob",
    ],
    "topic_vs_power_levels": [
        "bootstrap-public-chat",
        "topic-vs-power-levels-alice",
        "topic-vs-power-levels-bob",
    ],
    "power_levels_admin_vs_mod": [
        "bootstrap-public-chat",
        "power-levels-admin-vs-mod-alice",
        "power-levels-admin-vs-mod-bob",
    ],
    "topic_vs_ban": [
        "bootstrap-public-chat",
        "topic-vs-ban-common",
        "topic-vs-ban-alice",
        "topic-vs-ban-bob",
    ],
    "join_rules_vs_join": [
        "bootstrap-public-chat",
        "join-rules-vs-join-common",
        "join-rules-vs-join-alice",
        "join-rules-vs-join-ella",
    ],
    "concurrent_joins": [
        "bootstrap-public-chat",
        "concurrent-joins-charlie",
        "concurrent-joins-ella",
    ],
}

STATE_MAP_CASES: dict[str, tuple[list[str], str]] = {
    "msc4297_problem_a_state_res_v2_0": (
        ["MSC4297-problem-A/state-bob", "MSC4297-problem-A/state-charlie"],
        "MSC4297-problem-A/pdus-v11",
    ),
    "msc4297_problem_a_state_res_v2_1": (
        ["MSC4297-problem-A/state-bob", "MSC4297-problem-A/state-charlie"],
        "MSC4297-problem-A/pdus-v12",
    ),
    "msc4297_problem_b_state_res_v2_0": (
        ["MSC4297-problem-B/state-eve", "MSC4297-problem-B/state-zara"],
        "MSC4297-problem-B/pdus-v11",
    ),
    "msc4297_problem_b_state_res_v2_1": (
        ["MSC4297-problem-B/state-eve", "MSC4297-problem-B/state-zara"],
        "MSC4297-problem-B/pdus-v12",
    ),
}


def _load(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _events(batches: Iterable[list[dict[str, Any]]]) -> list[list[Event]]:
    batches = list(batches)
    create = batches[0][0]
    assert create["type"] == CREATE
    version = get_room_version(create["content"].get("room_version", "1"))
    return [[Event(pdu["event_id"], version, pdu) for pdu in batch] for batch in batches]


def _expected(case: str) -> StateMap:
    text = (SNAPSHOTS / f"{case}@resolved_state.snap").read_text()
    body = text.split("---\n", 2)[2]
    return {(entry["type"], entry["state_key"]): entry["event_id"] for entry in json.loads(body)}


def _state_after(event: Event, before: StateMap, events: Mapping[str, Event]) -> StateMap:
    """`before`, plus `event` if the auth rules allow it against `before`."""
    version = event.room_version
    auth_state: dict[StateKey, Event] = {}
    for key in auth_types_for_event(
        version, event.type, event.state_key, event.sender, event.content
    ):
        if key in before:
            auth_state[key] = events[before[key]]
    if (CREATE, "") not in auth_state and (CREATE, "") in before:
        auth_state[(CREATE, "")] = events[before[(CREATE, "")]]
    after = dict(before)
    try:
        check_auth(event, auth_state)
    except AuthError:
        return after
    after[event.key] = event.event_id
    return after


def _resolve(events: Mapping[str, Event], states: Sequence[Mapping[StateKey, str]]) -> StateMap:
    version = next(iter(events.values())).room_version
    return resolve_state(version, states, events.get)


def resolve_event_by_event(all_events: list[Event]) -> StateMap:
    events = {event.event_id: event for event in all_events}
    children: dict[str, list[str]] = {}
    for event in all_events:
        for prev in event.prev_event_ids:
            children.setdefault(prev, []).append(event.event_id)
    after: dict[str, StateMap] = {}
    pending = [e.event_id for e in all_events if not e.prev_event_ids]
    while pending:
        event_id = pending.pop()
        event = events[event_id]
        if event_id in after or any(p not in after for p in event.prev_event_ids):
            continue
        before = _resolve(events, [after[p] for p in event.prev_event_ids])
        after[event_id] = _state_after(event, before, events)
        pending.extend(children.get(event_id, ()))
    assert len(after) == len(events), "some events were never reached"
    leaves = [e.event_id for e in all_events if e.event_id not in children]
    return _resolve(events, [after[leaf] for leaf in leaves])


def resolve_in_batches(batches: list[list[Event]]) -> StateMap:
    events: dict[str, Event] = {}
    state: StateMap | None = None
    for batch in batches:
        events.update((event.event_id, event) for event in batch)
        states: list[Mapping[StateKey, str]] = [] if state is None else [state]
        states.extend({event.key: event.event_id} for event in batch)
        state = _resolve(events, states)
    assert state is not None
    return state


@pytest.mark.parametrize("case", sorted(BATCH_CASES))
def test_batches(case: str) -> None:
    batches = _events(_load(name) for name in BATCH_CASES[case])
    expected = _expected(case)
    flat = [event for batch in batches for event in batch]
    assert resolve_event_by_event(flat) == expected
    assert resolve_in_batches(batches) == expected
    assert resolve_in_batches([flat]) == expected


def _resolve_state_maps(case: str) -> StateMap:
    map_names, pdus_name = STATE_MAP_CASES[case]
    (batch,) = _events([_load(pdus_name)])
    events = {event.event_id: event for event in batch}
    states = [{events[i].key: i for i in _load(name)} for name in map_names]
    return _resolve(events, states)


@pytest.mark.parametrize("case", sorted(STATE_MAP_CASES))
def test_msc4297_state_maps(case: str) -> None:
    assert _resolve_state_maps(case) == _expected(case)


@pytest.mark.parametrize("problem", ["a", "b"])
def test_msc4297_v2_0_and_v2_1_differ(problem: str) -> None:
    v2_0 = _resolve_state_maps(f"msc4297_problem_{problem}_state_res_v2_0")
    v2_1 = _resolve_state_maps(f"msc4297_problem_{problem}_state_res_v2_1")
    assert v2_0 != v2_1
