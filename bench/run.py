"""`make bench`: every scenario of the worker in one table, against a bare relay of the
same run, on a real nats-server.

Scenarios (inputs are published before the clock starts, then drained):
- relay: a plain nats-py loop moving the linear room's messages from an input stream to
  an output stream, same batch size, no processing: the yardstick of every rate.
- linear: one room, 2,000 members join, then 50,000 mixed events.
- small rooms: many rooms of a few dozen events each.
- forked: a room of 800 members where servers split and merge (~15 % of events merge
  branches), with rejected and soft-failed events (bench/forked_room.py), 5,000 events.
- Synapse in memory: the same forked events through Synapse's own auth and state
  resolution functions, no database (bench/synapse_yardstick.py); only when the test-only
  `oracle` extra is installed.
- fork, fork_big: a fork in a 10,000- and a 100,000-member room through the pipeline
  (bench/fork_bench.py; the built rooms are cached).
- queries: state-query latency in a room with 10,000 state entries (bench/query_bench.py).
- big_state: the whole state of a 100,000-member room through the client (chunked
  replies) and `roomserver state` (bench/query_bench.py; the built room is cached).
- isolation: small rooms' publish-to-output latency at 1,000 events/s beside a busy forked
  10,000-member room in the same worker (bench/isolation_bench.py).
- federation queries: backfill, missing_events and state_and_auth_chain latency in the
  same size of room (bench/federation_queries_bench.py).
- partitions: 300 interleaved rooms on one worker and on two partition workers
  (bench/partitions_bench.py).
- memory: 1,000,000 events across 10,000 rooms through one worker, its RSS sampled every
  second (bench/memory_bench.py); about ten minutes of the run.

`--quick` runs every scenario at a small size (a couple of minutes), as a smoke test;
`--only KEY,KEY` runs some of them (the relay always runs).

A scenario is one `Scenario` entry in SCENARIOS below: its key (in the JSON report), the
coroutine that runs it and returns a JSON-able dict (or None when it cannot run here),
the function that turns that dict into table rows, and its size options with their
`--quick` values. Rows with a rate get their ratio to the relay here, in one place.

Workers run as their own processes (`roomserver run`), so a peak RSS is the worker's own.
The table is printed and the whole report written as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    BATCH,
    Prepared,
    WorkerProcess,
    bench_relay,
    prepare_inputs,
    publish_inputs,
    worker_env,
)
from bench.federation_queries_bench import bench_federation
from bench.fork_bench import bench_fork
from bench.forked_room import build_forked_room
from bench.isolation_bench import bench_isolation, quick_parameters
from bench.isolation_bench import table as isolation_table
from bench.loop_cpu import bench_event_loop
from bench.loop_cpu import summary as loop_cpu_summary
from bench.memory_bench import bench_memory
from bench.memory_bench import summary as memory_summary
from bench.partitions_bench import bench_partition_runs
from bench.query_bench import bench_big_state, bench_queries, big_state_line
from bench.synapse_yardstick import bench_synapse, synapse_available
from worker.bus.server import EmbeddedNatsServer
from worker.config import LogConfig, load_config
from worker.logs import configure_logging
from worker.synthetic import linear_room

RESULTS = Path(__file__).parent / "results"


# -- the table's shape ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table. A row with `events_per_s` gets its ratio to the relay."""

    label: str
    events: int | None = None
    events_per_s: float | None = None
    peak_rss_mib: float | None = None
    #: Anything else worth one line: latencies, triples, RSS over the run.
    figures: str = ""


@dataclass(frozen=True, slots=True)
class Option:
    """A size of a scenario, as a command-line option: full and `--quick` values."""

    name: str
    default: int
    quick: int
    help: str = ""

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


@dataclass
class Context:
    """What a scenario runs with: the shared nats-server, a scratch directory, the
    options, the relay's figures and what scenarios share (the forked room's events)."""

    url: str
    workdir: Path
    args: argparse.Namespace
    relay: dict[str, Any]
    shared: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    run: Callable[[Context], Awaitable[dict[str, Any] | None]]
    rows: Callable[[dict[str, Any] | None, argparse.Namespace], list[Row]]
    options: tuple[Option, ...] = ()


# -- the worker as a process over prepared inputs -----------------------------------


def _env(url: str, storage: Path, tag: str) -> dict[str, str]:
    return worker_env(url, storage, f"b{tag}", consumer_batch_size=str(BATCH), log_level="info")


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
    env = _env(url, storage, tag)
    config = load_config(None, env)
    nc = await publish_inputs(config, items)
    js = nc.jetstream()
    worker = WorkerProcess(env)
    samples: list[int] = []
    try:
        deadline = time.monotonic() + 3600
        while True:
            info = await js.stream_info(config.streams.output)
            samples.append(worker.rss_kib()[0])
            if info.state.messages >= expected:
                break
            worker.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not finish within an hour")
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - worker.started
        peak = worker.rss_kib()[1]
    finally:
        worker.stop()
    dead = (await js.stream_info(config.streams.deadletter)).state.messages
    await nc.close()
    with sqlite3.connect(storage / "roomserver.db") as conn:
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
        "startup_seconds": (worker.ready_at - worker.spawned) if worker.ready_at else None,
        "worker_stderr_tail": worker.log_tail()[-2000:] if dead else "",
    }


def _worker_rows(
    label: Callable[[argparse.Namespace], str],
) -> Callable[[dict[str, Any] | None, argparse.Namespace], list[Row]]:
    """The rows of a `bench_worker` scenario, labelled from the options."""

    def rows(s: dict[str, Any] | None, args: argparse.Namespace) -> list[Row]:
        assert s is not None
        return _worker_row(label(args), s)

    return rows


def _count_state(pdus: Sequence[dict[str, Any]]) -> int:
    return sum(1 for p in pdus if "state_key" in p)


def _worker_row(label: str, s: dict[str, Any]) -> list[Row]:
    rows = [
        Row(
            label,
            s["events"],
            s["events_per_s"],
            s["peak_rss_mib"],
            f"{s['triples_per_state_event']:.2f} triples/state event, "
            f"{s['max_blocks_per_snapshot']} blocks max, "
            f"{s['sqlite_bytes_per_event']:,.0f} B/event, RSS by quarter {s['rss_mib_by_quarter']}",
        )
    ]
    if s["dead_letters"]:
        rows.append(Row(f"  !! {s['dead_letters']} dead letters", figures=s["worker_stderr_tail"]))
    return rows


# -- the scenarios ------------------------------------------------------------------


def _linear_pdus(args: argparse.Namespace) -> list[dict[str, Any]]:
    return list(linear_room(args.room_version, members=args.members, events=args.events, seed=1))


async def _run_linear(ctx: Context) -> dict[str, Any]:
    pdus = _linear_pdus(ctx.args)
    items = prepare_inputs(pdus, ctx.args.room_version)
    return await bench_worker(ctx.url, "linear", items, _count_state(pdus), ctx.workdir, "lin")


async def _run_small(ctx: Context) -> dict[str, Any]:
    pdus: list[dict[str, Any]] = []
    for seed in range(ctx.args.small_rooms):
        pdus.extend(linear_room(ctx.args.room_version, members=5, events=20, seed=1000 + seed))
    items = prepare_inputs(pdus, ctx.args.room_version)
    return await bench_worker(
        ctx.url, "small_rooms", items, _count_state(pdus), ctx.workdir, "small"
    )


async def _forked_pdus(ctx: Context) -> tuple[list[dict[str, Any]], dict[str, int], float]:
    """The forked room (built once a run, cached on disk by bench/forked_room.py)."""
    if "forked" not in ctx.shared:
        started = time.perf_counter()
        pdus, outcomes = await asyncio.to_thread(
            build_forked_room,
            ctx.args.room_version,
            ctx.args.forked_members,
            ctx.args.forked_events,
        )
        ctx.shared["forked"] = (pdus, outcomes, time.perf_counter() - started)
    forked: tuple[list[dict[str, Any]], dict[str, int], float] = ctx.shared["forked"]
    return forked


async def _run_forked(ctx: Context) -> dict[str, Any]:
    pdus, outcomes, build_seconds = await _forked_pdus(ctx)
    result = await bench_worker(
        ctx.url,
        "forked",
        prepare_inputs(pdus, ctx.args.room_version),
        _count_state(pdus),
        ctx.workdir,
        "forked",
        outputs=outcomes["outputs"],
    )
    result["outcomes"] = outcomes
    result["merges"] = sum(1 for p in pdus if len(p["prev_events"]) > 1)
    result["members"] = ctx.args.forked_members
    result["build_seconds"] = build_seconds
    return result


def _forked_rows(s: dict[str, Any] | None, args: argparse.Namespace) -> list[Row]:
    assert s is not None
    rows = _worker_row(f"forked room, {args.forked_members:,} members", s)
    outcomes = {k: v for k, v in s["outcomes"].items() if k != "outputs"}
    detail = ", ".join(f"{v} {k}" for k, v in sorted(outcomes.items()))
    rows.append(Row(f"  ({s['merges']} merges; {detail})"))
    return rows


async def _run_synapse(ctx: Context) -> dict[str, Any] | None:
    if not synapse_available() or ctx.args.no_synapse:
        return None
    pdus, _, _ = await _forked_pdus(ctx)
    return await asyncio.to_thread(bench_synapse, pdus, ctx.args.room_version)


def _synapse_rows(s: dict[str, Any] | None, args: argparse.Namespace) -> list[Row]:
    label = "Synapse in memory, same forked events"
    if s is None:
        return [Row(label, figures="(not run: the oracle extra is not installed)")]
    return [Row(label, s["events"], s["events_per_s"], figures="auth + state res only; no I/O")]


async def _run_fork(ctx: Context) -> dict[str, Any]:
    return await asyncio.to_thread(bench_fork, ctx.args.fork_members, ctx.args.room_version)


async def _run_fork_big(ctx: Context) -> dict[str, Any]:
    return await asyncio.to_thread(bench_fork, ctx.args.fork_big_members, ctx.args.room_version)


def _fork_rows(fork: dict[str, Any] | None, args: argparse.Namespace) -> list[Row]:
    assert fork is not None
    rows = [
        Row(
            f"fork in a {fork['members']:,}-member room ({fork['state_entries']:,} state "
            "entries), pipeline in process, per event:"
        )
    ]
    for name, label in (
        ("fork_event", "event creating the second extremity"),
        ("event_while_forked", "49 joins on one branch while forked"),
        ("topic_while_forked", "topic change on that branch"),
        ("merge_event", "event merging the branches"),
    ):
        figures = fork[name]
        rows.append(
            Row(
                f"  {label}",
                figures=f"{figures['milliseconds']:.1f} ms (CPU {figures['cpu_milliseconds']:.1f} "
                f"ms), {figures['triples_written']:.1f} triples written",
            )
        )
    return rows


async def _run_queries(ctx: Context) -> dict[str, Any]:
    return await bench_queries(
        ctx.url, ctx.workdir, entries=ctx.args.query_entries, samples=ctx.args.query_samples
    )


def _query_rows(q: dict[str, Any] | None, args: argparse.Namespace) -> list[Row]:
    assert q is not None
    return [
        Row(f"state query, {q['entries']:,}-entry room ({q['reply_bytes']:,} B reply):"),
        Row(
            "  cold / warm / one key",
            figures=f"cold p50 {q['cold']['p50_ms']:.1f} ms, p99 {q['cold']['p99_ms']:.1f} ms; "
            f"warm p50 {q['warm']['p50_ms']:.1f} ms, p99 {q['warm']['p99_ms']:.1f} ms; "
            f"one key p50 {q['filtered']['p50_ms']:.2f} ms; "
            f"service (warm) {q['service_warm_avg_ms']:.1f} ms",
        ),
        Row(
            "  CPU per warm query (client, worker; client per floor request)",
            figures=f"{q['warm_cpu_ms']['client']:.2f} ms, {q['warm_cpu_ms']['worker']:.2f} ms; "
            f"{q.get('floor_client_cpu_ms', 0):.2f} ms",
        ),
        Row(
            "  warm split: reply not decoded / until the state is in hand / freeing it",
            figures=_split_figures(q),
        ),
        Row(
            "  warm, whole state used: every entry a StateEntry / all read from by_type",
            figures="; ".join(
                f"p50 {q[k]['p50_ms']:.2f} ms, p99 {q[k]['p99_ms']:.1f} ms"
                for k in ("warm_entries", "warm_read_all")
                if k in q
            ),
        ),
        Row(
            "  warm, state unchanged since the client's last ask",
            figures=f"p50 {q['unchanged']['p50_ms']:.2f} ms, p99 {q['unchanged']['p99_ms']:.1f} ms",
        ),
        Row(
            f"  floor: bare nats-py request/reply of {q['grouped_reply_bytes']:,} B "
            f"(of {q['reply_bytes']:,} B)",
            figures=f"p50 {q['floor']['p50_ms']:.1f} ms, p99 {q['floor']['p99_ms']:.1f} ms "
            f"(p50 {q['floor_triples']['p50_ms']:.1f}, p99 {q['floor_triples']['p99_ms']:.1f})",
        ),
    ]


def _split_figures(q: dict[str, Any]) -> str:
    """The warm query's split (bench/query_bench.py), p50/p99 each."""
    if "undecoded" not in q:
        return ""
    return "; ".join(
        f"{q[key]['p50_ms']:.2f}/{q[key]['p99_ms']:.1f} ms"
        for key in ("undecoded", "warm_to_value", "warm_freeing")
    )


async def _run_big_state(ctx: Context) -> dict[str, Any]:
    return await bench_big_state(ctx.url, ctx.workdir, members=ctx.args.big_state_members)


def _big_state_rows(big: dict[str, Any] | None, args: argparse.Namespace) -> list[Row]:
    assert big is not None
    return [Row(big_state_line(big))]


async def _run_isolation(ctx: Context) -> dict[str, Any]:
    return await bench_isolation(
        ctx.url, ctx.workdir, **(quick_parameters() if ctx.args.quick else {})
    )


def _isolation_rows(result: dict[str, Any] | None, args: argparse.Namespace) -> list[Row]:
    assert result is not None
    return [Row(line) for line in isolation_table(result).splitlines()]


async def _run_federation(ctx: Context) -> dict[str, Any]:
    return await bench_federation(
        ctx.url, ctx.workdir, members=ctx.args.query_entries, samples=ctx.args.federation_samples
    )


def _federation_rows(fed: dict[str, Any] | None, args: argparse.Namespace) -> list[Row]:
    assert fed is not None
    rows = [Row(f"federation queries, {fed['members']:,}-member room ({fed['events']:,} events):")]
    for name, label in (
        ("backfill_100", "backfill, 100 events"),
        ("backfill_100_filtered", "backfill, 100 events, filtered for a server"),
        ("missing_events_20", "missing_events, 20 events, filtered"),
        ("state_ids_at_event", "state_and_auth_chain, IDs, at an event"),
        ("state_ids_for_new_event", "state_and_auth_chain, IDs, for new event"),
    ):
        figures = fed[name]
        rows.append(
            Row(
                f"  {label}",
                figures=f"p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms",
            )
        )
    return rows


async def _run_partitions(ctx: Context) -> dict[str, Any]:
    a = ctx.args
    return await bench_partition_runs(
        ctx.url, ctx.workdir, rooms=a.partition_rooms, events=a.partition_events, partitions=2
    )


def _partition_rows(p: dict[str, Any] | None, args: argparse.Namespace) -> list[Row]:
    assert p is not None
    one, many = p["one_partition"], p["partitioned"]
    rows = [
        Row(f"partitions: {p['rooms']} rooms, 1 worker", one["events"], one["events_per_s"]),
        Row(
            f"partitions: {p['rooms']} rooms, {many['partitions']} partition workers",
            many["events"],
            many["events_per_s"],
            figures=f"speed-up {p['speed_up']:.2f}x on {p['cpus']} CPUs; "
            f"same outcomes and state: {p['same_outcomes']}",
        ),
    ]
    rows += [Row(f"  !! {line}") for line in p["differences"]]
    return rows


async def _run_memory(ctx: Context) -> dict[str, Any]:
    return await bench_memory(
        ctx.url,
        ctx.workdir,
        rooms=ctx.args.memory_rooms,
        per_room=100,
        version=ctx.args.room_version,
    )


def _memory_rows(m: dict[str, Any] | None, args: argparse.Namespace) -> list[Row]:
    assert m is not None
    rows = [
        Row(
            f"memory: {m['rooms']:,} rooms of {m['events_per_room']} events",
            m["events"],
            m["events_per_s"],
            m["peak_rss_mib"],
            memory_summary(m),
        )
    ]
    if m["dead_letters"]:
        rows.append(Row(f"  !! {m['dead_letters']} dead letters", figures=m["worker_stderr_tail"]))
    return rows


async def _run_loop_cpu(ctx: Context) -> dict[str, Any]:
    return await bench_event_loop(
        ctx.url, ctx.workdir / "loop-cpu", ctx.args.loop_cpu_events, ctx.args.members
    )


def _loop_cpu_rows(s: dict[str, Any] | None, args: argparse.Namespace) -> list[Row]:
    assert s is not None
    return [Row("CPU per input: NATS side, event loop", figures=loop_cpu_summary(s))]


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "linear",
        _run_linear,
        _worker_rows(lambda a: f"linear room, {a.members:,} members"),
        (Option("--members", 2000, 200), Option("--events", 50_000, 2000)),
    ),
    Scenario(
        "small_rooms",
        _run_small,
        _worker_rows(lambda a: f"small rooms, {a.small_rooms} of ~24 events"),
        (Option("--small-rooms", 300, 20),),
    ),
    Scenario(
        "forked",
        _run_forked,
        _forked_rows,
        (Option("--forked-members", 800, 100), Option("--forked-events", 5000, 500)),
    ),
    Scenario("synapse_in_memory", _run_synapse, _synapse_rows),
    Scenario(
        "loop_cpu", _run_loop_cpu, _loop_cpu_rows, (Option("--loop-cpu-events", 20_000, 2000),)
    ),
    Scenario("fork", _run_fork, _fork_rows, (Option("--fork-members", 10_000, 500),)),
    Scenario(
        "fork_big", _run_fork_big, _fork_rows, (Option("--fork-big-members", 100_000, 2_000),)
    ),
    Scenario(
        "queries",
        _run_queries,
        _query_rows,
        (Option("--query-entries", 10_000, 500), Option("--query-samples", 200, 20)),
    ),
    Scenario(
        "big_state",
        _run_big_state,
        _big_state_rows,
        (Option("--big-state-members", 100_000, 15_000),),
    ),
    Scenario("isolation", _run_isolation, _isolation_rows),
    Scenario(
        "federation_queries",
        _run_federation,
        _federation_rows,
        (Option("--federation-samples", 50, 10),),
    ),
    Scenario(
        "partitions",
        _run_partitions,
        _partition_rows,
        (Option("--partition-rooms", 300, 30), Option("--partition-events", 30, 20)),
    ),
    Scenario(
        "memory",
        _run_memory,
        _memory_rows,
        (Option("--memory-rooms", 10_000, 300, "rooms of 100 events each"),),
    ),
)


# -- the run ------------------------------------------------------------------------


async def main_async(args: argparse.Namespace, scenarios: Sequence[Scenario]) -> dict[str, Any]:
    relay_items = prepare_inputs(_linear_pdus(args), args.room_version)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="roomserver-bench-") as tmp:
        workdir = Path(tmp)
        async with EmbeddedNatsServer(workdir / "nats", port=0) as server:
            relay = await bench_relay(server.url, relay_items, "relay")
            ctx = Context(server.url, workdir, args, relay)
            for scenario in scenarios:
                results[scenario.key] = await scenario.run(ctx)
                if results[scenario.key] is not None and "events_per_s" in results[scenario.key]:
                    results[scenario.key]["relay_ratio"] = (
                        results[scenario.key]["events_per_s"] / relay["events_per_s"]
                    )
    options = [o for s in scenarios for o in s.options]
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "parameters": {
            "room_version": args.room_version,
            "batch_size": BATCH,
            "quick": args.quick,
            **{o.dest: getattr(args, o.dest) for o in options},
        },
        "relay": relay,
        "scenarios": results,
    }


def table(report: dict[str, Any], args: argparse.Namespace) -> str:
    """Every figure of the run in one table, each rate against the run's bare relay."""
    relay = report["relay"]
    rows = [Row("bare relay (NATS in, NATS out)", relay["events"], relay["events_per_s"])]
    for scenario in SCENARIOS:
        if scenario.key in report["scenarios"]:
            rows += scenario.rows(report["scenarios"][scenario.key], args)
    head = f"{'':<52} {'events':>9} {'events/s':>9} {'x relay':>8} {'RSS MiB':>8}  figures"
    lines = [head, "-" * len(head)]
    for row in rows:
        events = f"{row.events:>9,}" if row.events is not None else " " * 9
        rate = f"{row.events_per_s:>9,.0f}" if row.events_per_s is not None else " " * 9
        ratio = (
            f"{row.events_per_s / relay['events_per_s']:>8.3f}"
            if row.events_per_s is not None
            else " " * 8
        )
        rss = f"{row.peak_rss_mib:>8.1f}" if row.peak_rss_mib is not None else " " * 8
        lines.append(f"{row.label:<52} {events} {rate} {ratio} {rss}  {row.figures}".rstrip())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--room-version", default="10")
    parser.add_argument(
        "--no-synapse", action="store_true", help="skip Synapse's in-memory yardstick"
    )
    parser.add_argument("--quick", action="store_true", help="a small run for a smoke test")
    parser.add_argument(
        "--only", help="comma-separated scenario keys: " + ", ".join(s.key for s in SCENARIOS)
    )
    for option in (o for s in SCENARIOS for o in s.options):
        parser.add_argument(option.name, type=int, default=None, help=option.help or None)
    args = parser.parse_args(argv)
    for option in (o for s in SCENARIOS for o in s.options):
        if getattr(args, option.dest) is None:
            setattr(args, option.dest, option.quick if args.quick else option.default)
    chosen = SCENARIOS
    if args.only:
        keys = {k.strip() for k in args.only.split(",")}
        unknown = keys - {s.key for s in SCENARIOS}
        if unknown:
            parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
        chosen = tuple(s for s in SCENARIOS if s.key in keys)
    # Building the forked room runs the pipeline in this process: its logs are not news.
    configure_logging(LogConfig(level="warning"))
    report = asyncio.run(main_async(args, chosen))
    print(table(report, args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
