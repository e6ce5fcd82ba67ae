"""What can go wrong with the SQLite file, told apart: a transient lock to retry, a
fault of the disk or the file that stops the worker, or stored data that is wrong."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from worker.errors import RoomserverError


class StorageError(RuntimeError):
    """A fault in the stored data itself (not a transient database condition)."""


class ReadError(RoomserverError):
    """A question the stored data cannot answer: the one boundary error, raised by the
    read side (`code` is the contract's error code)."""


#: SQLite's primary result codes (https://sqlite.org/rescode.html) that the worker tells
#: apart; an extended code carries its primary one in the low byte.
SQLITE_READONLY: Final = 8
SQLITE_IOERR: Final = 10
SQLITE_CORRUPT: Final = 11
SQLITE_FULL: Final = 13
SQLITE_CANTOPEN: Final = 14
SQLITE_NOTADB: Final = 26
_TRANSIENT_CODES: Final = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
#: Faults of the disk or the file, not of an input: what the operator must fix, in words.
_STORAGE_FAULTS: Final = {
    SQLITE_FULL: ("the disk is full", "free space and restart"),
    SQLITE_IOERR: ("the disk failed to read or write", "check the disk and restart"),
    SQLITE_CORRUPT: (
        "the database is damaged",
        "restore a backup or rebuild it (docs/operations.md) and restart",
    ),
    SQLITE_NOTADB: (
        "the file is not an SQLite database",
        "restore a backup or rebuild it (docs/operations.md) and restart",
    ),
    SQLITE_CANTOPEN: ("the database cannot be opened", "check the path and its permissions"),
    SQLITE_READONLY: ("the database is read-only", "make it writable and restart"),
}


def _primary_code(exc: BaseException) -> int | None:
    """SQLite's primary result code of an sqlite3 error (None for anything else)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or not isinstance(code, int):
        return None
    return code & 0xFF


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth retrying as it is: SQLITE_BUSY or SQLITE_LOCKED (another
    connection holds a lock), never a fault of the data or the disk."""
    return _primary_code(exc) in _TRANSIENT_CODES


class StorageFault(RuntimeError):
    """The disk or the database file failed (full, I/O error, damaged, unreadable): no
    input is to blame and none may be dead-lettered for it; the worker stops."""

    def __init__(self, cause: str, code_name: str, path: Path, advice: str) -> None:
        super().__init__(f"storage fault: {cause} ({code_name}) writing {path}; {advice}")
        self.code_name = code_name
        self.path = path


def storage_fault(exc: BaseException, path: Path) -> StorageFault | None:
    """The StorageFault an sqlite3 error stands for, or None if it is not one."""
    if isinstance(exc, StorageFault):
        return exc
    code = _primary_code(exc)
    if code not in _STORAGE_FAULTS:
        return None
    cause, advice = _STORAGE_FAULTS[code]
    # The extended name (SQLITE_IOERR_WRITE) starts with the primary one.
    name = getattr(exc, "sqlite_errorname", None) or f"SQLite result code {code}"
    return StorageFault(cause, name, path, advice)
