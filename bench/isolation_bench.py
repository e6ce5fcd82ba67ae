"""Room isolation: small rooms' publish-to-output latency while a forked 10,000-member
room keeps the same worker busy.

`python -m bench.isolation_bench [--quick] [--dump PATH]`

One worker process (`roomserver run`) on a real nats-server. The forked room is built
(10,000 members joined) before the clock starts; then two branches advance side by side
with state events (a topic change on one, a display-name change on the other), and every
few rounds an event merges them, after which they split again: every event of the room
is processed while it has two forward extremities, so each one resolves state over both.
Its events are fed in a closed loop, `window` of them outstanding at any time (a new one
is published as soon as an output for an older one arrives), so the room always has work
waiting: the worker is never idle, and what the small rooms get is what the scheduler
gives them.

Meanwhile many small rooms receive events paced at `rate` events/s in total. Each small
event's latency is the time from just before it is published to the arrival of its first
output on the output stream, both taken by this process's clock. Reported: p50, p99 and
max of that latency, and the forked room's rate (its outputs per second) over the same
window.

The events are cached on disk (building the 10,000 joins costs seconds), keyed by the
parameters and the source of this file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bench.common import (
    Prepared,
    WorkerProcess,
    percentile,
    prepare_inputs,
    process_tree,
    publish_inputs,
    worker_env,
)
from worker.bus.server import EmbeddedNatsServer
from worker.bus.subjects import Subjects
from worker.config import Config, load_config
from worker.matrix.builder import RoomBuilder
from worker.matrix.events import Event, StateMap
from worker.synthetic import linear_room

CACHE = Path(tempfile.gettempdir()) / "roomserver-bench-cache"
ADMIN = "@admin:example.org"
#: Rounds (one event on each branch) between two merges of the forked room.
MERGE_EVERY = 4
#: A small room's first events (its creation and joins) are fed before the clock starts.
SMALL_SETUP = 8
#: How often the small rooms' pacer publishes what is due.
TICK = 0.005


def forked_events(version: str, members: int, rounds: int) -> tuple[list[Event], list[Event]]:
    """(setup: the room with `members` joined, the stream that keeps it forked)."""
    builder = RoomBuilder(version, ADMIN, keep_history=False)
    setup = builder.bootstrap()
    users = [f"@user{i}:example.org" for i in range(members)]
    setup += [builder.join(user) for user in users]
    base: StateMap = builder.current_state
    left_state, right_state = dict(base), dict(base)
    left = right = setup[-1].event_id
    stream: list[Event] = []
    for i in range(rounds):
        topic = builder.state_event(
            ADMIN, "m.room.topic", "", {"topic": f"left {i}"}, prev_events=[left], state=left_state
        )
        left_state[topic.key] = left = topic.event_id
        user = users[i % members]
        rename = builder.join(
            user, content={"displayname": f"right {i}"}, prev_events=[right], state=right_state
        )
        right_state[rename.key] = right = rename.event_id
        stream += [topic, rename]
        if i % MERGE_EVERY == MERGE_EVERY - 1:
            # The left branch changes only the topic, the right only members: the
            # merged state is the right's with the left's topic.
            merged = {**right_state, topic.key: topic.event_id}
            merge = builder.message(ADMIN, f"merge {i}", prev_events=[left, right], state=merged)
            stream.append(merge)
            left_state, right_state = dict(merged), dict(merged)
            left = right = merge.event_id
    return setup, stream


def build_inputs(
    version: str, members: int, rounds: int, rooms: int, per_room: int
) -> dict[str, Any]:
    """The prepared inputs: forked setup and stream, and each small room's events."""
    source = Path(__file__).read_text("utf-8")
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    key = f"isolation-v{version}-m{members}-r{rounds}-s{rooms}x{per_room}-{digest}"
    path = CACHE / f"{key}.msgpack"
    if path.exists():
        cached: dict[str, Any] = msgpack.unpackb(path.read_bytes(), raw=False)
        return cached
    setup, stream = forked_events(version, members, rounds)
    small = [
        prepare_inputs(
            list(linear_room(version, members=3, events=per_room, seed=5000 + r)), version
        )
        for r in range(rooms)
    ]
    inputs = {
        "forked_setup": prepare_inputs([dict(e.pdu) for e in setup], version),
        "forked_stream": prepare_inputs([dict(e.pdu) for e in stream], version),
        "small": small,
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_bytes(msgpack.packb(inputs, use_bin_type=True))
    partial.replace(path)
    # Round-tripped like a cached load, so both paths hand out the same shapes.
    result: dict[str, Any] = msgpack.unpackb(path.read_bytes(), raw=False)
    return result


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time so far of a process and its descendants (the worker's
    pipeline process)."""
    ticks = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class Watcher:
    """Arrival time of each event's first output, from a core subscription."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.forked: set[str] = set()
        self.forked_done = asyncio.Event()
        self.forked_outputs = 0

    async def on_output(self, msg: Msg) -> None:
        now = time.perf_counter()
        body = msgpack.unpackb(msg.data, raw=False)
        event_id = body.get("event_id")
        if event_id is None or event_id in self.arrived:
            return
        self.arrived[event_id] = now
        if event_id in self.forked:
            self.forked_outputs += 1
            self.forked_done.set()


async def _wait_outputs(nc: NATS, config: Config, count: int, timeout: float) -> None:
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    while (await js.stream_info(config.streams.output)).state.messages < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker did not write {count} outputs in {timeout:.0f} s")
        await asyncio.sleep(0.1)


async def _feed_forked(
    nc: NATS,
    subjects: Subjects,
    stream: list[Prepared],
    watcher: Watcher,
    window: int,
    stop: asyncio.Event,
) -> int:
    """Keep `window` forked events outstanding until `stop`; returns how many were sent."""
    sent = 0
    while not stop.is_set() and sent < len(stream):
        outstanding = sent - watcher.forked_outputs
        while outstanding < window and sent < len(stream):
            room_id, body, event_id = stream[sent]
            watcher.forked.add(event_id)
            await nc.publish(subjects.input(room_id), body, headers={"Nats-Msg-Id": event_id})
            sent += 1
            outstanding += 1
        watcher.forked_done.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watcher.forked_done.wait(), 1.0)
    return sent


async def _pace_small(
    nc: NATS, subjects: Subjects, rooms: list[list[Prepared]], rate: float, seconds: float
) -> dict[str, float]:
    """Publish the small rooms' events round-robin at `rate` per second for `seconds`;
    returns the publish time of each."""
    published: dict[str, float] = {}
    cursors = [SMALL_SETUP] * len(rooms)
    start = time.perf_counter()
    sent = room = 0
    while (now := time.perf_counter()) - start < seconds:
        due = int((now - start) * rate)
        while sent < due:
            for _ in range(len(rooms)):
                room = (room + 1) % len(rooms)
                if cursors[room] < len(rooms[room]):
                    break
            else:
                return published
            room_id, body, event_id = rooms[room][cursors[room]]
            cursors[room] += 1
            published[event_id] = time.perf_counter()
            await nc.publish(subjects.input(room_id), body, headers={"Nats-Msg-Id": event_id})
            sent += 1
        await asyncio.sleep(TICK)
    return published


async def bench_isolation(
    url: str,
    workdir: Path,
    *,
    members: int = 10_000,
    seconds: float = 20.0,
    rate: float = 1000.0,
    rooms: int = 100,
    window: int = 64,
    version: str = "10",
    tag: str = "iso",
    extra_env: dict[str, str] | None = None,
    dump: Path | None = None,
) -> dict[str, Any]:
    """Run the scenario once; returns the small rooms' latency figures and the forked
    room's rate."""
    per_room = int(rate * seconds / rooms * 1.2) + 20
    # Enough forked events for ~1,000 events/s, more than the worker does with them.
    rounds = int(seconds * 1000 / (2 + 1 / MERGE_EVERY)) + window
    built = time.perf_counter()
    inputs = await asyncio.to_thread(build_inputs, version, members, rounds, rooms, per_room)
    build_seconds = time.perf_counter() - built
    small: list[list[Prepared]] = [[tuple(i) for i in r] for r in inputs["small"]]
    forked_setup: list[Prepared] = [tuple(i) for i in inputs["forked_setup"]]
    forked_stream: list[Prepared] = [tuple(i) for i in inputs["forked_stream"]]

    storage = workdir / f"data-{tag}"
    # The worker's metrics, for its transactions in the window.
    extra = {"metrics_listen_port": str(_free_port()), **(extra_env or {})}
    env = worker_env(url, storage, f"b{tag}", log_level="warning", **extra)
    port = env["ROOMSERVER_METRICS_LISTEN_PORT"]
    config = load_config(None, env)
    subjects = Subjects(config.streams.subject_prefix)
    setup = forked_setup + [item for r in small for item in r[:SMALL_SETUP]]
    nc = await publish_inputs(config, setup)
    worker = WorkerProcess(env)
    try:
        setup_started = time.perf_counter()
        await _wait_outputs(nc, config, len(setup), timeout=900)
        setup_seconds = time.perf_counter() - setup_started
        watcher = Watcher()
        sub = await nc.subscribe(f"{config.streams.subject_prefix}.output.>", cb=watcher.on_output)
        stop = asyncio.Event()
        forked_task = asyncio.ensure_future(
            _feed_forked(nc, subjects, forked_stream, watcher, window, stop)
        )
        started = time.perf_counter()
        cpu_before = _cpu_seconds(worker.proc.pid)
        transactions_before = await asyncio.to_thread(_transactions, port)
        published = await _pace_small(nc, subjects, small, rate, seconds)
        forked_in_window = watcher.forked_outputs
        elapsed = time.perf_counter() - started
        worker_cpu = _cpu_seconds(worker.proc.pid) - cpu_before
        transactions_after = await asyncio.to_thread(_transactions, port)
        stop.set()
        forked_sent = await forked_task
        deadline = time.monotonic() + 120
        while any(e not in watcher.arrived for e in published):
            worker.check_alive()
            if time.monotonic() > deadline:
                missing = sum(1 for e in published if e not in watcher.arrived)
                raise TimeoutError(f"{missing} small-room events got no output")
            await asyncio.sleep(0.05)
        await sub.unsubscribe()
    finally:
        worker.stop()
        await nc.close()
    latencies = [(watcher.arrived[e] - t) * 1000 for e, t in published.items()]
    if dump is not None:
        # Each small event: when it was published (seconds from the start of the clock)
        # and its latency (ms), to see whether the tail is start-up, periodic or spread.
        # With its event ID and the clock's start (the system's monotonic clock, as
        # the worker's), to line them up with timestamps taken in the worker.
        timeline = [
            [round(t - started, 4), round(lat, 2), event_id]
            for (event_id, t), lat in zip(published.items(), latencies, strict=True)
        ]
        dump.write_text(json.dumps({"started": started, "small": timeline}))
    return {
        "members": members,
        "small_rooms": rooms,
        "small_rate_target": rate,
        "small_rate": len(published) / elapsed,
        "small_events": len(published),
        "seconds": elapsed,
        "forked_window": window,
        "forked_sent": forked_sent,
        # True if the forked room ran out of events before the end (figures then unfair).
        "forked_exhausted": forked_sent >= len(forked_stream),
        "forked_events_per_s": forked_in_window / elapsed,
        "worker_cpu_share": worker_cpu / elapsed,
        # Transactions committed in the window, and their COMMITs' mean time: a small
        # input that shares the forked turn's commit (worker.runner.fairness) makes
        # fewer of them.
        "transactions_per_s": (transactions_after[0] - transactions_before[0]) / elapsed,
        "commit_ms_mean": _mean_ms(transactions_before, transactions_after),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50), 2),
            "p90": round(percentile(latencies, 0.90), 2),
            "p99": round(percentile(latencies, 0.99), 2),
            "max": round(max(latencies), 2),
        },
        "setup_seconds": setup_seconds,
        "build_seconds": build_seconds,
        "worker_env": extra_env or {},
    }


def _free_port() -> int:
    """A TCP port free now (for the worker's metrics endpoint)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _transactions(port: str) -> tuple[float, float]:
    """The worker's committed transactions so far, and the seconds their COMMITs took
    (its metrics endpoint on `port`)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    values = dict.fromkeys(
        ("roomserver_commit_seconds_count", "roomserver_commit_seconds_sum"), 0.0
    )
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in values:
            values[name] = float(value)
    return values["roomserver_commit_seconds_count"], values["roomserver_commit_seconds_sum"]


def _mean_ms(before: tuple[float, float], after: tuple[float, float]) -> float:
    count = after[0] - before[0]
    return (after[1] - before[1]) / count * 1000 if count else 0.0


def table(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    return (
        f"isolation: {result['small_events']} small-room events at "
        f"{result['small_rate']:,.0f}/s in {result['small_rooms']} rooms beside a forked "
        f"{result['members']:,}-member room ({result['forked_window']} outstanding):\n"
        f"  small-room publish-to-output  p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, "
        f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms; "
        f"forked room {result['forked_events_per_s']:,.0f} events/s; "
        f"worker CPU {result['worker_cpu_share']:.0%}; "
        f"{result['transactions_per_s']:,.0f} transactions/s, "
        f"commit {result['commit_ms_mean']:.1f} ms"
    )


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    extra = dict(kv.split("=", 1) for kv in args.env)
    with tempfile.TemporaryDirectory(prefix="isolation-bench-") as tmp:
        workdir = Path(tmp)
        async with EmbeddedNatsServer(workdir / "nats", port=0) as server:
            return await bench_isolation(
                server.url,
                workdir,
                members=args.members,
                seconds=args.seconds,
                rate=args.rate,
                rooms=args.rooms,
                window=args.window,
                extra_env=extra,
                dump=args.dump,
            )


def quick_parameters() -> dict[str, Any]:
    """The `--quick` sizes (a smoke test of a few seconds)."""
    return {"members": 1000, "seconds": 4.0, "rooms": 20, "window": 32}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="a small run for a smoke test")
    parser.add_argument(
        "--dump", type=Path, help="write each small event's publish time and latency (JSON)"
    )
    parser.add_argument(
        "--env", action="append", default=[], help="worker setting KEY=VALUE (no ROOMSERVER_)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in quick_parameters().items():
            setattr(args, key, value)
    from worker.config import LogConfig
    from worker.logs import configure_logging

    configure_logging(LogConfig(level="warning"))
    result = asyncio.run(_main(args))
    print(table(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
