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
from typing import Protocol

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


class Interrupt(Protocol):
    """What tells a transaction to commit after the input under way: a threading.Event,
    or a flag shared with another process (worker.runner.pipeline_server)."""

    def is_set(self) -> bool: ...


class Stopwatch:
    """Times each input of a transaction, and tells when the transaction's budget is spent.

    The input loop learns from the laps what each room's inputs cost (see
    worker.runner.fairness), and a transaction whose budget is spent commits what it has
    done so that the outputs of the cheaper inputs before it are not kept waiting.

    Time is the CPU time of the thread that processes the batch (the database thread):
    on a busy machine, wall-clock time would cut batches short by the time the process
    waited for a processor, and more, smaller transactions would make it fall behind.
    Created and lapped in that thread.

    Reading the thread's CPU clock is a system call, and a slow one on a busy virtual
    machine (in the worker, 160 us on average and up to 50 ms, measured on a loaded
    2-core VM, while holding the GIL), so it is not read for every input: each lap is
    timed by the wall clock, and the CPU clock is read only when the budget could be
    spent (a thread's CPU time never runs ahead of the wall clock, so until as much
    wall time has passed as the budget has left, it is not) and when the transaction
    ends. The CPU time between two readings is shared among the laps between them in
    proportion to their wall time: the laps add up to the thread's CPU time."""

    def __init__(
        self,
        budget: float | None = None,
        interrupt: Interrupt | None = None,
        on_lap: Callable[[int], None] | None = None,
    ) -> None:
        #: Seconds of work after which the transaction should commit; None: no limit.
        self.budget = budget
        #: Set (from another thread) when inputs that should not wait came in: the
        #: transaction commits after the input under way, budget or not.
        self.interrupt = interrupt
        #: Told how many inputs are done after each (the input loop reads it while the
        #: transaction runs, from another thread or process).
        self.on_lap = on_lap
        self._cpu_started = time.thread_time()
        self._last = time.perf_counter()
        #: CPU seconds spent as of the last reading of the CPU clock.
        self._spent = 0.0
        #: How many laps are in CPU seconds (the ones after are in wall seconds).
        self._shared = 0
        #: The wall clock before which the budget cannot be spent.
        self._next_reading = self._last + (budget or 0.0)
        #: Seconds each input took, in the order they were processed (CPU seconds once
        #: `finish` has run).
        self.laps: list[float] = []

    def lap(self) -> bool:
        """Record the input just processed; True once the budget is spent."""
        now = time.perf_counter()
        self.laps.append(now - self._last)
        self._last = now
        if self.on_lap is not None:
            self.on_lap(len(self.laps))
        if self.budget is None:
            return False
        if self.interrupt is not None and self.interrupt.is_set():
            return True
        if now < self._next_reading:
            return False
        self._read_cpu()
        if self._spent >= self.budget:
            return True
        self._next_reading = now + (self.budget - self._spent)
        return False

    def renew(self, budget: float | None) -> None:
        """The transaction goes on with other inputs (`Pipeline.process_batch`'s
        follow-ups), with a budget of `budget` more seconds from now (None: no limit)
        and without the interrupt that ended the first ones' turn: the caller clears it
        before."""
        self._read_cpu()
        self.budget = None if budget is None else self._spent + budget
        self._next_reading = self._last + (budget or 0.0)

    def finish(self) -> None:
        """The transaction's last input is done: the laps become CPU seconds."""
        if self._shared < len(self.laps):
            self._read_cpu()

    def _read_cpu(self) -> None:
        """Read the CPU clock and share what was spent since the last reading among
        the laps since then."""
        spent = time.thread_time() - self._cpu_started
        cpu, self._spent = spent - self._spent, spent
        laps = self.laps
        wall = sum(laps[self._shared :])
        if wall > 0:
            scale = max(0.0, cpu) / wall
            for index in range(self._shared, len(laps)):
                laps[index] *= scale
        self._shared = len(laps)


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
        self.interrupt: Interrupt = threading.Event()
        #: See `Stopwatch.on_lap`.
        self.on_lap: Callable[[int], None] | None = None
        #: The open (or last) transaction's laps, one per input of a batch.
        self.stopwatch = Stopwatch()
        #: Told how many inputs a batch took once it commits, before its counts join
        #: the totals, so that metrics never show the counts without the batch.
        self.committed: Callable[[int], None] | None = None

    def start_stopwatch(self) -> Stopwatch:
        """The stopwatch of a batch of inputs starting now, with the batch budget."""
        self.stopwatch = Stopwatch(self.budget, self.interrupt, self.on_lap)
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
