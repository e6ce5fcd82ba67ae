"""`on_rollback_once`: a cache's "forget everything" hook asked for on every write runs
once per undo that needs it, and always when an input that wrote to the cache is undone.

The pipeline runs each input of a transaction in a savepoint. A hook registered while
an earlier input ran does not run when a later input's savepoint is undone (only the
hooks registered since the savepoint began do), so the hook must be registered again
inside every input that asks for it, and only once there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.storage.database import Database


class Boom(Exception):
    pass


class Cache:
    def __init__(self) -> None:
        self.forgotten = 0

    def forget(self) -> None:
        self.forgotten += 1


def test_hook_runs_once_per_undo_and_for_every_undone_input(tmp_path: Path) -> None:
    db = Database(tmp_path)
    cache = Cache()
    with db.transaction():
        with db.savepoint():
            db.on_rollback_once(cache.forget)
            db.on_rollback_once(cache.forget)
        # A later input asks again: its undo must forget what it cached.
        with pytest.raises(Boom), db.savepoint():
            db.on_rollback_once(cache.forget)
            db.on_rollback_once(cache.forget)
            raise Boom
        assert cache.forgotten == 1
        # After that undo, asking again registers again (the undone hook is gone).
        with pytest.raises(Boom), db.savepoint():
            db.on_rollback_once(cache.forget)
            raise Boom
        assert cache.forgotten == 2
    # The transaction committed: nothing more runs.
    assert cache.forgotten == 2

    with pytest.raises(Boom), db.transaction():
        for _ in range(3):
            with db.savepoint():
                db.on_rollback_once(cache.forget)
        raise Boom
    # Registered in each of the three inputs, all undone with the transaction.
    assert cache.forgotten == 5

    with pytest.raises(Boom), db.transaction():
        db.on_rollback_once(cache.forget)
        db.on_rollback_once(cache.forget)
        raise Boom
    assert cache.forgotten == 6

    # Outside a transaction there is nothing to undo.
    db.on_rollback_once(cache.forget)
    with db.transaction():
        pass
    assert cache.forgotten == 6
    db.close()
