"""The `m.room.member` rule (rule 5 in v1–v5 and v12, rule 4 in v6–v11).

"Current membership" of a user is the `membership` of their member event in the state
checked against; no event means they never joined, which every rule treats as `leave`.

Rule 4.2/5.2 of v8+ ("if `content` has a `join_authorised_via_users_server` key, the
event must be validly signed by that user's homeserver") is deliberately not checked
here: signatures are the publisher's business under the project contract, so the
publisher verifies that signature along with the sender's before the event arrives.
"""

from __future__ import annotations

from collections.abc import Mapping

from worker.matrix.auth.errors import AuthError
from worker.matrix.auth.identifiers import domain_of
from worker.matrix.auth.power_levels import Level, PowerLevels, creator_of, describe_level
from worker.matrix.auth.selection import JOIN_RULES_KEY
from worker.matrix.auth.third_party_invite import signed_by_invite_keys
from worker.matrix.events import MEMBER, THIRD_PARTY_INVITE, Event, StateKey

State = Mapping[StateKey, Event]


def membership_of(state: State, user_id: str) -> str | None:
    member = state.get((MEMBER, user_id))
    return member.membership if member is not None else None


def _shown(membership: str | None) -> str:
    return membership if membership is not None else "none (never joined)"


def federates(create: Event) -> bool:
    """Whether users of other servers may take part in the room.

    The spec blocks them when the create event's `m.federate` is "set to `false`";
    Synapse, and so this server, blocks them unless it is absent or exactly `true`
    (docs/matrix.md)."""
    return create.content.get("m.federate", True) is True


def join_rule_of(state: State) -> object:
    """The join rule in force; a room without a join rules event is invite-only."""
    join_rules = state.get(JOIN_RULES_KEY)
    if join_rules is None:
        return "invite"
    return join_rules.content.get("join_rule", "invite")


def check_membership(event: Event, state: State, create: Event, levels: PowerLevels) -> None:
    """Raise `AuthError` unless the membership change is allowed."""
    target = event.state_key
    if target is None:
        raise AuthError(f"{event.sender}'s m.room.member event has no state_key")
    membership = event.membership
    if membership is None:
        raise AuthError(
            f"{event.sender}'s m.room.member event for {target} has no string content.membership"
        )
    version = event.room_version
    if membership == "join" and _is_creators_first_join(event, target, create):
        return
    # Beyond the spec, as Synapse does: a room that does not federate takes no member
    # of another server than the creator's, whoever sends the event (docs/matrix.md).
    if not federates(create) and domain_of(target) != domain_of(create.sender):
        raise AuthError(
            f"{event.sender} cannot make {target} a member: the room's m.room.create sets "
            f"m.federate to {create.content.get('m.federate')!r} and {target} is not on the "
            "creator's server"
        )
    if membership == "join":
        _check_join(event, target, state, create, levels)
    elif membership == "invite":
        _check_invite(event, target, state, levels)
    elif membership == "leave":
        _check_leave(event, target, state, levels)
    elif membership == "ban":
        _check_ban(event, target, state, levels)
    elif membership == "knock" and version.knock:
        _check_knock(event, target, state)
    else:
        raise AuthError(
            f"{event.sender} set {target}'s membership to {membership!r}, which room version "
            f"{version.identifier} does not know"
        )


def _check_join(
    event: Event, target: str, state: State, create: Event, levels: PowerLevels
) -> None:
    version = event.room_version
    sender = event.sender
    if sender != target:
        raise AuthError(
            f"{sender} cannot join {target} to the room: only a user can join themselves"
        )
    current = membership_of(state, sender)
    if current == "ban":
        raise AuthError(f"{sender} cannot join: they are banned from the room")
    join_rule = join_rule_of(state)
    if join_rule == "invite" or (join_rule == "knock" and version.knock):
        if current in ("invite", "join"):
            return
        raise AuthError(
            f"{sender} cannot join: the join rule is {join_rule} and their membership is "
            f"{_shown(current)}, not invite or join"
        )
    if (join_rule == "restricted" and version.restricted_join_rule) or (
        join_rule == "knock_restricted" and version.knock_restricted_join_rule
    ):
        if current in ("invite", "join"):
            return
        _check_join_authoriser(event, state, levels, join_rule)
        return
    if join_rule == "public":
        return
    raise AuthError(
        f"{sender} cannot join: the join rule is {join_rule!r}, which does not let users "
        f"join freely in room version {version.identifier}"
    )


def _is_creators_first_join(event: Event, target: str, create: Event) -> bool:
    """The creator's own first join, straight after the create event."""
    return event.prev_event_ids == (create.event_id,) and target == creator_of(create)


def _check_join_authoriser(
    event: Event, state: State, levels: PowerLevels, join_rule: object
) -> None:
    sender = event.sender
    via = event.content.get("join_authorised_via_users_server")
    if not isinstance(via, str):
        raise AuthError(
            f"{sender} cannot join: the join rule is {join_rule} and they are not invited, "
            "and their join has no join_authorised_via_users_server"
        )
    via_membership = membership_of(state, via)
    if via_membership != "join":
        raise AuthError(
            f"{sender}'s join is authorised via {via}, whose membership is "
            f"{_shown(via_membership)}, not join"
        )
    via_level = levels.user_level(via)
    invite_level = levels.named("invite")
    if via_level < invite_level:
        raise AuthError(
            f"{sender}'s join is authorised via {via}, who has {describe_level(via_level)} "
            f"but inviting needs {invite_level}"
        )


def _check_invite(event: Event, target: str, state: State, levels: PowerLevels) -> None:
    sender = event.sender
    content = event.content
    if "third_party_invite" in content:
        _check_third_party_invite(event, target, state)
        return
    sender_membership = membership_of(state, sender)
    if sender_membership != "join":
        raise AuthError(
            f"{sender} cannot invite {target}: their own membership is "
            f"{_shown(sender_membership)}, not join"
        )
    target_membership = membership_of(state, target)
    if target_membership in ("join", "ban"):
        raise AuthError(
            f"{sender} cannot invite {target}: {target}'s membership is {target_membership}"
        )
    _require(levels, sender, levels.user_level(sender), "invite", f"invite {target}")


def _check_third_party_invite(event: Event, target: str, state: State) -> None:
    sender = event.sender
    if membership_of(state, target) == "ban":
        raise AuthError(
            f"{sender} cannot invite {target} by third-party invite: {target} is banned"
        )
    invite = event.content["third_party_invite"]
    signed = invite.get("signed") if isinstance(invite, Mapping) else None
    if not isinstance(signed, Mapping):
        raise AuthError(
            f"{sender}'s third-party invite of {target} has no content.third_party_invite.signed"
        )
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError(
            f"{sender}'s third-party invite of {target} lacks a string mxid or token in signed"
        )
    if mxid != target:
        raise AuthError(f"{sender}'s third-party invite was signed for {mxid}, not for {target}")
    invite_event = state.get((THIRD_PARTY_INVITE, token))
    if invite_event is None:
        raise AuthError(
            f"{sender}'s invite of {target} redeems third-party invite token {token!r}, but no "
            "m.room.third_party_invite with that state_key is in the room state"
        )
    if invite_event.sender != sender:
        raise AuthError(
            f"{sender} cannot redeem third-party invite {token!r}: it was sent by "
            f"{invite_event.sender}"
        )
    if not signed_by_invite_keys(signed, invite_event):
        raise AuthError(
            f"{sender}'s third-party invite of {target}: no signature in signed verifies under "
            f"the public keys of m.room.third_party_invite {token!r}"
        )


def _check_leave(event: Event, target: str, state: State, levels: PowerLevels) -> None:
    sender = event.sender
    sender_membership = membership_of(state, sender)
    if sender == target:
        allowed = ("invite", "join", "knock") if event.room_version.knock else ("invite", "join")
        if sender_membership in allowed:
            return
        raise AuthError(
            f"{sender} cannot leave: their membership is {_shown(sender_membership)}, not "
            f"{' or '.join(allowed)}"
        )
    if sender_membership != "join":
        raise AuthError(
            f"{sender} cannot kick or unban {target}: their own membership is "
            f"{_shown(sender_membership)}, not join"
        )
    sender_level = levels.user_level(sender)
    if membership_of(state, target) == "ban":
        _require(levels, sender, sender_level, "ban", f"unban {target}")
    _require(levels, sender, sender_level, "kick", f"remove {target}")
    _require_above(sender, sender_level, target, levels.user_level(target), "remove")


def _check_ban(event: Event, target: str, state: State, levels: PowerLevels) -> None:
    sender = event.sender
    sender_membership = membership_of(state, sender)
    if sender_membership != "join":
        raise AuthError(
            f"{sender} cannot ban {target}: their own membership is "
            f"{_shown(sender_membership)}, not join"
        )
    sender_level = levels.user_level(sender)
    _require(levels, sender, sender_level, "ban", f"ban {target}")
    _require_above(sender, sender_level, target, levels.user_level(target), "ban")


def _check_knock(event: Event, target: str, state: State) -> None:
    sender = event.sender
    version = event.room_version
    join_rule = join_rule_of(state)
    if not (
        join_rule == "knock"
        or (join_rule == "knock_restricted" and version.knock_restricted_join_rule)
    ):
        raise AuthError(f"{sender} cannot knock: the room's join rule is {join_rule!r}, not knock")
    if sender != target:
        raise AuthError(f"{sender} cannot knock on behalf of {target}")
    current = membership_of(state, sender)
    if current in ("ban", "invite", "join"):
        raise AuthError(f"{sender} cannot knock: their membership is already {current}")


def _require(levels: PowerLevels, sender: str, sender_level: Level, name: str, action: str) -> None:
    needed = levels.named(name)
    if sender_level < needed:
        raise AuthError(
            f"{sender} has {describe_level(sender_level)} but needs {needed} (the {name} "
            f"level) to {action}"
        )


def _require_above(
    sender: str, sender_level: Level, target: str, target_level: Level, action: str
) -> None:
    if target_level >= sender_level:
        raise AuthError(
            f"{sender} cannot {action} {target}: {target} has {describe_level(target_level)}, "
            f"not below {sender}'s {describe_level(sender_level)}"
        )
