"""State-query latency: a room whose state has 10,000 entries, asked over NATS.

`python -m bench.query_bench [--entries N] [--samples S] [--restarts R]` (starts its own
nats-server), or `bench_queries(url, workdir)` from `bench.run`.

The room (create, the creator's join, power levels, join rules and N-4 more joins) is
fed to a worker running as its own process (`roomserver run`, as in production, so its
garbage collector sees only its own heap); then the `state` query for the room's whole
current state is timed from this process through the real request/reply path
(client → nats-server → worker → reply → client, decoding included):

- cold: the first query after the worker starts, nothing decoded yet (the worker is
  restarted R times; SQLite's files stay in the OS's cache);
- warm: the same query repeated;
- filtered: warm, only the power levels (what a client about to send an event asks);
- service: the worker's own average processing time for the warm queries, from the
  micro service's stats (`$SRV.STATS`): the part that is not NATS or the client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgpack
from nats.aio.client import Client as NATS

from bench.common import worker_env
from worker.bus.connection import connect
from worker.bus.server import EmbeddedNatsServer
from worker.bus.streams import ensure_streams
from worker.client import RoomserverClient, RoomserverError
from worker.config import load_config
from worker.query import SERVICE_NAME
from worker.synthetic import linear_room

ROOM_VERSION = "10"
#: State entries of the bootstrap: create, the creator's join, power levels, join rules.
BOOTSTRAP_STATE = 4


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def _summary(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {
        "p50_ms": round(_percentile(ms, 0.50), 3),
        "p99_ms": round(_percentile(ms, 0.99), 3),
        "samples": len(ms),
    }


@contextlib.contextmanager
def _worker_process(env: dict[str, str], workdir: Path, log: IO[bytes]) -> Iterator[None]:
    """`roomserver run` in its own process, stopped with SIGTERM as an operator would."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run"],
        env={**os.environ, **env},
        cwd=workdir,
        stdout=log,
        stderr=log,
    )
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _until_answering(client: RoomserverClient, timeout: float = 60.0) -> None:
    """Poll until the worker's query service answers (it starts with the worker)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.rooms()
            return
        except RoomserverError as exc:
            if exc.code != "unavailable" or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def _service_stats(nc: NATS, prefix: str, window: float = 0.5) -> dict[str, Any]:
    """The `state` endpoint's stats from the one roomserver service using `prefix`.

    `$SRV.STATS.roomserver` is answered by every running instance, so replies are
    gathered for `window` seconds and picked by the subject prefix in their metadata.
    """
    replies: list[dict[str, Any]] = []
    inbox = nc.new_inbox()

    async def collect(msg: Any) -> None:
        replies.append(json.loads(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(f"$SRV.STATS.{SERVICE_NAME}", b"", reply=inbox)
    await asyncio.sleep(window)
    await sub.unsubscribe()
    for reply in replies:
        if reply.get("metadata", {}).get("subject_prefix") == prefix:
            return next(e for e in reply["endpoints"] if e["name"] == "state")
    raise RuntimeError(f"no roomserver service with subject prefix {prefix} answered")


async def bench_queries(
    url: str, workdir: Path, *, entries: int = 10_000, samples: int = 200, restarts: int = 10
) -> dict[str, Any]:
    """Feed a room with `entries` state entries to a worker and time the state query.

    Returns {"entries", "reply_bytes", "feed_seconds", "cold": {p50_ms, p99_ms,
    samples}, "warm": {...}, "filtered": {...}, "service_warm_avg_ms"}.
    """
    if restarts < 1 or samples < 1:
        raise ValueError("restarts and samples must be at least 1")
    tag = uuid.uuid4().hex[:10]
    env = worker_env(
        url, workdir / f"query-{tag}", f"q{tag}", streams_storage="memory", log_level="warning"
    )
    config = load_config(None, env)
    pdus = list(linear_room(ROOM_VERSION, members=entries - BOOTSTRAP_STATE, events=0, seed=7))
    room_id = pdus[1]["room_id"]
    nc = await connect(config.nats, name="query-bench")
    js = nc.jetstream()
    log_path = workdir / f"query-{tag}.log"
    try:
        await ensure_streams(js, config)
        client = RoomserverClient(nc, config, timeout=60)
        for start in range(0, len(pdus), 2000):
            await client.publish_many(pdus[start : start + 2000])
        count = len(pdus)
        # The PDUs are not needed any more: a client's heap is small, and a large one
        # would make this process's garbage collections part of the figures.
        del pdus
        gc.collect()
        cold: list[float] = []
        with open(log_path, "ab") as log:
            fed = time.perf_counter()
            with _worker_process(env, workdir, log):
                await _until_answering(client)
                while (await js.stream_info(config.streams.output)).state.messages < count:
                    await asyncio.sleep(0.05)
                feed_seconds = time.perf_counter() - fed
            for _ in range(restarts):
                with _worker_process(env, workdir, log):
                    await _until_answering(client)
                    began = time.perf_counter()
                    state = await client.state(room_id)
                    cold.append(time.perf_counter() - began)
                    if len(state.entries) != entries:
                        raise RuntimeError(
                            f"the room's state has {len(state.entries)} entries, not {entries}"
                        )
            with _worker_process(env, workdir, log):
                await _until_answering(client)
                reply = await client.request("state", {"room_id": room_id})
                reply_bytes = len(msgpack.packb(reply, use_bin_type=True))
                before = await _service_stats(nc, config.streams.subject_prefix)
                warm: list[float] = []
                for _ in range(samples):
                    began = time.perf_counter()
                    await client.state(room_id)
                    warm.append(time.perf_counter() - began)
                after = await _service_stats(nc, config.streams.subject_prefix)
                filtered: list[float] = []
                for _ in range(samples):
                    began = time.perf_counter()
                    await client.state(room_id, keys=[("m.room.power_levels", "")])
                    filtered.append(time.perf_counter() - began)
    finally:
        for stream in (config.streams.input, config.streams.output, config.streams.deadletter):
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
        await nc.close()
    service_ns = (after["processing_time"] - before["processing_time"]) / max(
        1, after["num_requests"] - before["num_requests"]
    )
    return {
        "entries": entries,
        "reply_bytes": reply_bytes,
        "feed_seconds": round(feed_seconds, 2),
        "cold": _summary(cold),
        "warm": _summary(warm),
        "filtered": _summary(filtered),
        "service_warm_avg_ms": round(service_ns / 1e6, 3),
    }


async def _main(entries: int, samples: int, restarts: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="query-bench-") as tmp:
        async with EmbeddedNatsServer(Path(tmp) / "nats", port=0) as server:
            return await bench_queries(
                server.url, Path(tmp), entries=entries, samples=samples, restarts=restarts
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=10, help="cold samples")
    args = parser.parse_args()
    result = asyncio.run(_main(args.entries, args.samples, args.restarts))
    print(f"state query, {result['entries']} entries, reply {result['reply_bytes']} bytes")
    for name in ("cold", "warm", "filtered"):
        figures = result[name]
        print(
            f"  {name:<9} p50 {figures['p50_ms']:8.3f} ms   p99 {figures['p99_ms']:8.3f} ms"
            f"   ({figures['samples']} samples)"
        )
    print(f"  service   avg {result['service_warm_avg_ms']:8.3f} ms   (warm, inside the worker)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
