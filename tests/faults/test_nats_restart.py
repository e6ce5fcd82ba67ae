"""The nats-server goes away in the middle of a feed (killed, stopped, restarted on the
same port and store), several times, while the worker runs.

The worker must notice, report itself not ready, wait without piling up requests,
reconnect, rewind its consumer and carry on, ending exactly like an undisturbed run.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

from tests.harness.feed import Feed
from tests.harness.procs import free_port, http_get, stream_count
from tests.harness.sites import RunResult, compare, site

#: How each outage begins.
OUTAGES = (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGINT)


async def test_nats_server_restarts_mid_feed(
    reference: RunResult, feed: Feed, tmp_path: Path
) -> None:
    rng = random.Random(4222)
    metrics_port = free_port()
    # The feed goes in parts: one before each outage and the last after it, so there is
    # always work left when the server goes away, however fast the worker is.
    parts = len(OUTAGES) + 1
    size = -(-len(feed.messages) // parts)
    chunks = [feed.messages[i * size : (i + 1) * size] for i in range(parts)]
    async with site(tmp_path) as test_site:
        await test_site.publish(feed, messages=chunks[0])
        js, output = test_site.js, test_site.config.streams.output
        # A short readiness grace, so that each outage shows as 503 at once (the grace
        # itself is tested in test_readiness.py).
        worker = test_site.worker(metrics_listen_port=str(metrics_port), nats_ready_grace="0.5")

        async def health_is(status: int) -> bool:
            return (await http_get(metrics_port, "/healthz"))[0] == status

        try:
            await worker.until(lambda: health_is(200), "the worker to report itself ready")
            restarts = 0
            for sig, next_chunk in zip(OUTAGES, chunks[1:], strict=True):
                target = await stream_count(js, output) + rng.randint(20, 120)

                async def progressed(target: int = target) -> bool:
                    # Mid-part, or the part done (then the outage finds the worker idle).
                    return await stream_count(js, output) >= target or await test_site.settled()

                await worker.until(progressed, f"{target} outputs or the part settled")
                await test_site.server.stop(sig)
                await worker.until(lambda: health_is(503), "the worker to report NATS away")

                async def metrics_say_disconnected() -> bool:
                    status, metrics = await http_get(metrics_port, "/metrics")
                    assert status == 200
                    return b'roomserver_health_check{check="nats_connected"} 0.0' in metrics

                await worker.until(metrics_say_disconnected, "the metrics to show NATS away")
                await test_site.server.start()
                restarts += 1
                await worker.until(lambda: health_is(200), "the worker to be ready again")
                await test_site.publish(feed, messages=next_chunk)
            await worker.until(test_site.settled, "every input acknowledged", 90)
            status, metrics = await http_get(metrics_port, "/metrics")
            assert status == 200
            assert b"roomserver_consumer_rewinds_total" in metrics
            assert worker.logged("reconnected to NATS") >= len(OUTAGES)
            assert await worker.stop(signal.SIGTERM) == 0
        finally:
            worker.ensure_dead()
        figures = compare(await test_site.result(), reference, feed)
    print(
        f"\nnats-server restarts: {restarts} outages survived; {figures.stored} events stored, "
        f"lost {figures.lost}, duplicate outputs {figures.duplicate_outputs}"
    )
