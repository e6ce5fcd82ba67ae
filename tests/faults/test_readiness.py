"""Liveness and readiness of a running worker while its nats-server freezes and restarts.

`/livez` answers while the worker's event loop turns; `/readyz` (and `/healthz`) answers
503 once NATS has been silent or away for `nats.ready_grace` seconds (default 5). A frozen
server (SIGSTOP) keeps the TCP connection open and answers nothing, which only pings
reveal; a quick restart must not make the worker look unready at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

from tests.harness.procs import NatsProcess, WorkerProcess, free_port, http_get, worker_env
from worker.config import NatsConfig

GRACE = NatsConfig().ready_grace


async def test_frozen_nats_makes_the_worker_unready_but_a_quick_restart_does_not(
    tmp_path: Path,
) -> None:
    server = NatsProcess(tmp_path / "nats")
    await server.start()
    port = free_port()
    worker = WorkerProcess(
        worker_env(server.url, tmp_path / "data", metrics_listen_port=str(port)),
        tmp_path / "cwd",
    )

    async def status(path: str) -> int:
        return (await http_get(port, path))[0]

    async def ready_is(code: int) -> bool:
        return await status("/readyz") == code

    try:
        await worker.until(lambda: ready_is(200), "the worker to be ready")
        assert await status("/livez") == 200
        assert await status("/healthz") == 200

        # Frozen: the connection stays open, nothing is answered.
        server.pause()
        frozen = time.monotonic()
        await worker.until(lambda: ready_is(503), "readiness to notice the frozen server", 30)
        noticed = time.monotonic() - frozen
        _, body = await http_get(port, "/readyz")
        checks = json.loads(body)["checks"]
        assert checks["nats_answering"] is False, checks
        assert (await status("/healthz")) == 503
        # The process is alive all along: its loop still answers.
        assert await status("/livez") == 200
        # Not before the grace (the last answer may be up to a ping interval older than
        # the freeze), and not much after it.
        assert GRACE - 1.5 <= noticed <= GRACE + 5, noticed
        # The client's keep-alive pings (nats.ping_interval 2 s, 2 outstanding) then give
        # the connection up as stale and it starts reconnecting.
        await worker.until_logged("disconnected from NATS; reconnecting", 30)
        stale = time.monotonic() - frozen
        assert await status("/livez") == 200

        server.resume()
        resumed = time.monotonic()
        await worker.until(lambda: ready_is(200), "readiness after the server resumed", 60)
        recovered = time.monotonic() - resumed
        assert await status("/livez") == 200

        # A quick restart: readiness is watched without a gap and must never drop.
        reconnects = worker.logged("reconnected to NATS")
        seen: list[int] = []
        stop_watching = asyncio.Event()

        async def watch() -> None:
            while not stop_watching.is_set():
                seen.append(await status("/readyz"))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        try:
            restarted = time.monotonic()
            await server.stop(signal.SIGTERM)
            await server.start()
            await worker.until(
                lambda: worker.logged("reconnected to NATS") > reconnects, "the reconnection"
            )
            back = time.monotonic() - restarted

            async def answering() -> bool:
                _, body = await http_get(port, "/readyz")
                return bool(json.loads(body)["checks"]["nats_answering"]) if body else False

            await worker.until(answering, "a ping answered on the new connection")
        finally:
            stop_watching.set()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        assert len(seen) > 10
        assert set(seen) == {200}, seen
        assert back < GRACE
        assert await worker.stop(signal.SIGTERM) == 0
    finally:
        worker.ensure_dead()
        if server.process is not None and server.process.poll() is None:
            server.resume()
        await server.stop()
    print(
        f"\nreadiness: frozen nats-server noticed after {noticed:.1f} s (grace {GRACE:g} s), "
        f"connection dropped as stale after {stale:.1f} s, ready again {recovered:.1f} s "
        f"after it resumed; a restart (reconnected in {back:.1f} s) left /readyz at 200 "
        f"in {len(seen)} polls"
    )
