"""The auth chains the resolver keeps across resolutions (`NidResolver._auth_chain`)
are the chains a fresh walk finds (and the senders' levels it keeps, the levels read
afresh), also when the bounded cache evicts chains in the
middle of a walk.

State resolution v2 (spec, `content/rooms/fragments/v2-state-res.md`): "The auth chain
of an event E is the set containing all of E's auth events, all of *their* auth
events, and so on recursively, stretching back to the start of the room." The fresh
walk below is that definition read literally over the stored events (an unknown event
cites nothing); the resolver's answer comes from chains kept per event and unioned.
The rooms are the differential generator's forked rooms, whose results the same run
compares with Synapse's (`agrees`), with the memos of this round in use.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

pytest.importorskip("synapse")

from tests.oracle.differential import run_room
from worker.matrix.auth.power_levels import Level
from worker.matrix.state_res.source import EventSource
from worker.pipeline import resolution

pytestmark = pytest.mark.oracle


def fresh_chain(resolver: resolution.NidResolver, event_ids: Iterable[str]) -> set[str]:
    chain: set[str] = set()
    stack = list(event_ids)
    while stack:
        event = resolver._event_for_resolution(stack.pop())
        if event is None:
            continue
        for auth_id in event.auth_event_ids:
            if auth_id not in chain:
                chain.add(auth_id)
                stack.append(auth_id)
    return chain


@pytest.mark.parametrize("budget", [40, resolution.AUTH_CHAIN_CACHE_IDS])
def test_kept_chains_are_the_walked_chains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    kept_chain = resolution.NidResolver._auth_chain
    seen = {"calls": 0, "ids": 0, "kept": 0}

    def checked(resolver: resolution.NidResolver, event_ids: Iterable[str]) -> set[str]:
        event_ids = list(event_ids)
        seen["kept"] += sum(1 for e in event_ids if resolver._chains.get(e) is not None)
        found = kept_chain(resolver, event_ids)
        assert found == fresh_chain(resolver, event_ids)
        assert resolver._chains.weight <= budget or len(resolver._chains) == 1
        seen["calls"] += 1
        seen["ids"] += len(found)
        return found

    monkeypatch.setattr(resolution, "AUTH_CHAIN_CACHE_IDS", budget)
    monkeypatch.setattr(resolution.NidResolver, "_auth_chain", checked)
    for seed in (1, 2, 3, 4):
        assert run_room("10", seed, tmp_path, events=120, keep=False).agrees
    # The rooms must resolve, and the resolutions find chains kept from earlier ones.
    assert seen["calls"] >= 20 and seen["ids"] >= 100, seen
    assert seen["kept"] >= 10, seen


def test_kept_sender_levels_are_the_levels_read_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The power ordering's first tie-break, "the sender's power level as the event's
    own auth events give it" (spec, v2 state resolution: "reverse topological power
    ordering"), is kept across resolutions by (sender, create event, power levels
    event); each kept level must be the one read from those events afresh, and the
    rooms must still agree with Synapse."""
    kept_power = EventSource.sender_power
    seen = {"calls": 0, "kept": 0}

    def checked(source: EventSource, event_id: str) -> Level:
        before = len(source.sender_levels) if source.sender_levels is not None else 0
        level = kept_power(source, event_id)
        kept_levels, source.sender_levels = source.sender_levels, None
        try:
            assert level == kept_power(source, event_id)
        finally:
            source.sender_levels = kept_levels
        seen["calls"] += 1
        seen["kept"] += kept_levels is not None and len(kept_levels) == before
        return level

    monkeypatch.setattr(EventSource, "sender_power", checked)
    for seed in (1, 2):
        assert run_room("10", seed, tmp_path, events=120, keep=False).agrees
    # The rooms must order power events, and later resolutions find levels kept.
    assert seen["calls"] >= 20 and seen["kept"] >= 10, seen
