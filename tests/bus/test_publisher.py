"""Publishing with Nats-Msg-Id deduplication, pipelined batches and dead letters."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError

from worker.bus.publisher import IN_FLIGHT, Outgoing, Publisher, dead_letter_body
from worker.bus.streams import ensure_streams
from worker.config import Config

ROOM = "!room:example.org"


async def test_publish_deduplicates_by_msg_id(js: JetStreamContext, config: Config) -> None:
    await ensure_streams(js, config)
    publisher = Publisher(js, config)
    subject = publisher.subjects.output(ROOM)
    first = await publisher.publish(subject, b"one", "$event:new_room_event")
    again = await publisher.publish(subject, b"one", "$event:new_room_event")
    other = await publisher.publish(subject, b"two", "$other:new_room_event")
    assert first.stream == config.streams.output
    assert not first.duplicate
    assert again.duplicate
    assert again.seq == first.seq
    assert other.seq == first.seq + 1
    info = await js.stream_info(config.streams.output)
    assert info.state.messages == 2


async def test_publish_without_msg_id_is_never_deduplicated(
    js: JetStreamContext, config: Config
) -> None:
    await ensure_streams(js, config)
    publisher = Publisher(js, config)
    subject = publisher.subjects.output(ROOM)
    a = await publisher.publish(subject, b"same")
    b = await publisher.publish(subject, b"same")
    assert not a.duplicate
    assert not b.duplicate
    assert b.seq == a.seq + 1


async def test_publish_many_in_order_and_deduplicated(js: JetStreamContext, config: Config) -> None:
    await ensure_streams(js, config)
    publisher = Publisher(js, config)
    subject = publisher.subjects.output(ROOM)
    batch = [Outgoing(subject, f"m{i}".encode(), f"id{i}") for i in range(500)]
    acks = await publisher.publish_many(batch)
    assert [ack.seq for ack in acks] == list(range(1, 501))
    assert not any(ack.duplicate for ack in acks)
    replay = await publisher.publish_many([*batch[:10], Outgoing(subject, b"new", "id500")])
    assert all(ack.duplicate for ack in replay[:10])
    assert [ack.seq for ack in replay[:10]] == list(range(1, 11))
    assert not replay[10].duplicate and replay[10].seq == 501
    assert (await js.stream_info(config.streams.output)).state.messages == 501
    assert await publisher.publish_many([]) == []


async def test_publish_many_reports_a_failure(js: JetStreamContext, config: Config) -> None:
    await ensure_streams(js, config)
    publisher = Publisher(js, config)
    good = Outgoing(publisher.subjects.output(ROOM), b"ok", "ok")
    # Nothing stores this subject: JetStream answers "no responders".
    bad = Outgoing(f"{config.streams.subject_prefix}.nowhere.x", b"lost", "lost")
    with pytest.raises(NoStreamResponseError):
        await publisher.publish_many([good, bad])
    assert (await js.stream_info(config.streams.output)).state.messages == 1


async def test_every_reply_of_a_batch_is_checked(js: JetStreamContext, config: Config) -> None:
    """A message the stream refuses fails the batch even when the ones around it are
    stored: its PubAck is an error, and publish_checked (the outbox relay's way, which
    builds no PubAcks) must see it as publish_many does."""
    await ensure_streams(js, config)
    stream = (await js.stream_info(config.streams.output)).config
    await js.update_stream(dataclasses.replace(stream, max_msg_size=64))
    publisher = Publisher(js, config)
    subject = publisher.subjects.output(ROOM)
    batch = [
        Outgoing(subject, b"small", "a"),
        Outgoing(subject, b"x" * 200, "too-big"),
        Outgoing(subject, b"small too", "b"),
    ]
    for publish in (publisher.publish_checked, publisher.publish_many):
        with pytest.raises(APIError) as raised:
            await publish(batch)
        assert raised.value.code == 400
    # The others are stored, once each (the second attempt's copies were duplicates).
    assert (await js.stream_info(config.streams.output)).state.messages == 2
    assert await publisher.publish_checked(batch[::2]) == 2


async def test_a_long_batch_keeps_its_order(js: JetStreamContext, config: Config) -> None:
    """More than IN_FLIGHT messages go out a window at a time, still in order."""
    await ensure_streams(js, config)
    publisher = Publisher(js, config)
    subject = publisher.subjects.output(ROOM)
    count = IN_FLIGHT + 5
    acks = await publisher.publish_many(
        Outgoing(subject, str(i).encode(), f"id{i}") for i in range(count)
    )
    assert [ack.seq for ack in acks] == list(range(1, count + 1))
    last = await js.get_msg(config.streams.output, count)
    assert last.data == str(count - 1).encode()


def test_dead_letter_body_keeps_payload_as_bytes() -> None:
    body = dead_letter_body(
        error="too_large", message="m", subject="s", stream_sequence=None, payload=b"\xff"
    )
    decoded = msgpack.unpackb(body, raw=False)
    assert decoded["payload"] == b"\xff"
    assert decoded["stream_sequence"] is None
