"""Restricted joins, against the client-server and server-server spec text.

Client-server API, "Restricted rooms": "If the user has an invite to the room then the
restrictions will not affect them." "When joining without an invite, the server MUST
verify that the requesting user meets at least one of the conditions. If no conditions
can be verified or no conditions are satisfied, the user will not be able to join."
"Conditions": `m.room_membership` "requires the user trying to join the room to be a
*joined* member of another room (specifically, the `room_id` accompanying the
condition)".
"""

from __future__ import annotations

from typing import Any

import pytest

from worker.matrix.builder import RoomBuilder
from worker.matrix.events import Event, StateKey
from worker.matrix.restricted_join import (
    AllowConditions,
    Outcome,
    RestrictedJoinVerdict,
    allow_conditions,
    authorising_users,
    restricted_join,
    uses_allow_list,
)
from worker.matrix.room_versions import ROOM_VERSIONS

pytestmark = pytest.mark.unit

SPACE, OTHER = "!space:a", "!other:c"
ALLOW = [{"type": "m.room_membership", "room_id": SPACE}]


def room(
    version: str = "10",
    join_rule: str = "restricted",
    allow: Any = ALLOW,
    users: dict[str, int] | None = None,
    invite: int = 0,
) -> tuple[RoomBuilder, dict[StateKey, Event]]:
    builder = RoomBuilder(version, "@alice:a")
    levels = builder.default_power_levels()
    levels["users"] = {**levels["users"], **(users or {})}
    levels["invite"] = invite
    builder.bootstrap(power_levels=levels)
    builder.build(
        "m.room.join_rules", "@alice:a", {"join_rule": join_rule, "allow": allow}, state_key=""
    )
    return builder, state_of(builder)


def state_of(builder: RoomBuilder) -> dict[StateKey, Event]:
    return {key: builder.event(eid) for key, eid in builder.current_state.items()}


def joined(*rooms: str) -> Any:
    return lambda room_id: room_id in rooms


def test_join_rules_that_use_the_allow_list() -> None:
    """`restricted` from room version 8, `knock_restricted` from 10 (rooms, "Feature
    matrix")."""
    assert not uses_allow_list(ROOM_VERSIONS["7"], "restricted")
    assert uses_allow_list(ROOM_VERSIONS["8"], "restricted")
    assert not uses_allow_list(ROOM_VERSIONS["9"], "knock_restricted")
    assert uses_allow_list(ROOM_VERSIONS["10"], "knock_restricted")
    for rule in ("public", "invite", "knock", "private", None):
        assert not uses_allow_list(ROOM_VERSIONS["12"], rule)


def test_member_of_an_allowed_room_may_join_through_a_local_inviter() -> None:
    _, state = room()
    verdict = restricted_join(state, "@bob:b", "a", joined(SPACE))
    assert verdict == RestrictedJoinVerdict(Outcome.ALLOWED, "@alice:a")


def test_invited_or_joined_users_are_not_restricted() -> None:
    """ "If the user has an invite to the room then the restrictions will not affect them."""
    builder, _ = room()
    builder.invite("@alice:a", "@bob:b")
    verdict = restricted_join(state_of(builder), "@bob:b", "a", joined())
    assert verdict.outcome is Outcome.NOT_RESTRICTED
    builder.join("@carol:c")
    verdict = restricted_join(state_of(builder), "@carol:c", "a", joined())
    assert verdict.outcome is Outcome.NOT_RESTRICTED


def test_other_join_rules_are_not_restricted() -> None:
    for version, rule in [
        ("10", "public"),
        ("10", "invite"),
        ("7", "restricted"),
        ("9", "knock_restricted"),
    ]:
        _, state = room(version, rule)
        assert restricted_join(state, "@bob:b", "a", joined()).outcome is Outcome.NOT_RESTRICTED
    _, state = room("10", "knock_restricted")
    assert restricted_join(state, "@bob:b", "a", joined(SPACE)).outcome is Outcome.ALLOWED


def test_failing_every_condition_is_forbidden() -> None:
    """ "If the joining server fails all conditions then a 403 `M_FORBIDDEN` error is
    used"; "If no conditions are available, or none match the required schema, then the
    joining server is considered to have failed all conditions."""
    _, state = room()
    assert restricted_join(state, "@bob:b", "a", joined(OTHER)).outcome is Outcome.FORBIDDEN
    for allow in (
        [],
        "x",
        [{"type": "m.room_membership"}],
        [{"type": "m.room_membership", "room_id": 5}],
        [7],
    ):
        _, state = room(allow=allow)
        assert restricted_join(state, "@bob:b", "a", joined(SPACE)).outcome is Outcome.FORBIDDEN


def test_unverifiable_conditions() -> None:
    """ "unable to validate any of the conditions, usually because the resident server
    does not have state information about rooms required by the conditions" → 400
    M_UNABLE_TO_AUTHORISE_JOIN."""
    _, state = room()
    unknown = restricted_join(state, "@bob:b", "a", lambda room_id: None)
    assert unknown.outcome is Outcome.UNABLE_TO_AUTHORISE
    _, state = room(allow=[{"type": "org.example.cond"}, *ALLOW])
    assert restricted_join(state, "@bob:b", "a", joined()).outcome is Outcome.UNABLE_TO_AUTHORISE
    # A condition that holds wins over ones that cannot be checked.
    assert restricted_join(state, "@bob:b", "a", joined(SPACE)).outcome is Outcome.ALLOWED


def test_no_local_user_can_vouch() -> None:
    """ "the joining user satisfies one of the conditions, though the resident server would
    be unable to meet the auth rules governing `join_authorised_via_users_server`" → 400
    M_UNABLE_TO_GRANT_JOIN."""
    _, state = room(invite=50, users={"@alice:a": 10})
    verdict = restricted_join(state, "@bob:b", "a", joined(SPACE))
    assert verdict.outcome is Outcome.UNABLE_TO_GRANT
    # Another server's member does not help this server.
    _, state = room()
    assert restricted_join(state, "@bob:b", "z", joined(SPACE)).outcome is Outcome.UNABLE_TO_GRANT


def test_authorisers_are_joined_local_users_with_the_invite_level() -> None:
    """v10 rule 4.3.5.2: the authoriser must have "sufficient permission to invite other
    users" and be "a joined member of the room"."""
    builder, _ = room(invite=20, users={"@dan:a": 20, "@eve:a": 90, "@fay:a": 19, "@gil:a": 50})
    for user in ("@dan:a", "@eve:a", "@fay:a", "@gil:b"):
        builder.join(user)
    builder.invite("@alice:a", "@gil:a")
    state = state_of(builder)
    # Highest level first, then by user ID; @fay is below the invite level, @gil:a only
    # invited, @gil:b on another server.
    assert authorising_users(state, "a") == ["@alice:a", "@eve:a", "@dan:a"]


def test_allow_conditions_parsing() -> None:
    content = {
        "allow": [
            {"type": "m.room_membership", "room_id": "!x:a"},
            {"type": "m.room_membership", "room_id": ["!y:a"]},
            {"type": "m.other", "room_id": "!z:a"},
            "junk",
            {"type": "m.room_membership", "room_id": "!w:a"},
        ]
    }
    assert allow_conditions(content) == AllowConditions(("!x:a", "!w:a"), has_unknown=True)
    assert allow_conditions({}) == AllowConditions((), has_unknown=False)
