"""`make bench`: the worker's throughput against a bare relay, on a real nats-server.

Scenarios (inputs are published before the clock starts, then drained):
- relay: a plain nats-py loop moving the same messages from an input stream to an output
  stream, same batch size, no processing: the yardstick.
- linear: one room, 2,000 members join, then 50,000 mixed events.
- small rooms: many rooms of a few dozen events each.
- forked: a room of 800 members where servers split and merge (~15 % of events merge
  branches), with rejected and soft-failed events (bench/forked_room.py), 5,000 events.
- Synapse in memory: the same forked events through Synapse's own auth and state
  resolution functions, no database (bench/synapse_yardstick.py); only when the test-only
  `oracle` extra is installed.
- fork: a fork in a 10,000- and a 100,000-member room through the pipeline
  (bench/fork_bench.py).
- queries: state-query latency in a room with 10,000 state entries (bench/query_bench.py).
- federation queries: backfill, missing_events and state_and_auth_chain latency in the
  same size of room (bench/federation_queries_bench.py).
- isolation: small rooms' publish-to-output latency at 1,000 events/s beside a busy forked
  10,000-member room in the same worker (bench/isolation_bench.py).

`--quick` runs every scenario at a small size (about a minute), as a smoke test.

The worker runs as its own process (`roomserver run`), so its peak RSS is its own; its
RSS is sampled through the run to show whether memory stays flat. Figures are printed
as a table and written as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from bench.common import worker_env
from bench.federation_queries_bench import bench_federation
from bench.fork_bench import bench_fork
from bench.forked_room import build_forked_room
from bench.isolation_bench import bench_isolation, quick_parameters
from bench.isolation_bench import table as isolation_table
from bench.query_bench import bench_big_state, bench_queries, big_state_line
from bench.synapse_yardstick import bench_synapse, synapse_available
from worker.bus.connection import connect
from worker.bus.publisher import Outgoing, Publisher
from worker.bus.server import EmbeddedNatsServer
from worker.bus.streams import ensure_streams
from worker.bus.subjects import Subjects
from worker.config import Config, LogConfig, load_config
from worker.logs import configure_logging
from worker.matrix.hashes import compute_event_id
from worker.matrix.room_versions import get_room_version
from worker.synthetic import linear_room

RESULTS = Path(__file__).parent / "results"
BATCH = 256


#: (room ID, msgpack input body, event ID) of one prepared input.
Prepared = tuple[str, bytes, str]


def _inputs(pdus: Sequence[dict[str, Any]], version: str) -> list[Prepared]:
    room_version = get_room_version(version)
    out = []
    for pdu in pdus:
        event_id = compute_event_id(pdu, room_version)
        room_id = pdu.get("room_id") or "!" + event_id[1:]
        out.append((room_id, msgpack.packb({"event": pdu}, use_bin_type=True), event_id))
    return out


def _config(url: str, storage: Path, tag: str) -> Config:
    return load_config(None, _env(url, storage, tag))


def _env(url: str, storage: Path, tag: str) -> dict[str, str]:
    return worker_env(url, storage, f"b{tag}", consumer_batch_size=str(BATCH), log_level="info")


async def _ensure(js: JetStreamContext, name: str, subject: str) -> None:
    await js.add_stream(
        api.StreamConfig(name=name, subjects=[subject], storage=api.StorageType.FILE)
    )


async def _publish_all(publisher: Publisher, items: list[Outgoing]) -> None:
    for start in range(0, len(items), 2000):
        await publisher.publish_many(items[start : start + 2000])


async def publish_inputs(config: Config, items: list[Prepared]) -> NATS:
    """Connect as the worker will, create its streams and publish `items` to their rooms'
    input subjects; returns the connection (for watching the streams)."""
    nc = await connect(config.nats)
    js = nc.jetstream()
    await ensure_streams(js, config)
    subjects = Subjects(config.streams.subject_prefix)
    await _publish_all(
        Publisher(js, config),
        [Outgoing(subjects.input(room), body, eid) for room, body, eid in items],
    )
    return nc


async def _wait_stream_count(
    js: JetStreamContext, stream: str, count: int, timeout: float
) -> float:
    """Time at which `stream` holds `count` messages (polled through stream info)."""
    deadline = time.monotonic() + timeout
    while True:
        info = await js.stream_info(stream)
        if info.state.messages >= count:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{stream} holds {info.state.messages} of {count} messages")
        await asyncio.sleep(0.05)


async def bench_relay(url: str, items: list[Prepared], tag: str) -> dict[str, Any]:
    """The yardstick: fetch, republish to the output stream, ack; nothing else."""
    nc = await connect(load_config(None, {"ROOMSERVER_NATS_SERVERS": url}).nats)
    js = nc.jetstream()
    await _ensure(js, f"R{tag}_IN", f"r{tag}.input.>")
    await _ensure(js, f"R{tag}_OUT", f"r{tag}.output.>")
    config = load_config(None, {"ROOMSERVER_NATS_SERVERS": url})
    publisher = Publisher(js, config)
    subjects = Subjects(f"r{tag}")
    await _publish_all(
        publisher, [Outgoing(subjects.input(room), body, eid) for room, body, eid in items]
    )
    sub = await js.pull_subscribe(f"r{tag}.input.>", durable=f"r{tag}", stream=f"R{tag}_IN")
    moved = 0
    start = time.perf_counter()
    while moved < len(items):
        try:
            msgs = await sub.fetch(BATCH, timeout=1)
        except Exception:
            continue
        await publisher.publish_many(
            Outgoing(f"r{tag}.output." + m.subject.rsplit(".", 1)[1], m.data, None) for m in msgs
        )
        for m in msgs:
            await m.ack()
        moved += len(msgs)
    elapsed = time.perf_counter() - start
    await nc.close()
    return {"events": moved, "seconds": elapsed, "events_per_s": moved / elapsed}


def _rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process, in KiB."""
    current = peak = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return current, peak


async def bench_worker(
    url: str,
    name: str,
    items: list[Prepared],
    state_events: int,
    workdir: Path,
    tag: str,
    outputs: int | None = None,
) -> dict[str, Any]:
    """Run the worker process over `items`; done when its output stream holds `outputs`
    messages (default one per input; redactions add one each)."""
    expected = len(items) if outputs is None else outputs
    storage = workdir / f"data-{tag}"
    config = _config(url, storage, tag)
    nc = await publish_inputs(config, items)
    js = nc.jetstream()
    env = {**os.environ, **_env(url, storage, tag)}
    spawned = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run"], env=env, stderr=subprocess.PIPE
    )
    # The clock starts when the worker says it is ready (its consumer exists), so
    # Python's start-up is not counted against it; the relay is timed the same way.
    log_lines: list[str] = []
    ready_at: list[float] = []

    def read_log() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            if not ready_at and "worker ready" in line:
                ready_at.append(time.perf_counter())
            log_lines.append(line)
            del log_lines[:-50]

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    samples: list[int] = []
    peak = 0
    try:
        deadline = time.monotonic() + 3600
        while True:
            info = await js.stream_info(config.streams.output)
            current, peak = _rss_kib(proc.pid)
            samples.append(current)
            if info.state.messages >= expected:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited early ({proc.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not finish within an hour")
            await asyncio.sleep(0.1)
        start = ready_at[0] if ready_at else spawned
        elapsed = time.perf_counter() - start
        _, peak = _rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        reader.join(timeout=10)
    err = "".join(log_lines)
    dead = (await js.stream_info(config.streams.deadletter)).state.messages
    await nc.close()
    db_path = storage / "roomserver.db"
    with sqlite3.connect(db_path) as conn:
        triples = conn.execute("SELECT coalesce(sum(entry_count), 0) FROM state_blocks").fetchone()[
            0
        ]
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        max_blocks = conn.execute(
            "SELECT coalesce(max(length(block_nids) / 8), 0) FROM state_snapshots"
        ).fetchone()[0]
    size = sum(p.stat().st_size for p in storage.glob("roomserver.db*"))
    quarter = max(1, len(samples) // 4)
    return {
        "scenario": name,
        "events": len(items),
        "outputs": expected,
        "stored_events": events,
        "dead_letters": dead,
        "seconds": elapsed,
        "events_per_s": len(items) / elapsed,
        "state_events": state_events,
        "triples_written": triples,
        "triples_per_state_event": triples / max(1, state_events),
        "max_blocks_per_snapshot": max_blocks,
        "sqlite_bytes_per_event": size / max(1, events),
        "peak_rss_mib": peak / 1024,
        "rss_mib_by_quarter": [
            round(samples[min(len(samples) - 1, i * quarter)] / 1024, 1) for i in range(1, 5)
        ],
        "startup_seconds": (ready_at[0] - spawned) if ready_at else None,
        "worker_stderr_tail": err[-2000:] if dead else "",
    }


def _count_state(pdus: Sequence[dict[str, Any]]) -> int:
    return sum(1 for p in pdus if "state_key" in p)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    version = args.room_version
    linear = list(linear_room(version, members=args.members, events=args.events, seed=1))
    small: list[dict[str, Any]] = []
    for seed in range(args.small_rooms):
        small.extend(linear_room(version, members=5, events=20, seed=1000 + seed))
    linear_items = _inputs(linear, version)
    small_items = _inputs(small, version)
    started = time.perf_counter()
    forked, forked_outcomes = await asyncio.to_thread(
        build_forked_room, version, args.forked_members, args.forked_events
    )
    forked_build_seconds = time.perf_counter() - started
    forked_items = _inputs(forked, version)
    with tempfile.TemporaryDirectory(prefix="roomserver-bench-") as tmp:
        workdir = Path(tmp)
        async with EmbeddedNatsServer(workdir / "nats", port=0) as server:
            relay = await bench_relay(server.url, linear_items, "relay")
            linear_result = await bench_worker(
                server.url, "linear", linear_items, _count_state(linear), workdir, "lin"
            )
            small_result = await bench_worker(
                server.url, "small_rooms", small_items, _count_state(small), workdir, "small"
            )
            forked_result = await bench_worker(
                server.url,
                "forked",
                forked_items,
                _count_state(forked),
                workdir,
                "forked",
                outputs=forked_outcomes["outputs"],
            )
            queries = await bench_queries(
                server.url, workdir, entries=args.query_entries, samples=args.query_samples
            )
            queries["big_state"] = await bench_big_state(
                server.url, workdir, members=args.big_state_members
            )
            federation = await bench_federation(
                server.url, workdir, members=args.query_entries, samples=args.federation_samples
            )
            isolation = await bench_isolation(
                server.url, workdir, **(quick_parameters() if args.quick else {})
            )
    forked_result["outcomes"] = forked_outcomes
    forked_result["merges"] = sum(1 for p in forked if len(p["prev_events"]) > 1)
    forked_result["members"] = args.forked_members
    forked_result["build_seconds"] = forked_build_seconds
    synapse = None
    if synapse_available() and not args.no_synapse:
        synapse = await asyncio.to_thread(bench_synapse, forked, version)
    fork = await asyncio.to_thread(bench_fork, args.fork_members, version)
    fork_big = await asyncio.to_thread(bench_fork, args.fork_big_members, version)
    for result in (linear_result, small_result, forked_result, synapse):
        if result is not None:
            result["relay_ratio"] = result["events_per_s"] / relay["events_per_s"]
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "parameters": {
            "room_version": version,
            "members": args.members,
            "events": args.events,
            "small_rooms": args.small_rooms,
            "forked_members": args.forked_members,
            "forked_events": args.forked_events,
            "batch_size": BATCH,
        },
        "relay": relay,
        "scenarios": [linear_result, small_result, forked_result],
        "synapse_in_memory": synapse,
        "fork": fork,
        "fork_big": fork_big,
        "queries": queries,
        "federation_queries": federation,
        "isolation": isolation,
    }


def _table(report: dict[str, Any]) -> str:
    """Every figure of the run in one table, throughput against the run's bare relay."""
    relay = report["relay"]
    p = report["parameters"]
    head = (
        f"{'':<44} {'events':>7} {'events/s':>9} {'x relay':>8} {'triples/st':>10} "
        f"{'blocks':>6} {'B/event':>8} {'RSS MiB':>8}  RSS by quarter"
    )
    lines = [head, "-" * len(head)]
    lines.append(
        f"{'bare relay (NATS in, NATS out)':<44} {relay['events']:>7} "
        f"{relay['events_per_s']:>9,.0f} {1:>8.3f}"
    )
    labels = {
        "linear": f"linear room, {p['members']:,} members",
        "small_rooms": f"small rooms, {p['small_rooms']} of ~24 events",
        "forked": f"forked room, {p['forked_members']:,} members",
    }
    for s in report["scenarios"]:
        lines.append(
            f"{labels.get(s['scenario'], s['scenario']):<44} {s['events']:>7} "
            f"{s['events_per_s']:>9,.0f} {s['relay_ratio']:>8.3f} "
            f"{s['triples_per_state_event']:>10.2f} {s['max_blocks_per_snapshot']:>6} "
            f"{s['sqlite_bytes_per_event']:>8,.0f} {s['peak_rss_mib']:>8.1f}  "
            f"{s['rss_mib_by_quarter']}"
        )
        if s["dead_letters"]:
            lines.append(f"  !! {s['dead_letters']} dead letters: {s['worker_stderr_tail'][-500:]}")
    forked = report["scenarios"][-1]
    outcomes = {k: v for k, v in forked["outcomes"].items() if k != "outputs"}
    lines.append(
        f"  (forked: {forked['merges']} merges; "
        + ", ".join(f"{v} {k}" for k, v in sorted(outcomes.items()))
        + ")"
    )
    synapse = report.get("synapse_in_memory")
    if synapse is None:
        lines.append(f"{'Synapse in memory, same forked events':<44} (oracle extra not installed)")
    else:
        lines.append(
            f"{'Synapse in memory, same forked events':<44} {synapse['events']:>7} "
            f"{synapse['events_per_s']:>9,.0f} {synapse['relay_ratio']:>8.3f}  "
            "(auth + state res only; no I/O)"
        )
    for fork in (report["fork"], report["fork_big"]):
        lines += [
            "",
            f"fork in a {fork['members']:,}-member room ({fork['state_entries']:,} state "
            "entries), through the pipeline in process, per event (CPU ms in brackets):",
        ]
        for name, label in (
            ("fork_event", "event creating the second extremity"),
            ("event_while_forked", "49 joins on one branch while forked"),
            ("topic_while_forked", "topic change on that branch"),
            ("merge_event", "event merging the branches"),
        ):
            figures = fork[name]
            lines.append(
                f"  {label:<42} {figures['milliseconds']:>9.1f} ms "
                f"({figures['cpu_milliseconds']:.1f}) "
                f"{figures['triples_written']:>5.1f} triples written"
            )
    q = report["queries"]
    lines += [
        "",
        f"state query, {q['entries']:,}-entry room ({q['reply_bytes']:,} byte reply):",
        f"  cold p50 {q['cold']['p50_ms']:.1f} ms, p99 {q['cold']['p99_ms']:.1f} ms; "
        f"warm p50 {q['warm']['p50_ms']:.1f} ms, p99 {q['warm']['p99_ms']:.1f} ms; "
        f"one key p50 {q['filtered']['p50_ms']:.2f} ms; "
        f"service time (warm) {q['service_warm_avg_ms']:.1f} ms",
    ]
    lines.append(big_state_line(q["big_state"]))
    fed = report["federation_queries"]
    lines += ["", f"federation queries, {fed['members']:,}-member room ({fed['events']:,} events):"]
    for name, label in (
        ("backfill_100", "backfill, 100 events"),
        ("backfill_100_filtered", "backfill, 100 events, filtered for a server"),
        ("missing_events_20", "missing_events, 20 events, filtered"),
        ("state_ids_at_event", "state_and_auth_chain, IDs, at an event"),
        ("state_ids_for_new_event", "state_and_auth_chain, IDs, for new event"),
    ):
        figures = fed[name]
        lines.append(
            f"  {label:<44} p50 {figures['p50_ms']:8.2f} ms   p99 {figures['p99_ms']:8.2f} ms"
        )
    lines += ["", isolation_table(report["isolation"])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--room-version", default="10")
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--small-rooms", type=int, default=300)
    parser.add_argument("--forked-members", type=int, default=800)
    parser.add_argument("--forked-events", type=int, default=5000)
    parser.add_argument(
        "--no-synapse", action="store_true", help="skip Synapse's in-memory yardstick"
    )
    parser.add_argument("--fork-members", type=int, default=10_000)
    parser.add_argument("--fork-big-members", type=int, default=100_000)
    parser.add_argument("--query-entries", type=int, default=10_000)
    parser.add_argument("--query-samples", type=int, default=200)
    parser.add_argument("--big-state-members", type=int, default=100_000)
    parser.add_argument("--federation-samples", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="a small run for a smoke test")
    args = parser.parse_args(argv)
    # Building the forked room runs the pipeline in this process: its logs are not news.
    configure_logging(LogConfig(level="warning"))
    if args.quick:
        args.members, args.events, args.small_rooms = 200, 2000, 20
        args.forked_members, args.forked_events = 100, 500
        args.fork_members, args.query_entries, args.query_samples = 500, 500, 20
        args.fork_big_members = 2_000
        args.big_state_members = 15_000
        args.federation_samples = 10
    report = asyncio.run(main_async(args))
    print(_table(report))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
