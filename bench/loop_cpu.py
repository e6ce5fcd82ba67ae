"""CPU per input of the worker's NATS side, beside the bare relay's, in one process.

    python -m bench.loop_cpu [--events N] [--repeat K] [--worker]
    python -m bench.run --only loop_cpu

The worker's event loop fetches inputs, settles them (worker.runner.common.settle) and
publishes each batch's outputs (worker.runner.outbox_relay.OutboxRelay) with their
dedup IDs; the bare relay (bench.common.bench_relay) does fetch, publish and ack per
message with nothing else. Both run here, alternately, over the same messages on a real
nats-server, without the pipeline: what differs is only how NATS is used. Each figure is
this process's CPU time (time.process_time, so not the nats-server's) per message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from bench.common import (
    BATCH,
    Prepared,
    WorkerProcess,
    prepare_inputs,
    publish_inputs,
    worker_env,
)
from worker.bus.connection import connect
from worker.bus.consumer import PullConsumer
from worker.bus.publisher import Outgoing, Publisher
from worker.bus.server import EmbeddedNatsServer
from worker.bus.streams import ensure_streams
from worker.bus.subjects import Subjects
from worker.config import Config, LogConfig, load_config
from worker.logs import configure_logging
from worker.metrics import WorkerMetrics
from worker.runner.common import NatsLink, settle
from worker.runner.outbox_relay import OutboxRelay
from worker.runner.pipeline_handle import LocalPipeline
from worker.storage.cache_budget import DEFAULT_CACHE_MB
from worker.storage.database import OutboxRow
from worker.synthetic import linear_room


def _config(url: str, tag: str, storage: Path) -> Config:
    return load_config(
        None,
        {
            "ROOMSERVER_NATS_SERVERS": url,
            "ROOMSERVER_STORAGE_PATH": str(storage),
            "ROOMSERVER_STREAMS_SUBJECT_PREFIX": tag,
            "ROOMSERVER_STREAMS_INPUT": f"{tag.upper()}_INPUT",
            "ROOMSERVER_STREAMS_OUTPUT": f"{tag.upper()}_OUTPUT",
            "ROOMSERVER_STREAMS_DEADLETTER": f"{tag.upper()}_DEADLETTER",
            "ROOMSERVER_CONSUMER_DURABLE": tag,
            "ROOMSERVER_CONSUMER_BATCH_SIZE": str(BATCH),
        },
    )


def _inputs(subjects: Subjects, count: int) -> list[Outgoing]:
    """`count` inputs of ~600 bytes over 8 rooms, each with its dedup ID."""
    body = b"x" * 600
    return [
        Outgoing(subjects.input(f"!room{i % 8}:example.org"), body, f"$event{i:012d}")
        for i in range(count)
    ]


async def _prepare(config: Config, count: int) -> None:
    nc = await connect(config.nats)
    js = nc.jetstream()
    await ensure_streams(js, config)
    publisher = Publisher(js, config)
    items = _inputs(Subjects(config.streams.subject_prefix), count)
    for start in range(0, len(items), 2000):
        await publisher.publish_many(items[start : start + 2000])
    await nc.close()


async def worker_side(config: Config, count: int, workdir: Path) -> dict[str, float]:
    """The worker's NATS parts: PullConsumer, settle, OutboxRelay (outputs with IDs)."""
    await _prepare(config, count)
    nc = await connect(config.nats)
    js = nc.jetstream()
    metrics = WorkerMetrics(counters=lambda: None, held=lambda: None, parked=lambda: 0, health=dict)
    pipeline = LocalPipeline(metrics)
    await pipeline.open(workdir, Subjects().prefix, 60.0, DEFAULT_CACHE_MB)
    relay = OutboxRelay(pipeline, Publisher(js, config), NatsLink(nc), metrics)
    consumer = PullConsumer(js, config)
    await consumer.start()
    stop = asyncio.Event()
    await relay.drain(stop)
    subjects = Subjects(config.streams.subject_prefix)
    moved = seq = 0
    cpu, wall = time.process_time(), time.perf_counter()
    while moved < count:
        messages = await consumer.fetch_batch()
        rows = []
        for message in messages:
            seq += 1
            room = message.subject.rsplit(".", 1)[1]
            rows.append(
                OutboxRow(seq, f"{subjects.prefix}.output.{room}", f"out{seq}", message.data)
            )
        await settle(messages, [Msg.ack] * len(messages))
        await relay.publish(rows, stop)
        moved += len(messages)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await consumer.close()
    await nc.close()
    await pipeline.stop()
    return {"messages": moved, "cpu_us": cpu / moved * 1e6, "wall_us": wall / moved * 1e6}


async def relay_side(config: Config, count: int) -> dict[str, float]:
    """bench.common.bench_relay's loop: fetch, publish without IDs (nats-py's
    publish_async), ack one by one."""
    await _prepare(config, count)
    nc = await connect(config.nats)
    js = nc.jetstream()
    subjects = Subjects(config.streams.subject_prefix)
    sub = await js.pull_subscribe(
        subjects.input_wildcard, durable=config.consumer.durable, stream=config.streams.input
    )
    moved = 0
    cpu, wall = time.process_time(), time.perf_counter()
    while moved < count:
        try:
            msgs = await sub.fetch(BATCH, timeout=1)
        except TimeoutError:
            continue
        futures = [
            await js.publish_async(
                f"{subjects.prefix}.output." + m.subject.rsplit(".", 1)[1], m.data
            )
            for m in msgs
        ]
        await asyncio.gather(*futures)
        for m in msgs:
            await m.ack()
        moved += len(msgs)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await nc.close()
    return {"messages": moved, "cpu_us": cpu / moved * 1e6, "wall_us": wall / moved * 1e6}


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of process `pid`, by thread name (the
    event loop's thread is the process's main one, named after the process)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        main = "main" if task.name == str(pid) else name
        out[main] = out.get(main, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


async def worker_threads(
    url: str, workdir: Path, items: list[Prepared], tag: str
) -> dict[str, Any]:
    """The worker process over `items`: CPU µs per input of each of its threads, from
    its readiness (consumer bound) until its output stream holds one output per input."""
    storage = workdir / f"data-{tag}"
    env = worker_env(url, storage, tag, consumer_batch_size=str(BATCH), log_level="info")
    config = load_config(None, env)
    nc = await publish_inputs(config, items)
    js = nc.jetstream()
    worker = WorkerProcess(env)
    try:
        while worker.ready_at is None:
            worker.check_alive()
            await asyncio.sleep(0.01)
        before = thread_cpu(worker.proc.pid)
        while (await js.stream_info(config.streams.output)).state.messages < len(items):
            worker.check_alive()
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - worker.ready_at
        after = thread_cpu(worker.proc.pid)
    finally:
        worker.stop()
    await nc.close()
    per_event = {
        name: (seconds - before.get(name, 0.0)) / len(items) * 1e6
        for name, seconds in after.items()
    }
    return {
        "events": len(items),
        "events_per_s": len(items) / elapsed,
        "cpu_us_per_event": {k: round(v, 1) for k, v in per_event.items() if v > 0},
        "process_cpu_us_per_event": round(sum(per_event.values()), 1),
    }


async def bench_loop_cpu(url: str, workdir: Path, count: int, repeat: int) -> dict[str, Any]:
    """Worker side and relay, alternately `repeat` times each; every run's figures."""
    runs: dict[str, list[dict[str, float]]] = {"worker_side": [], "relay": []}
    for i in range(repeat):
        storage = workdir / f"w{i}"
        storage.mkdir(parents=True, exist_ok=True)
        runs["worker_side"].append(
            await worker_side(_config(url, f"lw{i}", storage), count, storage)
        )
        runs["relay"].append(await relay_side(_config(url, f"lr{i}", storage), count))
    best = {key: min(r["cpu_us"] for r in value) for key, value in runs.items()}
    return {"runs": runs, "best_cpu_us": best}


async def bench_event_loop(url: str, workdir: Path, events: int, members: int) -> dict[str, Any]:
    """`make bench`'s loop_cpu scenario: the NATS side beside the relay (3 alternate
    runs of `events` messages each), and the worker process over a linear room of
    `members` members and `events` events, its CPU per input by thread."""
    workdir.mkdir(parents=True, exist_ok=True)
    nats_side = await bench_loop_cpu(url, workdir / "nats-side", events, 3)
    pdus = list(linear_room("10", members=members, events=events, seed=1))
    threads = await worker_threads(url, workdir, prepare_inputs(pdus, "10"), "lt")
    return {"nats_side": nats_side, "worker": threads}


def summary(report: dict[str, Any]) -> str:
    """One line: CPU µs per input of the NATS side and of the relay, and of the worker's
    event loop (its main thread) and whole process."""
    best = report["nats_side"]["best_cpu_us"]
    worker = report["worker"]
    return (
        f"NATS side {best['worker_side']:.1f} µs/input vs relay {best['relay']:.1f}; "
        f"worker event loop {worker['cpu_us_per_event'].get('main', 0.0):.1f} µs/input, "
        f"process {worker['process_cpu_us_per_event']:.1f}"
    )


async def _main(count: int, repeat: int, worker: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="loop-cpu-") as tmp:
        async with EmbeddedNatsServer(Path(tmp) / "nats", port=0) as server:
            if worker:
                pdus = list(linear_room("10", members=2000, events=count, seed=1))
                items = prepare_inputs(pdus, "10")
                return await worker_threads(server.url, Path(tmp), items, "lt")
            return await bench_loop_cpu(server.url, Path(tmp), count, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--worker", action="store_true", help="the worker process over the linear room instead"
    )
    args = parser.parse_args()
    configure_logging(LogConfig(level="warning"))
    print(json.dumps(asyncio.run(_main(args.events, args.repeat, args.worker)), indent=1))


if __name__ == "__main__":
    main()
