"""The whole path through a real nats-server and a real SQLite file: a linear room in,
one `new_room_event` per event out, with the right state changes."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from nats.js import JetStreamContext

from tests.harness.e2e import input_for, outputs_reader, publish_inputs, running_worker
from worker.bus.subjects import Subjects
from worker.config import Config
from worker.matrix.builder import RoomBuilder
from worker.matrix.room_versions import get_room_version
from worker.pipeline import Pipeline
from worker.storage.database import Database
from worker.synthetic import linear_room

StateMap = dict[tuple[str, str], str]


def _stored_states(
    storage: Path, room_id: str, event_ids: list[str]
) -> tuple[StateMap, list[StateMap]]:
    """The room's current state and the state after each event, read from SQLite."""
    db = Database(storage)
    try:
        pipeline = Pipeline(db, Subjects())
        room = db.get_room(room_id)
        assert room is not None
        rows = db.get_event_rows(event_ids)
        after = [
            pipeline.to_state_map(pipeline.state.load(rows[e].after_snapshot_nid))
            for e in event_ids
        ]
        return pipeline.to_state_map(pipeline.state.load(room.snapshot_nid)), after
    finally:
        db.close()


@pytest.mark.parametrize("room_version", ["1", "3", "10", "12"])
async def test_linear_room_outputs_and_state(
    config: Config, js: JetStreamContext, room_version: str
) -> None:
    pdus = list(linear_room(room_version, members=15, events=120, seed=3))
    version = get_room_version(room_version)
    # Replay the room directly to know the expected state after each event.
    replay: StateMap = {}
    replay_after: list[StateMap] = []
    expected: list[tuple[str, list[str], list[str]]] = []
    from worker.matrix.pdu import parse_pdu

    for pdu in pdus:
        event = parse_pdu(pdu, version)
        adds: list[str] = []
        removes: list[str] = []
        if event.is_state:
            old = replay.get(event.key)
            replay[event.key] = event.event_id
            adds = [event.event_id]
            removes = [old] if old else []
        expected.append((event.event_id, adds, removes))
        replay_after.append(dict(replay))

    reader = outputs_reader(js, config)
    async with running_worker(config):
        await publish_inputs(js, config, [input_for(p) for p in pdus], room_version=room_version)
        outputs = await reader.take(len(pdus))
        assert await reader.nothing_more(0.5)

    assert [o["type"] for o in outputs] == ["new_room_event"] * len(pdus)
    last_sent = None
    for output, (event_id, adds, removes) in zip(outputs, expected, strict=True):
        assert output["event_id"] == event_id
        assert output["adds_state_event_ids"] == adds
        assert output["removes_state_event_ids"] == removes
        assert output["latest_event_ids"] == [event_id]
        assert output["last_sent_event_id"] == last_sent
        assert output["room_version"] == room_version
        assert output["_msg_id"] == f"{event_id}:new_room_event"
        last_sent = event_id
    room_id = outputs[0]["room_id"]
    current, after = _stored_states(
        Path(config.storage.path), room_id, [event_id for event_id, _, _ in expected]
    )
    assert current == replay
    # The state after every event equals the direct replay.
    assert after == replay_after


async def test_republished_and_redelivered_events_change_nothing(
    config: Config, js: JetStreamContext
) -> None:
    builder = RoomBuilder("10", "@alice:example.org")
    events = [*builder.bootstrap(), builder.message("@alice:example.org", "hi")]
    reader = outputs_reader(js, config)
    async with running_worker(config):
        await publish_inputs(js, config, [input_for(e.pdu) for e in events], room_version="10")
        first = await reader.take(len(events))
    # A second worker run over the same storage: republish everything without msg IDs
    # (so JetStream does not drop them); the worker must recognise every one.
    async with running_worker(config) as worker:
        subjects = Subjects(config.streams.subject_prefix)
        for event in events:
            await js.publish(
                subjects.input(builder.room_id),
                msgpack.packb(input_for(event.pdu), use_bin_type=True),
            )
        counters = worker.pipeline.counters
        await worker.wait_until(lambda: counters.duplicates >= len(events))
        assert counters.duplicates == len(events)
        assert await reader.nothing_more(0.5)
    assert len(first) == len(events)
