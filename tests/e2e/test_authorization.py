"""Authorization end to end through NATS: an unauthorized state change never reaches the
room's state and comes out as `rejected_event`; a soft-failed event gets no
`new_room_event`."""

from __future__ import annotations

from nats.js import JetStreamContext

from tests.harness.e2e import input_for, outputs_reader, publish_inputs, running_worker
from worker.config import Config
from worker.matrix.builder import RoomBuilder
from worker.runner.pipeline_handle import LocalPipeline

ALICE = "@alice:example.org"
BOB = "@bob:example.org"


async def test_unauthorized_and_soft_failed_events(config: Config, js: JetStreamContext) -> None:
    builder = RoomBuilder("12", ALICE)
    setup = [*builder.bootstrap(), builder.join(BOB)]
    # Bob (power 0) tries to change the topic: rejected against the state before it.
    topic = builder.state_event(BOB, "m.room.topic", "", {"topic": "mine now"})
    # Alice bans Bob; Bob's message built on the pre-ban state is soft-failed.
    before_ban = setup[-1].event_id
    ban = builder.ban(ALICE, BOB, prev_events=[topic.event_id])
    late = builder.message(BOB, "am I still here?", prev_events=[before_ban])
    after = builder.message(ALICE, "after", prev_events=[ban.event_id])
    events = [*setup, topic, ban, late, after]

    reader = outputs_reader(js, config)
    async with running_worker(config, separate_process=False) as worker:
        await publish_inputs(js, config, [input_for(e.pdu) for e in events], room_version="12")
        outputs = await reader.take(len(events))
        assert await reader.nothing_more(0.5)
        assert isinstance(worker.pipeline, LocalPipeline)
        pipeline = worker.pipeline.pipeline
        state = pipeline.to_state_map(
            pipeline.state.load(pipeline.db.get_room(builder.room_id).snapshot_nid)
        )

    by_event = {o["event_id"]: o for o in outputs}
    assert by_event[topic.event_id]["type"] == "rejected_event"
    assert by_event[topic.event_id]["soft_failed"] is False
    assert "@bob:example.org" in by_event[topic.event_id]["reason"]
    assert by_event[late.event_id]["type"] == "rejected_event"
    assert by_event[late.event_id]["soft_failed"] is True
    assert not any(
        o["type"] == "new_room_event" and o["event_id"] in (topic.event_id, late.event_id)
        for o in outputs
    )
    assert ("m.room.topic", "") not in state
    assert state[("m.room.member", BOB)] == ban.event_id
    # A rejected event is never a forward extremity and does not consume its prev events
    # (as in Synapse): Bob's join stays an extremity beside the branch through the ban.
    assert by_event[ban.event_id]["type"] == "new_room_event"
    assert sorted(by_event[after.event_id]["latest_event_ids"]) == sorted(
        [before_ban, after.event_id]
    )
