"""Partitions: the client's hash against nats-server's own, and the partitioned stream.

The client computes a room's partition to route queries; the input stream's subject
transform computes it inside nats-server. If they ever disagreed, a query would reach a
worker that does not hold the room, so the agreement is checked against a real server
rather than against a copy of its algorithm.
"""

from __future__ import annotations

import dataclasses
import random
import string

import pytest
from nats.js import JetStreamContext, api

from tests.bus.helpers import with_section
from worker.bus.partitions import fnv1a_32, partition_of_room
from worker.bus.streams import ensure_streams
from worker.bus.subjects import Subjects
from worker.config import Config, ConfigError, for_partition, load_config


def test_fnv1a_32_reference_vectors() -> None:
    # The FNV reference values (draft-eastlake-fnv, test vectors for FNV-1a 32).
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def _random_rooms(count: int) -> list[str]:
    rng = random.Random(12)
    alphabet = string.ascii_letters + string.digits + ".:_-!/é"
    return [
        "!" + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) + ":example.org"
        for _ in range(count)
    ]


@pytest.mark.parametrize("count", [2, 3, 7])
async def test_partition_of_room_matches_nats_server(
    js: JetStreamContext, config: Config, count: int
) -> None:
    """Every room lands, by the server's transform, in the partition the client computes."""
    config = with_section(config, "partitions", count=count)
    await ensure_streams(js, config)
    subjects = Subjects(config.streams.subject_prefix)
    seen = set()
    for room_id in _random_rooms(200):
        ack = await js.publish(subjects.input(room_id), b"x")
        stored = await js.get_msg(config.streams.input, ack.seq)
        assert stored.subject == f"{subjects.prefix}.input.{partition_of_room(room_id, count)}." + (
            subjects.input_token(subjects.input(room_id))
        )
        assert subjects.room_of_input(stored.subject) == room_id
        assert subjects.original_input(stored.subject) == subjects.input(room_id)
        seen.add(partition_of_room(room_id, count))
    assert seen == set(range(count))


async def test_partitioned_stream_refuses_hand_picked_partitions(
    js: JetStreamContext, config: Config
) -> None:
    """Only <prefix>.input.<room> is accepted: a publisher cannot bypass the hash."""
    config = with_section(config, "partitions", count=2)
    await ensure_streams(js, config)
    info = await js.stream_info(config.streams.input)
    assert info.config.subjects == [f"{config.streams.subject_prefix}.input.*"]
    with pytest.raises(Exception):  # noqa: B017 - nats-py: no responders or API error
        await js.publish(f"{config.streams.subject_prefix}.input.1.abc", b"x", timeout=1)


async def test_changed_partition_count_is_reported_not_applied(
    js: JetStreamContext, config: Config
) -> None:
    await ensure_streams(js, with_section(config, "partitions", count=2))
    differences = await ensure_streams(js, with_section(config, "partitions", count=3))
    fields = {d.field for d in differences if d.stream == config.streams.input}
    assert fields == {"subject_transform"}


async def test_partition_consumer_sees_only_its_rooms(js: JetStreamContext, config: Config) -> None:
    config = with_section(config, "partitions", count=2)
    await ensure_streams(js, config)
    subjects = Subjects(config.streams.subject_prefix)
    rooms = _random_rooms(40)
    for room_id in rooms:
        await js.publish(subjects.input(room_id), b"x")
    for k in (0, 1):
        part = for_partition(config, k)
        info = await js.add_consumer(
            config.streams.input,
            api.ConsumerConfig(
                durable_name=part.consumer.durable,
                filter_subject=part.consumer.filter_subject,
                ack_policy=api.AckPolicy.EXPLICIT,
            ),
        )
        assert info.num_pending == sum(1 for r in rooms if partition_of_room(r, 2) == k)


def test_subjects_of_partitions() -> None:
    subjects = Subjects("rs")
    assert subjects.query("state", 3) == "rs.query.3.state"
    assert subjects.query("state") == "rs.query.state"
    assert subjects.admin("retry", 0) == "rs.admin.0.retry"
    assert subjects.query_name("rs.query.3.state") == "state"
    assert subjects.query_name("rs.query.state") == "state"
    with pytest.raises(ValueError):
        subjects.query_name("rs.query.x.state")
    with pytest.raises(ValueError):
        subjects.input_token("rs.input.x.abc")
    with pytest.raises(ValueError):
        subjects.input_token("rs.input.1.abc.def")


def test_partition_configuration(tmp_path: object) -> None:
    config = load_config(None, {"ROOMSERVER_PARTITIONS_COUNT": "4"})
    assert config.partitions.count == 4
    part = for_partition(config, 2)
    assert part.storage.path.endswith("partition-2")
    assert part.consumer.durable == "roomserver-2"
    assert part.consumer.filter_subject == "roomserver.input.2.*"
    with pytest.raises(ConfigError, match="0 to 3"):
        for_partition(config, 4)
    with pytest.raises(ConfigError, match=r"partitions\.count"):
        for_partition(dataclasses.replace(config, partitions=type(config.partitions)(1)), 0)
    with pytest.raises(ConfigError, match=r"partitions\.count"):
        load_config(None, {"ROOMSERVER_PARTITIONS_COUNT": "0"})
