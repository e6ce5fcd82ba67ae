"""One worker per storage directory.

Two workers writing one database would interleave their transactions safely as far as
SQLite is concerned, yet each keeps caches of rooms, NIDs and states that the other's
writes make wrong, and both would start an embedded nats-server on the same store. So
a worker takes an exclusive lock on `<storage.path>/roomserver.lock` before anything
else, and a second one exits at once, naming the holder.

`flock` locks belong to the open file: the kernel releases them when the last process
holding a copy of it exits, however it exits (kill -9 included), so a stale lock file
never blocks a restart. The worker's pipeline process holds a copy
(worker.runner.pipeline_process) and outlives a killed worker by the transaction it
has in hand: a worker that finds the lock held while the PID written in it is gone
waits for that orphan (up to ORPHAN_WAIT) instead of refusing to start.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import structlog

log = structlog.get_logger(__name__)

LOCK_FILENAME: Final = "roomserver.lock"
#: Seconds to wait for a lock whose holder's PID is gone (see the module docstring).
ORPHAN_WAIT: Final = 30.0
#: Seconds between attempts meanwhile.
_ORPHAN_POLL: Final = 0.01


class StorageLocked(RuntimeError):
    """Another process holds the storage directory."""

    def __init__(self, directory: Path, holder: str) -> None:
        super().__init__(
            f"storage directory {directory} is in use by another worker (PID {holder}); "
            "stop it first, or give this one its own storage.path"
        )
        self.directory = directory
        self.holder = holder


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _alive(holder: str) -> bool:
    """Whether the PID written in the lock file is a process (an unreadable PID, or
    one not ours to signal, counts as alive: refuse rather than wait)."""
    try:
        os.kill(int(holder), 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError):
        pass
    return True


def _wait_for_orphan(fd: int, holder: str) -> bool:
    """Take the lock once the orphan holding it exits; False if it has not in time."""
    log.warning(
        "the storage lock is held though its worker is gone (its pipeline process is "
        "finishing); waiting for it",
        holder=holder,
    )
    deadline = time.monotonic() + ORPHAN_WAIT
    while time.monotonic() < deadline:
        time.sleep(_ORPHAN_POLL)
        if _try_lock(fd):
            return True
    return False


class StorageLock:
    """The exclusive lock on a storage directory, held while the worker runs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILENAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our PID in the file; StorageLocked if it is held."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if not _try_lock(fd):
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
                if _alive(holder) or not _wait_for_orphan(fd, holder):
                    os.close(fd)
                    raise StorageLocked(self.directory, holder)
        except StorageLocked:
            raise
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def fileno(self) -> int:
        """The locked file's descriptor: a process given a copy of it (the pipeline's,
        worker.runner.pipeline_process) holds the lock until it exits too."""
        if self._fd is None:
            raise RuntimeError("the storage lock is not held")
        return self._fd

    def release(self) -> None:
        """Let go (the file stays: removing it would race with a worker starting)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
