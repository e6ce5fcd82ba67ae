"""The batch: what the consumer hands over, what each input becomes, and the counts.

A batch is one SQLite transaction and each input inside it a savepoint; its counts join
the totals only once the transaction commits, so a batch retried after a transient fault
is counted once. A batch may stop early once its time budget is spent (`Stopwatch`), so
that the inputs of other rooms waiting behind an expensive one are not held up by it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum

import structlog

from worker.input.outputs import OutputBuilder
from worker.pipeline.outbox import Outbox
from worker.storage.database import Database

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """What the consumer hands over: the bytes and where they came from."""

    subject: str
    data: bytes
    stream_sequence: int


class Disposition(Enum):
    #: Processed (or recognised as a duplicate): acknowledge.
    ACK = "ack"
    #: Dead-lettered: terminate, never redeliver.
    TERM = "term"


@dataclass(slots=True)
class Counters:
    processed: int = 0
    rejected: int = 0
    soft_failed: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    #: Inputs kept whole for a parked room (the failed one included).
    parked: int = 0
    #: Dead letters by their code (`bad_msgpack`, `internal_error`, ...).
    dead_letter_codes: dict[str, int] = field(default_factory=dict)

    def add(self, other: Counters) -> None:
        self.processed += other.processed
        self.rejected += other.rejected
        self.soft_failed += other.soft_failed
        self.dead_lettered += other.dead_lettered
        self.duplicates += other.duplicates
        self.parked += other.parked
        for code, count in other.dead_letter_codes.items():
            self.dead_letter_codes[code] = self.dead_letter_codes.get(code, 0) + count


class Stopwatch:
    """Times each input of a transaction, and tells when the transaction's budget is spent.

    The input loop learns from the laps what each room's inputs cost (see
    worker.runner.fairness), and a transaction whose budget is spent commits what it has
    done so that the outputs of the cheaper inputs before it are not kept waiting.

    Time is the CPU time of the thread that processes the batch (the database thread):
    on a busy machine, wall-clock time would cut batches short by the time the process
    waited for a processor, and more, smaller transactions would make it fall behind.
    Created and lapped in that thread."""

    def __init__(
        self, budget: float | None = None, interrupt: threading.Event | None = None
    ) -> None:
        #: Seconds of work after which the transaction should commit; None: no limit.
        self.budget = budget
        #: Set (from another thread) when inputs that should not wait came in: the
        #: transaction commits after the input under way, budget or not.
        self.interrupt = interrupt
        self.started = self._last = time.thread_time()
        #: Seconds each input took, in the order they were processed.
        self.laps: list[float] = []

    def lap(self) -> bool:
        """Record the input just processed; True once the budget is spent."""
        now = time.thread_time()
        self.laps.append(now - self._last)
        self._last = now
        if self.budget is None:
            return False
        interrupted = self.interrupt is not None and self.interrupt.is_set()
        return interrupted or now - self.started >= self.budget


class Batch:
    """The transaction a batch runs in, and its counts.

    `totals` counts committed transactions (what metrics show); `counts` the open one,
    added to the totals only once it commits."""

    def __init__(self, db: Database, outbox: Outbox, outputs: OutputBuilder) -> None:
        self.db = db
        self.outbox = outbox
        self.outputs = outputs
        self.totals = Counters()
        self.counts = Counters()
        #: Seconds of work after which a batch of inputs commits (None: no limit); the
        #: input loop sets it from consumer.batch_budget.
        self.budget: float | None = None
        #: Set by the input loop when a batch should commit after its current input.
        self.interrupt = threading.Event()
        #: The open (or last) transaction's laps, one per input of a batch.
        self.stopwatch = Stopwatch()
        #: Told how many inputs a batch took once it commits, before its counts join
        #: the totals, so that metrics never show the counts without the batch.
        self.committed: Callable[[int], None] | None = None

    def start_stopwatch(self) -> Stopwatch:
        """The stopwatch of a batch of inputs starting now, with the batch budget."""
        self.stopwatch = Stopwatch(self.budget, self.interrupt)
        return self.stopwatch

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction: it starts by deleting the outputs published since the last
        one, and its counts join the totals when it commits."""
        self.outbox.begin()
        self.counts = Counters()
        self.stopwatch = Stopwatch()
        with self.db.transaction():
            self.outbox.delete_published()
            yield
        if self.committed is not None and self.stopwatch.laps:
            self.committed(len(self.stopwatch.laps))
        self.totals.add(self.counts)

    def dead_letter(
        self, message: InboundMessage, room_id: str | None, code: str, text: str
    ) -> None:
        """Terminate an input: a `deadletter` output carries it whole, with the reason."""
        self.counts.dead_lettered += 1
        codes = self.counts.dead_letter_codes
        codes[code] = codes.get(code, 0) + 1
        log.warning(
            "dead letter",
            code=code,
            reason=text,
            subject=message.subject,
            stream_sequence=message.stream_sequence,
        )
        self.outbox.emit(
            self.outputs.dead_letter(
                room_id=room_id,
                code=code,
                message=text,
                subject=message.subject,
                stream_sequence=message.stream_sequence,
                payload=message.data,
            )
        )
