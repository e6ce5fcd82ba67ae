"""gomatrixserverlib's authorization cases, kept as data under tests/fixtures/auth/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker.matrix.auth import AuthError, auth_types_for_event, check_auth
from worker.matrix.events import Event, StateKey
from worker.matrix.room_versions import ROOM_VERSIONS

FIXTURES = Path(__file__).parent.parent / "fixtures" / "auth"


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def _event(pdu: dict[str, Any], version: str) -> Event:
    return Event(event_id=pdu["event_id"], room_version=ROOM_VERSIONS[version], pdu=pdu)


def _verdicts() -> list[Any]:
    params = []
    for case in _load("gomatrixserverlib_eventauth.json")["cases"]:
        for allowed in (True, False):
            events = case["allowed" if allowed else "not_allowed"]
            for n, pdu in enumerate(events):
                why = pdu.get("unsigned", {}).get("not_allowed", "")
                label = f"{case['name']}-{'allowed' if allowed else 'not_allowed'}-{n}"
                params.append(pytest.param(case, pdu, allowed, why, id=label))
    return params


VERDICTS = _verdicts()


def test_fixture_has_both_verdicts() -> None:
    allowed = sum(1 for p in VERDICTS if p.values[2])
    assert allowed >= 25
    assert len(VERDICTS) - allowed >= 40


@pytest.mark.parametrize(("case", "pdu", "allowed", "why"), VERDICTS)
def test_gomatrixserverlib_case(
    case: dict[str, Any], pdu: dict[str, Any], allowed: bool, why: str
) -> None:
    version = case["room_version"]
    state: dict[StateKey, Event] = {}
    for state_pdu in case["state"]:
        event = _event(state_pdu, version)
        state[event.key] = event
    event = _event(pdu, version)
    if allowed:
        check_auth(event, state)
    else:
        with pytest.raises(AuthError) as info:
            check_auth(event, state)
        assert info.value.reason, why


SELECTION = _load("gomatrixserverlib_selection.json")["cases"]


@pytest.mark.parametrize("case", SELECTION, ids=[c["name"] for c in SELECTION])
def test_gomatrixserverlib_selection(case: dict[str, Any]) -> None:
    keys = auth_types_for_event(
        ROOM_VERSIONS["10"], case["type"], case["state_key"], case["sender"], case["content"]
    )
    assert keys == {(t, k) for t, k in case["expected"]}
