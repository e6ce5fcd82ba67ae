"""The walk up the auth DAG (`_AgreedState.reached`, over `worker.storage.auth_citers`)
answers exactly what the walk down from every agreed event answers.

State resolution v2's auth difference (spec, `content/rooms/fragments/v2-state-res.md`):
"The auth difference is calculated by first calculating the full auth chain for each
state S_i, that is the union of the auth chains for each event in S_i, and then taking
every event that doesn't appear in every auth chain." An event that some conflicted
chains hold but not all is in the difference unless the chain of an event all states
agree on holds it; `reached` decides that by walking up from it through the events that
cite it, `_reached_from_unconflicted` by walking down from every agreed event. Both run
here on every resolution of random forked rooms (the differential generator's rooms,
whose results the oracle tests compare with Synapse's), on the same inputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("synapse")

from tests.oracle.differential import run_room
from worker.matrix.room_versions import get_room_version
from worker.matrix.state_res.difference import _reached_from_unconflicted
from worker.matrix.state_res.source import EventSource
from worker.pipeline import resolution

pytestmark = pytest.mark.oracle


@pytest.mark.parametrize("version", ["2", "10", "12"])
def test_walk_up_agrees_with_walk_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    walk_up = resolution._AgreedState.reached
    compared = {"calls": 0, "in_chain": 0, "outside": 0}

    def both(agreed: resolution._AgreedState, candidates: set[str]) -> set[str] | None:
        found = walk_up(agreed, candidates)
        resolver = agreed._resolver
        source = EventSource(get_room_version(version), resolver._event_for_resolution)
        # No masks: the walk down then prunes nothing, which changes its cost only.
        truth = _reached_from_unconflicted(set(candidates), agreed, set(), source, None)
        assert found == truth
        compared["calls"] += 1
        compared["in_chain"] += len(truth)
        compared["outside"] += len(candidates - truth)
        return found

    monkeypatch.setattr(resolution._AgreedState, "reached", both)
    for seed in (1, 2, 3, 4, 5, 6):
        assert run_room(version, seed, tmp_path, events=120, keep=False).agrees
    # The rooms must exercise both answers.
    assert compared["calls"] >= 10, compared
    assert compared["in_chain"] >= 10 and compared["outside"] >= 10, compared
