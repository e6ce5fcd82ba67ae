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

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from nats.js import JetStreamContext

from bench.isolation_bench import forked_events
from tests.harness.e2e import input_for, outputs_reader, publish_inputs, running_worker
from worker.app import Worker
from worker.bus.streams import ensure_streams
from worker.config import Config
from worker.matrix.builder import RoomBuilder
from worker.storage.database import DB_FILENAME

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


async def _delivered(js: JetStreamContext, config: Config, count: int, timeout: float) -> bool:
    """Whether JetStream has handed the worker `count` inputs it has not acknowledged
    (fetched, in the worker's hand) within `timeout` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await js.consumer_info(config.streams.input, config.consumer.durable)
        if info.num_ack_pending >= count:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_inputs_published_during_a_transaction_are_fetched_during_it(
    config: Config, js: JetStreamContext
) -> None:
    """A fetch ends once it has delivered what the stream held when it was asked (the
    first input to come, if none). While a transaction runs, what a fetch brings is
    taken into the hand and the next fetch asked for, whatever its rooms, while the
    hand holds fewer inputs than the next transaction may be offered: inputs
    published during the transaction are in hand when it ends, so the next transaction
    takes them, instead of finding them still in the stream. Before, only inputs of
    rooms cheaper than the transaction's were: here, one room's own later inputs
    stayed in the stream, all but the first one fetched.

    The transaction is held open by a write lock on the worker's SQLite file, taken
    by this test (its BEGIN IMMEDIATE waits); nothing waits on time but the bounded
    wait for JetStream's count of inputs handed out."""
    room = RoomBuilder(VERSION, "@solo:example.org")
    events = [*room.bootstrap(), *(room.message("@solo:example.org", f"m{i}") for i in range(6))]
    reader = outputs_reader(js, config)
    await ensure_streams(js, config)
    async with running_worker(config):
        blocker = sqlite3.connect(Path(config.storage.path) / DB_FILENAME, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            await publish_inputs(js, config, [input_for(events[0].pdu)], room_version=VERSION)
            # Fetched; its transaction now waits for the lock.
            assert await _delivered(js, config, 1, timeout=10)
            # The fetch under way during the transaction ends with the next input.
            await publish_inputs(js, config, [input_for(events[1].pdu)], room_version=VERSION)
            assert await _delivered(js, config, 2, timeout=10)
            await publish_inputs(
                js, config, [input_for(e.pdu) for e in events[2:]], room_version=VERSION
            )
            assert await _delivered(js, config, len(events), timeout=5), (
                "inputs published during a transaction stayed in the stream"
            )
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        outputs = await reader.take(len(events), timeout=60)
    assert [o["event_id"] for o in outputs] == [e.event_id for e in events]


def _committed_batches(worker: Worker) -> float:
    """Transactions that committed inputs so far (the worker's own metric)."""
    value = worker.metrics.registry.get_sample_value("roomserver_batch_messages_count")
    return value or 0.0


async def test_a_small_rooms_inputs_share_the_commit_of_the_turn_they_interrupt(
    config: Config, js: JetStreamContext
) -> None:
    """A small room's inputs fetched while a busy room's transaction runs interrupt it
    (after consumer.batch_patience) and then go in that same transaction, after the
    busy room's input under way, sharing its commit: one commit, not the busy room's
    and then one of their own. Outputs keep each room's order, and nothing is lost.

    Before, the interrupted transaction committed the busy room's one input alone,
    then the small room had a transaction of its own, then the busy room's rest: three
    transactions where there are now two.

    Why this cannot flake: the busy room has had ~100 ms of the worker (400 messages)
    just before, the small room ~1 ms, so the small room is in a cheaper group for
    seconds (shares halve every second). The busy room's transaction is held at its
    BEGIN by a write lock this test takes, until JetStream has handed the worker the
    small room's inputs and the worker has set the interrupt (waited on as conditions);
    released, it does one input, sees the interrupt, and goes on with the small room's.
    The busy room's four other inputs are then all that is in hand: one transaction."""
    busy = RoomBuilder(VERSION, "@busy:example.org")
    small = RoomBuilder(VERSION, "@quiet:example.org")
    warm = [*busy.bootstrap(), *(busy.message("@busy:example.org", f"w{i}") for i in range(400))]
    warm += small.bootstrap()
    later = [busy.message("@busy:example.org", f"m{i}") for i in range(5)]
    smalls = [small.message("@quiet:example.org", f"s{i}") for i in range(3)]
    reader = outputs_reader(js, config)
    await ensure_streams(js, config)
    async with running_worker(config) as worker:
        await publish_inputs(js, config, [input_for(e.pdu) for e in warm], room_version=VERSION)
        await reader.take(len(warm), timeout=60)
        before = _committed_batches(worker)
        blocker = sqlite3.connect(Path(config.storage.path) / DB_FILENAME, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            await publish_inputs(
                js, config, [input_for(e.pdu) for e in later], room_version=VERSION
            )
            assert await _delivered(js, config, len(later), timeout=10)
            await publish_inputs(
                js, config, [input_for(e.pdu) for e in smalls], room_version=VERSION
            )
            assert await _delivered(js, config, len(later) + len(smalls), timeout=10)
            assert await _condition(worker.pipeline.interrupt.is_set, timeout=10)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        outputs = await reader.take(len(later) + len(smalls), timeout=60)
        await worker.wait_until(lambda: worker.pipeline.counters.processed >= len(warm) + 8)
        batches = _committed_batches(worker) - before
    order = [o["event_id"] for o in outputs]
    expected = [later[0].event_id, *(e.event_id for e in smalls)]
    assert order == [*expected, *(e.event_id for e in later[1:])]
    assert batches == 2, f"{batches} transactions: the small room's inputs had their own"


async def _condition(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether `predicate` holds within `timeout` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.005)
    return False
