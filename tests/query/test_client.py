"""`worker.client` as publishers and consumers use it: inputs with their event ID as
msg ID, and outputs through a durable consumer, at least once."""

from __future__ import annotations

import msgpack
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from tests.harness.e2e import running_worker
from tests.query.scenario import ALICE, BOB, wait_processed
from worker.bus.streams import ensure_streams
from worker.client import RoomserverClient, embedded_server_url
from worker.config import Config
from worker.matrix.builder import RoomBuilder


@pytest.mark.parametrize("room_version", ["1", "10", "12"])
async def test_publish_sets_msg_id_so_duplicates_are_dropped(
    config: Config, js: JetStreamContext, nc: NATS, room_version: str
) -> None:
    builder = RoomBuilder(room_version, ALICE)
    events = [*builder.bootstrap(), builder.join(BOB), builder.message(BOB, "hi")]
    await ensure_streams(js, config)
    client = RoomserverClient(nc, config)
    # The create event tells the client the room version; later events reuse it.
    first = await client.publish_many(e.pdu for e in events)
    assert [bool(ack.duplicate) for ack in first] == [False] * len(events)
    again = await client.publish(events[-1].pdu)
    assert again.duplicate
    # A fresh client knows no versions: it must be told, or it cannot name the event.
    fresh = RoomserverClient(nc, config)
    message = builder.message(ALICE, "more")
    subject, _, msg_id = fresh.input_message(message.pdu)
    assert subject == client.subjects.input(builder.room_id)
    if room_version == "1":
        assert msg_id == message.event_id  # v1 events carry their ID
    else:
        assert msg_id is None
        fresh.remember_room_version(builder.room_id, room_version)
        assert fresh.input_message(message.pdu).msg_id == message.event_id
    assert fresh.input_message(message.pdu, room_version=room_version).msg_id == message.event_id


def test_input_message_fields() -> None:
    builder = RoomBuilder("10", ALICE)
    create = builder.create()
    # Building an input needs no connection.
    client = RoomserverClient(NATS(), Config())
    outgoing = client.input_message(
        create.pdu,
        kind="outlier",
        state_event_ids=["$a"],
        origin="example.org",
        send_as_server="example.org",
        transaction_id={"txn": 1},
    )
    body = msgpack.unpackb(outgoing.payload)
    assert body == {
        "event": dict(create.pdu),
        "kind": "outlier",
        "state_event_ids": ["$a"],
        "origin": "example.org",
        "send_as_server": "example.org",
        "transaction_id": {"txn": 1},
    }
    assert outgoing.msg_id == create.event_id
    with pytest.raises(ValueError, match="no room_id"):
        client.input_message({"type": "m.room.message"})


async def test_outputs_through_a_durable_consumer(
    config: Config, js: JetStreamContext, nc: NATS
) -> None:
    builder = RoomBuilder("10", ALICE)
    events = [*builder.bootstrap(), builder.join(BOB), builder.message(BOB, "hi")]
    client = RoomserverClient(nc, config)
    async with running_worker(config) as worker:
        await client.publish_many(e.pdu for e in events)
        await wait_processed(worker, len(events))
        seen: list[str] = []
        async with client.outputs("reader", idle_timeout=0.5) as stream:
            async for output in stream:
                assert output.type == "new_room_event"
                assert output.room_id == builder.room_id
                seen.append(output.event_id or "")
                if len(seen) == 3:
                    break  # the third is in hand, not yet acknowledged
        assert seen == [e.event_id for e in events[:3]]
        # The same durable resumes with the one that was in hand (given back at once).
        rest: list[str] = []
        async with client.outputs("reader", idle_timeout=0.5) as stream:
            async for output in stream:
                rest.append(output.event_id or "")
        assert rest == [e.event_id for e in events[2:]]
        # Everything is acknowledged now: nothing more for this durable.
        async with client.outputs("reader", idle_timeout=0.3) as stream:
            assert [o async for o in stream] == []
        # One room's outputs, settled by hand.
        async with client.outputs(
            "one-room", room_id=builder.room_id, auto_ack=False, idle_timeout=0.5
        ) as stream:
            got = []
            async for output in stream:
                got.append(output.stream_sequence)
                await output.ack()
        assert len(got) == len(events) and got == sorted(got)


async def test_connect_uses_configured_servers(config: Config) -> None:
    async with await RoomserverClient.connect(config) as client:
        assert client.nc.is_connected
    assert client.nc.is_closed
    assert embedded_server_url(Config()) == "nats://127.0.0.1:4222"
