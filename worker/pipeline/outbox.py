"""The outbox: outputs written in the input's own transaction, published after it.

Every output an input owes is a row of the outbox table, written in the transaction
that processes the input; the rows the last transaction wrote are kept here as
`emitted`, so the caller can publish them after the commit without reading them back.
Published rows are deleted in the next transaction rather than in one of their own.
"""

from __future__ import annotations

from worker.input.outputs import Output
from worker.storage.database import Database, OutboxRow

__all__ = ["Outbox", "OutboxRow"]


class Outbox:
    """The open transaction's outputs, and how far the committed ones are published.

    `mark_published` is called from the caller's thread and only reads here, while
    `_deleted_through` is touched only by the database thread, so neither update is
    lost while a batch runs beside the publishing of the one before."""

    def __init__(self, db: Database) -> None:
        self.db = db
        #: Outbox rows written by the last transaction, oldest first.
        self.emitted: list[OutboxRow] = []
        self._published_through = 0
        self._deleted_through = 0
        #: The sequence number of the last row emitted in the open transaction (0: none
        #: emitted yet, read the counter on the first).
        self._last_seq = 0
        #: How many of `emitted` are written (a transaction without inputs, such as
        #: `forget_published`, must not write the last batch's rows again).
        self._written = 0
        db.before_commit(self._write)

    def begin(self) -> None:
        """A new transaction: what the last one emitted has been handed over."""
        self.emitted = []
        self._last_seq = 0
        self._written = 0

    def emit(self, output: Output) -> None:
        seq = (self._last_seq or self.db.outbox.last_seq()) + 1
        self._last_seq = seq
        self.emitted.append(OutboxRow(seq, output.subject, output.msg_id, output.payload))

    def _write(self) -> None:
        """Write the transaction's rows, just before it commits."""
        if len(self.emitted) > self._written:
            self.db.outbox.add_many(self.emitted[self._written :])
            self._written = len(self.emitted)
        # The next transaction reads the counter again: rows may be written by others
        # in between (none are today, but numbering never relies on it).
        self._last_seq = 0

    def mark(self) -> int:
        """Where the emitted rows stand now, for `undo_to` when a savepoint is undone."""
        return len(self.emitted)

    def undo_to(self, mark: int) -> None:
        del self.emitted[mark:]
        self._written = min(self._written, mark)
        # Numbers of undone rows are given out again (none of them was written).
        self._last_seq = self.emitted[-1].seq if self.emitted else 0

    def mark_published(self, through_seq: int) -> None:
        """Outbox rows up to `through_seq` are published; they are deleted in the next
        transaction rather than in one of their own (one fsync fewer per batch)."""
        if through_seq > self._published_through:
            self._published_through = through_seq

    def forget_published(self) -> None:
        """Delete published outbox rows now, in a transaction of their own.

        Called when the worker is idle or stopping: a published row left behind would be
        published again at the next start, which JetStream drops as a duplicate only
        inside its duplicate window."""
        if self._published_through > self._deleted_through:
            with self.db.transaction():
                self.delete_published()

    def delete_published(self) -> None:
        """Delete the rows published so far, inside the open transaction."""
        through = self._published_through
        if through > self._deleted_through:
            self.db.outbox.delete_through(through)
            self._deleted_through = through
