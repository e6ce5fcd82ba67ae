"""The write connection: opening the SQLite file, and the batch transaction with one
savepoint per input, whose rollback also undoes what the caches learned inside it.

Why not aiosqlite here: a fetched batch is one transaction, and the events in it
depend on each other (an event's prev event is usually earlier in the same batch), so
every read must see the batch's uncommitted writes, through the same connection. Doing
each of the ~10 statements per event as an awaited thread hop would cost more than the
statement itself. The pipeline instead runs a whole batch inside this connection's
thread (see `worker.pipeline`) and the asyncio side only moves bytes.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType

from worker.storage.durability import WalSync
from worker.storage.id_keys import register as register_id_key


def _bytes_as_is(value: bytes) -> bytes:
    return value


def _none_as_is(value: None) -> None:
    return value


# The sqlite3 module binds int, float, str and bytearray parameters directly, but sends
# every other one (bytes and None among them: packed NIDs, hashes, JSON, a NULL reason)
# through its adapter protocol first, which looks for `__adapt__` on its protocol type
# and so builds and clears an AttributeError each time: a few bytes parameters an event
# cost more than binding everything else. An adapter registered for the exact type is
# found first and returns the value as it is, so what is bound is unchanged. (Types the
# module binds directly are not registered: that would send every parameter through
# the protocol.) The registry is the module's, for every connection of the process.
sqlite3.register_adapter(bytes, _bytes_as_is)
sqlite3.register_adapter(type(None), _none_as_is)


def open_connection(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database with the pragmas the worker relies on.

    WAL lets readers run beside the writer; `synchronous=FULL` makes a commit durable
    before the input is acknowledged, as the contract requires.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    register_id_key(conn)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    # SQLite copies the WAL into the database file (and fsyncs it) inside the commit
    # that crosses this many pages. Every 1,000 pages (its default, two batches of a
    # linear room) the same index leaves and table tails were copied again and again;
    # every 4,000 (a 16 MiB WAL) each is copied once for several batches: a fifth less
    # written to disk per batch, and a third less commit time, with no longer a pause.
    conn.execute("PRAGMA wal_autocheckpoint=4000")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=OFF")
    # 16 MiB of page cache: the writer touches recent pages and index paths; a larger
    # cache mostly grows the process with the database file for little speed.
    conn.execute("PRAGMA cache_size=-16384")
    # Each input runs in a savepoint, so SQLite copies every page an input first touches
    # to a sub-journal; kept in a temporary file, that was a tenth of a linear room's
    # time in pwrite(). In memory it is a few pages per input, dropped at RELEASE.
    conn.execute("PRAGMA temp_store=MEMORY")
    for suffix in ("", "-wal", "-shm"):
        candidate = Path(str(path) + suffix)
        if candidate.exists():
            os.chmod(candidate, 0o600)
    return conn


def quick_check(conn: sqlite3.Connection) -> list[str]:
    """SQLite's own check of a connection's database: the problems found (empty when
    healthy). The worker runs it at start-up, `roomserver verify` on its read-only
    connection."""
    problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    return [] if problems == ["ok"] else problems


def json_list(values: Iterable[int] | Iterable[str]) -> str:
    """A list of IDs as one SQL parameter, for `x IN (SELECT value FROM json_each(?))`.

    The one way storage passes ID lists to SQL: one statement for any number of values
    (no chunking under SQLite's variable limit), and one cached statement text.
    """
    return json.dumps(list(values))


def insert_rowid(conn: sqlite3.Connection, sql: str, params: Sequence[object]) -> int:
    """Run one INSERT and return the new row's rowid (its INTEGER PRIMARY KEY).

    `RETURNING` would give the same number, but SQLite collects returned rows in an
    ephemeral table, opening and closing a pager for it on every execution: a sixth of
    the time of storing an event went there.
    """
    rowid = conn.execute(sql, params).lastrowid
    if rowid is None:
        raise RuntimeError(f"no row was inserted by {sql!r}")
    return rowid


class MultiRowInsert:
    """One INSERT for many rows: `ROWS_PER_STATEMENT` rows to an execution of one fixed
    statement text (prepared once, then cached), the rest one to an execution.

    Each execution of a statement costs SQLite a fixed share on top of its rows (its
    start and halt, and for an AUTOINCREMENT table a read and a write of the counter),
    which `executemany` pays per row: a row of the outbox cost ~17k instructions one to
    an execution and ~11k in a statement of many. The rows are stored as the same
    statement run once per row would store them, in their order."""

    ROWS_PER_STATEMENT = 32

    __slots__ = ("_many", "_one")

    def __init__(self, head: str, width: int) -> None:
        """`head` is the statement up to VALUES (`INSERT [OR ...] INTO t (columns)`);
        `width` the number of columns."""
        row = "(" + ", ".join(["?"] * width) + ")"
        self._one = f"{head} VALUES {row}"
        self._many = f"{head} VALUES " + ", ".join([row] * self.ROWS_PER_STATEMENT)

    def run(self, cursor: sqlite3.Cursor, rows: Sequence[tuple[object, ...]]) -> None:
        """Insert `rows`. The rest are bound as plain tuples: sqlite3 reads a tuple
        subclass's (a named tuple's) parameters through a Python-level `__getitem__`
        call each, ten times the cost of the copy."""
        per = self.ROWS_PER_STATEMENT
        whole = len(rows) - len(rows) % per
        for start in range(0, whole, per):
            cursor.execute(
                self._many, [value for row in rows[start : start + per] for value in row]
            )
        if whole < len(rows):
            cursor.executemany(self._one, map(tuple, rows[whole:]))


class WriteConnection:
    """One synchronous SQLite connection, owned by one thread, and its transactions.

    Caches are only ever filled from committed or in-transaction data; when a
    transaction rolls back, anything learned inside it is forgotten through the hooks
    registered with `on_rollback` (SQLite reuses rolled-back rowids, so a stale NID
    mapping would point at the wrong row).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # Looked up in this module at call time, so a fault test can wrap it.
        self.conn = open_connection(path)
        #: One cursor for the hot path's writes (savepoints, event rows), whose rows
        #: are never read: `Connection.execute` makes and registers a cursor per
        #: statement, which cost a fifth of running a small INSERT.
        self.writes = self.conn.cursor()
        self._in_txn = False
        self._broken = False
        self._closed = False
        self._rollback_hooks: list[Callable[[], None]] = []
        #: The hooks `on_rollback_once` registered since the transaction or the
        #: current input's savepoint began: where a rollback would run them.
        self._once_hooks: set[Callable[[], None]] = set()
        self._commit_hooks: list[Callable[[], None]] = []
        self._bound_hooks: list[Callable[[], None]] = []
        self._begin_hooks: list[Callable[[], None]] = []

    def close(self) -> None:
        """Close the connection for real: a cursor that still holds a statement keeps
        SQLite's connection open (a "zombie") while its Python object lives, so the WAL
        would be neither checkpointed into the database file nor deleted. Closing
        again does nothing, as with `sqlite3.Connection.close`."""
        if self._closed:
            return
        self._closed = True
        self.writes.close()
        self.conn.close()

    def defer_sync(self) -> WalSync:
        """Have commits return before they are on disk (`synchronous=NORMAL`); what
        is returned makes them durable afterwards (see worker.storage.durability).
        Whoever calls this must sync before anything relies on a commit."""
        self.conn.execute("PRAGMA synchronous=NORMAL")
        return WalSync(self.path)

    def integrity_check(self) -> list[str]:
        """SQLite's own check; returns the problems found (empty when healthy)."""
        return quick_check(self.conn)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._in_txn:
            raise RuntimeError("nested transaction")
        self.conn.execute("BEGIN IMMEDIATE")
        self._in_txn = True
        self._broken = False
        self._rollback_hooks = []
        self._once_hooks = set()
        try:
            for hook in self._begin_hooks:
                hook()
            yield
            for hook in self._commit_hooks:
                hook()
            self.conn.execute("COMMIT")
        except BaseException:
            # After some faults (a full disk, an I/O error) SQLite has already rolled the
            # transaction back itself, and a ROLLBACK would only fail with "no transaction
            # is active", hiding the error that matters: the one being raised.
            if self.conn.in_transaction:
                with suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            self._forget_uncommitted()
            raise
        finally:
            self._in_txn = False
            self._rollback_hooks = []
            self._once_hooks = set()

    @property
    def in_transaction(self) -> bool:
        """Whether the batch's transaction is still open (SQLite may have ended it)."""
        return self._in_txn and not self._broken and self.conn.in_transaction

    def savepoint(self) -> Savepoint:
        """Undo one input's writes on failure while keeping the batch's transaction
        (see `Savepoint`)."""
        return Savepoint(self)

    def unguarded(self) -> Unguarded:
        """One input's scope without a savepoint (see `Unguarded`)."""
        return Unguarded(self)

    def _undo_hooks(self, hooks_before: int) -> None:
        """Run the rollback hooks registered since `hooks_before`, newest first (a
        hook may restore what was there before its own change), and drop them."""
        for hook in reversed(self._rollback_hooks[hooks_before:]):
            hook()
        del self._rollback_hooks[hooks_before:]
        self._once_hooks = set()

    def _undo_savepoint(self, hooks_before: int) -> None:
        """The input's savepoint failed: roll its writes back and run the hooks it
        registered, newest first.

        If SQLite ended the whole transaction (see `transaction`), there is nothing to
        roll back to: the error goes up as it is and the batch fails."""
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK TO one_input")
                self.conn.execute("RELEASE one_input")
            except sqlite3.Error:
                # The input's writes could not be undone: the batch must not go on
                # (see `in_transaction`); the error being raised is the one to report.
                self._broken = True
        self._undo_hooks(hooks_before)

    def after_begin(self, hook: Callable[[], None]) -> None:
        """Register what to do as every transaction begins (forget what only holds
        while this connection is the one writing, as it is inside a transaction)."""
        self._begin_hooks.append(hook)

    def before_commit(self, hook: Callable[[], None]) -> None:
        """Register writes to make at the end of every transaction, just before COMMIT
        (rows gathered in memory and written in one statement); a hook that fails rolls
        the transaction back like any other error in it."""
        self._commit_hooks.append(hook)

    def at_savepoint_bounds(self, hook: Callable[[], None]) -> None:
        """Register writes to make as each input's savepoint begins and before it is
        released: rows an owner gathers in memory and otherwise writes at the commit
        (`before_commit`) are then written inside the savepoint of the input they
        belong to, so that undoing an input neither loses another one's rows nor keeps
        its own. (An unguarded input needs no such step: if it fails after anything
        was written, the whole transaction is undone.)"""
        self._bound_hooks.append(hook)

    def on_rollback(self, hook: Callable[[], None]) -> None:
        """Register cache cleanup to run if the current transaction is undone (hooks run
        newest first, so one may restore the value its own change replaced)."""
        if self._in_txn:
            self._rollback_hooks.append(hook)

    def on_rollback_once(self, hook: Callable[[], None]) -> None:
        """`on_rollback` for a hook that forgets all its owner cached (clears whole
        caches): registered once where it would run (since the transaction, or the
        input's savepoint, began), however often the owner asks, so a hot path may ask
        on every write. Hooks compare by equality (the same bound method is equal)."""
        if self._in_txn and hook not in self._once_hooks:
            self._once_hooks.add(hook)
            self._rollback_hooks.append(hook)

    def _forget_uncommitted(self) -> None:
        for hook in reversed(self._rollback_hooks):
            hook()


class _InputScope:
    """What a savepoint and an unguarded scope share: where the rollback hooks stood
    when the input began (those registered inside are the input's to undo), and
    whether the input's writes were undone."""

    __slots__ = ("_db", "_hooks_before", "undone")

    def __init__(self, db: WriteConnection) -> None:
        self._db = db
        self._hooks_before = 0
        #: The block raised and its writes were undone.
        self.undone = False

    def _begin(self) -> WriteConnection:
        db = self._db
        self._hooks_before = len(db._rollback_hooks)
        # A hook registered before would not run if this input is undone: it must be
        # registered again inside.
        db._once_hooks = set()
        return db

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._end(exc_type is not None)

    def _end(self, failed: bool) -> None:
        """The input's block ended, by raising when `failed` (which then propagates)."""
        raise NotImplementedError


class Savepoint(_InputScope):
    """One input's savepoint, as a context manager: released when the block ends,
    rolled back (with the rollback hooks registered inside it) when it raises; then
    `undone` is True, always.

    A class rather than a generator-based context manager: the pipeline enters one
    per input, and a generator's setup and its two resumptions cost several times
    these two calls."""

    __slots__ = ()

    def __enter__(self) -> None:
        for hook in self._db._bound_hooks:
            hook()
        self._begin().writes.execute("SAVEPOINT one_input")

    def _end(self, failed: bool) -> None:
        db = self._db
        if not failed:
            try:
                for hook in db._bound_hooks:
                    hook()
                db.writes.execute("RELEASE one_input")
                return
            except BaseException:
                db._undo_savepoint(self._hooks_before)
                self.undone = True
                raise
        db._undo_savepoint(self._hooks_before)
        self.undone = True


class Unguarded(_InputScope):
    """One input's scope without a savepoint, as a context manager.

    A savepoint costs more than its two statements: while one is open, SQLite copies
    every page an input changes into the savepoint's journal first (a linear room's
    event changes eight or so), and empties that journal at the release. Most inputs
    never fail, so the pipeline runs a batch's inputs in this scope first. When the
    block raises before any row changed (sqlite3's count of changed rows is the
    same), the database is as a savepoint's undo would leave it: the rollback hooks
    registered inside run, and `undone` is True. When rows did change, nothing short
    of undoing the whole transaction undoes them: `undone` stays False, the hooks
    are left for the transaction's rollback, and the caller must undo it (the
    pipeline then runs the batch again, each input in a savepoint)."""

    __slots__ = ("_changes_before",)

    def __init__(self, db: WriteConnection) -> None:
        super().__init__(db)
        self._changes_before = 0

    def __enter__(self) -> None:
        self._changes_before = self._begin().conn.total_changes

    def _end(self, failed: bool) -> None:
        db = self._db
        if failed and db.conn.total_changes == self._changes_before:
            db._undo_hooks(self._hooks_before)
            self.undone = True
