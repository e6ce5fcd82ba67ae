"""The outbox: outputs written in the batch's transaction, published after it commits,
and deleted once the stream has acknowledged them (see `worker.runner.outbox_relay`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import NamedTuple


class OutboxRow(NamedTuple):
    """One output waiting in the outbox (a tuple, so rows unpack as before)."""

    seq: int
    subject: str
    msg_id: str
    payload: bytes


_INSERT_ONE = "INSERT INTO outbox (seq, subject, msg_id, payload) VALUES (?, ?, ?, ?)"
#: Rows written by one execution of `_INSERT_MANY` (see `OutboxStore.add_many`).
_ROWS_PER_INSERT = 32
_INSERT_MANY = "INSERT INTO outbox (seq, subject, msg_id, payload) VALUES " + ", ".join(
    ["(?, ?, ?, ?)"] * _ROWS_PER_INSERT
)


class OutboxStore:
    """The outbox table's SQL, on the write connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def add(self, subject: str, msg_id: str, payload: bytes) -> int:
        """Queue an output; returns its outbox sequence number."""
        cursor = self.conn.execute(
            "INSERT INTO outbox (subject, msg_id, payload) VALUES (?, ?, ?)",
            (subject, msg_id, payload),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def last_seq(self) -> int:
        """The highest sequence number ever given out (AUTOINCREMENT's counter, which
        also counts deleted rows): the next output's number is one more."""
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row is not None else 0

    def add_many(self, rows: Iterable[OutboxRow]) -> None:
        """Queue outputs numbered by the caller (from `last_seq`).

        An explicit `seq` above the counter moves AUTOINCREMENT's counter up with it, so
        numbers stay never reused. SQLite reads and writes that counter once per
        execution of an INSERT, so the rows go `_ROWS_PER_INSERT` to a statement (a
        fixed text, prepared once), the rest one to an execution: a row cost ~17k
        instructions one to an execution, ~11k in a statement of many.

        Parameters are bound from plain lists and tuples: sqlite3 reads a tuple
        subclass's (an `OutboxRow`'s) through the generic item slot, a Python-level
        `__getitem__` call each."""
        pending = list(rows)
        whole = len(pending) - len(pending) % _ROWS_PER_INSERT
        for start in range(0, whole, _ROWS_PER_INSERT):
            self.conn.execute(
                _INSERT_MANY,
                [value for row in pending[start : start + _ROWS_PER_INSERT] for value in row],
            )
        if whole < len(pending):
            self.conn.executemany(_INSERT_ONE, map(tuple, pending[whole:]))

    def pending(self, limit: int = 10_000) -> list[OutboxRow]:
        return [
            OutboxRow(row[0], row[1], row[2], bytes(row[3]))
            for row in self.conn.execute(
                "SELECT seq, subject, msg_id, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)
            )
        ]

    def delete_through(self, seq: int) -> None:
        """Forget published outputs; autocommits when called outside a transaction."""
        self.conn.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))

    def depth(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
