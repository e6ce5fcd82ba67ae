"""Making commits durable after they return: the write-ahead log synced on demand.

With `synchronous=FULL` SQLite syncs the write-ahead log inside every COMMIT, and the
pipeline waits for the disk (10-20 ms a batch, a quarter of its time) before it can
take the next batch. With `synchronous=NORMAL` a commit only writes its frames to the
log, in the operating system's cache, and SQLite syncs at its own critical moments
(before a checkpoint copies frames into the database, after it, and when the log is
reset). Syncing the log file afterwards makes every commit that returned before the
sync started durable, as FULL would have: a commit is its frames in the log, and the
log's frames are what recovery replays. A process crash loses nothing either way (the
frames are in the kernel's cache); only a machine crash can lose commits not yet synced,
and those are inputs not yet acknowledged, which JetStream delivers again.

`WalSync.sync` runs in a thread of its own (see worker.runner.syncer) while the
connection goes on with the next transaction: a sync takes whatever the log holds then.
"""

from __future__ import annotations

import os
from pathlib import Path


class WalSync:
    """Syncs the write-ahead log of the database at `path` (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.wal_path = Path(str(path) + "-wal")
        #: The log file, opened at the first sync (it exists once WAL mode is set).
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None

    def sync(self) -> None:
        """Make every commit that returned before this call durable.

        The log is looked up by name each time: SQLite deletes it when the last
        connection closes (after checkpointing it into the database, synced), and a
        descriptor of a deleted file would sync nothing that matters."""
        try:
            status = os.stat(self.wal_path)
        except FileNotFoundError:
            # No log: everything committed is in the database file, synced by the
            # checkpoint that preceded the log's deletion.
            self.close()
            return
        if self._fd is None or (status.st_dev, status.st_ino) != self._inode:
            self.close()
            fd = os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)
            opened = os.fstat(fd)
            self._fd, self._inode = fd, (opened.st_dev, opened.st_ino)
        os.fsync(self._fd)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        self._inode = None
        if fd is not None:
            os.close(fd)
