"""The pipeline's commits made durable beside it, in a thread of their own.

A batch's transaction commits without waiting for the disk (worker.storage.durability)
and gets a ticket; this thread syncs the write-ahead log and reports each ticket it has
made durable, so that the event loop acknowledges the batch's inputs and publishes its
outputs then, and not before, while the pipeline already runs the next batch (the sync
took a quarter of its time when it waited for it). One sync covers every ticket issued
before it started, so while the disk is slow, syncs gather several batches.

A failed sync is final: after a failed fsync the kernel may have dropped the pages it
could not write, so what the log holds on disk is unknown and syncing again would not
tell. The error is reported instead of a ticket, and the worker stops; its inputs not
acknowledged come back after the restart, whose recovery reads what is really on disk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

#: What the thread reports: the last ticket made durable, or the error that ended it.
Notice = int | BaseException


class Syncer:
    """Syncs with `sync` in a thread and reports each ticket durable with `notify`
    (called in that thread)."""

    def __init__(self, sync: Callable[[], None], notify: Callable[[Notice], None]) -> None:
        self._sync = sync
        self._notify = notify
        self._changed = threading.Condition()
        #: The last ticket issued, and the last made durable.
        self._issued = 0
        self._durable = 0
        self._error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="roomserver-sync", daemon=True)
        self._thread.start()

    def committed(self) -> int:
        """A ticket for everything committed so far (made durable by the next sync)."""
        with self._changed:
            if self._error is not None:
                raise self._error
            self._issued += 1
            self._changed.notify_all()
            return self._issued

    def wait(self, ticket: int) -> None:
        """Block until `ticket` is durable; raises the error that ended the thread."""
        with self._changed:
            while self._durable < ticket:
                if self._error is not None:
                    raise self._error
                self._changed.wait()

    def close(self) -> None:
        """Sync what is left, then end the thread."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                while self._durable == self._issued and not self._closing:
                    self._changed.wait()
                if self._durable == self._issued:
                    return
                target = self._issued
            try:
                self._sync()
            except BaseException as exc:
                log.error("syncing the database's write-ahead log failed", error=repr(exc))
                with self._changed:
                    self._error = exc
                    self._changed.notify_all()
                self._notify(exc)
                return
            with self._changed:
                self._durable = target
                self._changed.notify_all()
            self._notify(target)
