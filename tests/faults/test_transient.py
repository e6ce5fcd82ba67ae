"""A transient database fault (busy, locked) is retried in place, never dead-lettered,
and never lets later inputs of a room overtake the batch that hit it."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from tests.harness.e2e import input_for, outputs_reader, publish_inputs, running_worker
from worker.config import Config, MetricsConfig
from worker.matrix.pdu import parse_pdu
from worker.matrix.room_versions import get_room_version
from worker.pipeline import Disposition, InboundMessage, Pipeline
from worker.pipeline.process import FollowUps
from worker.synthetic import linear_room

#: Which calls of process_batch fail (1-based): a run of failures on one batch.
FAILING_CALLS = (2, 3, 4)


def real_busy_error(directory: Path) -> sqlite3.OperationalError:
    """A genuine SQLITE_BUSY from SQLite: a write while another connection holds the
    write lock, with no busy timeout."""
    path = directory / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("BEGIN IMMEDIATE")
        try:
            other.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            assert exc.sqlite_errorname == "SQLITE_BUSY"
            return exc
        raise AssertionError("the second writer was not refused")
    finally:
        other.close()
        holder.close()


async def test_locked_database_is_retried_in_order(
    config: Config, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    busy = real_busy_error(tmp_path)
    calls = 0
    original = Pipeline.process_batch

    def flaky(
        self: Pipeline, messages: Sequence[InboundMessage], follow: FollowUps | None = None
    ) -> list[Disposition]:
        nonlocal calls
        calls += 1
        if calls in FAILING_CALLS:
            raise busy
        return original(self, messages, follow)

    monkeypatch.setattr(Pipeline, "process_batch", flaky)
    config = dataclasses.replace(
        config,
        consumer=dataclasses.replace(config.consumer, batch_size=10),
        metrics=MetricsConfig(listen_port=0),
    )
    pdus = list(linear_room("10", members=5, events=40, seed=9))
    version = get_room_version("10")
    expected = [parse_pdu(pdu, version).event_id for pdu in pdus]
    reader = outputs_reader(js, config)
    # The pipeline in this process, where the patch above applies.
    async with running_worker(config, separate_process=False) as worker:
        await publish_inputs(js, config, [input_for(p) for p in pdus], room_version="10")
        outputs = await reader.take(len(pdus))
        assert await reader.nothing_more(0.3)
        retries = worker.metrics.registry.get_sample_value("roomserver_transient_retries_total")
        counters = worker.pipeline.counters
    assert calls > max(FAILING_CALLS)
    assert retries == len(FAILING_CALLS)
    assert [o["event_id"] for o in outputs] == expected
    assert {o["type"] for o in outputs} == {"new_room_event"}
    assert (counters.dead_lettered, counters.duplicates) == (0, 0)
    deadletters = await js.stream_info(config.streams.deadletter)
    assert deadletters.state.messages == 0
