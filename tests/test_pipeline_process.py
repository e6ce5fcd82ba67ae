"""The pipeline's process seen through its handle (worker/runner/pipeline_process.py), on
a real SQLite file: the input loop's interrupt reaches a transaction running in the
other process, and the count of inputs done comes back while it runs; what a batch
reports (dispositions, laps, outbox rows, counts) crosses the pipe whole, and so does a
transient SQLite fault, still recognised as one (so the batch is retried, not fatal)."""

from __future__ import annotations

import os
import pickle
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from tests.faults.test_transient import real_busy_error
from tests.harness.pipeline import ALICE, SUBJECTS, pack
from worker.config import LogConfig
from worker.matrix.builder import RoomBuilder
from worker.metrics import WorkerMetrics
from worker.pipeline import Disposition, InboundMessage
from worker.runner.pipeline_process import PipelineProcess, _portable
from worker.runner.pipeline_server import BatchResult
from worker.storage.cache_budget import DEFAULT_CACHE_MB
from worker.storage.database import OutboxRow, is_transient
from worker.storage.lock import StorageLock


@pytest_asyncio.fixture
async def remote(tmp_path: Path) -> AsyncIterator[PipelineProcess]:
    with StorageLock(tmp_path) as lock:
        metrics = WorkerMetrics(
            counters=lambda: None, held=lambda: None, parked=lambda: 0, health=dict
        )
        handle = PipelineProcess(metrics, LogConfig(), lock.fileno())
        try:
            await handle.open(tmp_path, SUBJECTS.prefix, 60.0, DEFAULT_CACHE_MB)
            yield handle
        finally:
            await handle.stop()


def _room_inputs(messages: int, creator: str = ALICE, first_seq: int = 1) -> list[InboundMessage]:
    builder = RoomBuilder("10", creator)
    events = [*builder.bootstrap(), *(builder.message(creator, f"m{i}") for i in range(messages))]
    subject = SUBJECTS.input(builder.room_id)
    return [
        InboundMessage(subject, pack({"event": dict(event.pdu)}), seq)
        for seq, event in enumerate(events, first_seq)
    ]


async def test_interrupt_set_here_cuts_the_transaction_there(remote: PipelineProcess) -> None:
    assert remote.pid is not None and remote.pid != os.getpid()
    inputs = _room_inputs(10)
    # With a budget far from spent, only the interrupt can end the transaction early:
    # after the input under way (the first).
    remote.interrupt.set()
    first = await remote.process_batch(inputs, budget=60.0)
    assert first.dispositions == [Disposition.ACK]
    assert remote.reached() == 1
    assert len(first.laps) == 1

    remote.interrupt.clear()
    rest = await remote.process_batch(inputs[1:], budget=60.0)
    assert rest.dispositions == [Disposition.ACK] * (len(inputs) - 1)
    assert remote.reached() == len(inputs) - 1
    assert len(rest.laps) == len(inputs) - 1
    assert remote.counters.processed == len(inputs)
    # Each accepted event's output, numbered after the last batch's.
    assert len(rest.rows) == len(inputs) - 1
    assert rest.rows[0].seq == first.rows[-1].seq + 1
    pending = await remote.outbox_pending(100)
    assert pending == [*first.rows, *rest.rows]


def test_a_transient_fault_stays_transient_across_the_pipe(tmp_path: Path) -> None:
    busy = real_busy_error(tmp_path)
    crossed = pickle.loads(pickle.dumps(_portable(busy)))
    assert is_transient(crossed)
    assert crossed.sqlite_errorname == "SQLITE_BUSY"
    assert any("in the pipeline process" in note for note in crossed.__notes__)


def test_a_batch_result_crosses_the_pipe_with_its_rows_as_rows() -> None:
    # Pickled with its rows as plain tuples (BatchResult.__reduce__), it must still
    # come out with OutboxRows, which the relay reads by name.
    rows = [OutboxRow(7, "out.room", "$a", b"{}"), OutboxRow(8, "out.room", "$b", b"[]")]
    result = BatchResult([Disposition.ACK, Disposition.TERM], [0.5, 0.25], rows)
    crossed = pickle.loads(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    assert crossed == result
    assert [type(row) for row in crossed.rows] == [OutboxRow, OutboxRow]
    assert crossed.rows[1].payload == b"[]"


def _batches(remote: PipelineProcess) -> tuple[float | None, float | None]:
    """How many transactions committed inputs, and how many inputs in all (the
    pipeline reports each committed batch's size with its reply)."""
    registry = remote.metrics.registry
    count = registry.get_sample_value("roomserver_batch_messages_count")
    total = registry.get_sample_value("roomserver_batch_messages_sum")
    return count, total


async def test_an_interrupted_transaction_goes_on_with_inputs_it_is_given_in_its_commit(
    remote: PipelineProcess,
) -> None:
    """The transaction the interrupt ends asks the event loop (mid-request, across the
    pipe) for inputs to go on with, and commits them with its own in one commit: a
    small room's inputs that came in while an expensive room's transaction ran do not
    wait for its commit and then for one of their own. The interrupt that ended the
    first inputs' turn is cleared for them (they all run, with their own budget), and
    the inputs the transaction did not reach stay for the next batch, in order."""
    big = _room_inputs(10)
    small = _room_inputs(3, creator="@bob:example.org", first_seq=100)
    asked: list[int] = []

    def follow_ups(done: int) -> tuple[list[InboundMessage], float | None]:
        asked.append(done)
        return small, 60.0

    remote.interrupt.set()
    result = await remote.process_batch(big, 60.0, follow_ups)
    assert asked == [1]
    assert result.first == 1
    assert result.dispositions == [Disposition.ACK] * (1 + len(small))
    assert len(result.laps) == 1 + len(small)
    assert not remote.interrupt.is_set()
    # One commit, of the big room's first input and the small room's inputs, and their
    # outputs with it.
    assert _batches(remote) == (1, 1 + len(small))
    assert len(result.rows) == 1 + len(small)
    assert await remote.outbox_pending(100) == result.rows
    assert remote.counters.processed == 1 + len(small)

    rest = await remote.process_batch(big[1:], 60.0, follow_ups)
    # Not interrupted: it does all its inputs and does not ask.
    assert asked == [1]
    assert rest.first is None
    assert rest.dispositions == [Disposition.ACK] * (len(big) - 1)
    assert _batches(remote) == (2, len(big) + len(small))


async def test_a_costlier_turn_asks_for_inputs_to_go_on_with_in_any_case(
    remote: PipelineProcess,
) -> None:
    """A costlier room's turn while cheaper inputs wait (`always`) asks once its own
    inputs are done, interrupted or not; an answer of nothing commits what it did."""
    big = _room_inputs(2)
    small = _room_inputs(1, creator="@bob:example.org", first_seq=100)
    asked: list[int] = []

    def nothing(done: int) -> tuple[list[InboundMessage], float | None]:
        asked.append(done)
        return [], None

    first = await remote.process_batch(big[:2], 60.0, nothing, always=True)
    assert asked == [2]
    assert first.first is None
    assert first.dispositions == [Disposition.ACK] * 2

    def the_small_room(done: int) -> tuple[list[InboundMessage], float | None]:
        asked.append(done)
        return small, None

    second = await remote.process_batch(big[2:], 60.0, the_small_room, always=True)
    assert asked == [2, len(big) - 2]
    assert second.first == len(big) - 2
    assert len(second.dispositions) == len(big) - 2 + len(small)
    assert _batches(remote) == (2, len(big) + len(small))
