"""Differential test: the auth events chosen for a new event, ours against Synapse's
`EventAuthHandler.compute_auth_events`, over generated states and prospective events
(messages, state events, and memberships of every kind, with and without a third-party
invite token or a `join_authorised_via_users_server`), in every room version."""

from __future__ import annotations

import random
from typing import Any

import pytest

pytest.importorskip("synapse.handlers.room")

from tests.oracle.synapse_prepare import synapse_auth_event_ids
from worker.matrix.events import CREATE, JOIN_RULES, MEMBER, POWER_LEVELS, THIRD_PARTY_INVITE
from worker.matrix.prepare import auth_event_ids
from worker.matrix.room_versions import ROOM_VERSIONS

pytestmark = pytest.mark.oracle

USERS = ["@a:x", "@b:y", "@c:x", "@d:z"]
TOKENS = ["t1", "t2"]
V12_ROOM = "!" + "A" * 43


def _state(rng: random.Random) -> dict[tuple[str, str], str]:
    keys = [(POWER_LEVELS, ""), (JOIN_RULES, ""), ("m.room.topic", "")]
    keys += [(MEMBER, user) for user in USERS] + [(THIRD_PARTY_INVITE, t) for t in TOKENS]
    state = {key: f"${key[0]}-{key[1]}" for key in keys if rng.random() < 0.7}
    # The create event is always there; from v12 its ID is the room ID's.
    state[(CREATE, "")] = "$" + V12_ROOM[1:]
    return state


def _content(rng: random.Random) -> dict[str, Any]:
    # Always a membership: Synapse's selection raises KeyError without one (ours selects
    # the non-membership keys, see test_auth_selection).
    membership = rng.choice(["join", "invite", "leave", "ban", "knock", "x"])
    content: dict[str, Any] = {"membership": membership}
    if rng.random() < 0.3:
        content["third_party_invite"] = {"signed": {"token": rng.choice([*TOKENS, "t3"])}}
    if rng.random() < 0.3:
        content["join_authorised_via_users_server"] = rng.choice(USERS)
    return content


@pytest.mark.parametrize("version", sorted(ROOM_VERSIONS, key=int))
def test_same_auth_events_as_synapse(version: str) -> None:
    rng = random.Random(f"prepare-{version}")
    room_version = ROOM_VERSIONS[version]
    room_id = V12_ROOM if room_version.room_id_from_create else "!room:x"
    for _ in range(150):
        state = _state(rng)
        sender = rng.choice(USERS)
        kind = rng.random()
        if kind < 0.2:
            args: tuple[str, str | None, dict[str, Any]] = ("m.room.message", None, {"body": "x"})
        elif kind < 0.3:
            args = ("m.room.topic", "", {"topic": "x"})
        else:
            args = (MEMBER, rng.choice(USERS), _content(rng))
        event_type, state_key, content = args
        ours = auth_event_ids(room_version, event_type, state_key, sender, content, state)
        theirs = synapse_auth_event_ids(
            version, room_id, event_type, state_key, sender, content, state
        )
        assert len(ours) == len(set(ours))
        assert set(ours) == theirs, (event_type, state_key, sender, content)
