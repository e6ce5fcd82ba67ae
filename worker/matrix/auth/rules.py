"""The authorization rules proper: is this event allowed by this state?

`check_auth` is run up to three times per event by the pipeline (server-server spec,
"Checks performed on receipt of a PDU"): against the state built from the event's own
auth events, against the state before the event, and against the room's current state
(failing only the last is a soft failure). The rules are those of `content/rooms/vN.md`;
reasons name a rule by what it checks rather than by its number, because the numbers
shift between room versions while the rules keep their meaning.

The rule "considering the event's auth_events" is not here but in
`selection.validate_auth_events`: it looks at a list of events, not at a state.
"""

from __future__ import annotations

from collections.abc import Mapping

from worker.matrix.auth.errors import AuthError
from worker.matrix.auth.identifiers import domain_of, is_valid_user_id
from worker.matrix.auth.membership import check_membership, federates, membership_of
from worker.matrix.auth.power_levels import (
    Level,
    PowerLevels,
    check_power_levels_event,
    describe_level,
)
from worker.matrix.auth.selection import CREATE_KEY
from worker.matrix.events import (
    ALIASES,
    CREATE,
    MEMBER,
    POWER_LEVELS,
    REDACTION,
    THIRD_PARTY_INVITE,
    Event,
    StateKey,
)
from worker.matrix.room_versions import ROOM_VERSIONS


def check_auth(event: Event, state: Mapping[StateKey, Event]) -> None:
    """Raise `AuthError` unless `event` is allowed by the state map `state`.

    `state` must hold the room's `m.room.create` event under `("m.room.create", "")`,
    also in v12 where the create is never an auth event.
    """
    if event.type == CREATE:
        check_create(event)
        return
    create = state.get(CREATE_KEY)
    if create is None:
        raise AuthError(
            f"{event.event_id} from {event.sender} cannot be checked: the state it is "
            "checked against has no m.room.create event"
        )
    if create.room_id != event.room_id:
        raise AuthError(
            f"{event.event_id} is for room {event.room_id}, but the m.room.create event it is "
            f"checked against is for {create.room_id}"
        )
    sender = event.sender
    if not federates(create) and domain_of(sender) != domain_of(create.sender):
        raise AuthError(
            f"{sender} cannot send to this room: its m.room.create sets m.federate to "
            f"{create.content.get('m.federate')!r} and {domain_of(sender)} is not the "
            "creator's server"
        )
    version = event.room_version
    if event.type == ALIASES and version.special_case_aliases:
        _check_aliases(event, domain_of(sender))
        return
    levels = PowerLevels(state, version)
    if event.type == MEMBER:
        check_membership(event, state, create, levels)
        return
    sender_membership = membership_of(state, sender)
    if sender_membership != "join":
        raise AuthError(
            f"{sender} cannot send {event.type}: their membership is "
            f"{sender_membership if sender_membership is not None else 'none'}, not join"
        )
    sender_level = levels.user_level(sender)
    if event.type == THIRD_PARTY_INVITE:
        invite_level = levels.named("invite")
        if sender_level < invite_level:
            raise AuthError(
                f"{sender} has {describe_level(sender_level)} but "
                f"m.room.third_party_invite needs {invite_level} (the invite level)"
            )
        return
    state_key = event.state_key
    needed = levels.send_level(event.type, state_key is not None)
    if sender_level < needed:
        raise AuthError(
            f"{sender} has {describe_level(sender_level)} but {event.type} needs {needed}"
        )
    if state_key is not None and state_key.startswith("@") and state_key != sender:
        raise AuthError(
            f"{sender} cannot send {event.type} with state_key {state_key}: a state_key that "
            "starts with '@' belongs to that user alone"
        )
    if event.type == POWER_LEVELS:
        check_power_levels_event(event, state, levels, sender_level)
    elif event.type == REDACTION and version.redaction_in_auth_rules:
        _check_redaction(event, levels, sender_level)


#: Event types whose rules read more of the event than `verdict_key` holds: its content
#: (membership, power levels, aliases, a third-party invite), its prev events (the
#: creator's first join), its target and ID (v1–v2 redactions), or no state at all
#: (the create event).
_READS_MORE_OF_THE_EVENT = frozenset(
    {CREATE, MEMBER, POWER_LEVELS, ALIASES, THIRD_PARTY_INVITE, REDACTION}
)

#: Everything `validate_auth_events` and `check_auth` read of an event of the other
#: types: room version, room, type, state key, sender, cited auth events.
VerdictKey = tuple[str, str, str, str | None, str, tuple[str, ...]]


def verdict_key(event: Event) -> VerdictKey | None:
    """What the rule on the auth events list and `check_auth` read of `event`, or None
    for the types whose rules read more of it (`_READS_MORE_OF_THE_EVENT`).

    Two events with the same key, checked against the same events, are allowed or
    rejected alike (only the wording of a rejection differs: it names the event), so a
    caller may reuse a pass. A rule that starts to read another field of such events
    must add it here."""
    if event.type in _READS_MORE_OF_THE_EVENT:
        return None
    return (
        event.room_version.identifier,
        event.room_id,
        event.type,
        event.state_key,
        event.sender,
        event.auth_event_ids,
    )


def check_create(event: Event) -> None:
    """The `m.room.create` rule (rule 1), which needs no state."""
    version = event.room_version
    sender = event.sender
    if event.state_key != "":
        raise AuthError(f"{sender}'s m.room.create event must have an empty state_key")
    if event.prev_event_ids:
        raise AuthError(
            f"{sender}'s m.room.create event has prev_events; it must be the first event"
        )
    if version.room_id_from_create:
        if "room_id" in event.pdu:
            raise AuthError(
                f"{sender}'s m.room.create event has a room_id; in room version "
                f"{version.identifier} the room ID is derived from the create event's ID"
            )
    else:
        sender_domain = domain_of(sender)
        if sender_domain is None or domain_of(event.room_id) != sender_domain:
            raise AuthError(
                f"{sender} cannot create room {event.room_id}: the room ID's domain is not "
                "the sender's"
            )
    room_version = event.content.get("room_version", "1")
    if not isinstance(room_version, str) or room_version not in ROOM_VERSIONS:
        raise AuthError(
            f"{sender}'s m.room.create names room_version {room_version!r}, which is not a "
            "known room version"
        )
    if not version.implicit_room_creator and "creator" not in event.content:
        raise AuthError(
            f"{sender}'s m.room.create has no content.creator, which room version "
            f"{version.identifier} requires"
        )
    if version.room_id_from_create and "additional_creators" in event.content:
        additional = event.content["additional_creators"]
        if not isinstance(additional, list) or not all(map(is_valid_user_id, additional)):
            raise AuthError(
                f"{sender}'s m.room.create has additional_creators {additional!r}; it must be "
                "a list of valid user IDs"
            )


def _check_aliases(event: Event, sender_domain: str | None) -> None:
    """v1–v5 `m.room.aliases`: a server may only set the aliases filed under its own name."""
    if event.state_key is None:
        raise AuthError(f"{event.sender}'s m.room.aliases event has no state_key")
    if event.state_key != sender_domain:
        raise AuthError(
            f"{event.sender} cannot set m.room.aliases for {event.state_key!r}: the state_key "
            f"must be the sender's server name, {sender_domain}"
        )


def _check_redaction(event: Event, levels: PowerLevels, sender_level: Level) -> None:
    """v1–v2 `m.room.redaction`: the redact level, or a redaction from the same server.

    From v3 on the auth rules let any redaction in and the redaction is only applied
    after a separate check, so this is only reached for v1–v2.
    """
    # 1. If the sender's power level is greater than or equal to the redact level, allow.
    redact_level = levels.named("redact")
    if sender_level >= redact_level:
        return
    redacts = event.redacts
    if redacts is None:
        # The spec would reject (there is no event whose domain could match); Synapse
        # allows a redaction that names nothing, and it redacts nothing (docs/matrix.md).
        return
    # 2. If the domain of the event_id of the event being redacted is the same as the
    #    domain of the event_id of the m.room.redaction, allow.
    target_domain = domain_of(redacts)
    if target_domain is not None and target_domain == domain_of(event.event_id):
        return
    # 3. Otherwise, reject.
    raise AuthError(
        f"{event.sender} has {describe_level(sender_level)} but redacting {redacts} from "
        f"another server needs {redact_level} (the redact level)"
    )
