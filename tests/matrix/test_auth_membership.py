"""The m.room.member rule: every membership transition, across room versions."""

from __future__ import annotations

from typing import Any

import pytest
from nacl.signing import SigningKey

from tests.matrix.test_auth_factory import ALL_VERSIONS, Room, started, versions
from worker.matrix.auth import AuthError
from worker.matrix.canonical_json import encode_canonical_json
from worker.matrix.events import JOIN_RULES, Event
from worker.matrix.hashes import encode_base64

ALICE, BOB, CAROL, DAVE = "@alice:a", "@bob:b", "@carol:a", "@dave:c"


def rejected(room: Room, event: Event, *words: str) -> str:
    with pytest.raises(AuthError) as info:
        room.check(event)
    for word in words:
        assert word in info.value.reason, info.value.reason
    return info.value.reason


def admin_power(version: str, **extra: Any) -> dict[str, Any]:
    """Alice at 100 (implicitly, as v12 creator), Carol at 50."""
    users = {CAROL: 50} if version == "12" else {ALICE: 100, CAROL: 50}
    return {"users": users, **extra}


# -- the creator's first join ---------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_creator_first_join_right_after_create(version: str) -> None:
    room = Room(version)  # no join rules: invite-only
    room.check(room.member(ALICE, "join"))
    # Anyone else joining straight after the create is an ordinary (rejected) join.
    rejected(room, room.member(BOB, "join"), "join rule is invite")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_creator_first_join_needs_create_as_only_prev_event(version: str) -> None:
    room = Room(version)
    two = room.make(
        "m.room.member",
        ALICE,
        {"membership": "join"},
        state_key=ALICE,
        prev=[room.create.event_id, "$other:a"],
    )
    rejected(room, two, "invite")
    none = room.make("m.room.member", ALICE, {"membership": "join"}, state_key=ALICE, prev=[])
    rejected(room, none, "invite")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_first_join_rule_looks_only_at_the_state_key(version: str) -> None:
    # The spec's rule names the state_key, not the sender: the creator's join sent by
    # someone else straight after the create is allowed.
    room = Room(version)
    room.check(room.member(BOB, "join", ALICE))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_who_the_creator_is(version: str) -> None:
    # v1–v10: content.creator; v11+: the create event's sender.
    room = Room(version, create_content={"creator": BOB})
    bob_first = room.member(BOB, "join")
    alice_first = room.member(ALICE, "join")
    if room.version.implicit_room_creator:
        room.check(alice_first)
        rejected(room, bob_first)
    else:
        room.check(bob_first)
        rejected(room, alice_first)


# -- join --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_join_public(version: str) -> None:
    room = started(version, join_rule="public")
    room.check(room.member(BOB, "join"))
    rejected(room, room.member(ALICE, "join", BOB), "only a user can join themselves")
    room.force(BOB, "ban", sender=ALICE)
    rejected(room, room.member(BOB, "join"), "banned")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_join_invite_only(version: str) -> None:
    room = started(version, join_rule="invite")
    rejected(room, room.member(BOB, "join"), "join rule is invite", "none")
    room.force(BOB, "invite", sender=ALICE)
    room.check(room.member(BOB, "join"))
    room.force(BOB, "join")
    room.check(room.member(BOB, "join", displayname="Bob"))
    room.force(BOB, "leave")
    rejected(room, room.member(BOB, "join"), "leave")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_join_without_join_rules_is_invite_only(version: str) -> None:
    room = Room(version)
    room.join(ALICE)
    rejected(room, room.member(BOB, "join"), "invite")
    room.force(BOB, "invite", sender=ALICE)
    room.check(room.member(BOB, "join"))


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("rule", ["private", "bogus", 5])
def test_join_other_rules_are_rejected(version: str, rule: object) -> None:
    room = started(version)
    room.set_state(JOIN_RULES, {"join_rule": rule})
    rejected(room, room.member(BOB, "join"), "join rule")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_join_knock_rule(version: str) -> None:
    room = started(version, join_rule="knock")
    room.force(BOB, "invite", sender=ALICE)
    room.force(DAVE, "knock")
    rejected(room, room.member(CAROL, "join"), "join rule")
    rejected(room, room.member(DAVE, "join"), "join rule")
    if room.version.knock:
        room.check(room.member(BOB, "join"))
    else:
        rejected(room, room.member(BOB, "join"), "'knock'")


@pytest.mark.parametrize("rule", ["restricted", "knock_restricted"])
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_join_restricted_rules(version: str, rule: str) -> None:
    room = started(version, CAROL, DAVE, join_rule=rule, **admin_power(version, invite=50))
    known = (
        room.version.restricted_join_rule
        if rule == "restricted"
        else room.version.knock_restricted_join_rule
    )
    via_carol = room.member(BOB, "join", join_authorised_via_users_server=CAROL)
    if not known:
        rejected(room, via_carol, repr(rule))
        return
    room.check(via_carol)
    rejected(room, room.member(BOB, "join"), "no join_authorised_via_users_server")
    rejected(
        room,
        room.member(BOB, "join", join_authorised_via_users_server=DAVE),
        "power level 0 but inviting needs 50",
    )
    rejected(
        room,
        room.member(BOB, "join", join_authorised_via_users_server="@zed:a"),
        "@zed:a",
        "not join",
    )
    room.force(CAROL, "leave")
    rejected(room, room.member(BOB, "join", join_authorised_via_users_server=CAROL), "leave")
    # Invited or already joined users need no authoriser.
    room.force(BOB, "invite", sender=ALICE)
    room.check(room.member(BOB, "join"))
    room.force(BOB, "join")
    room.check(room.member(BOB, "join"))
    room.force(BOB, "ban", sender=ALICE)
    rejected(room, room.member(BOB, "join", join_authorised_via_users_server=ALICE), "banned")


def test_v12_creator_can_authorise_restricted_joins() -> None:
    room = started("12", join_rule="restricted", invite=1_000_000)
    room.check(room.member(BOB, "join", join_authorised_via_users_server=ALICE))


# -- invite --------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_invite(version: str) -> None:
    room = started(version, CAROL, DAVE, **admin_power(version, invite=10))
    room.check(room.member(CAROL, "invite", BOB))
    rejected(room, room.member(DAVE, "invite", BOB), "needs 10 (the invite level)")
    rejected(room, room.member(BOB, "invite", BOB), BOB, "not join")
    rejected(room, room.member(CAROL, "invite", DAVE), "membership is join")
    room.force(BOB, "ban", sender=ALICE)
    rejected(room, room.member(CAROL, "invite", BOB), "membership is ban")
    for membership in ("invite", "leave") + (("knock",) if room.version.knock else ()):
        room.force(BOB, membership, sender=ALICE)
        room.check(room.member(CAROL, "invite", BOB))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_invite_level_defaults_to_zero(version: str) -> None:
    room = started(version, DAVE)
    room.check(room.member(DAVE, "invite", BOB))


# -- third-party invites --------------------------------------------------------------

IDENTITY_KEY = SigningKey(bytes(range(32)))
OTHER_KEY = SigningKey(bytes(range(1, 33)))


def signed_block(mxid: str, token: str, key: SigningKey = IDENTITY_KEY) -> dict[str, Any]:
    block: dict[str, Any] = {"mxid": mxid, "token": token}
    signature = key.sign(encode_canonical_json(block, strict=True)).signature
    block["signatures"] = {"id.example": {"ed25519:0": encode_base64(signature)}}
    return block


def public_key(key: SigningKey = IDENTITY_KEY, *, url_safe: bool = False) -> str:
    return encode_base64(bytes(key.verify_key), url_safe=url_safe)


def tpi_room(version: str, **invite_content: Any) -> Room:
    room = started(version, CAROL, join_rule="invite")
    room.set_state("m.room.third_party_invite", invite_content, state_key="tok")
    return room


def tpi(room: Room, sender: str, target: str, signed: Any) -> Event:
    return room.member(sender, "invite", target, third_party_invite={"signed": signed})


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_third_party_invite_with_good_signature(version: str) -> None:
    room = tpi_room(version, public_key=public_key())
    room.check(tpi(room, ALICE, BOB, signed_block(BOB, "tok")))


@pytest.mark.parametrize("version", ["1", "10", "12"])
def test_third_party_invite_keys(version: str) -> None:
    listed = tpi_room(
        version,
        public_key=public_key(OTHER_KEY),
        public_keys=[{"public_key": "not base64!"}, {"public_key": public_key(url_safe=True)}],
    )
    listed.check(tpi(listed, ALICE, BOB, signed_block(BOB, "tok")))
    wrong = tpi_room(version, public_key=public_key(OTHER_KEY), public_keys=["junk"])
    rejected(wrong, tpi(wrong, ALICE, BOB, signed_block(BOB, "tok")), "no signature")


@pytest.mark.parametrize("version", ["1", "7", "11", "12"])
def test_third_party_invite_failures(version: str) -> None:
    room = tpi_room(version, public_key=public_key())
    good = signed_block(BOB, "tok")
    rejected(room, tpi(room, ALICE, DAVE, good), "signed for @bob:b, not for @dave:c")
    rejected(room, tpi(room, ALICE, BOB, signed_block(BOB, "nope")), "'nope'")
    rejected(room, tpi(room, CAROL, BOB, good), "sent by @alice:a")
    rejected(room, tpi(room, ALICE, BOB, {**good, "mxid": 5}), "mxid or token")
    rejected(room, tpi(room, ALICE, BOB, {"token": "tok"}), "mxid or token")
    rejected(room, tpi(room, ALICE, BOB, "signed"), "has no content.third_party_invite.signed")
    rejected(room, room.member(ALICE, "invite", BOB, third_party_invite=[]), "signed")
    tampered = {**good, "extra": "field"}
    rejected(room, tpi(room, ALICE, BOB, tampered), "no signature")
    unsigned = {k: v for k, v in good.items() if k != "signatures"}
    rejected(room, tpi(room, ALICE, BOB, unsigned), "no signature")
    bad_id = {**good, "signatures": {"id.example": {"curve25519:0": "x"}}}
    rejected(room, tpi(room, ALICE, BOB, bad_id), "no signature")
    room.force(BOB, "ban", sender=ALICE)
    rejected(room, tpi(room, ALICE, BOB, good), "banned")


@pytest.mark.parametrize("version", ["1", "12"])
def test_third_party_invite_needs_no_membership_of_the_sender(version: str) -> None:
    # The rule allows on a valid signature before looking at the sender's membership:
    # the m.room.third_party_invite event itself needed a joined sender with invite power.
    room = tpi_room(version, public_key=public_key())
    room.force(ALICE, "leave")
    room.check(tpi(room, ALICE, BOB, signed_block(BOB, "tok")))


# -- leave: leaving, kicking and unbanning ---------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_leave_self(version: str) -> None:
    room = started(version)
    for membership in ("join", "invite"):
        room.force(BOB, membership, sender=ALICE)
        room.check(room.member(BOB, "leave"))
    room.force(BOB, "knock")
    if room.version.knock:
        room.check(room.member(BOB, "leave"))
    else:
        rejected(room, room.member(BOB, "leave"), "not invite or join")
    for membership in ("leave", "ban"):
        room.force(BOB, membership, sender=ALICE)
        rejected(room, room.member(BOB, "leave"), f"membership is {membership}")
    rejected(room, room.member(DAVE, "leave"), "none")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_kick(version: str) -> None:
    room = started(version, BOB, CAROL, DAVE, **admin_power(version, kick=40))
    room.check(room.member(CAROL, "leave", BOB))
    room.check(room.member(CAROL, "leave", "@never:x"))  # a kick of a non-member
    rejected(room, room.member(DAVE, "leave", BOB), "needs 40 (the kick level)")
    rejected(room, room.member(CAROL, "leave", ALICE), "not below")
    room.force(BOB, "invite", sender=ALICE)
    room.check(room.member(CAROL, "leave", BOB))  # revoking an invite is a kick
    room.force(DAVE, "leave")
    rejected(room, room.member(DAVE, "leave", BOB), "own membership is leave")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_kick_of_equal_level_is_rejected(version: str) -> None:
    users = {BOB: 50, CAROL: 50}
    room = started(version, BOB, CAROL, users=users)
    rejected(room, room.member(CAROL, "leave", BOB), "not below")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_unban_needs_ban_and_kick_level(version: str) -> None:
    users = {CAROL: 50, DAVE: 60, "@erin:e": 70}
    room = started(version, CAROL, DAVE, "@erin:e", users=users, ban=60, kick=70)
    room.force(BOB, "ban", sender=ALICE)
    rejected(room, room.member(CAROL, "leave", BOB), "needs 60 (the ban level) to unban")
    rejected(room, room.member(DAVE, "leave", BOB), "needs 70 (the kick level)")
    room.check(room.member("@erin:e", "leave", BOB))


# -- ban ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_ban(version: str) -> None:
    room = started(version, BOB, CAROL, DAVE, **admin_power(version, ban=45))
    room.check(room.member(CAROL, "ban", BOB))
    room.check(room.member(CAROL, "ban", "@stranger:x"))
    rejected(room, room.member(DAVE, "ban", BOB), "needs 45 (the ban level)")
    rejected(room, room.member(CAROL, "ban", ALICE), "not below")
    rejected(room, room.member(CAROL, "ban", CAROL), "not below")
    room.force(DAVE, "invite", sender=ALICE)
    rejected(room, room.member(DAVE, "ban", BOB), "own membership is invite")


# -- knock ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("rule", ["knock", "knock_restricted"])
def test_knock(version: str, rule: str) -> None:
    room = started(version, CAROL, join_rule=rule)
    knock = room.member(BOB, "knock")
    if not room.version.knock:
        rejected(room, knock, "'knock'", "does not know")
        return
    if rule == "knock_restricted" and not room.version.knock_restricted_join_rule:
        rejected(room, knock, "not knock")
        return
    room.check(knock)
    room.force(BOB, "leave")
    room.check(room.member(BOB, "knock"))
    room.force(BOB, "knock")
    room.check(room.member(BOB, "knock"))
    rejected(room, room.member(CAROL, "knock", BOB), "on behalf of")
    for membership in ("ban", "invite", "join"):
        room.force(BOB, membership, sender=ALICE)
        rejected(room, room.member(BOB, "knock"), f"already {membership}")


@pytest.mark.parametrize("version", versions(7, 12))
@pytest.mark.parametrize("rule", ["public", "invite", "restricted"])
def test_knock_needs_a_knock_rule(version: str, rule: str) -> None:
    room = started(version, join_rule=rule)
    rejected(room, room.member(BOB, "knock"), "not knock")
