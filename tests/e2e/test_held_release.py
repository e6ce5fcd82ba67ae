"""A running worker releases an event held for unknown prev events once the configured
wait has passed, and publishes its output."""

from __future__ import annotations

import dataclasses

from nats.js import JetStreamContext

from tests.harness.e2e import input_for, outputs_reader, publish_inputs, running_worker
from worker.config import Config
from worker.matrix.builder import RoomBuilder

ALICE = "@alice:example.org"


async def test_held_event_is_released_after_the_wait(config: Config, js: JetStreamContext) -> None:
    config = dataclasses.replace(
        config, pipeline=dataclasses.replace(config.pipeline, held_max_wait=0.2)
    )
    builder = RoomBuilder("11", ALICE)
    setup = builder.bootstrap()
    builder.message(ALICE, "lost on the way")  # never published
    orphan = builder.message(ALICE, "orphan")
    reader = outputs_reader(js, config)
    async with running_worker(config) as worker:
        await publish_inputs(js, config, [input_for(e.pdu) for e in setup], room_version="11")
        await reader.take(len(setup))
        await publish_inputs(js, config, [input_for(orphan.pdu)], room_version="11")
        [released] = await reader.take(1, timeout=30)
        assert worker.pipeline.held_count == 0
    assert released["type"] == "new_room_event"
    assert released["event_id"] == orphan.event_id
    # The missing prev event is unknown, so the orphan builds on the room's state and
    # becomes a second forward extremity beside the last known event.
    assert sorted(released["latest_event_ids"]) == sorted([setup[-1].event_id, orphan.event_id])
