"""kill -9 the worker at random moments while a multi-room feed runs, many times.

Afterwards the database, the output stream and the dead letters must be exactly those
of an undisturbed run: nothing lost, nothing stored or published twice. SIGTERM and
SIGINT are mixed in, and must each end the worker with status 0 and an empty outbox.
"""

from __future__ import annotations

import contextlib
import random
import signal
from collections import Counter
from pathlib import Path

import msgpack

from tests.harness.feed import Feed
from tests.harness.procs import WorkerProcess, dump_database, outbox_rows, stream_count
from tests.harness.sites import RunResult, Site, compare, finish, site

KILLS = 12


async def kill_with_outputs_unsent(test_site: Site, worker: WorkerProcess) -> None:
    """Kill the worker after a commit and before JetStream has acknowledged its outputs.

    That window is a millisecond or two, so a random kill seldom hits it; pausing the
    nats-server (SIGSTOP) holds the worker in it until the outbox is seen to fill.
    """
    await worker.until(lambda: worker.logged("worker ready") > 0, "the worker to be ready")
    for _ in range(20):
        test_site.server.pause()
        try:
            with contextlib.suppress(AssertionError):
                await worker.until(
                    lambda: outbox_rows(test_site.storage) > 0, "a committed batch", 2.0
                )
            if outbox_rows(test_site.storage) > 0:
                worker.kill()
                return
        finally:
            test_site.server.resume()
        # Paused between batches: no commit came. Let it fetch and try again.
        count = await stream_count(test_site.js, test_site.config.streams.output)

        async def moved(count: int = count) -> bool:
            return await stream_count(test_site.js, test_site.config.streams.output) > count

        await worker.until(moved, "progress")
    raise AssertionError("never caught the worker between a commit and its publish")


def test_reference_run_covers_every_outcome(reference: RunResult, feed: Feed) -> None:
    statuses = Counter(row[1] for row in reference.dump.events.values())
    assert set(statuses) == {"accepted", "rejected", "soft_failed"}, statuses
    types = Counter(msgpack.unpackb(m.data)["type"] for m in reference.outputs)
    assert types["new_room_event"] == statuses["accepted"]
    assert types["rejected_event"] == statuses["rejected"] + statuses["soft_failed"]
    assert types["redacted_event"] == 1
    assert len(reference.dump.events) == len(feed.event_ids)
    assert len(reference.dump.rooms) == len(feed.room_ids)


async def test_kill_9_at_random_moments(reference: RunResult, feed: Feed, tmp_path: Path) -> None:
    rng = random.Random(20_261_126)
    # Most interruptions come once the worker is making progress; a few hit start-up
    # (before and right after the consumer is rewound and the outbox flushed).
    plan = ["progress"] * (KILLS - 5) + ["connecting", "ready", "ready", "unsent", "unsent"]
    plan += ["SIGTERM", "SIGTERM", "SIGINT"]
    rng.shuffle(plan)
    kills = graceful = resumed_with_unsent = 0
    total = len(reference.outputs)
    async with site(tmp_path) as test_site:
        await test_site.publish(feed)
        js, output = test_site.js, test_site.config.streams.output
        for moment in plan:
            worker = test_site.worker()
            try:
                if moment == "connecting":
                    await worker.until_logged("connected to NATS")
                elif moment == "ready":
                    await worker.until_logged("worker ready")
                elif moment == "unsent":
                    await kill_with_outputs_unsent(test_site, worker)
                else:
                    target = min(total - 1, await stream_count(js, output) + rng.randint(5, 45))

                    async def reached(target: int = target) -> bool:
                        return await stream_count(js, output) >= target

                    await worker.until(reached, f"{target} outputs")
                if moment == "unsent":
                    kills += 1
                elif moment.startswith("SIG"):
                    code = await worker.stop(getattr(signal, moment))
                    assert code == 0, worker.log_tail()
                    # A clean stop publishes everything it committed and leaves no
                    # input delivered but unsettled.
                    assert dump_database(test_site.storage).outbox == 0
                    info = await js.consumer_info(
                        test_site.config.streams.input, test_site.config.consumer.durable
                    )
                    assert info.num_ack_pending == 0
                    graceful += 1
                else:
                    worker.kill()
                    kills += 1
                resumed_with_unsent += worker.logged(
                    "published outputs a previous run had committed but not sent"
                )
            finally:
                worker.ensure_dead()
        assert await stream_count(js, output) < total, "the feed ended before the last kill"
        await finish(test_site)
        figures = compare(await test_site.result(), reference, feed)
    print(
        f"\nkill -9: {kills} kills and {graceful} clean stops survived; "
        f"{resumed_with_unsent} restarts published outputs a killed run had left unsent; "
        f"{figures.stored} events stored, lost {figures.lost}, "
        f"duplicate outputs {figures.duplicate_outputs}"
    )
    assert kills == KILLS
