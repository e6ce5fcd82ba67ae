"""Partitions on one machine: N partition workers against one worker, many rooms.

300 linear rooms (interleaved, as a homeserver's traffic is) are published first;
then `roomserver run` processes them once with one partition (the single worker) and
once with N (the supervisor and N worker processes). The clock of each run starts
when its last worker says it is ready and stops when the output stream holds one
output per input. The bare relay of the same run (bench/run.py's) is the yardstick.
Afterwards every room's events, statuses, states, forward extremities and current
state in the N partition databases together must equal the single worker's
(worker.diff), or the figures do not count.

    python -m bench.partitions_bench [--rooms 300] [--events 30] [--partitions 2]

`make bench` runs it as bench/run.py's `partitions` scenario, in the one table.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import BATCH, Prepared, bench_relay, prepare_inputs, publish_inputs, worker_env
from worker.bus.server import EmbeddedNatsServer
from worker.config import load_config, partition_directory
from worker.diff import differences
from worker.storage.inspection import Inspector, StoreContents
from worker.synthetic import linear_room

RESULTS = Path(__file__).parent / "results"


def build_items(rooms: int, events: int, version: str = "10") -> list[Prepared]:
    """`rooms` linear rooms of `events` events after 5 joins, interleaved room by room."""
    per_room = [
        prepare_inputs(list(linear_room(version, members=5, events=events, seed=seed)), version)
        for seed in range(1, rooms + 1)
    ]
    return [item for row in itertools.zip_longest(*per_room) for item in row if item]


def _env(url: str, storage: Path, tag: str, partitions: int) -> dict[str, str]:
    return worker_env(
        url,
        storage,
        f"p{tag}",
        consumer_batch_size=str(BATCH),
        log_level="info",
        partitions_count=str(partitions),
    )


async def bench_partitions(
    url: str, items: list[Prepared], partitions: int, workdir: Path, tag: str
) -> tuple[dict[str, Any], StoreContents]:
    storage = workdir / f"data-{tag}"
    env = _env(url, storage, tag, partitions)
    config = load_config(None, env)
    nc = await publish_inputs(config, items)
    js = nc.jetstream()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run"],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
    )
    ready: list[float] = []

    def read_log() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            if b'"worker ready"' in raw:
                ready.append(time.perf_counter())

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 1800
        while True:
            info = await js.stream_info(config.streams.output)
            if info.state.messages >= len(items):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited early ({proc.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError("the run did not finish within 30 minutes")
            await asyncio.sleep(0.05)
        done = time.perf_counter()
        if len(ready) < max(1, partitions):
            raise RuntimeError("not every partition worker said it was ready")
        # The last worker to be ready starts the clock: Python's start-up is not
        # counted, as bench/run.py does not count it.
        elapsed = done - ready[max(1, partitions) - 1]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        reader.join(timeout=10)
    await nc.close()
    directories = (
        [storage]
        if partitions < 2
        else [partition_directory(storage, k) for k in range(partitions)]
    )
    contents = StoreContents({}, {})
    for directory in directories:
        with Inspector.open(directory) as inspector:
            part = inspector.rows.contents()
        contents.events.update(part.events)
        contents.rooms.update(part.rooms)
    return {
        "partitions": partitions,
        "events": len(items),
        "seconds": elapsed,
        "events_per_s": len(items) / elapsed,
    }, contents


async def bench_partition_runs(
    url: str, workdir: Path, *, rooms: int = 300, events: int = 30, partitions: int = 2
) -> dict[str, Any]:
    """One worker, then `partitions` workers, over the same rooms; the figures of both
    and whether their stores agree (bench/run.py's `partitions` scenario)."""
    items = build_items(rooms, events)
    one, one_contents = await bench_partitions(url, items, 1, workdir, "one")
    many, many_contents = await bench_partitions(url, items, partitions, workdir, "many")
    found = list(differences(one_contents, many_contents))
    return {
        "rooms": rooms,
        "inputs": len(items),
        "cpus": os.cpu_count(),
        "one_partition": one,
        "partitioned": many,
        "speed_up": many["events_per_s"] / one["events_per_s"],
        "same_outcomes": not found,
        "differences": found[:20],
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="partitions-bench-") as tmp:
        workdir = Path(tmp)
        async with EmbeddedNatsServer(workdir / "nats", port=0) as server:
            relay = await bench_relay(server.url, build_items(args.rooms, args.events), "relay")
            report = await bench_partition_runs(
                server.url,
                workdir,
                rooms=args.rooms,
                events=args.events,
                partitions=args.partitions,
            )
    return {**report, "relay": relay}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=300)
    parser.add_argument("--events", type=int, default=30, help="events per room after joins")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args))
    relay = report["relay"]["events_per_s"]
    print(f"{'':<28} {'events':>7} {'seconds':>8} {'events/s':>9} {'x relay':>8}")
    print(
        f"{'bare relay':<28} {report['relay']['events']:>7} "
        f"{report['relay']['seconds']:>8.2f} {relay:>9,.0f} {1:>8.3f}"
    )
    for label, run in (
        ("1 partition", report["one_partition"]),
        (f"{args.partitions} partitions", report["partitioned"]),
    ):
        print(
            f"{label:<28} {run['events']:>7} {run['seconds']:>8.2f} "
            f"{run['events_per_s']:>9,.0f} {run['events_per_s'] / relay:>8.3f}"
        )
    print(
        f"speed-up {report['speed_up']:.2f}x on {report['cpus']} CPUs; "
        f"same outcomes and state in every room: {report['same_outcomes']}"
    )
    for line in report["differences"]:
        print("  " + line)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"partitions-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"saved {out}")
    return 0 if report["same_outcomes"] else 1


if __name__ == "__main__":
    sys.exit(main())
