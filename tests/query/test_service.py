"""The query service as a NATS micro service: discoverable, with its own stats; replies
that would not fit in a NATS message; and a client with no worker to answer it."""

from __future__ import annotations

import json

import msgpack
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from tests.harness.e2e import input_for, publish_inputs, running_worker
from tests.query.scenario import ALICE, VERSION, served_story, wait_processed
from worker.bus.subjects import Subjects
from worker.client import RoomserverClient, RoomserverError
from worker.config import Config
from worker.matrix.builder import RoomBuilder
from worker.query import SERVICE_NAME, Queries


async def test_discoverable_with_stats(config: Config, js: JetStreamContext, nc: NATS) -> None:
    async with served_story(config, js) as (worker, story):
        assert worker.queries is not None
        service_id = worker.queries.service_id
        info_reply = await nc.request(f"$SRV.INFO.{SERVICE_NAME}.{service_id}", b"", timeout=5)
        info = json.loads(info_reply.data)
        subjects = Subjects(config.streams.subject_prefix)
        assert {e["name"]: e["subject"] for e in info["endpoints"]} == {
            name: subjects.query(name) for name in Queries.FIELDS
        }
        assert info["metadata"]["subject_prefix"] == config.streams.subject_prefix
        ping = json.loads((await nc.request(f"$SRV.PING.{SERVICE_NAME}", b"", timeout=5)).data)
        assert ping["name"] == SERVICE_NAME

        client = RoomserverClient(nc, config)
        for _ in range(3):
            await client.state(story.room_id)
        for _ in range(2):
            with pytest.raises(Exception, match="unknown_room"):
                await client.state("!nope:example.org")
        await nc.request(subjects.query("state"), b"\xc1", timeout=5)
        stats_reply = await nc.request(f"$SRV.STATS.{SERVICE_NAME}.{service_id}", b"", timeout=5)
        stats = {e["name"]: e for e in json.loads(stats_reply.data)["endpoints"]}
        assert stats["state"]["num_requests"] == 6
        assert stats["state"]["data"] == {"errors": {"unknown_room": 2, "bad_request": 1}}
        assert stats["state"]["processing_time"] > 0
        assert stats["rooms"]["num_requests"] == 0


async def test_reply_too_large_for_nats(config: Config, js: JetStreamContext, nc: NATS) -> None:
    builder = RoomBuilder(VERSION, ALICE)
    events = builder.bootstrap()
    big = [builder.message(ALICE, "x" * 60_000) for _ in range(nc.max_payload // 60_000 + 2)]
    async with running_worker(config) as worker:
        inputs = [input_for(e.pdu) for e in [*events, *big]]
        await publish_inputs(js, config, inputs, room_version=VERSION)
        await wait_processed(worker, len(inputs))
        ids = [e.event_id for e in big]
        # A request that does not say it reassembles chunks (an older client, `nats
        # req`) is refused as before: the contract's one-message reply.
        subject = Subjects(config.streams.subject_prefix).query("events")
        raw = await nc.request(subject, msgpack.packb({"event_ids": ids}), timeout=10)
        refused = msgpack.unpackb(raw.data)
        assert refused["error"] == "too_large" and "max_payload" in refused["message"]
        assert raw.headers is not None and raw.headers["Nats-Service-Error-Code"] == "413"
        # worker.client does, and gets every event, in chunks.
        client = RoomserverClient(nc, config)
        found = await client.events(ids)
        assert [e.event_id for e in found.events] == ids and found.missing == []
        assert {e.event["content"]["body"] for e in found.events} == {"x" * 60_000}


async def test_no_worker_answering(config: Config, nc: NATS) -> None:
    client = RoomserverClient(nc, config, timeout=2)
    with pytest.raises(RoomserverError, match="is it running") as unavailable:
        await client.rooms()
    assert unavailable.value.code == "unavailable"


async def test_request_without_reply_subject_is_ignored(
    config: Config, js: JetStreamContext, nc: NATS
) -> None:
    async with served_story(config, js) as (_, story):
        subject = Subjects(config.streams.subject_prefix).query("rooms")
        await nc.publish(subject, b"")
        await nc.flush()
        # The service carries on answering.
        client = RoomserverClient(nc, config)
        assert [r.room_id for r in await client.rooms()] == [story.room_id]
        raw = await nc.request(subject, msgpack.packb({}), timeout=5)
        assert msgpack.unpackb(raw.data)["rooms"][0]["room_id"] == story.room_id
