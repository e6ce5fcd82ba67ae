"""Someone deletes the worker's durable consumer in the middle of a feed, twice.

The worker recreates it, which starts delivery again from the beginning of the input
stream: everything already processed comes back and must change nothing.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.harness.feed import Feed
from tests.harness.procs import free_port, http_get, metric_value, stream_count
from tests.harness.sites import RunResult, compare, site


async def test_consumer_deleted_under_the_worker(
    reference: RunResult, feed: Feed, tmp_path: Path
) -> None:
    total = len(reference.outputs)
    async with site(tmp_path) as test_site:
        await test_site.publish(feed)
        js, output = test_site.js, test_site.config.streams.output
        input_stream = test_site.config.streams.input
        durable = test_site.config.consumer.durable
        metrics_port = free_port()
        worker = test_site.worker(metrics_listen_port=str(metrics_port))
        try:
            for fraction in (0.3, 0.6):
                target = int(total * fraction)

                async def reached(target: int = target) -> bool:
                    return await stream_count(js, output) >= target

                await worker.until(reached, f"{target} outputs")
                assert await js.delete_consumer(input_stream, durable)
            await worker.until(test_site.settled, "every input acknowledged", 90)
            assert worker.logged("input consumer is missing; recreating it") >= 1
            status, text = await http_get(metrics_port, "/metrics")
            assert status == 200
            duplicates = metric_value(text, "roomserver_inputs_duplicate_total")
            assert await worker.stop(signal.SIGTERM) == 0
        finally:
            worker.ensure_dead()
        compare(await test_site.result(), reference, feed)
    # What had been processed before each deletion came again and was recognised.
    assert duplicates >= int(total * 0.3) + int(total * 0.6)
