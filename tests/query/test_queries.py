"""Every query through a real nats-server, answered by the running worker, read back
with `worker.client`; and every error path, with raw requests where the client would
not let a malformed one through."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from tests.harness.e2e import input_for, publish_inputs
from tests.query.scenario import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    EVE,
    VERSION,
    served_story,
    wait_processed,
)
from worker.bus.subjects import Subjects
from worker.client import RoomserverClient, RoomserverError
from worker.config import Config
from worker.matrix.builder import RoomBuilder


async def raw(nc: NATS, config: Config, name: str, payload: bytes) -> tuple[dict[str, Any], Any]:
    """A query with a raw body: (reply map, reply headers)."""
    subject = Subjects(config.streams.subject_prefix).query(name)
    reply = await nc.request(subject, payload, timeout=5)
    return msgpack.unpackb(reply.data, raw=False), reply.headers


def pack(value: Any) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def as_map(entries: Any) -> dict[tuple[str, str], str]:
    return {(t, s): e for t, s, e in entries}


async def test_state_current_at_events_and_filtered(
    config: Config, js: JetStreamContext, nc: NATS
) -> None:
    async with served_story(config, js) as (_, story):
        client = RoomserverClient(nc, config)
        room = story.room_id
        current = await client.state(room)
        assert current.event_id is None and current.at is None
        assert current.as_map() == story.current_state()
        assert len(current.entries) == len(story.current_state())
        # Refused events are never part of the state.
        assert ("m.room.name", "") not in current.as_map()

        topic = story.id("topic")
        before = await client.state(room, event_id=topic)
        after = await client.state(room, event_id=topic, at="after")
        assert (before.event_id, before.at, after.at) == (topic, "before", "after")
        assert ("m.room.topic", "") not in before.as_map()
        assert after.as_map()[("m.room.topic", "")] == topic
        assert after.as_map() == story.builder.state_after(topic)
        # A message changes nothing: after equals before.
        says = story.id("bob_says")
        assert (await client.state(room, event_id=says)).as_map() == (
            await client.state(room, event_id=says, at="after")
        ).as_map()
        # The create event has nothing before it.
        assert (await client.state(room, event_id=story.id("create"))).entries == []
        # A rejected event has the state before it, and changes nothing.
        rejected = story.id("bob_names_room")
        for at in ("before", "after"):
            at_rejected = await client.state(room, event_id=rejected, at=at)
            assert at_rejected.as_map() == story.builder.state_after(topic)

        members = await client.state(room, types=["m.room.member"])
        assert {e.state_key for e in members.entries} == {ALICE, BOB, CAROL, DAVE, EVE}
        assert {e.type for e in members.entries} == {"m.room.member"}
        picked = await client.state(room, keys=[("m.room.topic", ""), ("m.room.member", BOB)])
        assert picked.as_map() == {
            ("m.room.topic", ""): topic,
            ("m.room.member", BOB): story.id("join_bob"),
        }
        both = await client.state(room, types=["m.room.join_rules"], keys=[("m.room.topic", "")])
        assert set(both.as_map()) == {("m.room.join_rules", ""), ("m.room.topic", "")}
        assert (await client.state(room, types=["m.no.such.type"])).entries == []
        assert (await client.state(room, keys=[("m.room.member", "@ghost:x")])).entries == []
        filtered_past = await client.state(
            room, event_id=topic, at="before", types=["m.room.member"]
        )
        assert {e.state_key for e in filtered_past.entries} == {ALICE, BOB, CAROL, DAVE}


async def test_events_with_status_and_reason(
    config: Config, js: JetStreamContext, nc: NATS
) -> None:
    async with served_story(config, js) as (_, story):
        client = RoomserverClient(nc, config)
        names = ["join_alice", "bob_names_room", "dave_says", "outlier_topic"]
        result = await client.events([story.id(n) for n in names] + ["$unknown:example.org"])
        assert result.missing == ["$unknown:example.org"]
        by_id = {e.event_id: e for e in result.events}
        assert [e.event_id for e in result.events] == [story.id(n) for n in names]
        assert {e.room_id for e in result.events} == {story.room_id}
        accepted = by_id[story.id("join_alice")]
        assert accepted.status == "accepted" and accepted.reason is None
        assert accepted.event == dict(story.named["join_alice"].pdu)
        rejected = by_id[story.id("bob_names_room")]
        assert rejected.status == "rejected"
        assert rejected.reason is not None and "auth events" in rejected.reason
        soft = by_id[story.id("dave_says")]
        assert soft.status == "soft_failed"
        assert soft.reason is not None and "current" in soft.reason
        assert by_id[story.id("outlier_topic")].status == "outlier"
        one = await client.event(story.id("bob_says"))
        assert one.event["content"]["body"] == "hello"
        with pytest.raises(RoomserverError, match=r"^unknown_event: "):
            await client.event("$nope:example.org")
        assert (await client.events([])).events == []


async def test_latest(config: Config, js: JetStreamContext, nc: NATS) -> None:
    async with served_story(config, js) as (_, story):
        client = RoomserverClient(nc, config)
        latest = await client.latest(story.room_id)
        # Neither the rejected nor the soft-failed event is a forward extremity.
        assert latest.latest_event_ids == [story.head]
        assert latest.room_version == VERSION
        assert latest.depth == story.named["bob_says"].depth
        assert latest.state is None
        full = await client.latest(story.room_id, include_state=True)
        assert full.state is not None
        assert {(e.type, e.state_key): e.event_id for e in full.state} == story.current_state()
        part = await client.latest(story.room_id, keys=[("m.room.power_levels", "")])
        assert part.state == [("m.room.power_levels", "", story.id("power"))]


async def test_membership_and_members(config: Config, js: JetStreamContext, nc: NATS) -> None:
    async with served_story(config, js) as (_, story):
        client = RoomserverClient(nc, config)
        room = story.room_id
        expected = {
            ALICE: ("join", "join_alice"),
            BOB: ("join", "join_bob"),
            CAROL: ("leave", "carol_leaves"),
            DAVE: ("ban", "ban_dave"),
            EVE: ("invite", "invite_eve"),
        }
        for user, (membership, name) in expected.items():
            got = await client.membership(room, user)
            assert (got.membership, got.event_id) == (membership, story.id(name)), user
        nobody = await client.membership(room, "@nobody:example.org")
        assert (nobody.membership, nobody.event_id) == (None, None)
        assert await client.members(room) == [ALICE, BOB]
        assert await client.members(room, membership="invite") == [EVE]
        assert await client.members(room, membership="ban") == [DAVE]
        assert await client.members(room, membership="leave") == [CAROL]
        assert await client.members(room, membership="knock") == []
        # Before Carol left, and before Dave's ban.
        leaves = story.id("carol_leaves")
        assert (await client.membership(room, CAROL, event_id=leaves)).membership == "join"
        assert (
            await client.membership(room, CAROL, event_id=leaves, at="after")
        ).membership == "leave"
        assert await client.members(room, event_id=story.id("ban_dave")) == sorted(
            [ALICE, BOB, CAROL, DAVE]
        )


async def test_rooms_and_auth_chain(config: Config, js: JetStreamContext, nc: NATS) -> None:
    async with served_story(config, js) as (worker, story):
        client = RoomserverClient(nc, config)
        [room] = await client.rooms()
        assert (room.room_id, room.room_version) == (story.room_id, VERSION)
        assert room.events == len(story.inputs)

        chain = await client.auth_chain([story.id("bob_says")])
        assert set(chain) == story.auth_chain("bob_says")
        assert chain == sorted(chain)
        union = await client.auth_chain([story.id("ban_dave"), story.id("invite_eve")])
        assert set(union) == story.auth_chain("ban_dave", "invite_eve")
        assert await client.auth_chain([story.id("create")]) == []
        with pytest.raises(RoomserverError, match=r"^unknown_event: .*\$missing:example.org"):
            await client.auth_chain([story.id("bob_says"), "$missing:example.org"])

        # A second room shows up, sorted by room ID.
        other = RoomBuilder("12", ALICE)
        inputs = [input_for(e.pdu) for e in other.bootstrap()]
        await publish_inputs(js, config, inputs, room_version="12")
        await wait_processed(worker, len(story.inputs) + len(inputs))
        rooms = await client.rooms()
        assert [r.room_id for r in rooms] == sorted([story.room_id, other.room_id])
        assert {r.room_id: r.events for r in rooms}[other.room_id] == 4


async def test_held_events(config: Config, js: JetStreamContext, nc: NATS) -> None:
    async with served_story(config, js) as (worker, story):
        client = RoomserverClient(nc, config)
        assert await client.held(story.room_id) == []
        b = story.builder
        lost = b.message(ALICE, "late", prev_events=[story.head])
        waiting = b.message(BOB, "waiting", prev_events=[lost.event_id])
        await publish_inputs(js, config, [input_for(waiting.pdu)], room_version=VERSION)
        await wait_processed(worker, len(story.inputs) + 1)
        [held] = await client.held(story.room_id)
        assert (held.event_id, held.room_id) == (waiting.event_id, story.room_id)
        assert held.missing_prev_event_ids == [lost.event_id]
        assert held.waiting_for == [lost.event_id]
        assert held.held_since_ms > 0 and held.stream_sequence == len(story.inputs) + 1
        assert [h.event_id for h in await client.held()] == [waiting.event_id]
        # The held event is not stored yet.
        assert (await client.events([waiting.event_id])).missing == [waiting.event_id]

        await publish_inputs(js, config, [input_for(lost.pdu)], room_version=VERSION)
        await wait_processed(worker, len(story.inputs) + 2)
        assert await client.held(story.room_id) == []
        latest = await client.latest(story.room_id)
        assert latest.latest_event_ids == [waiting.event_id]


async def test_error_replies(config: Config, js: JetStreamContext, nc: NATS) -> None:
    async with served_story(config, js) as (_, story):
        room = story.room_id
        cases: list[tuple[str, bytes, str, str]] = [
            ("state", b"\xc1", "bad_request", "not valid msgpack"),
            ("state", b"\x93\x01", "bad_request", "not valid msgpack"),
            ("state", pack([room]), "bad_request", "must be a msgpack map"),
            ("state", pack({}), "bad_request", "room_id is required"),
            ("state", b"", "bad_request", "room_id is required"),
            ("state", pack({"room_id": 5}), "bad_request", "room_id must be a non-empty string"),
            ("state", pack({"room_id": room, "type": "x"}), "bad_request", "unknown field(s) type"),
            ("state", pack({"room_id": room, "at": "after"}), "bad_request", "at needs event_id"),
            (
                "state",
                pack({"room_id": room, "event_id": story.id("topic"), "at": "during"}),
                "bad_request",
                "at must be one of before, after",
            ),
            ("state", pack({"room_id": room, "types": "m.room.member"}), "bad_request", "types"),
            ("state", pack({"room_id": room, "keys": [["a"]]}), "bad_request", "[type, state_key]"),
            ("state", pack({"room_id": "!nope:x"}), "unknown_room", "!nope:x"),
            (
                "state",
                pack({"room_id": room, "event_id": "$nope:x"}),
                "unknown_event",
                "$nope:x",
            ),
            (
                "state",
                pack({"room_id": room, "event_id": story.id("outlier_topic")}),
                "no_state",
                "outlier",
            ),
            ("events", pack({}), "bad_request", "event_ids is required"),
            ("events", pack({"event_ids": [1, 2]}), "bad_request", "list of strings"),
            ("events", pack({"event_ids": ["$a"] * 10_001}), "bad_request", "at most 10000"),
            ("latest", pack({"room_id": "!nope:x"}), "unknown_room", "!nope:x"),
            ("latest", pack({"room_id": room, "include_state": 1}), "bad_request", "true or false"),
            ("membership", pack({"room_id": "!nope:x"}), "unknown_room", "!nope:x"),
            (
                "membership",
                pack({"room_id": room, "user_id": ALICE, "membership": "join"}),
                "bad_request",
                "cannot go with user_id",
            ),
            ("rooms", pack({"room_id": room}), "bad_request", "no fields"),
            ("auth_chain", pack({"event_ids": ["$nope:x"]}), "unknown_event", "$nope:x"),
            ("auth_chain", pack({"event_ids": None}), "bad_request", "event_ids is required"),
            ("held", pack({"room_id": "!nope:x"}), "unknown_room", "!nope:x"),
        ]
        for name, payload, code, text in cases:
            reply, headers = await raw(nc, config, name, payload)
            assert set(reply) == {"error", "message"}, (name, payload[:20], reply)
            assert reply["error"] == code, (name, payload[:20], reply)
            assert text in reply["message"], (name, payload[:20], reply)
            assert headers is not None and headers["Nats-Service-Error"] == reply["message"]
            assert headers["Nats-Service-Error-Code"] in {"400", "404", "409"}

        client = RoomserverClient(nc, config)
        with pytest.raises(RoomserverError, match=r"^unknown_room: "):
            await client.state("!nope:x")
        with pytest.raises(RoomserverError, match=r"^no_state: "):
            await client.members(room, event_id=story.id("outlier_topic"))
        with pytest.raises(RoomserverError, match=r"^bad_request: "):
            await client.state(room, event_id=story.id("topic"), at="sideways")
        # A room ID with a line break still gives a well-formed reply and header.
        reply, headers = await raw(nc, config, "state", pack({"room_id": "!a\r\nb:x"}))
        assert reply["error"] == "unknown_room" and "\n" not in headers["Nats-Service-Error"]
