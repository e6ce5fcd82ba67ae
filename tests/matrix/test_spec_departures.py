"""Where our authorization and PDU checks once departed from the spec or from Synapse.

Each test quotes the spec and asks Synapse's own `check_state_dependent_auth_rules` for
its verdict on the same events. Where the two disagree, we follow Synapse and
docs/matrix.md says why.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.matrix.test_auth_factory import Room, started, versions
from worker.matrix.auth import AuthError, check_auth
from worker.matrix.builder import RoomBuilder
from worker.matrix.events import Event
from worker.matrix.hashes import content_hash, encode_base64
from worker.matrix.pdu import PduError, parse_pdu
from worker.matrix.room_versions import ROOM_VERSIONS

synapse_auth = pytest.importorskip("tests.oracle.synapse_auth")

ALICE, BOB, CAROL = "@alice:a", "@bob:b", "@carol:a"


def _synapse_allows(room: Room, event: Event) -> bool:
    """Synapse's verdict on `event` against the room's current state."""
    oracle = synapse_auth.SynapseOracle()
    try:
        for state_event in room.state.values():
            oracle.add(state_event)
        return oracle.check_against_state(event, room.state) is None
    finally:
        oracle.close()


def _ours_allows(room: Room, event: Event) -> bool:
    try:
        check_auth(event, room.state)
    except AuthError:
        return False
    return True


def _agree(room: Room, event: Event, allowed: bool) -> None:
    assert _ours_allows(room, event) is allowed
    assert _synapse_allows(room, event) is allowed


# -- the first m.room.power_levels event ----------------------------------------------

#: Values outside `users` that no version accepts as a level.
BAD_OUTSIDE_USERS: list[dict[str, Any]] = [
    {"ban": "fifty"},
    {"kick": {"level": 50}},
    {"events": {"m.room.name": "high"}},
    {"events": ["m.room.name"]},
    {"notifications": {"room": "many"}},
    {"notifications": 7},
]


@pytest.mark.parametrize("content", BAD_OUTSIDE_USERS)
@pytest.mark.parametrize("version", versions(1, 9))
def test_first_power_levels_v1_to_v9_check_only_users(version: str, content: Any) -> None:
    """v1–v9 auth rules, `m.room.power_levels`:

        1. If the `users` property in `content` is not an object with keys that are
           valid user IDs with values that are integers (or a string that is an
           integer), reject.
        2. If there is no previous `m.room.power_levels` event in the room, allow.

    Nothing else is validated before step 2, so a room's first power levels event is
    allowed whatever its other values hold (Synapse's `_check_power_levels` likewise
    checks only `users` in these versions before it looks for a previous event)."""
    room = started(version)
    _agree(room, room.power(ALICE, users={ALICE: 100}, **content), allowed=True)
    _agree(room, room.power(ALICE, users={"alice": 100}, **content), allowed=False)


@pytest.mark.parametrize("content", [*BAD_OUTSIDE_USERS, {"state_default": "50"}])
@pytest.mark.parametrize("version", versions(10, 12))
def test_first_power_levels_from_v10_check_every_level(version: str, content: Any) -> None:
    """v10+ add, before "If there is no previous `m.room.power_levels` event in the
    room, allow":

        If any of the properties `users_default`, `events_default`, `state_default`,
        `ban`, `redact`, `kick`, or `invite` in `content` are present and not an
        integer, reject.
        If either of the properties `events` or `notifications` in `content` are
        present and not an object with values that are integers, reject."""
    room = started(version)
    users = {} if version == "12" else {ALICE: 100}
    _agree(room, room.power(ALICE, users=users, **content), allowed=False)
    _agree(room, room.power(ALICE, users=users, ban=50), allowed=True)


# -- v1–v2 redactions ---------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_v1_v2_redaction_allows_on_the_redact_level_first(version: str) -> None:
    """v1–v2 auth rules, `m.room.redaction`:

        1. If the `sender`'s power level is greater than or equal to the *redact
           level*, allow.
        2. If the domain of the `event_id` of the event being redacted is the same as
           the domain of the `event_id` of the `m.room.redaction`, allow.
        3. Otherwise, reject.

    A sender with the redact level is allowed before `redacts` is looked at, whatever
    it holds. Below that level a `redacts` without a domain cannot match (Synapse fails
    on it), and a missing `redacts` is allowed as Synapse allows it: the spec would
    reject it at step 3, but it redacts nothing (docs/matrix.md)."""
    room = started(version, BOB, users={ALICE: 100}, redact=50)
    redaction = "m.room.redaction"
    _agree(room, room.make(redaction, ALICE, {}), allowed=True)
    _agree(room, room.make(redaction, ALICE, {}, redacts="not_an_event_id"), allowed=True)
    _agree(room, room.make(redaction, BOB, {}, redacts="not_an_event_id"), allowed=False)
    _agree(room, room.make(redaction, BOB, {}, redacts="$99:a"), allowed=False)
    _agree(room, room.make(redaction, BOB, {}, redacts="$99:b"), allowed=True)
    _agree(room, room.make(redaction, BOB, {}), allowed=True)


# -- m.federate -----------------------------------------------------------------------


@pytest.mark.parametrize("federate", [False, "false", 0, None, [], "true", 1])
@pytest.mark.parametrize("version", ["1", "10", "12"])
def test_m_federate_blocks_anything_but_true(version: str, federate: object) -> None:
    """The spec: "If the `content` of the `m.room.create` event in the room state has
    the property `m.federate` set to `false`, and the `sender` domain of the event does
    not match the `sender` domain of the create event, reject."

    Synapse blocks other servers unless `m.federate` is absent or exactly `true`
    (`_can_federate`), and so do we (docs/matrix.md)."""
    room = Room(version, create_content={"m.federate": federate})
    room.join(ALICE)
    room.set_state("m.room.join_rules", {"join_rule": "public"})
    _agree(room, room.member(BOB, "join"), allowed=False)
    _agree(room, room.member(CAROL, "join"), allowed=True)


@pytest.mark.parametrize("create_content", [{}, {"m.federate": True}])
def test_m_federate_absent_or_true_lets_other_servers_in(create_content: Any) -> None:
    room = Room("10", create_content=create_content)
    room.join(ALICE)
    room.set_state("m.room.join_rules", {"join_rule": "public"})
    _agree(room, room.member(BOB, "join"), allowed=True)


@pytest.mark.parametrize("version", ["1", "10", "12"])
def test_unfederated_room_takes_no_member_of_another_server(version: str) -> None:
    """The spec checks only the sender's domain against `m.federate`; Synapse also
    rejects a membership change whose *target* is on another server than the
    creator's (`_is_membership_change_allowed`), so an invite cannot reach out of an
    unfederated room. We do the same (docs/matrix.md)."""
    room = Room(version, create_content={"m.federate": False})
    room.join(ALICE)
    room.set_state("m.room.join_rules", {"join_rule": "public"})
    _agree(room, room.member(ALICE, "invite", BOB), allowed=False)
    _agree(room, room.member(ALICE, "invite", CAROL), allowed=True)


# -- the sender ---------------------------------------------------------------------------


def _with_sender(event: Event, sender: str) -> dict[str, Any]:
    """The event's PDU from another sender, with a content hash that matches again."""
    pdu = copy.deepcopy(dict(event.pdu))
    pdu["sender"] = sender
    digest = content_hash(pdu, strict=event.room_version.strict_canonical_json)
    pdu["hashes"] = {"sha256": encode_base64(digest)}
    return pdu


@pytest.mark.parametrize("sender", ["nodomain", "alice:a", "@alice", "@alice:", "@a:b c", ""])
@pytest.mark.parametrize("version", ["1", "10", "12"])
def test_sender_must_be_a_user_id(version: str, sender: str) -> None:
    """The PDU's `sender` is "The ID of the user sending the event" (server-server API,
    PDU schema), and a user ID "has the form: @localpart:domain" (appendices, "User
    Identifiers"). Without the check a v12 create event from "nodomain" was accepted
    and its sender became a creator with infinite power. Synapse cannot take the
    domain of such a sender and drops the event; we dead-letter it as `bad_sender`."""
    builder = RoomBuilder(version, ALICE)
    create = builder.create()
    room_version = ROOM_VERSIONS[version]
    with pytest.raises(PduError) as info:
        parse_pdu(_with_sender(create, sender), room_version)
    assert info.value.code == "bad_sender"
    message = builder.message(ALICE, "hi", prev_events=[create.event_id], state={})
    with pytest.raises(PduError) as info:
        parse_pdu(_with_sender(message, sender), room_version)
    assert info.value.code == "bad_sender"
    assert parse_pdu(_with_sender(message, "@historical_User!:a:8448"), room_version)
