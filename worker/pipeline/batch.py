"""The batch: what the consumer hands over, what each input becomes, and the counts.

A fetched batch is one SQLite transaction and each input inside it a savepoint; its
counts join the totals only once the transaction commits, so a batch retried after a
transient fault is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


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
