"""The pipeline process's garbage collections beside a forked 10,000-member room.

    python -m bench.child_gc [--quick] [--seconds S] [--types]

The isolation benchmark's inputs (bench/isolation_bench.py: the forked room, its setup
then its two-branch stream, and the small rooms) go through `PipelineServer` in this
process, as the pipeline's child process runs them, without NATS: transactions
alternate between forked-room inputs (6 at a time) and small-room inputs (16 at a
time), as the input loop's turns do. `gc.callbacks` times every collection and records
its generation, what it collected and the generations' sizes before it. Reported: the
collections by generation (count, total and longest CPU time), the small-room
transactions' durations (p50/p99/max), and with `--types` the types most numerous in
the generations the longest collections traversed.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import Prepared, percentile
from bench.isolation_bench import MERGE_EVERY, SMALL_SETUP, build_inputs, quick_parameters
from worker.bus.subjects import Subjects
from worker.config import LogConfig
from worker.logs import configure_logging
from worker.runner.pipeline_process import GC_GEN0_THRESHOLD, CollectionPacer, prepare_collector
from worker.runner.pipeline_server import PipelineServer, Request, SharedFlags

CACHE_MB = int(__import__("os").environ.get("CHILDGC_CACHE_MB", "256"))
FORKED_TURN = 6
SMALL_TURN = 16


class CollectionLog:
    """Every collection: generation, CPU and wall seconds, collected, sizes before."""

    def __init__(self, types: bool) -> None:
        self.records: list[dict[str, Any]] = []
        self.types = types
        self._start: tuple[float, float, list[int]] | None = None
        #: Per collection (with `types`): the types it traverses, by referents visited.
        self.traversed: list[list[tuple[str, int, int]]] = []

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            sizes = [len(gc.get_objects(g)) for g in range(3)] if self.types else []
            if self.types:
                self.traversed.append(_traversed(info["generation"]))
            self._start = (time.process_time(), time.perf_counter(), sizes)
            return
        if self._start is None:
            return
        cpu0, wall0, sizes = self._start
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        self.records.append(
            {
                "generation": info["generation"],
                "cpu": cpu,
                "wall": wall,
                "collected": info["collected"],
                "sizes": sizes,
            }
        )
        self._start = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for g in range(3):
            rs = [r for r in self.records if r["generation"] == g]
            if not rs:
                continue
            cpus = [r["cpu"] * 1000 for r in rs]
            out[f"gen{g}"] = {
                "count": len(rs),
                "cpu_ms_total": round(sum(cpus), 1),
                "cpu_ms_max": round(max(cpus), 2),
                "cpu_ms_p50": round(percentile(cpus, 0.5), 2),
                "collected": sum(r["collected"] for r in rs),
                "sizes_at_max": max(rs, key=lambda r: r["cpu"])["sizes"],
            }
        return out


def _traversed(generation: int) -> list[tuple[str, int, int]]:
    """(type, objects, referents visited) in the generations a collection of
    `generation` traverses, by referents (what its time goes with)."""
    objects: Counter[str] = Counter()
    referents: Counter[str] = Counter()
    for g in range(generation + 1):
        for o in gc.get_objects(g):
            name = type(o).__name__
            objects[name] += 1
            referents[name] += len(gc.get_referents(o))
    return [(name, objects[name], n) for name, n in referents.most_common(10)]


def _types_in_young() -> list[tuple[str, int]]:
    counts: Counter[str] = Counter()
    for g in (0, 1):
        counts.update(type(o).__name__ for o in gc.get_objects(g))
    return counts.most_common(12)


def run(
    quick: bool, seconds: float | None, types: bool, threshold: int | None, old: bool
) -> dict[str, Any]:
    params = quick_parameters() if quick else {"members": 10_000, "seconds": 20.0, "rooms": 100}
    members, rooms = int(params["members"]), int(params["rooms"])
    secs = params["seconds"]
    rate, window = 1000.0, int(params.get("window", 64))
    per_room = int(rate * secs / rooms * 1.2) + 20
    rounds = int(secs * 1000 / (2 + 1 / MERGE_EVERY)) + window
    inputs = build_inputs("10", members, rounds, rooms, per_room)
    setup: list[Prepared] = [tuple(i) for i in inputs["forked_setup"]]
    stream: list[Prepared] = [tuple(i) for i in inputs["forked_stream"]]
    small: list[list[Prepared]] = [[tuple(i) for i in r] for r in inputs["small"]]
    setup += [item for r in small for item in r[:SMALL_SETUP]]
    del inputs
    subjects = Subjects("bgc")
    prepare_collector()
    if threshold is not None:
        gc.set_threshold(threshold, *gc.get_threshold()[1:])
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    log = CollectionLog(types)
    published = 0
    pacer = None if old else CollectionPacer()

    def batch(server: PipelineServer, items: list[Prepared]) -> float:
        nonlocal published
        messages = [(subjects.input(room), body, i) for i, (room, body, _) in enumerate(items)]
        started = time.perf_counter()
        result = server.handle(Request("process_batch", (messages, None), published))
        rows = result.value.rows
        if rows:
            published = max(published, max(r.seq for r in rows))
        took = time.perf_counter() - started
        if pacer is not None:
            pacer.after_request()
        server.handle(Request("outbox_delete_through", (published,), published))
        if pacer is not None:
            pacer.after_request()
        return took

    with tempfile.TemporaryDirectory(prefix="bench-childgc-", dir=shm) as tmp:
        server = PipelineServer(SharedFlags())
        server.handle(Request("open", (str(Path(tmp) / "db"), "bgc", 5.0, CACHE_MB), 0))
        for first in range(0, len(setup), 256):
            batch(server, setup[first : first + 256])
        after_setup = time.process_time()
        gc.callbacks.append(log)
        small_times: list[float] = []
        forked_times: list[float] = []
        cursors = [SMALL_SETUP] * len(small)
        fi, room = 0, 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        limit = seconds if seconds is not None else secs
        biggest: list[tuple[float, list[tuple[str, int]]]] = []
        while time.perf_counter() - wall0 < limit and fi < len(stream):
            forked_times.append(batch(server, stream[fi : fi + FORKED_TURN]))
            fi += FORKED_TURN
            items = []
            for _ in range(SMALL_TURN):
                room = (room + 1) % len(small)
                if cursors[room] < len(small[room]):
                    items.append(small[room][cursors[room]])
                    cursors[room] += 1
            if not items:
                break
            if types:
                counts = gc.get_count()
                before = len(log.records)
                young = _types_in_young() if counts[0] > GC_GEN0_THRESHOLD * 0.9 else None
            small_times.append(batch(server, items))
            if types and young is not None and len(log.records) > before:
                biggest.append((log.records[-1]["cpu"], young))
        elapsed, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        gc.callbacks.remove(log)
        heap_objects = len(gc.get_objects())
        full0 = time.process_time()
        gc.collect()
        full_ms = (time.process_time() - full0) * 1000
        server.handle(Request("close", (), published))
    ms = [t * 1000 for t in small_times]
    fms = [t * 1000 for t in forked_times]
    gc_cpu = sum(r["cpu"] for r in log.records)
    out: dict[str, Any] = {
        "members": members,
        "setup_cpu_s": round(after_setup, 1),
        "seconds": round(elapsed, 1),
        "cpu_s": round(cpu, 2),
        "gc_cpu_s": round(gc_cpu, 3),
        "gc_share": round(gc_cpu / cpu, 3) if cpu else 0,
        "forked_events_per_s": round(fi / elapsed, 1),
        "small_txn_ms": {
            "n": len(ms),
            "p50": round(percentile(ms, 0.5), 2),
            "p99": round(percentile(ms, 0.99), 2),
            "max": round(max(ms), 2),
        },
        "forked_txn_ms": {"p50": round(percentile(fms, 0.5), 2), "max": round(max(fms), 2)},
        "collections": log.summary(),
        "freeze_count": gc.get_freeze_count(),
        "heap_objects": heap_objects,
        "full_collection_ms": round(full_ms, 1),
        "pacer": not old,
    }
    if types:
        order = sorted(range(len(log.records)), key=lambda i: -log.records[i]["cpu"])
        out["traversed_by_longest"] = [
            {
                "generation": log.records[i]["generation"],
                "cpu_ms": round(log.records[i]["cpu"] * 1000, 1),
                "types": log.traversed[i],
            }
            for i in order[:3]
        ]
    if biggest:
        biggest.sort(reverse=True)
        out["young_types_before_longest"] = [
            {"cpu_ms": round(c * 1000, 1), "types": t} for c, t in biggest[:3]
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--types", action="store_true")
    parser.add_argument("--threshold", type=int)
    parser.add_argument("--old", action="store_true", help="without CollectionPacer")
    args = parser.parse_args()
    configure_logging(LogConfig(level="warning"))
    print(json.dumps(run(args.quick, args.seconds, args.types, args.threshold, args.old), indent=1))


if __name__ == "__main__":
    main()
