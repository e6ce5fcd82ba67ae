"""Partition workers on a three-node JetStream cluster with R3 streams, the leaders
killed mid-feed (docs/operations.md#partitions, issue 12 item 5).

Two partition workers run as their own processes (`roomserver run --partition K`),
each given all three servers. In the middle of the feed the server leading the input
stream is SIGKILLed; once it is back and caught up, the server leading partition 0's
consumer is SIGKILLed too (one server down at a time: the cluster keeps its quorum).
Raft elects new leaders; the workers must carry on through the elections and end
exactly like the undisturbed one-worker reference: nothing lost, nothing duplicated,
no dead letter but the feed's deliberate bad inputs.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.api import ClusterInfo

from tests.harness.feed import Feed
from tests.harness.procs import POLL, NatsProcess, WorkerProcess, stream_count
from tests.harness.sites import (
    RunResult,
    Site,
    compare_partitions,
    partitioned,
    partitions_settled,
    site,
)

PARTITIONS = 2
SERVERS = 3
#: How long each wait took (printed: where the time of a slow run went).
WAITS: list[str] = []


async def _until(
    workers: list[WorkerProcess], condition: Callable[[], Awaitable[bool]], what: str
) -> None:
    """Wait for ``condition``; fail with its log if a worker exits, or at the deadline."""
    started = time.monotonic()
    deadline = started + 60
    while not await condition():
        for worker in workers:
            if not worker.running():
                raise AssertionError(f"a worker exited waiting for {what}:\n{worker.log_tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL)
    WAITS.append(f"{what}: {time.monotonic() - started:.1f}s")


async def _cluster_info(
    js: JetStreamContext, stream: str, durable: str | None = None
) -> ClusterInfo | None:
    """The stream's (or its consumer's) raft group; None while no leader answers."""
    try:
        if durable is None:
            info = (await js.stream_info(stream)).cluster
        else:
            info = (await js.consumer_info(stream, durable)).cluster
    except Exception:  # no leader yet, or the server we asked is the one killed
        return None
    return info if info is not None and info.leader else None


def _current(info: ClusterInfo | None) -> bool:
    """A leader and both followers online and caught up."""
    if info is None or not info.leader:
        return False
    replicas = info.replicas or []
    return len(replicas) == SERVERS - 1 and all(p.current and not p.offline for p in replicas)


async def _all_current(s: Site, durables: list[str]) -> bool:
    streams = s.config.streams
    groups = [
        await _cluster_info(s.js, name)
        for name in (streams.input, streams.output, streams.deadletter)
    ]
    groups += [await _cluster_info(s.js, streams.input, d) for d in durables]
    return all(_current(info) for info in groups)


def _server(s: Site, name: str) -> NatsProcess:
    """tests.harness.procs.nats_cluster names its servers n0, n1, ..."""
    return s.servers[int(name.removeprefix("n"))]


async def test_partition_workers_survive_stream_and_consumer_leader_kills(
    reference: RunResult, feed: Feed, tmp_path: Path
) -> None:
    rng = random.Random(12)
    # The feed goes in three parts, the second and third published after a kill, so
    # each kill finds the workers with work left however fast they are.
    size = -(-len(feed.messages) // 3)
    chunks = [feed.messages[i * size : (i + 1) * size] for i in range(3)]
    async with site(tmp_path, cluster=SERVERS) as s:
        partitioned(s, PARTITIONS)
        input_stream, output = s.config.streams.input, s.config.streams.output
        durables = [f"{s.config.consumer.durable}-{k}" for k in range(PARTITIONS)]
        # Short answers: while a group elects a leader, a slow one would hide progress.
        js = s.nc.jetstream(timeout=0.5)
        await s.publish(feed, messages=chunks[0])
        info = await s.js.stream_info(input_stream)
        assert info.config.num_replicas == SERVERS

        # Small batches: more commits per output, so the kills land mid-feed. A short
        # ack_wait: deliveries the killed consumer leader had not replicated are sent again
        # only after ack_wait (60 s by default), which would be most of the test's time.
        workers = [
            s.worker(
                args=("run", "--partition", str(k)),
                consumer_batch_size="5",
                consumer_ack_wait="5",
            )
            for k in range(PARTITIONS)
        ]
        killed: list[str] = []

        async def progressed() -> bool:
            target = await stream_count(js, output) + rng.randint(20, 80)

            async def reached() -> bool:
                return await stream_count(js, output) >= target or await partitions_settled(s)

            await _until(workers, reached, f"{target} outputs or the part settled")
            return True

        async def kill_leader(durable: str | None) -> None:
            what = "the input stream" if durable is None else f"consumer {durable}"
            before = await _cluster_info(js, input_stream, durable)
            assert before is not None and before.leader
            victim = _server(s, before.leader)
            await victim.stop(signal.SIGKILL)
            killed.append(f"{what} leader {before.leader}")

            async def new_leader() -> bool:
                now = await _cluster_info(js, input_stream, durable)
                return now is not None and now.leader not in (None, before.leader)

            await _until(workers, new_leader, f"a new leader of {what}")
            # The workers make progress with the old leader down...
            await _until(workers, progressed, "progress after the election")
            await victim.start()
            # ... and the restarted server catches up before anything else is killed.
            await _until(workers, lambda: _all_current(s, durables), "every replica current")

        try:
            for worker in workers:
                await worker.until_logged("worker ready")
            await _until(workers, lambda: _all_current(s, durables), "every replica current")
            await progressed()
            await kill_leader(None)
            await s.publish(feed, messages=chunks[1])
            await progressed()
            await kill_leader(durables[0])
            await s.publish(feed, messages=chunks[2])
            await _until(workers, lambda: partitions_settled(s), "every partition settled")
            for worker in workers:
                assert await worker.stop(signal.SIGTERM) == 0, worker.log_tail()
        finally:
            for worker in workers:
                worker.ensure_dead()
        figures = await compare_partitions(s, reference, feed)
    print(
        f"\ncluster partitions: killed {', '.join(killed)}; {figures.stored} events stored, "
        f"lost {figures.lost}, duplicate outputs {figures.duplicate_outputs}; waits: "
        + "; ".join(WAITS)
    )
