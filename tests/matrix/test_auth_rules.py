"""Auth rules other than membership and power level changes, for every room version."""

from __future__ import annotations

import re

import pytest

from tests.matrix.test_auth_factory import ALL_VERSIONS, Room, started, versions
from worker.matrix.auth import AuthError, check_auth, check_create
from worker.matrix.events import CREATE, MEMBER, Event

ALICE, BOB, CAROL = "@alice:a", "@bob:b", "@carol:a"


def rejected(room: Room, event: Event, *words: str) -> str:
    with pytest.raises(AuthError) as info:
        room.check(event)
    reason = info.value.reason
    assert reason == str(info.value)
    for word in words:
        assert word in reason, reason
    return reason


# -- m.room.create -------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_create_is_allowed_without_any_state(version: str) -> None:
    room = Room(version)
    check_auth(room.create, {})
    check_create(room.create)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_create_with_prev_events_is_rejected(version: str) -> None:
    room = Room(version)
    content = dict(room.create.content)
    event = room.make(CREATE, ALICE, content, state_key="", prev=[room.create.event_id])
    rejected(room, event, "prev_events")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_create_state_key_must_be_empty(version: str) -> None:
    room = Room(version)
    event = room.make(CREATE, ALICE, dict(room.create.content), state_key="x", prev=[])
    rejected(room, event, "empty state_key")


@pytest.mark.parametrize("version", versions(1, 11))
def test_create_room_id_domain_must_be_senders(version: str) -> None:
    room = Room(version)
    event = room.make(CREATE, BOB, dict(room.create.content), state_key="", prev=[])
    rejected(room, event, BOB, "domain")
    room.check(room.make(CREATE, CAROL, dict(room.create.content), state_key="", prev=[]))


def test_create_in_v12_must_not_have_room_id() -> None:
    room = Room("12")
    event = room.make(CREATE, ALICE, {"room_version": "12"}, state_key="", prev=[], room_id="!x")
    rejected(room, event, "has a room_id", "12")


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("claimed", ["13", "1.0", 5, None])
def test_create_unknown_room_version_is_rejected(version: str, claimed: object) -> None:
    room = Room(version)
    content = {**room.create.content, "room_version": claimed}
    event = room.make(CREATE, ALICE, content, state_key="", prev=[])
    rejected(room, event, "room_version")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_create_without_room_version_means_version_1(version: str) -> None:
    room = Room(version)
    content = {k: v for k, v in room.create.content.items() if k != "room_version"}
    room.check(room.make(CREATE, ALICE, content, state_key="", prev=[]))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_create_creator_is_required_until_v11(version: str) -> None:
    room = Room(version)
    event = room.make(CREATE, ALICE, {"room_version": version}, state_key="", prev=[])
    if room.version.implicit_room_creator:
        room.check(event)
    else:
        rejected(room, event, "creator", version)


@pytest.mark.parametrize(
    "additional",
    [["@bob:b", "@carol:a"], [], ["@historical!user:x.org:8448"]],
)
def test_v12_valid_additional_creators(additional: list[str]) -> None:
    room = Room("12")
    room.check(
        room.make(
            CREATE,
            ALICE,
            {"room_version": "12", "additional_creators": additional},
            state_key="",
            prev=[],
        )
    )


@pytest.mark.parametrize(
    "additional",
    ["@bob:b", ["bob"], ["@bob"], [7], ["@bob:b", None], {"@bob:b": 1}, ["@bob:bad host"]],
)
def test_v12_invalid_additional_creators(additional: object) -> None:
    room = Room("12")
    content = {"room_version": "12", "additional_creators": additional}
    event = room.make(CREATE, ALICE, content, state_key="", prev=[])
    rejected(room, event, "additional_creators")


def test_additional_creators_mean_nothing_before_v12() -> None:
    room = Room("11", create_content={"additional_creators": "garbage"})
    room.join(ALICE)
    room.force(BOB, "join")
    # Bob is no creator in v11: with no power levels he has level 0.
    rejected(room, room.make("m.room.topic", BOB, {"topic": "x"}, state_key=""), "needs 50")


# -- the state every other event needs ---------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_state_without_create_is_rejected(version: str) -> None:
    room = started(version)
    state = {k: v for k, v in room.state.items() if k[0] != CREATE}
    event = room.make("m.room.message", ALICE, {"body": "hi"})
    with pytest.raises(AuthError, match=re.escape("no m.room.create")):
        check_auth(event, state)


@pytest.mark.parametrize("version", versions(1, 11))
def test_event_of_another_room_is_rejected(version: str) -> None:
    room = started(version)
    event = room.make("m.room.message", ALICE, {"body": "hi"}, room_id="!other:a")
    rejected(room, event, "!other:a")


# -- m.federate ----------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_unfederated_room_rejects_other_servers(version: str) -> None:
    room = Room(version, create_content={"m.federate": False})
    room.join(ALICE)
    room.set_state("m.room.join_rules", {"join_rule": "public"})
    rejected(room, room.member(BOB, "join"), "m.federate", "b")
    room.force(BOB, "join")
    rejected(room, room.make("m.room.message", BOB, {"body": "x"}), "m.federate")
    room.join(CAROL)  # same server as the creator
    room.check(room.make("m.room.message", CAROL, {"body": "x"}))


# -- m.room.aliases ------------------------------------------------------------------


@pytest.mark.parametrize("version", versions(1, 5))
def test_aliases_special_rule_until_v5(version: str) -> None:
    room = started(version)
    # Bob is not in the room but his server may file its own aliases.
    room.check(room.make("m.room.aliases", BOB, {"aliases": ["#x:b"]}, state_key="b"))
    rejected(room, room.make("m.room.aliases", BOB, {"aliases": []}, state_key="a"), "server name")
    rejected(room, room.make("m.room.aliases", BOB, {"aliases": []}), "no state_key")


@pytest.mark.parametrize("version", versions(6, 12))
def test_aliases_are_ordinary_state_from_v6(version: str) -> None:
    room = started(version)
    rejected(
        room,
        room.make("m.room.aliases", BOB, {"aliases": ["#x:b"]}, state_key="b"),
        "membership",
    )
    room.check(room.make("m.room.aliases", ALICE, {"aliases": []}, state_key="a"))


# -- membership of the sender, required power level, '@' state keys --------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("membership", [None, "invite", "leave", "ban", "knock"])
def test_sender_must_be_joined(version: str, membership: str | None) -> None:
    room = started(version)
    if membership is not None:
        room.force(BOB, membership, sender=ALICE)
    rejected(room, room.make("m.room.message", BOB, {"body": "x"}), BOB, "not join")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_without_power_levels_the_creator_has_100(version: str) -> None:
    room = started(version, BOB)
    room.check(room.make("m.room.topic", ALICE, {"topic": "x"}, state_key=""))
    room.check(room.make("m.room.message", BOB, {"body": "x"}))
    reason = rejected(room, room.make("m.room.topic", BOB, {"topic": "x"}, state_key=""))
    assert reason == f"{BOB} has power level 0 but m.room.topic needs 50"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_required_power_level(version: str) -> None:
    users = {BOB: 10} if version == "12" else {ALICE: 100, BOB: 10}
    room = started(
        version,
        BOB,
        CAROL,
        users=users,
        events={"m.room.name": 5, "m.custom": 20},
        events_default=1,
        state_default=30,
    )
    room.check(room.make("m.room.name", BOB, {"name": "x"}, state_key=""))
    room.check(room.make("m.room.message", BOB, {"body": "x"}))
    rejected(room, room.make("m.custom", BOB, {}), "needs 20")
    rejected(room, room.make("m.custom", BOB, {}, state_key=""), "needs 20")
    rejected(room, room.make("m.room.topic", BOB, {}, state_key=""), "needs 30")
    rejected(room, room.make("m.room.message", CAROL, {"body": "x"}), "needs 1")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_state_key_of_another_user_is_rejected(version: str) -> None:
    room = started(version, BOB, users_default=50)
    room.check(room.make("m.custom", BOB, {}, state_key=BOB))
    rejected(room, room.make("m.custom", BOB, {}, state_key=CAROL), "belongs to that user")
    room.check(room.make("m.custom", BOB, {}, state_key="plain"))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_third_party_invite_event_needs_invite_level(version: str) -> None:
    users = {} if version == "12" else {ALICE: 100}
    room = started(version, BOB, users=users, invite=5, state_default=0)
    event = room.make("m.room.third_party_invite", BOB, {"public_key": "x"}, state_key="tok")
    rejected(room, event, "needs 5 (the invite level)")
    room.check(room.make("m.room.third_party_invite", ALICE, {}, state_key="tok"))
    # An outsider cannot send one even when the invite level is 0.
    outsider = Room(version)
    outsider.join(ALICE)
    rejected(outsider, outsider.make("m.room.third_party_invite", BOB, {}, state_key="t"))


# -- m.room.redaction ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_v1_v2_redaction_needs_redact_level_or_same_server(version: str) -> None:
    room = started(version, BOB, CAROL, users={ALICE: 100}, redact=50)
    redaction = "m.room.redaction"
    room.check(room.make(redaction, ALICE, {}, redacts="$1:b"))
    room.check(room.make(redaction, BOB, {}, redacts="$99:b"))
    rejected(room, room.make(redaction, BOB, {}, redacts="$99:a"), "needs 50 (the redact level)")
    # Missing or malformed `redacts`: tests/matrix/test_spec_departures.py.


@pytest.mark.parametrize("version", versions(3, 12))
def test_redaction_is_an_ordinary_event_from_v3(version: str) -> None:
    users = {} if version == "12" else {ALICE: 100}
    room = started(version, BOB, users=users, redact=50)
    room.check(room.make("m.room.redaction", BOB, {"redacts": "$x"}, redacts="$x"))
    room2 = started(version, BOB, users=users, events={"m.room.redaction": 40}, redact=0)
    rejected(room2, room2.make("m.room.redaction", BOB, {"redacts": "$x"}), "needs 40")


# -- member events that are not member events ----------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_member_event_needs_state_key_and_membership(version: str) -> None:
    room = started(version)
    rejected(room, room.make(MEMBER, ALICE, {"membership": "join"}), "no state_key")
    rejected(room, room.make(MEMBER, ALICE, {}, state_key=ALICE), "content.membership")
    rejected(room, room.make(MEMBER, ALICE, {"membership": 1}, state_key=ALICE), "membership")
    rejected(room, room.member(ALICE, "frobnicate"), "'frobnicate'")
