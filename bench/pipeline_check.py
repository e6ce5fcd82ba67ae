"""Two yardsticks for work on the pipeline's own Python: same results, fewer instructions.

    python -m bench.pipeline_check digest              # hashes of outputs and every table
    python -m bench.pipeline_check instructions linear # callgrind, inside process_batch
    python -m bench.pipeline_check --hints ...         # inputs parsed ahead, as the worker does

Both feed the same rooms to `Pipeline.process_batch` in batches of the worker's size on
a real SQLite file, without NATS (as `bench.profile`): a 200-member linear room of 3,000
messages, and a 200-member forked room of 1,000 events (cached by `bench.forked_room`).

`digest` prints, per room, a SHA-256 of the dispositions and every output emitted
(subject, message ID, payload), and one of every table's rows in rowid order, with the
one wall-clock column (`events.received_ts`) left out. Run it on the old and the new
code: a change that keeps results keeps every hash.

`instructions` runs the room under valgrind's callgrind with collection switched on only
while `process_batch` runs (two client requests from a tiny C library built on the fly
with valgrind's header), and prints the instructions per message. Unlike CPU time,
instruction counts are not disturbed by other load on the machine.

`--hints` has each batch's inputs parsed ahead first, outside the count, as the
worker's event loop does (worker.runner.parse_ahead), and handed to the pipeline as
hints: what the pipeline's process then does.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.forked_room import build_forked_room
from bench.profile import BATCH, _messages
from worker.bus.subjects import Subjects
from worker.config import LogConfig
from worker.logs import configure_logging
from worker.pipeline import InboundMessage, Pipeline
from worker.runner.parse_ahead import ParseAhead
from worker.runner.pipeline_process import GC_GEN0_THRESHOLD
from worker.storage.database import Database
from worker.synthetic import linear_room

VERSION = "10"
#: Whether inputs are parsed ahead (`--hints`).
HINTS = os.environ.get("PIPELINE_CHECK_HINTS") == "1"
ROOMS = {"linear": (200, 3000), "forked": (200, 1000)}

_TOGGLE_C = """
#include <valgrind/callgrind.h>
void cg_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
"""


def room_messages(scenario: str) -> list[InboundMessage]:
    members, events = ROOMS[scenario]
    if scenario == "linear":
        pdus = list(linear_room(VERSION, members=members, events=events, seed=1))
    else:
        pdus, _ = build_forked_room(VERSION, members, events)
    return _messages(pdus, VERSION)


def _feed(
    messages: list[InboundMessage],
    around: Callable[[], None] | None = None,
    keep: Callable[[Pipeline, Database], None] | None = None,
) -> None:
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="bench-check-", dir=shm) as tmp:
        db = Database(Path(tmp))
        pipeline = Pipeline(db, Subjects())
        seen: list[bytes] = []
        ahead = ParseAhead()
        for first in range(0, len(messages), BATCH):
            batch = messages[first : first + BATCH]
            if HINTS:
                hints = zip(batch, ahead.hints(batch), strict=True)
                pipeline.recipe.hints = {m: h for m, h in hints if h is not None}
            if around is not None:
                around()
            dispositions = pipeline.process_batch(batch)
            if around is not None:
                around()
            seen.append(repr([d.value for d in dispositions]).encode())
            for row in pipeline.outbox.emitted:
                seen.append(repr((row.seq, row.subject, row.msg_id, bytes(row.payload))).encode())
        if keep is not None:
            keep(pipeline, db)
            _DIGESTS["outputs"] = hashlib.sha256(b"\n".join(seen)).hexdigest()
        db.close()


_DIGESTS: dict[str, str] = {}


def _tables(pipeline: Pipeline, db: Database) -> None:
    db.close()
    conn = sqlite3.connect(db.path)
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for name in sorted(names):
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({name})")]
        kept = [c for c in columns if not (name == "events" and c == "received_ts")]
        if name.startswith("sqlite_"):
            continue
        create = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,))
        # Tables WITHOUT ROWID are kept in their key's order: all columns order them.
        order = "1" if "WITHOUT ROWID" in create.fetchone()[0].upper() else "rowid"
        if order == "1":
            order = ", ".join(str(i + 1) for i in range(len(kept)))
        sql = f"SELECT {', '.join(kept)} FROM {name} ORDER BY {order}"
        digest = hashlib.sha256()
        count = 0
        for row in conn.execute(sql):
            digest.update(repr(row).encode())
            count += 1
        _DIGESTS[f"table {name} ({count} rows)"] = digest.hexdigest()
    conn.close()


def digest() -> None:
    for scenario in ROOMS:
        _DIGESTS.clear()
        _feed(room_messages(scenario), keep=_tables)
        for key, value in sorted(_DIGESTS.items()):
            print(f"{scenario:7} {key:45} {value[:16]}")


def _child(scenario: str) -> None:
    messages = room_messages(scenario)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "toggle.c"
        source.write_text(_TOGGLE_C)
        lib = Path(tmp) / "toggle.so"
        subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", lib, source], check=True)
        toggle = ctypes.CDLL(str(lib)).cg_toggle
        _feed(messages, around=toggle)
    print(f"messages {len(messages)}")


def instructions(scenario: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        child = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--collect-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "bench.pipeline_check",
                "child",
                scenario,
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0", "PIPELINE_CHECK_HINTS": str(int(HINTS))},
        )
        count = int(re.search(r"messages (\d+)", child.stdout).group(1))  # type: ignore[union-attr]
        totals = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        assert totals is not None
        return int(totals.group(1)) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["digest", "instructions", "child"])
    parser.add_argument("scenario", nargs="?", choices=list(ROOMS))
    parser.add_argument("--hints", action="store_true", help="parse inputs ahead, as the worker")
    args = parser.parse_args()
    if args.hints:
        global HINTS
        HINTS = True
    configure_logging(LogConfig(level="warning"))
    if args.what == "digest":
        digest()
    elif args.what == "child":
        _child(args.scenario)
    else:
        for scenario in [args.scenario] if args.scenario else list(ROOMS):
            per = instructions(scenario)
            print(f"{scenario}: {per / 1000:,.1f}k instructions per message in process_batch")


if __name__ == "__main__":
    main()
