"""One worker per storage directory: a second one on the same directory exits at once
with one line naming the directory and the holder's PID, before it starts anything
(its own embedded nats-server above all), and the first one carries on untouched."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.harness.procs import WorkerProcess, cli, free_port, http_get, worker_env
from worker.cli import EXIT_STORAGE_LOCKED
from worker.synthetic import linear_room

pytestmark = pytest.mark.faults


async def test_second_worker_on_a_directory_is_refused(tmp_path: Path) -> None:
    storage = tmp_path / "data"
    nats_port, metrics_port = free_port(), free_port()
    # The embedded nats-server: both would start one on the same port and store.
    env = worker_env("", storage, nats_listen_port=str(nats_port))
    env.pop("ROOMSERVER_NATS_SERVERS")
    first = WorkerProcess({**env, "ROOMSERVER_METRICS_LISTEN_PORT": str(metrics_port)}, tmp_path)
    second: WorkerProcess | None = None
    try:
        await first.until_logged("worker ready")
        second = WorkerProcess(env, tmp_path)
        code = await second.stop_when_exited(10)
        assert code == EXIT_STORAGE_LOCKED, second.log_tail()
        assert second.stderr_text() == (
            f"roomserver: storage directory {storage} is in use by another worker "
            f"(PID {first.pid}); stop it first, or give this one its own storage.path"
        )
        # Refused before anything started: not even a log line.
        assert [line for line in second.lines if not line.get("raw")] == []

        # The first one is untouched: still ready, and it processes a room.
        assert first.running()
        status, body = await http_get(metrics_port, "/healthz")
        assert (status, json.loads(body)["status"]) == (200, "ok")
        room = tmp_path / "room.jsonl"
        pdus = list(linear_room("10", members=3, events=10, seed=4))
        room.write_text("".join(json.dumps(p) + "\n" for p in pdus))
        published, out = cli(env, tmp_path, "publish", str(room), "--no-progress")
        assert published == 0, out
        await first.until(
            lambda: first.logged("worker ready") == 1 and _stored(storage) == len(pdus),
            "the room stored",
        )
        assert await first.stop(signal.SIGTERM) == 0
    finally:
        first.ensure_dead()
        if second is not None:
            second.ensure_dead()


def _stored(storage: Path) -> int:
    conn = sqlite3.connect(f"file:{storage / 'roomserver.db'}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()
