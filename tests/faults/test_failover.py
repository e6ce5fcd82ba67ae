"""Failover between the configured servers of a three-node JetStream cluster.

The server the worker is connected to is killed, twice, in the middle of the feed
(and started again before the next kill, so the cluster keeps its quorum). The worker
must move to another configured server and finish like an undisturbed run.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

from tests.harness.feed import Feed
from tests.harness.procs import WorkerProcess, stream_count
from tests.harness.sites import RunResult, compare, site

ROUNDS = 2


def connected_port(worker: WorkerProcess) -> int:
    """The port of the server the worker last said it is connected to."""
    for line in reversed(worker.lines):
        if line.get("event") in ("connected to NATS", "reconnected to NATS"):
            return int(str(line["server"]).rsplit(":", 1)[1])
    raise AssertionError("the worker has not said where it is connected")


async def test_failover_to_another_configured_server(
    reference: RunResult, feed: Feed, tmp_path: Path
) -> None:
    rng = random.Random(3)
    total = len(reference.outputs)
    async with site(tmp_path, cluster=3) as cluster:
        await cluster.publish(feed)
        output = cluster.config.streams.output
        # Short answers: while a stream elects a leader, a slow count would hide progress.
        counting = cluster.nc.jetstream(timeout=0.5)
        seen = 0

        async def reached(target: int) -> bool:
            nonlocal seen
            seen = max(seen, await stream_count(counting, output))
            return seen >= target

        # Small batches: more commits per output, so the kills land mid-feed.
        worker = cluster.worker(consumer_batch_size="5")
        visited: set[int] = set()
        try:
            await worker.until_logged("worker ready")
            for _ in range(ROUNDS):
                target = min(total - 1, seen + rng.randint(30, 120))
                await worker.until(lambda target=target: reached(target), f"{target} outputs", 60)
                assert seen < total, "the feed ended before the kill"
                port = connected_port(worker)
                visited.add(port)
                victim = next(s for s in cluster.servers if s.port == port)
                reconnects = worker.logged("reconnected to NATS")
                await victim.stop(signal.SIGKILL)
                await worker.until(
                    lambda reconnects=reconnects: worker.logged("reconnected to NATS") > reconnects,
                    "a reconnection to another server",
                )
                assert connected_port(worker) != port
                await victim.start()
            await worker.until(cluster.settled, "every input acknowledged", 90)
            assert await worker.stop(signal.SIGTERM) == 0
        finally:
            worker.ensure_dead()
        compare(await cluster.result(), reference, feed)
    assert len(visited | {connected_port(worker)}) >= 2
