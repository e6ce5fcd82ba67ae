"""One worker per storage directory.

Two workers writing one database would interleave their transactions safely as far as
SQLite is concerned, yet each keeps caches of rooms, NIDs and states that the other's
writes make wrong, and both would start an embedded nats-server on the same store. So
a worker takes an exclusive lock on `<storage.path>/roomserver.lock` before anything
else, and a second one exits at once, naming the holder.

`flock` locks belong to the open file: the kernel releases them when the process exits
however it exits (kill -9 included), so a stale lock file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Final, Self

LOCK_FILENAME: Final = "roomserver.lock"


class StorageLocked(RuntimeError):
    """Another process holds the storage directory."""

    def __init__(self, directory: Path, holder: str) -> None:
        super().__init__(
            f"storage directory {directory} is in use by another worker (PID {holder}); "
            "stop it first, or give this one its own storage.path"
        )
        self.directory = directory
        self.holder = holder


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
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StorageLocked(self.directory, holder) from None
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
