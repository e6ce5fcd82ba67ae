"""Differential test: restricted-join verdicts and vouching users, ours against Synapse's
`EventAuthHandler` (tests/oracle/synapse_restricted), on generated rooms.

Each case builds a room of version 7–12 with a random join rule (the restricted ones
mostly), a random allow list (good, malformed and unknown conditions), random power
levels and members on several servers, then asks about a random user (local or remote,
with some membership or none), given the rooms that user is joined to and the rooms
this server is resident in. Synapse picks its vouching user arbitrarily from a set; ours
must be in that set.

Power levels are integers: Synapse's `get_users_which_can_issue_invite` compares raw
`users` values, which room versions 8–9 also allow to be strings (ours parses them as
the auth rules do), so strings are left to the unit tests.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

pytest.importorskip("synapse.handlers.room")

from tests.oracle.synapse_restricted import synapse_restricted_join
from worker.matrix.builder import RoomBuilder
from worker.matrix.events import Event, StateKey
from worker.matrix.restricted_join import restricted_join

pytestmark = pytest.mark.oracle

SERVER = "a"
USERS = ["@bob:a", "@carol:a", "@dan:b", "@erin:b", "@finn:c", "@gus:a"]
ROOMS = ["!one:a", "!two:b", "!three:c"]
RULES = ["restricted", "restricted", "knock_restricted", "knock_restricted", "public", "invite"]


def _allow(rng: random.Random) -> Any:
    choices: list[Any] = [{"type": "m.room_membership", "room_id": room} for room in ROOMS] + [
        {"type": "m.room_membership"},
        {"type": "m.room_membership", "room_id": 4},
        {"type": "org.example.other", "room_id": "!one:a"},
        "junk",
    ]
    roll = rng.random()
    if roll < 0.05:
        return rng.choice([None, "x", {"room_id": "!one:a"}])
    return rng.sample(choices, rng.randint(0, 4))


def _room(rng: random.Random, version: str) -> dict[StateKey, Event]:
    builder = RoomBuilder(version, "@alice:a")
    levels = builder.default_power_levels()
    levels["invite"] = rng.choice([0, 0, 10, 50, 100, 100])
    levels["users_default"] = rng.choice([0, 0, 10, 50])
    levels["users"] = {
        **levels["users"],
        **{user: rng.choice([0, 10, 50, 100]) for user in rng.sample(USERS, 3)},
    }
    builder.bootstrap(power_levels=levels)
    content = {"join_rule": rng.choice(RULES), "allow": _allow(rng)}
    if rng.random() < 0.1:
        del content["allow"]
    builder.build("m.room.join_rules", "@alice:a", content, state_key="")
    if rng.random() < 0.35:
        builder.leave("@alice:a")
    for user in USERS:
        membership = rng.choice([None, None, "join", "join", "invite", "leave", "ban"])
        if membership is not None:
            builder.member(user, user, membership)
    return {key: builder.event(eid) for key, eid in builder.current_state.items()}


@pytest.mark.parametrize("version", ["7", "8", "9", "10", "11", "12"])
def test_same_verdict_as_synapse(version: str) -> None:
    rng = random.Random(f"restricted-{version}")
    outcomes: set[str] = set()
    for _ in range(120):
        state = _room(rng, version)
        user = rng.choice([*USERS, "@new:a", "@new:z"])
        user_rooms = set(rng.sample(ROOMS, rng.randint(0, 2)))
        resident = set(rng.sample(ROOMS, rng.randint(0, 3)))
        local = user.partition(":")[2] == SERVER

        def joined_in(room_id: str) -> bool | None:
            if room_id in user_rooms:  # noqa: B023 (called within this iteration)
                return True
            # Whether a user is joined to a room is known for local users, and for
            # remote users in rooms this server is in.
            return False if local or room_id in resident else None  # noqa: B023

        ours = restricted_join(state, user, SERVER, joined_in)
        outcome, candidates = synapse_restricted_join(state, user, SERVER, user_rooms, resident)
        assert ours.outcome.value == outcome, (user, user_rooms, resident)
        if outcome == "allowed":
            assert ours.authoriser in candidates
        else:
            assert ours.authoriser is None
        outcomes.add(outcome)
    if version not in ("7",):
        assert {
            "allowed",
            "forbidden",
            "not_restricted",
            "unable_to_authorise",
            "unable_to_grant",
        } <= outcomes
