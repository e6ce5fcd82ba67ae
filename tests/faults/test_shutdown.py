"""SIGTERM when the worker cannot reach NATS: it must still exit promptly with status 0,
keeping what it committed for the next start."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.harness.feed import Feed
from tests.harness.procs import WorkerProcess, free_port, stream_count, worker_env
from tests.harness.sites import RunResult, compare, finish, site

#: A stopping worker finishes its batch, so this is generous.
PROMPT = 10.0


async def test_sigterm_while_nats_is_away(reference: RunResult, feed: Feed, tmp_path: Path) -> None:
    total = len(reference.outputs)
    async with site(tmp_path) as test_site:
        await test_site.publish(feed)
        js, output = test_site.js, test_site.config.streams.output
        worker = test_site.worker()
        try:

            async def reached() -> bool:
                return await stream_count(js, output) >= total // 3

            await worker.until(reached, "a third of the outputs")
            await test_site.server.stop(signal.SIGKILL)
            await worker.until_logged("disconnected from NATS; reconnecting")
            started = time.monotonic()
            assert await worker.stop(signal.SIGTERM) == 0, worker.log_tail()
            assert time.monotonic() - started < PROMPT
        finally:
            worker.ensure_dead()
        await test_site.server.start()
        await finish(test_site)
        compare(await test_site.result(), reference, feed)


async def test_sigterm_before_nats_was_ever_reached(tmp_path: Path) -> None:
    nowhere = f"nats://127.0.0.1:{free_port()}"
    worker = WorkerProcess(worker_env(nowhere, tmp_path / "data"), tmp_path)
    try:
        await worker.until_logged("NATS connection error")
        started = time.monotonic()
        assert await worker.stop(signal.SIGTERM) == 0, worker.log_tail()
        assert time.monotonic() - started < PROMPT
        assert worker.logged("stopped before NATS could be reached") == 1
    finally:
        worker.ensure_dead()
