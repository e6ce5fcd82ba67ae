"""The durable pull consumer: batches, acks, redelivery, and surviving deletion."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from tests.bus.helpers import with_section
from worker.bus.consumer import PullConsumer, consumer_config
from worker.bus.streams import ensure_streams
from worker.bus.subjects import Subjects
from worker.config import Config


async def publish_inputs(js: JetStreamContext, config: Config, count: int) -> None:
    subjects = Subjects(config.streams.subject_prefix)
    for i in range(count):
        await js.publish(subjects.input(f"!room{i % 3}:example.org"), f"m{i}".encode())


async def fetch_until(consumer: PullConsumer, count: int, deadline: float = 10.0) -> list[Msg]:
    """Fetch until ``count`` messages arrived (each fetch waits at most fetch_timeout)."""
    got: list[Msg] = []
    end = time.monotonic() + deadline
    while len(got) < count and time.monotonic() < end:
        got.extend(await consumer.fetch_batch())
    return got


async def test_fetch_in_batches_and_ack(js: JetStreamContext, config: Config) -> None:
    config = with_section(config, "consumer", batch_size=4)
    await ensure_streams(js, config)
    await publish_inputs(js, config, 10)
    async with PullConsumer(js, config) as consumer:
        first = await consumer.fetch_batch()
        assert [m.data for m in first] == [b"m0", b"m1", b"m2", b"m3"]
        rest = await fetch_until(consumer, 6)
        assert [m.data for m in rest] == [f"m{i}".encode() for i in range(4, 10)]
        for msg in [*first, *rest]:
            await msg.ack_sync()
        assert await consumer.fetch_batch() == []
        info = await consumer.info()
        assert info.num_ack_pending == 0
        assert info.delivered is not None and info.delivered.stream_seq == 10


async def test_consumer_settings(js: JetStreamContext, config: Config) -> None:
    config = with_section(
        config, "consumer", ack_wait=12.0, max_deliver=5, max_ack_pending=300, batch_size=3
    )
    await ensure_streams(js, config)
    async with PullConsumer(js, config) as consumer:
        info = await consumer.info()
    assert info.config.durable_name == config.consumer.durable
    assert info.config.ack_policy == api.AckPolicy.EXPLICIT
    assert info.config.filter_subject == f"{config.streams.subject_prefix}.input.>"
    assert info.config.ack_wait == 12.0
    assert info.config.max_deliver == 5
    assert info.config.max_ack_pending == 300


async def test_unlimited_max_deliver(js: JetStreamContext, config: Config) -> None:
    await ensure_streams(js, config)
    async with PullConsumer(js, config) as consumer:
        assert (await consumer.info()).config.max_deliver == -1


@pytest.mark.timing
async def test_empty_on_timeout(js: JetStreamContext, config: Config) -> None:
    config = with_section(config, "consumer", fetch_timeout=0.2)
    await ensure_streams(js, config)
    async with PullConsumer(js, config) as consumer:
        started = time.monotonic()
        assert await consumer.fetch_batch() == []
        assert time.monotonic() - started < 2.0


async def test_nak_redelivers(js: JetStreamContext, config: Config) -> None:
    await ensure_streams(js, config)
    await publish_inputs(js, config, 1)
    async with PullConsumer(js, config) as consumer:
        [msg] = await consumer.fetch_batch()
        assert msg.metadata.num_delivered == 1
        await msg.nak()
        [again] = await fetch_until(consumer, 1)
        assert again.data == msg.data
        assert again.metadata.num_delivered == 2
        assert again.metadata.sequence.stream == msg.metadata.sequence.stream
        await again.ack_sync()


async def test_unacked_message_is_redelivered_after_ack_wait(
    js: JetStreamContext, config: Config
) -> None:
    config = with_section(config, "consumer", ack_wait=0.5, fetch_timeout=0.25)
    await ensure_streams(js, config)
    await publish_inputs(js, config, 1)
    async with PullConsumer(js, config) as consumer:
        [msg] = await consumer.fetch_batch()
        [again] = await fetch_until(consumer, 1)
        assert again.data == msg.data
        assert again.metadata.num_delivered == 2
        await again.term()


async def test_durable_consumer_resumes_after_restart(js: JetStreamContext, config: Config) -> None:
    await ensure_streams(js, config)
    await publish_inputs(js, config, 3)
    async with PullConsumer(js, config) as consumer:
        batch = await consumer.fetch_batch()
        assert len(batch) == 3
        await batch[0].ack_sync()
        await batch[1].ack_sync()
        # batch[2] is left unacknowledged, as after a crash.
    config = with_section(config, "consumer", ack_wait=0.5)
    async with PullConsumer(js, config) as consumer:
        [msg] = await fetch_until(consumer, 1)
        assert msg.data == b"m2"
        await msg.ack_sync()


async def test_recreates_a_deleted_consumer(js: JetStreamContext, config: Config) -> None:
    await ensure_streams(js, config)
    await publish_inputs(js, config, 2)
    async with PullConsumer(js, config) as consumer:
        first = await consumer.fetch_batch()
        assert len(first) == 2
        for msg in first:
            await msg.ack_sync()
        await js.delete_consumer(config.streams.input, config.consumer.durable)
        await publish_inputs(js, config, 1)
        # The recreated consumer starts from the beginning of the stream again.
        again = await fetch_until(consumer, 3)
        assert sorted(m.data for m in again) == [b"m0", b"m0", b"m1"]
        assert (await consumer.info()).config.durable_name == config.consumer.durable


async def test_tiny_fetch_timeouts_never_raise(js: JetStreamContext, config: Config) -> None:
    # nats-py raises a bare TimeoutError (not its own) when the deadline runs out between
    # its no-wait probe and its waiting request; a short timeout hits that window often.
    config = with_section(config, "consumer", fetch_timeout=0.001)
    await ensure_streams(js, config)
    async with PullConsumer(js, config) as consumer:
        for _ in range(300):
            assert await consumer.fetch_batch() == []


@pytest.mark.timing
async def test_a_fetch_takes_what_there_is_without_waiting(
    js: JetStreamContext, config: Config
) -> None:
    """Fewer inputs than the batch: the fetch returns them at once, not at its timeout;
    with none there, it returns the first one that comes."""
    config = with_section(config, "consumer", batch_size=10, fetch_timeout=5.0)
    await ensure_streams(js, config)
    await publish_inputs(js, config, 3)
    async with PullConsumer(js, config) as consumer:
        started = time.monotonic()
        assert [m.data for m in await consumer.fetch_batch()] == [b"m0", b"m1", b"m2"]
        waiting = asyncio.ensure_future(consumer.fetch_batch())
        await publish_inputs(js, config, 1)
        assert [m.data for m in await waiting] == [b"m0"]
        assert time.monotonic() - started < 2.0


async def test_inputs_delivered_after_a_fetch_gave_up_are_not_lost(
    js: JetStreamContext, config: Config
) -> None:
    """Fetches that give up almost at once (their requests still open at the server)
    while inputs keep coming: each input is still fetched, once, long before ack_wait
    would bring back one that was dropped."""
    config = with_section(config, "consumer", fetch_timeout=0.001, ack_wait=60.0)
    await ensure_streams(js, config)
    count = 200
    async with PullConsumer(js, config) as consumer:
        publishing = asyncio.ensure_future(publish_inputs(js, config, count))
        got: list[bytes] = []
        end = time.monotonic() + 20
        while len(got) < count and time.monotonic() < end:
            for message in await consumer.fetch_batch():
                got.append(message.data)
                await message.ack()
        await publishing
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(count))


def test_hand_built_config_filters_on_the_input_subjects() -> None:
    assert consumer_config(Config()).filter_subject == "roomserver.input.>"
