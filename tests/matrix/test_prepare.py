"""Prev events, depth and auth events of a new event, against the PDU schema and the
server-server API's "Auth events selection"."""

from __future__ import annotations

import pytest

from worker.matrix.events import CREATE, JOIN_RULES, MEMBER, POWER_LEVELS, THIRD_PARTY_INVITE
from worker.matrix.prepare import (
    auth_event_ids,
    choose_prev_events,
    depth_for_new_event,
    max_depth,
)
from worker.matrix.room_versions import ROOM_VERSIONS

pytestmark = pytest.mark.unit


def test_depth_is_one_more_than_the_deepest_prev_event() -> None:
    """ "The maximum depth of the `prev_events`, plus one."""
    version = ROOM_VERSIONS["10"]
    assert depth_for_new_event(version, []) == 1
    assert depth_for_new_event(version, [3]) == 4
    assert depth_for_new_event(version, [7, 2, 5]) == 8


@pytest.mark.parametrize(
    ("version", "limit"), [("1", 2**63 - 1), ("5", 2**63 - 1), ("6", 2**53 - 1), ("12", 2**53 - 1)]
)
def test_depth_is_capped(version: str, limit: int) -> None:
    """ "Must be less than the maximum value for an integer (2^63 - 1) [2^53 - 1 from v6].
    If the room's depth is already at the limit, the depth must be set to the limit."""
    room_version = ROOM_VERSIONS[version]
    assert max_depth(room_version) == limit
    assert depth_for_new_event(room_version, [limit - 1]) == limit
    assert depth_for_new_event(room_version, [limit]) == limit


def test_prev_events_are_the_deepest_extremities_up_to_the_limit() -> None:
    """`prev_events`: "Must contain less than or equal to 20 events"."""
    extremities = [(f"$e{n:02}", n % 7) for n in range(30)]
    chosen = choose_prev_events(extremities)
    assert len(chosen) == 20
    depths = dict(extremities)
    assert min(depths[e] for e in chosen) >= max(depths[e] for e in depths if e not in chosen)
    assert choose_prev_events(extremities) == chosen  # stable
    assert choose_prev_events([("$b", 1), ("$a", 1), ("$c", 2)], limit=2) == ["$c", "$a"]
    assert choose_prev_events([]) == []


def test_auth_events_are_taken_from_the_state() -> None:
    """ "Auth events selection": the create, power levels and sender's member events; for a
    membership, the target's member event, the join rules, the third-party invite named by
    `content.third_party_invite.signed.token`, each "if any"."""
    state = {
        (CREATE, ""): "$create",
        (POWER_LEVELS, ""): "$pl",
        (JOIN_RULES, ""): "$jr",
        (MEMBER, "@a:x"): "$ma",
        (MEMBER, "@b:y"): "$mb",
        (THIRD_PARTY_INVITE, "tok"): "$tpi",
        ("m.room.topic", ""): "$topic",
    }
    v10, v12 = ROOM_VERSIONS["10"], ROOM_VERSIONS["12"]
    message = auth_event_ids(v10, "m.room.message", None, "@a:x", {}, state)
    assert message == ["$create", "$ma", "$pl"]
    # v12 cites no create event (the room ID names it).
    assert auth_event_ids(v12, "m.room.message", None, "@a:x", {}, state) == ["$ma", "$pl"]
    # A sender without a member event: that entry is simply absent.
    assert auth_event_ids(v10, "m.room.message", None, "@z:z", {}, state) == ["$create", "$pl"]
    invite = {"membership": "invite", "third_party_invite": {"signed": {"token": "tok"}}}
    assert auth_event_ids(v10, MEMBER, "@b:y", "@a:x", invite, state) == [
        "$create", "$jr", "$ma", "$mb", "$pl", "$tpi",
    ]  # fmt: skip
    assert auth_event_ids(v10, CREATE, "", "@a:x", {}, state) == []
