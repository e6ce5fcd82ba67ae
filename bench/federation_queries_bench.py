"""Federation-query latency in a 10,000-member room, asked over NATS.

`python -m bench.federation_queries_bench [--members N] [--events E] [--samples S]`
(starts its own nats-server and a worker process, as `bench.query_bench` does).

The room: create, the creator's join, power levels, join rules, N joins, then E mixed
events (`worker.synthetic.linear_room`). Timed from this process through the real
request/reply path, warm (after one untimed call):

- backfill: 100 events from the newest, unfiltered and filtered for a server with a
  user in the room (history visibility as the synthetic room sets it);
- missing_events: 20 events behind the newest;
- state_and_auth_chain: IDs only, at the newest event (`/state_ids`) and for a new
  event on the forward extremities (`/send_join`'s state).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import worker_env
from bench.query_bench import _summary, _until_answering, _worker_process
from worker.bus.connection import connect
from worker.bus.server import EmbeddedNatsServer
from worker.bus.streams import ensure_streams
from worker.client import RoomserverClient
from worker.config import load_config
from worker.matrix.hashes import compute_event_id
from worker.matrix.room_versions import get_room_version
from worker.synthetic import linear_room

ROOM_VERSION = "10"


async def _time(samples: int, ask: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    await ask()
    took: list[float] = []
    for _ in range(samples):
        began = time.perf_counter()
        await ask()
        took.append(time.perf_counter() - began)
    return _summary(took)


async def bench_federation(
    url: str, workdir: Path, *, members: int = 10_000, events: int = 300, samples: int = 50
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    env = worker_env(
        url, workdir / f"fed-{tag}", f"f{tag}", streams_storage="memory", log_level="warning"
    )
    config = load_config(None, env)
    pdus = list(linear_room(ROOM_VERSION, members=members, events=events, seed=7))
    version = get_room_version(ROOM_VERSION)
    ids = [compute_event_id(pdu, version) for pdu in pdus]
    room_id = pdus[1]["room_id"]
    nc = await connect(config.nats, name="federation-bench")
    js = nc.jetstream()
    try:
        await ensure_streams(js, config)
        client = RoomserverClient(nc, config, timeout=60)
        for start in range(0, len(pdus), 2000):
            await client.publish_many(pdus[start : start + 2000])
        with open(workdir / f"fed-{tag}.log", "ab") as log, _worker_process(env, workdir, log):
            await _until_answering(client)
            while (await js.stream_info(config.streams.output)).state.messages < len(pdus):
                await asyncio.sleep(0.05)
            newest = ids[-1]
            latest = (await client.latest(room_id)).latest_event_ids
            result = {
                "members": members,
                "events": len(pdus),
                "backfill_100": await _time(
                    samples, lambda: client.backfill(room_id, [newest], limit=100)
                ),
                "backfill_100_filtered": await _time(
                    samples,
                    lambda: client.backfill(
                        room_id, [newest], limit=100, server_name="example.org"
                    ),
                ),
                "missing_events_20": await _time(
                    samples,
                    lambda: client.missing_events(
                        room_id, [ids[-40]], [newest], limit=20, server_name="example.org"
                    ),
                ),
                "state_ids_at_event": await _time(
                    samples,
                    lambda: client.state_and_auth_chain(room_id, event_id=newest, ids_only=True),
                ),
                "state_ids_for_new_event": await _time(
                    samples,
                    lambda: client.state_and_auth_chain(
                        room_id, prev_event_ids=latest, ids_only=True
                    ),
                ),
            }
    finally:
        for stream in (config.streams.input, config.streams.output, config.streams.deadletter):
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
        await nc.close()
    return result


async def _main(members: int, events: int, samples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="federation-bench-") as tmp:
        async with EmbeddedNatsServer(Path(tmp) / "nats", port=0) as server:
            return await bench_federation(
                server.url, Path(tmp), members=members, events=events, samples=samples
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    result = asyncio.run(_main(args.members, args.events, args.samples))
    print(f"federation queries, {result['members']} members, {result['events']} events")
    for name, figures in result.items():
        if isinstance(figures, dict):
            print(f"  {name:<24} p50 {figures['p50_ms']:8.3f} ms   p99 {figures['p99_ms']:8.3f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
