"""SQLite as the worker leaves it: WAL, a busy timeout, durable commits, private files,
and a refusal to start on a damaged database."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from tests.harness.e2e import input_for, outputs_reader, publish_inputs, running_worker
from tests.harness.procs import WorkerProcess
from tests.harness.sites import site
from worker.config import Config, MetricsConfig
from worker.storage.database import DB_FILENAME, open_connection
from worker.synthetic import linear_room


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Files the worker creates must be private even if its umask would share them."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_files_are_private_and_wal_is_on(
    config: Config, js: JetStreamContext, permissive_umask: None
) -> None:
    config = dataclasses.replace(config, metrics=MetricsConfig(listen_port=0))
    storage = Path(config.storage.path)
    pdus = list(linear_room("10", members=3, events=10, seed=4))
    reader = outputs_reader(js, config)
    async with running_worker(config):
        await publish_inputs(js, config, [input_for(p) for p in pdus], room_version="10")
        await reader.take(len(pdus))
        files = [p for p in storage.iterdir() if p.name.startswith(DB_FILENAME)]
        assert {p.name for p in files} >= {DB_FILENAME, DB_FILENAME + "-wal"}
        assert mode(storage) == 0o700
        for path in files:
            assert mode(path) == 0o600, path
    conn = open_connection(storage / DB_FILENAME)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        conn.close()


async def test_refuses_to_start_on_a_damaged_database(tmp_path: Path) -> None:
    async with site(tmp_path) as test_site:
        worker = test_site.worker()
        try:
            await worker.until_logged("worker ready")
            assert await worker.stop(signal.SIGTERM) == 0
        finally:
            worker.ensure_dead()
        path = test_site.storage / DB_FILENAME
        with contextlib.closing(sqlite3.connect(path)) as conn:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        with path.open("r+b") as fh:
            fh.seek(page_size * 2)  # past the schema page: a table's b-tree
            fh.write(b"\xa5" * page_size)
        damaged = WorkerProcess(test_site.env(), tmp_path / "cwd")
        try:
            code = await damaged.stop_when_exited()
        finally:
            damaged.ensure_dead()
        assert code != 0
        text = "\n".join(str(line) for line in damaged.lines)
        assert "integrity check failed" in text or "malformed" in text, text[-2000:]
        assert damaged.logged("worker ready") == 0
