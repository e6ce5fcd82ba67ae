"""Differential test: which events a server may see, ours against Synapse's
`filter_events_for_server`, on generated rooms.

A seeded random walk builds each room: users of four servers join, leave, get invited,
knock, get banned; the history visibility changes between the four values, an unknown
value and a content without the key; messages are sent throughout. Some events are
treated as outliers (no state known). Then every server, including one with no users,
asks for every event, with redaction and without; both sides must return the same PDUs.
The state at each event handed to both is the builder's state after it (what Synapse
stores as the event's state group).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

pytest.importorskip("synapse.visibility")

from tests.oracle.synapse_visibility import synapse_filter_events_for_server
from worker.matrix.builder import RoomBuilder
from worker.matrix.events import HISTORY_VISIBILITY, StateKey
from worker.matrix.visibility import filter_events_for_server

pytestmark = pytest.mark.oracle

USERS = ["@alice:a", "@bob:b", "@bert:b", "@carol:c", "@carl:c:8448"]
SERVERS = ["a", "b", "c", "c:8448", "d"]
VISIBILITY_CONTENTS: list[dict[str, Any]] = [
    {"history_visibility": value}
    for value in ("world_readable", "shared", "invited", "joined", "joined", "invited", "x")
] + [{}]
#: (room version, number of rooms)
PLAN = [("1", 6), ("6", 6), ("10", 10), ("11", 6), ("12", 6)]


def _walk(rng: random.Random, room: RoomBuilder) -> None:
    """Random membership, visibility and message events after a bootstrap."""
    room.bootstrap()
    room.state_event("@alice:a", HISTORY_VISIBILITY, "", rng.choice(VISIBILITY_CONTENTS))
    for _ in range(rng.randrange(10, 40)):
        user = rng.choice(USERS[1:])
        roll = rng.random()
        if roll < 0.2:
            room.join(user)
        elif roll < 0.3:
            room.leave(user)
        elif roll < 0.4:
            room.invite("@alice:a", user)
        elif roll < 0.45:
            room.member(user, user, rng.choice(["knock", "ban"]))
        elif roll < 0.55:
            room.state_event("@alice:a", HISTORY_VISIBILITY, "", rng.choice(VISIBILITY_CONTENTS))
        else:
            room.message(rng.choice(USERS), f"m{rng.random()}")


@pytest.mark.parametrize(("version", "rooms"), PLAN)
def test_same_events_as_synapse(version: str, rooms: int) -> None:
    compared = hidden = 0
    for index in range(rooms):
        rng = random.Random(f"{version}-{index}")
        room = RoomBuilder(version, "@alice:a")
        _walk(rng, room)
        events = room.events
        outliers = {e.event_id for e in events[5:] if rng.random() < 0.1}
        state_ids = {
            e.event_id: room.state_after(e.event_id) for e in events if e.event_id not in outliers
        }

        def state_at(event_id: str) -> dict[StateKey, Any] | None:
            ids = state_ids.get(event_id)  # noqa: B023 (used within the loop iteration)
            if ids is None:
                return None
            return {key: room.event(eid).content for key, eid in ids.items()}  # noqa: B023

        for server in SERVERS:
            for redact in (True, False):
                ours = filter_events_for_server(events, state_at, server, redact_hidden=redact)
                theirs = synapse_filter_events_for_server(
                    events, state_ids, outliers, events, server, redact=redact
                )
                assert [dict(p) for p in ours] == theirs, (version, index, server, redact)
                compared += len(ours)
                if not redact:
                    hidden += len(events) - len(ours)
    # The walk must exercise both outcomes, or the comparison proves little.
    assert hidden > 0
    assert compared > hidden
