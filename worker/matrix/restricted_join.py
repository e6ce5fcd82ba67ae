"""Restricted joins: may a user join through the allow list, and who can vouch for it?

Rooms whose join rule is `restricted` (room versions 8+) or `knock_restricted` (10+)
let users join without an invite if they meet one of the "allow conditions" of
`m.room.join_rules` (client-server API, "Restricted rooms"). The join event must then
name, in `join_authorised_via_users_server`, a member of the room who could have invited
the user; the auth rules check that member (v10 rule 4.3.5.2: "If the
`join_authorised_via_users_server` key in `content` is not a user with sufficient
permission to invite other users or is not a joined member of the room, reject.").
A resident server answering `/make_join` and `/send_join` (server-server API,
"Restricted rooms") decides whether the conditions are met and picks one of *its own*
users for that key.

The outcomes and their errors, from the server-server API:
- the conditions hold and a local user can vouch → allowed, with that user;
- "the resident server is unable to validate any of the conditions, usually because
  [it] does not have state information about rooms required by the conditions" →
  400 `M_UNABLE_TO_AUTHORISE_JOIN`;
- "the joining user satisfies one of the conditions, though the resident server would
  be unable to meet the auth rules governing `join_authorised_via_users_server`" →
  400 `M_UNABLE_TO_GRANT_JOIN`;
- "If the joining server fails all conditions then a 403 `M_FORBIDDEN` error is used".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from worker.matrix.auth.identifiers import domain_of
from worker.matrix.auth.membership import join_rule_of, membership_of
from worker.matrix.auth.power_levels import PowerLevels
from worker.matrix.auth.selection import CREATE_KEY, JOIN_RULES_KEY
from worker.matrix.events import MEMBER, Event, StateKey
from worker.matrix.room_versions import RoomVersion

#: The only allow condition the spec defines ("Conditions").
ROOM_MEMBERSHIP: Final = "m.room_membership"

State = Mapping[StateKey, Event]
#: `joined_in(room_id)`: whether the joining user is joined to that room: True or False,
#: or None when this server cannot tell (it has no state for the room).
JoinedIn = Callable[[str], bool | None]


class Outcome(Enum):
    """What a resident server answers to a join that may need the allow list."""

    #: The join does not depend on the allow list (not a restricted room, or the user is
    #: invited or joined already); the ordinary auth rules decide.
    NOT_RESTRICTED = "not_restricted"
    #: A condition holds and `authoriser` can vouch for the join.
    ALLOWED = "allowed"
    #: 400 M_UNABLE_TO_AUTHORISE_JOIN.
    UNABLE_TO_AUTHORISE = "unable_to_authorise"
    #: 400 M_UNABLE_TO_GRANT_JOIN.
    UNABLE_TO_GRANT = "unable_to_grant"
    #: 403 M_FORBIDDEN.
    FORBIDDEN = "forbidden"


@dataclass(frozen=True, slots=True)
class RestrictedJoinVerdict:
    outcome: Outcome
    #: For `ALLOWED`: the local user to name in `join_authorised_via_users_server`.
    authoriser: str | None = None


@dataclass(frozen=True, slots=True)
class AllowConditions:
    """The `allow` list of a join rules content, as far as it can be read."""

    #: Room IDs of the well-formed `m.room_membership` conditions, in order.
    room_ids: tuple[str, ...]
    #: Whether some condition has a type this server does not know (another server might).
    has_unknown: bool


def uses_allow_list(room_version: RoomVersion, join_rule: object) -> bool:
    """Whether the join rule is one whose joins may go through the allow list.

    `restricted` exists from room version 8, `knock_restricted` from 10; in other
    versions these values are unknown join rules, which let nobody join freely.
    """
    if join_rule == "restricted":
        return room_version.restricted_join_rule
    if join_rule == "knock_restricted":
        return room_version.knock_restricted_join_rule
    return False


def allow_conditions(join_rules_content: Mapping[str, Any]) -> AllowConditions:
    """Read `allow`: "If no conditions are available, or none match the required schema,
    then the joining server is considered to have failed all conditions."

    A non-list `allow` and non-object entries are ignored; an `m.room_membership` entry
    without a string `room_id` is ignored; an entry of another `type` is counted as
    unknown (Synapse's reading: it makes a failed check "unable to authorise" rather
    than "forbidden", since another server might understand it).
    """
    allow = join_rules_content.get("allow")
    if not isinstance(allow, list):
        return AllowConditions((), has_unknown=False)
    room_ids: list[str] = []
    has_unknown = False
    for condition in allow:
        if not isinstance(condition, Mapping):
            continue
        if condition.get("type") != ROOM_MEMBERSHIP:
            has_unknown = True
            continue
        room_id = condition.get("room_id")
        if isinstance(room_id, str):
            room_ids.append(room_id)
    return AllowConditions(tuple(room_ids), has_unknown)


def conditions_outcome(conditions: AllowConditions, joined_in: JoinedIn) -> Outcome:
    """Whether the user meets a condition: `ALLOWED`, `UNABLE_TO_AUTHORISE` or `FORBIDDEN`.

    Client-server API, "Conditions": `m.room_membership` "requires the user trying to join
    the room to be a *joined* member of another room".
    """
    answers = [joined_in(room_id) for room_id in conditions.room_ids]
    if any(answer is True for answer in answers):
        return Outcome.ALLOWED
    # No condition is known to hold: if one could hold without this server knowing it,
    # another resident server may be able to decide.
    if conditions.has_unknown or any(answer is None for answer in answers):
        return Outcome.UNABLE_TO_AUTHORISE
    return Outcome.FORBIDDEN


def authorising_users(state: State, server_name: str) -> list[str]:
    """The users of `server_name` who could vouch for a restricted join, best first.

    The auth rule for a join via `join_authorised_via_users_server` requires "a user with
    sufficient permission to invite other users" who is "a joined member of the room":
    joined, with a power level at least the `invite` level.
    Best is the highest power level, then the smallest user ID, so that the choice is
    stable.
    """
    create = state.get(CREATE_KEY)
    if create is None:
        return []
    levels = PowerLevels(state, create.room_version)
    invite_level = levels.named("invite")
    candidates = [
        (levels.user_level(user_id), user_id)
        for user_id in _joined_members(state)
        if domain_of(user_id) == server_name
    ]
    qualified = [(level, user) for level, user in candidates if level >= invite_level]
    qualified.sort(key=lambda pair: (-pair[0], pair[1]))
    return [user for _, user in qualified]


def _joined_members(state: State) -> Iterable[str]:
    for (event_type, state_key), event in state.items():
        if event_type == MEMBER and event.membership == "join":
            yield state_key


def restricted_join(
    state: State, user_id: str, server_name: str, joined_in: JoinedIn
) -> RestrictedJoinVerdict:
    """Decide a join of `user_id` into the room whose current state is `state`.

    `server_name` is this (resident) server; `joined_in` answers for the rooms the allow
    list names. The ordinary auth rules still apply to the join event afterwards (a ban,
    for instance, is theirs to refuse).
    """
    create = state.get(CREATE_KEY)
    if create is None:
        raise ValueError("the state has no m.room.create event to read the room version from")
    join_rules = state.get(JOIN_RULES_KEY)
    if join_rules is None or not uses_allow_list(create.room_version, join_rule_of(state)):
        return RestrictedJoinVerdict(Outcome.NOT_RESTRICTED)
    # "If the user has an invite to the room then the restrictions will not affect them."
    # A joined user's join is a profile change, which needs no conditions either.
    if membership_of(state, user_id) in ("invite", "join"):
        return RestrictedJoinVerdict(Outcome.NOT_RESTRICTED)
    outcome = conditions_outcome(allow_conditions(join_rules.content), joined_in)
    if outcome is not Outcome.ALLOWED:
        return RestrictedJoinVerdict(outcome)
    authorisers = authorising_users(state, server_name)
    if not authorisers:
        return RestrictedJoinVerdict(Outcome.UNABLE_TO_GRANT)
    return RestrictedJoinVerdict(Outcome.ALLOWED, authorisers[0])
