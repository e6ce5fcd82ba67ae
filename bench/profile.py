"""A benchmark room through the pipeline in this process, for a profiler.

    python -m bench.profile linear|forked [--cprofile]
    py-spy record -o profile.svg -- .venv/bin/python -m bench.profile forked

The same events as `make bench` (the linear room, or the cached forked room), fed to
`Pipeline.process_batch` in batches of the worker's size on a real SQLite file, without
NATS: what is left is the worker's own work, which is what a profile should show.
`--cprofile` prints the functions with the most time of their own and the most time
below them (cProfile slows pure-Python code down about twice; py-spy does not).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

from bench.forked_room import build_forked_room
from worker.bus.subjects import Subjects
from worker.config import LogConfig
from worker.logs import configure_logging
from worker.matrix.hashes import compute_event_id
from worker.matrix.room_versions import get_room_version
from worker.pipeline import InboundMessage, Pipeline
from worker.runner.pipeline_process import GC_GEN0_THRESHOLD
from worker.storage.database import Database
from worker.synthetic import linear_room

BATCH = 256


def _messages(pdus: list[dict[str, Any]], version: str) -> list[InboundMessage]:
    subjects, room_version = Subjects(), get_room_version(version)
    out = []
    for seq, pdu in enumerate(pdus, 1):
        room_id = pdu.get("room_id") or "!" + compute_event_id(pdu, room_version)[1:]
        body = msgpack.packb({"event": pdu}, use_bin_type=True)
        out.append(InboundMessage(subjects.input(room_id), body, seq))
    return out


def run(messages: list[InboundMessage], profiler: cProfile.Profile | None) -> tuple[float, float]:
    """Events per second through the pipeline (wall clock) and the CPU seconds this
    process spent per event meanwhile (the figure that holds on a shared machine); the
    profiler, if any, runs meanwhile."""
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="bench-profile-", dir=shm) as tmp:
        db = Database(Path(tmp))
        pipeline = Pipeline(db, Subjects())
        start, cpu_start = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        for first in range(0, len(messages), BATCH):
            pipeline.process_batch(messages[first : first + BATCH])
            db.outbox.delete_through(2**62)
        if profiler is not None:
            profiler.disable()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        db.close()
    return len(messages) / elapsed, cpu / len(messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=["linear", "forked"])
    parser.add_argument("--room-version", default="10")
    parser.add_argument("--members", type=int, help="2,000 (linear) or 800 (forked)")
    parser.add_argument("--events", type=int, help="50,000 (linear) or 5,000 (forked)")
    parser.add_argument("--cprofile", action="store_true")
    args = parser.parse_args()
    configure_logging(LogConfig(level="warning"))
    version = args.room_version
    if args.scenario == "linear":
        members, events = args.members or 2000, args.events or 50_000
        pdus = list(linear_room(version, members=members, events=events, seed=1))
    else:
        members, events = args.members or 800, args.events or 5000
        pdus, _ = build_forked_room(version, members, events)
    messages = _messages(pdus, version)
    profiler = cProfile.Profile() if args.cprofile else None
    rate, cpu = run(messages, profiler)
    print(
        f"{args.scenario}: {len(messages)} events, {rate:,.0f} events/s in process, "
        f"{cpu * 1e6:,.1f} µs CPU per event"
    )
    if profiler is not None:
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumtime").print_stats(40)


if __name__ == "__main__":
    main()
