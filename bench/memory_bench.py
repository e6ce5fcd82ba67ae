"""Memory that stays flat: 1,000,000 events across 10,000 rooms through one worker.

    python -m bench.memory_bench [--rooms 10000] [--per-room 100] [--quick]

Every room has 100 events: its create event, the creator's join, power levels, join
rules, ten members joining, then messages, topic and name changes and profile changes
(worker.synthetic.linear_room). The rooms come in ten groups; within a group the rooms
are interleaved, as a homeserver's traffic is, so every tenth of the run does the same
kind of work while the number of rooms and events stored grows by a tenth. All inputs
are published before the worker starts (about 1.5 GB of stream files for a full run).

The worker runs as its own process (`roomserver run`) on a real nats-server; its RSS
(/proc/PID/status VmRSS, summed over the process and any children it starts:
`tree_rss_kib`) is sampled every second, and each process's too (the event loop's and
the pipeline child's: `rss_by_process_kib`). The report has the peak, the RSS at
each tenth of the run (by outputs published), in all and by process, and whether
memory stayed flat: the RSS at the end of the last tenth is at most 10 % above that at
the end of the second (the first tenth is start-up: imports, the caches filling). The
full run takes about ten minutes at ~2,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    BATCH,
    Prepared,
    WorkerProcess,
    bench_relay,
    prepare_inputs,
    process_tree,
    publish_inputs,
    rss_kib,
    status_kib,
    worker_env,
)
from worker.bus.server import EmbeddedNatsServer
from worker.config import LogConfig, load_config
from worker.logs import configure_logging
from worker.synthetic import linear_room

RESULTS = Path(__file__).parent / "results"
#: The bound the issue sets on the worker's peak RSS, in bytes.
RSS_LIMIT_BYTES = 250_000_000
#: Flat: the last tenth's RSS at most this much above the second tenth's.
FLAT_TOLERANCE = 0.10
#: Events of a room's bootstrap (create, creator's join, power levels, join rules).
_BOOTSTRAP = 4
#: Members who join each room after its creator.
_MEMBERS = 10


def room_group(first_seed: int, rooms: int, per_room: int, version: str) -> list[Prepared]:
    """`rooms` rooms of `per_room` events each, interleaved round-robin."""
    events = per_room - _BOOTSTRAP - _MEMBERS
    per_room_inputs = [
        prepare_inputs(
            list(linear_room(version, members=_MEMBERS, events=events, seed=seed)), version
        )
        for seed in range(first_seed, first_seed + rooms)
    ]
    return [item for row in itertools.zip_longest(*per_room_inputs) for item in row if item]


def groups(rooms: int, per_room: int, version: str, count: int = 10) -> Iterator[list[Prepared]]:
    """The run's inputs, `count` groups of rooms, one at a time (the whole run would
    hold a gigabyte in this process)."""
    size = max(1, rooms // count)
    for first in range(0, rooms, size):
        yield room_group(first + 1, min(size, rooms - first), per_room, version)


def _tenths(samples: Sequence[tuple[float, int, int]], total: int) -> list[float]:
    """RSS (MiB) of the first sample at or past each tenth of the outputs."""
    out = []
    for k in range(1, 11):
        target = total * k / 10
        rss = next((r for _, n, r in samples if n >= target), samples[-1][2])
        out.append(round(rss / 1024, 1))
    return out


def rss_anon_kib(pid: int) -> int:
    """The anonymous part of the RSS of a process and its descendants (KiB;
    /proc/PID/status RssAnon): the heap and every other private mapping. The rest is
    file-backed (shared libraries, and a database file if SQLite mapped it), which the
    caches do not grow."""
    return sum(status_kib(member, "RssAnon")[0] for member in process_tree(pid))


def tree_rss_kib(pid: int) -> tuple[int, int]:
    """(RSS, anonymous RSS) in KiB of the process and its descendants together."""
    return rss_kib(pid)[0], rss_anon_kib(pid)


def rss_by_process_kib(pid: int) -> dict[str, int]:
    """RSS in KiB of the worker's event loop process (`loop`) and of its descendants
    (`child`: the pipeline process, the only one it starts), so that the growth can be
    told apart by process."""
    members = process_tree(pid)
    loop = status_kib(pid, "VmRSS")[0]
    child = sum(status_kib(member, "VmRSS")[0] for member in members[1:])
    return {"loop": loop, "child": child}


async def bench_memory(
    url: str,
    workdir: Path,
    *,
    rooms: int = 10_000,
    per_room: int = 100,
    version: str = "10",
    tag: str = "mem",
) -> dict[str, Any]:
    storage = workdir / f"data-{tag}"
    env = worker_env(url, storage, f"b{tag}", consumer_batch_size=str(BATCH), log_level="info")
    config = load_config(None, env)
    started = time.perf_counter()
    nc = None
    total = 0
    for items in groups(rooms, per_room, version):
        nc = await publish_inputs(config, items, nc)
        total += len(items)
    assert nc is not None
    prepare_seconds = time.perf_counter() - started
    js = nc.jetstream()
    worker = WorkerProcess(env)
    #: (seconds since start, outputs so far, RSS KiB), one a second.
    samples: list[tuple[float, int, int]] = []
    #: The same with the anonymous part of the RSS.
    anon: list[tuple[float, int, int]] = []
    #: The same by process (`rss_by_process_kib`).
    by_process: dict[str, list[tuple[float, int, int]]] = {"loop": [], "child": []}
    next_sample = 0.0
    try:
        deadline = time.monotonic() + 4 * 3600
        while True:
            outputs = (await js.stream_info(config.streams.output)).state.messages
            now = time.perf_counter()
            if now >= next_sample or outputs >= total:
                rss, rss_anon = tree_rss_kib(worker.proc.pid)
                samples.append((now - worker.spawned, outputs, rss))
                anon.append((now - worker.spawned, outputs, rss_anon))
                for name, kib in rss_by_process_kib(worker.proc.pid).items():
                    by_process[name].append((now - worker.spawned, outputs, kib))
                next_sample = now + 1.0
            if outputs >= total:
                break
            worker.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{outputs} of {total} outputs after four hours")
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - worker.started
        # One process: its own high-water mark (VmHWM). With child processes the
        # highest sum sampled, which the sum of their marks would overstate.
        highest = max(r for _, _, r in samples)
        peak = highest if len(process_tree(worker.proc.pid)) > 1 else worker.rss_kib()[1]
    finally:
        worker.stop()
    dead = (await js.stream_info(config.streams.deadletter)).state.messages
    await nc.close()
    tenths = _tenths(samples, total)
    return {
        "rooms": rooms,
        "events_per_room": per_room,
        "events": total,
        "dead_letters": dead,
        "seconds": elapsed,
        "events_per_s": total / elapsed,
        "prepare_seconds": prepare_seconds,
        "peak_rss_mib": peak / 1024,
        "rss_mib_by_tenth": tenths,
        "rss_anon_mib_by_tenth": _tenths(anon, total),
        "rss_mib_by_tenth_by_process": {
            name: _tenths(series, total) for name, series in by_process.items()
        },
        "growth_second_to_last_tenth": tenths[-1] / tenths[1] - 1,
        "growth_fifth_to_last_tenth": tenths[-1] / tenths[4] - 1,
        "flat": tenths[-1] <= tenths[1] * (1 + FLAT_TOLERANCE),
        "below_limit": peak * 1024 < RSS_LIMIT_BYTES,
        "rss_limit_mib": RSS_LIMIT_BYTES / 2**20,
        "samples": [[round(t, 1), n, round(r / 1024, 1)] for t, n, r in samples],
        "worker_stderr_tail": worker.log_tail()[-2000:] if dead else "",
    }


def summary(result: dict[str, Any]) -> str:
    """The run in a few words, for the table."""
    return (
        f"RSS by tenth {result['rss_mib_by_tenth']}; "
        f"{'flat' if result['flat'] else 'NOT flat'} "
        f"({result['growth_second_to_last_tenth']:+.1%} 2nd→10th tenth, "
        f"{result['growth_fifth_to_last_tenth']:+.1%} 5th→10th); "
        f"{'below' if result['below_limit'] else 'ABOVE'} "
        f"{result['rss_limit_mib']:.0f} MiB (250 MB); by process: "
        + "; ".join(
            f"{name} {tenths[1]}→{tenths[-1]}"
            for name, tenths in result.get("rss_mib_by_tenth_by_process", {}).items()
        )
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
        workdir = Path(tmp)
        async with EmbeddedNatsServer(workdir / "nats", port=0) as server:
            relay = await bench_relay(
                server.url, room_group(1, 200, args.per_room, args.room_version), "relay"
            )
            result = await bench_memory(
                server.url, workdir, rooms=args.rooms, per_room=args.per_room
            )
    result["relay"] = relay
    result["relay_ratio"] = result["events_per_s"] / relay["events_per_s"]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=10_000)
    parser.add_argument("--per-room", type=int, default=100)
    parser.add_argument("--room-version", default="10")
    parser.add_argument("--quick", action="store_true", help="300 rooms: a smoke test")
    args = parser.parse_args(argv)
    configure_logging(LogConfig(level="warning"))
    if args.quick:
        args.rooms = 300
    result = asyncio.run(main_async(args))
    print(
        f"{result['events']:,} events in {result['rooms']:,} rooms: "
        f"{result['events_per_s']:,.0f} events/s ({result['relay_ratio']:.3f} x relay), "
        f"peak RSS {result['peak_rss_mib']:.1f} MiB"
    )
    print(summary(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    return 0 if result["dead_letters"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
