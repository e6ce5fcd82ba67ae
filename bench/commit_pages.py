"""What each batch's commit writes: WAL frames per batch, by table or index, and the
commit's wall time, in the linear room.

    python -m bench.commit_pages [--events 50000] [--dir PATH] [--by-tree]

The room of `make bench` linear (2,000 members, version 10) is fed to
`Pipeline.process_batch` in batches of the worker's size on a real SQLite file (on
disk, not /dev/shm: the commit's fsync is part of what is measured), and published
rows are deleted in the next batch's transaction, as the worker does. Frames are read
from the WAL index header in the `-shm` file (its frame count, and the salt that
changes when the WAL restarts after a checkpoint), so SQLite's own checkpoints run as
in the worker. `--by-tree` also names the b-tree of every frame of 20 batches from
the 150th (through `dbstat`; pages free at the end of the batch are the outbox rows
published and deleted meanwhile). Commit time: from the first commit hook (the rows
written at the commit) to the end of COMMIT, and COMMIT alone. Disk writes: the
process's `write_bytes`, WAL and checkpoints together.
"""

from __future__ import annotations

import argparse
import collections
import sqlite3
import statistics
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.profile import BATCH, _messages
from worker.bus.subjects import Subjects
from worker.config import LogConfig
from worker.logs import configure_logging
from worker.pipeline import Pipeline
from worker.storage.database import DB_FILENAME, Database
from worker.synthetic import linear_room

#: The batches whose frames `--by-tree` names.
TREE_BATCHES = range(150, 170)


def _wal_header(shm: Path) -> tuple[int, int]:
    """(frames in the WAL, first salt) from the WAL index header (native byte order)."""
    if not shm.exists():
        return 0, 0
    data = shm.read_bytes()[:48]
    return struct.unpack_from("=I", data, 16)[0], struct.unpack_from("=I", data, 32)[0]


def _written_bytes() -> int:
    with open("/proc/self/io", encoding="ascii") as io:
        for line in io:
            if line.startswith("write_bytes"):
                return int(line.split()[1])
    return 0


def measure(events: int, base: Path, by_tree: bool) -> dict[str, object]:
    configure_logging(LogConfig(level="warning"))
    messages = _messages(list(linear_room("10", members=2000, events=events, seed=1)), "10")
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        db = Database(Path(tmp))
        pipeline = Pipeline(db, Subjects())
        shm, wal = Path(tmp) / (DB_FILENAME + "-shm"), Path(tmp) / (DB_FILENAME + "-wal")
        page_size = int(db.conn.execute("PRAGMA page_size").fetchone()[0])
        marks: dict[str, float] = {}
        db._commit_hooks.insert(0, lambda: marks.__setitem__("hooks", time.perf_counter()))
        db.before_commit(lambda: marks.__setitem__("commit", time.perf_counter()))
        plain = db.transaction
        commits: list[tuple[float, float]] = []

        @contextmanager
        def timed() -> Iterator[None]:
            with plain():
                yield
            end = time.perf_counter()
            commits.append((end - marks["hooks"], end - marks["commit"]))

        db.transaction = timed  # type: ignore[method-assign]
        spy = sqlite3.connect(Path(tmp) / DB_FILENAME)
        frames: list[int] = []
        trees: collections.Counter[str] = collections.Counter()
        written = _written_bytes()
        for number, first in enumerate(range(0, len(messages), BATCH)):
            before, salt = _wal_header(shm)
            pipeline.process_batch(messages[first : first + BATCH])
            pipeline.outbox.mark_published(db.outbox.last_seq())
            after, salt_after = _wal_header(shm)
            start = before if salt_after == salt else 0
            frames.append(after - start)
            if by_tree and number in TREE_BATCHES:
                data = wal.read_bytes()
                names = dict(spy.execute("SELECT pageno, name FROM dbstat"))
                for frame in range(start, after):
                    page = struct.unpack_from(">I", data, 32 + frame * (page_size + 24))[0]
                    trees[names.get(page, "(free: published outbox rows)")] += 1
        written = _written_bytes() - written
        spy.close()
        db.close()
    # The first ten batches fill an empty database: left out.
    frames, commits = frames[10:], commits[10:]
    whole = [c[0] * 1000 for c in commits]
    commit = [c[1] * 1000 for c in commits]
    result: dict[str, object] = {
        "batches": len(frames),
        "wal_frames_per_batch_mean": round(statistics.mean(frames)),
        "wal_frames_per_batch_last20": round(statistics.mean(frames[-20:])),
        "disk_kib_per_batch": round(written / (len(frames) + 10) / 1024),
        "commit_with_hooks_ms_median": round(statistics.median(whole), 2),
        "commit_ms_median": round(statistics.median(commit), 2),
        "commit_ms_max": round(max(commit), 1),
        "commits_total_s": round(sum(commit) / 1000, 2),
    }
    if by_tree:
        count = len(TREE_BATCHES)
        result["frames_per_batch_by_tree"] = {
            name: round(n / count, 1) for name, n in trees.most_common()
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--by-tree", action="store_true")
    args = parser.parse_args()
    for key, value in measure(args.events, args.dir, args.by_tree).items():
        if isinstance(value, dict):
            print(f"{key}:")
            for name, n in value.items():
                print(f"  {name:40} {n:7.1f}")
        else:
            print(f"{key:32} {value}")


if __name__ == "__main__":
    main()
