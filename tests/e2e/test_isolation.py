"""No room waits for another: a small room's input fetched behind an expensive room's
backlog is published before that backlog is done.

Real nats-server, real worker, real SQLite file. The expensive room is a forked room of
1,500 members whose every event resolves state over two branches (each costs
milliseconds); its backlog of 120 events sits in the input stream ahead of a new small
room's first event, and all of them are there before the worker starts, so they are
fetched together. Before the change, a fetched batch was one transaction and its outputs
were published in stream order after it: the small room's output came last. Now a
transaction commits once `consumer.batch_budget` (20 ms) of work is spent, and the next
takes first the rooms that had the least of the worker's time lately
(worker.runner.fairness), so the small room's output comes before the backlog is done.

Why this cannot flake: the first transaction takes the inputs in stream order (no room
has had any time yet) and stops after 20 ms; 108 events of the forked room cost far more
than that on any machine (a slower machine only widens the margin). The forked room then
has a share of 20 ms or more, which takes over four seconds to decay to the smallest
class, where the small room (no share) is: the second transaction, which follows at
once, takes the small room first. Nothing waits on time: the test reads the output
stream until every output is there.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from bench.isolation_bench import forked_events
from tests.harness.e2e import input_for, outputs_reader, publish_inputs, running_worker
from worker.bus.streams import ensure_streams
from worker.config import Config
from worker.matrix.builder import RoomBuilder

VERSION = "10"
MEMBERS = 1500
#: Forked rounds in the backlog: two branch events each, and a merge every four.
ROUNDS = 48


async def test_small_room_is_not_held_up_by_a_forked_rooms_backlog(
    config: Config, js: JetStreamContext
) -> None:
    setup, backlog = forked_events(VERSION, MEMBERS, ROUNDS)
    small = RoomBuilder(VERSION, "@small:example.org").create()
    reader = outputs_reader(js, config)

    await ensure_streams(js, config)
    # The forked room's members joined, in a first run of the worker.
    await publish_inputs(js, config, [input_for(e.pdu) for e in setup], room_version=VERSION)
    async with running_worker(config):
        await reader.take(len(setup), timeout=120)

    # The backlog, then the small room's event, all in the stream before the worker runs.
    await publish_inputs(js, config, [input_for(e.pdu) for e in backlog], room_version=VERSION)
    await publish_inputs(js, config, [input_for(small.pdu)], room_version=VERSION)
    async with running_worker(config):
        outputs = await reader.take(len(backlog) + 1, timeout=120)

    order = [o["event_id"] for o in outputs]
    assert sorted(order) == sorted([e.event_id for e in backlog] + [small.event_id])
    assert all(o["type"] == "new_room_event" for o in outputs), [o["type"] for o in outputs]
    # The forked room's outputs keep its stream order.
    assert [e for e in order if e != small.event_id] == [e.event_id for e in backlog]
    before_small = order.index(small.event_id)
    # The small room did not wait for the whole backlog.
    assert before_small < len(backlog), "the small room's output came after the whole backlog"
