"""The outbox: outputs written in the batch's transaction, published after it commits,
and deleted once the stream has acknowledged them (see `worker.runner.outbox_relay`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import NamedTuple

from worker.storage.connection import MultiRowInsert


class OutboxRow(NamedTuple):
    """One output waiting in the outbox (a tuple, so rows unpack as before)."""

    seq: int
    subject: str
    msg_id: str
    payload: bytes


_INSERT = MultiRowInsert("INSERT INTO outbox (seq, subject, msg_id, payload)", 4)


class OutboxStore:
    """The outbox table's SQL, on the write connection."""

    def __init__(self, conn: sqlite3.Connection, writes: sqlite3.Cursor) -> None:
        self.conn = conn
        #: The write connection's cursor for writes whose rows are never read
        #: (`WriteConnection.writes`).
        self._writes = writes

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
        """Queue outputs numbered by the caller (from `last_seq`), many to a statement
        (`MultiRowInsert`).

        An explicit `seq` above the counter moves AUTOINCREMENT's counter up with it, so
        numbers stay never reused."""
        _INSERT.run(self._writes, list(rows))

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
