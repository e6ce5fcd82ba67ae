"""The grouped state form (docs/queries.md, "The grouped state form"): asked for by a
request header, it must carry exactly the state the contract's triples carry, and a
request without the header must get the triples as before.

The truth each reply is held to is independent of the service: the Inspector's own
merge of the stored blocks (SQL rows, `worker.storage.inspection`), and the builder's
state, which the story's events were made from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from tests.harness.e2e import publish_inputs
from tests.query.scenario import ALICE, VERSION, served_story, wait_processed
from worker.bus.subjects import Subjects
from worker.client import RoomserverClient
from worker.config import Config
from worker.query.schema import (
    ACCEPT_STATE_HEADER,
    GROUPED,
    GROUPED_FIELD,
    IF_STATE_HEADER,
    TAG_FIELD,
    UNCHANGED_FIELD,
    Latest,
    State,
    StateEntry,
    grouped_entries,
    grouped_state,
)
from worker.storage.inspection import Inspector

StateMap = dict[tuple[str, str], str]


def as_map(entries: Any) -> StateMap:
    return {(t, s): e for t, s, e in entries}


def test_grouped_form_round_trip() -> None:
    entries = [
        StateEntry("m.room.create", "", "$c"),
        StateEntry("m.room.member", "@a:x", "$a"),
        StateEntry("m.room.member", "@b:x", "$b"),
        StateEntry("m.room.topic", "", "$t"),
    ]
    groups = grouped_state(entries)
    # Each type once, its state keys and event IDs in step.
    assert groups == {
        "m.room.create": [[""], ["$c"]],
        "m.room.member": [["@a:x", "@b:x"], ["$a", "$b"]],
        "m.room.topic": [[""], ["$t"]],
    }
    # Through msgpack as the client decodes it (arrays as tuples).
    wire = msgpack.unpackb(msgpack.packb(groups), raw=False, use_list=False)
    decoded = grouped_entries(wire)
    assert sorted(decoded) == sorted(entries)
    assert all(type(e) is StateEntry for e in decoded)
    assert grouped_entries(grouped_state([])) == []


def test_grouped_form_with_arrays_out_of_step_is_refused() -> None:
    with pytest.raises(ValueError):
        grouped_entries({"m.room.member": (("@a:x", "@b:x"), ("$a",))})


async def ask(nc: NATS, config: Config, name: str, body: dict[str, Any], grouped: bool) -> Any:
    """A raw request, with or without the grouped-form header: the reply map."""
    subject = Subjects(config.streams.subject_prefix).query(name)
    headers = {ACCEPT_STATE_HEADER: GROUPED} if grouped else None
    reply = await nc.request(subject, msgpack.packb(body), timeout=5, headers=headers)
    return msgpack.unpackb(reply.data, raw=False)


async def both_forms(
    nc: NATS, config: Config, name: str, body: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reply without the header (the contract's triples) and with it (grouped),
    each checked for carrying its form and only that."""
    old = await ask(nc, config, name, body, grouped=False)
    new = await ask(nc, config, name, body, grouped=True)
    assert GROUPED_FIELD not in old and "state" in old, old
    assert "state" not in new and GROUPED_FIELD in new, new
    # Besides the state, the same fields (and the tag of a whole current state).
    assert TAG_FIELD not in old
    assert {k: v for k, v in old.items() if k != "state"} == {
        k: v for k, v in new.items() if k not in (GROUPED_FIELD, TAG_FIELD)
    }
    return old, new


async def test_grouped_and_triples_carry_the_same_state(
    config: Config, js: JetStreamContext, nc: NATS
) -> None:
    async with served_story(config, js) as (_, story):
        room = story.room_id
        with Inspector.open(Path(config.storage.path)) as inspector:
            stored = inspector.rows.contents()
        current = stored.rooms[room].current_state
        assert current == story.current_state()

        # The whole current state, asked twice in each form and in both orders: the
        # service caches each form's encoding, and one must not answer for the other.
        for _ in range(2):
            old, new = await both_forms(nc, config, "state", {"room_id": room})
            assert as_map(old["state"]) == current
            assert as_map(State.from_wire(new).entries) == current
            assert len(State.from_wire(new).entries) == len(old["state"])
            grouped_first = await ask(nc, config, "state", {"room_id": room}, grouped=True)
            assert as_map(State.from_wire(grouped_first).entries) == current
            assert "state" in await ask(nc, config, "state", {"room_id": room}, grouped=False)

        # The state at events, before and after, against the Inspector's per-event maps.
        for name in ("topic", "join_bob", "bob_names_room"):
            event_id = story.id(name)
            for at in ("before", "after"):
                body = {"room_id": room, "event_id": event_id, "at": at}
                old, new = await both_forms(nc, config, "state", body)
                want = getattr(stored.events[event_id], f"state_{at}")
                assert as_map(old["state"]) == want
                assert as_map(State.from_wire(new).entries) == want

        # Filtered, and an empty result.
        body = {"room_id": room, "types": ["m.room.member"], "keys": [["m.room.topic", ""]]}
        old, new = await both_forms(nc, config, "state", body)
        want = {
            k: v for k, v in current.items() if k[0] == "m.room.member" or k[0] == "m.room.topic"
        }
        assert as_map(old["state"]) == as_map(State.from_wire(new).entries) == want
        old, new = await both_forms(nc, config, "state", {"room_id": room, "types": ["m.none"]})
        assert old["state"] == [] and new[GROUPED_FIELD] == {}

        # `latest` with the state: the same rule.
        old, new = await both_forms(nc, config, "latest", {"room_id": room, "include_state": True})
        latest = Latest.from_wire(new)
        assert latest.state is not None and as_map(latest.state) == current
        assert as_map(old["state"]) == current
        # Without the state there is nothing to group.
        bare = await ask(nc, config, "latest", {"room_id": room}, grouped=True)
        assert "state" not in bare and GROUPED_FIELD not in bare


async def test_client_asks_for_grouped_and_reads_either_form(
    config: Config, js: JetStreamContext, nc: NATS
) -> None:
    async with served_story(config, js) as (worker, story):
        room = story.room_id
        client = RoomserverClient(nc, config)
        assert worker.queries is not None
        packed = worker.queries.queries.packed_states
        packed.clear()
        state = await client.state(room)
        assert as_map(state.entries) == story.current_state()
        # The typed query asked for the grouped form (that is what the service cached)...
        snapshot, _ = await worker.queries.reader.snapshot_at(room)
        assert packed.get((snapshot, True)) is not None
        assert packed.get((snapshot, False)) is None
        # ...while the raw `request` is the contract's, triples and all.
        raw = await client.request("state", {"room_id": room})
        assert GROUPED_FIELD not in raw and as_map(raw["state"]) == story.current_state()
        # A reply in triples (a worker that ignores the header) reads as the same
        # entries (in no particular order, as the contract says).
        from_triples = State.from_wire(raw)
        assert sorted(from_triples.entries) == sorted(state.entries)
        assert (from_triples.room_id, from_triples.event_id) == (state.room_id, None)


async def test_unchanged_state_is_not_sent_again(
    config: Config, js: JetStreamContext, nc: NATS
) -> None:
    async with served_story(config, js) as (worker, story):
        room = story.room_id
        first = await ask(nc, config, "state", {"room_id": room}, grouped=True)
        full_size = len(msgpack.packb(first))
        tag = first[TAG_FIELD]
        assert isinstance(tag, str) and tag
        subject = Subjects(config.streams.subject_prefix).query("state")

        async def ask_again(if_state: str, grouped: bool = True) -> Any:
            headers = {IF_STATE_HEADER: if_state}
            if grouped:
                headers[ACCEPT_STATE_HEADER] = GROUPED
            body = msgpack.packb({"room_id": room})
            reply = await nc.request(subject, body, timeout=5, headers=headers)
            return msgpack.unpackb(reply.data, raw=False)

        # The tag of the current state: a few bytes saying so, and no state.
        assert await ask_again(tag) == {"room_id": room, UNCHANGED_FIELD: True, TAG_FIELD: tag}
        # Any other tag: the whole state again, named by the same tag.
        other = await ask_again(tag + "0")
        assert other == first
        # Without the grouped form the header means nothing: the contract's reply.
        old = await ask_again(tag, grouped=False)
        assert set(old) == {"room_id", "state"}
        assert as_map(old["state"]) == story.current_state()
        # Only a whole current state is named (a state at an event, or a part, is not).
        at = await ask(nc, config, "state", {"room_id": room, "event_id": story.head}, grouped=True)
        part = await ask(nc, config, "state", {"room_id": room, "types": ["x"]}, grouped=True)
        assert TAG_FIELD not in at and TAG_FIELD not in part

        # Through the client: the second ask moves a few bytes, not the state.
        client = RoomserverClient(nc, config)
        state = await client.state(room)
        assert as_map(state.entries) == story.current_state()
        state.entries.clear()  # the caller's list is its own
        received = nc.stats["in_bytes"]
        again = await client.state(room)
        assert nc.stats["in_bytes"] - received < full_size / 4
        assert as_map(again.entries) == story.current_state()
        assert again == State(room, None, None, again.entries)

        # The state changes: the next ask gets the new state, never the kept copy.
        story.main(
            "new_topic", story.builder.state_event, ALICE, "m.room.topic", "", {"topic": "x"}
        )
        await publish_inputs(js, config, [story.inputs[-1]], room_version=VERSION)
        await wait_processed(worker, len(story.inputs))
        changed = await client.state(room)
        with Inspector.open(Path(config.storage.path)) as inspector:
            stored = inspector.rows.contents().rooms[room].current_state
        assert stored[("m.room.topic", "")] == story.id("new_topic")
        assert as_map(changed.entries) == stored == story.current_state()
        cached = client.state_cache.get(room)
        assert cached is not None and cached.tag != tag

        # A client that keeps no states always gets the whole state.
        plain = RoomserverClient(nc, config, state_cache_entries=0)
        for _ in range(2):
            received = nc.stats["in_bytes"]
            assert as_map((await plain.state(room)).entries) == stored
            assert nc.stats["in_bytes"] - received >= full_size
        assert len(plain.state_cache) == 0
