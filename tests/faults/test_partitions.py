"""Partitions with real processes: `roomserver run` supervising two partition workers
against a real nats-server, one of them SIGKILLed mid-feed, then a rebuild from the
stream that `roomserver diff` finds identical to the live partition.

The reference is the fault suite's undisturbed single-worker run of the same feed: with
partitions, every room must end exactly as it did there, each room held by the one
partition NATS's hash gives it, every output published once and in its room's order.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections import defaultdict
from pathlib import Path

from tests.harness.feed import Feed
from tests.harness.procs import cli, dump_database, read_stream
from tests.harness.sites import RunResult, Site, site
from worker.bus.partitions import partition_of_room
from worker.config import PartitionsConfig, partition_directory

PARTITIONS = 2


def _partitioned(s: Site) -> Site:
    s.config = dataclasses.replace(s.config, partitions=PartitionsConfig(PARTITIONS))
    return s


async def _all_settled(s: Site) -> bool:
    """Every partition's consumer has had and acknowledged all its inputs (its ack
    floor is its own last input, not the stream's)."""
    for k in range(PARTITIONS):
        durable = f"{s.config.consumer.durable}-{k}"
        try:
            info = await s.js.consumer_info(s.config.streams.input, durable)
        except Exception:
            return False
        if info.num_pending or info.num_ack_pending or not info.delivered.stream_seq:
            return False
    return True


def _by_subject(outputs: list) -> dict[str, list[tuple[str | None, bytes]]]:  # type: ignore[type-arg]
    rooms: dict[str, list[tuple[str | None, bytes]]] = defaultdict(list)
    for message in outputs:
        rooms[message.subject].append((message.msg_id, message.data))
    return rooms


async def test_two_partitions_end_like_one_worker_despite_a_sigkill(
    tmp_path: Path, feed: Feed, reference: RunResult
) -> None:
    async with site(tmp_path) as s:
        _partitioned(s)
        count = str(PARTITIONS)
        supervisor = s.worker(partitions_count=count)
        try:
            await s.publish(feed)
            # Kill partition 0's worker as soon as it has started processing.
            await supervisor.until(
                lambda: supervisor.logged("partition worker started") >= PARTITIONS,
                "both partition workers started",
            )
            started = [e for e in supervisor.lines if e.get("event") == "partition worker started"]
            victim = next(int(e["pid"]) for e in started if e["partition"] == 0)
            await supervisor.until(
                lambda: supervisor.logged("worker ready") >= 1, "a partition worker ready"
            )
            os.kill(victim, signal.SIGKILL)
            await supervisor.until_logged("partition worker died; restarting it")
            await supervisor.until(lambda: _all_settled(s), "both partitions settled", 90)
            assert await supervisor.stop(signal.SIGINT) == 0, supervisor.log_tail()
        finally:
            supervisor.ensure_dead()

        prefix = s.config.streams.subject_prefix
        events: dict[str, tuple[object, ...]] = {}
        rooms: dict[str, tuple[object, ...]] = {}
        for k in range(PARTITIONS):
            dump = dump_database(partition_directory(s.storage, k))
            assert dump.outbox == 0
            for room_id in dump.rooms:
                assert partition_of_room(room_id, PARTITIONS) == k, room_id
            assert not events.keys() & dump.events.keys()
            events.update(dump.events)
            rooms.update(dump.rooms)
        assert rooms == reference.dump.rooms
        assert events == reference.dump.events

        # Every output once, in its room's order, the same bytes as one worker sent.
        outputs = await read_stream(s.js, s.config.streams.output, f"{prefix}.output.>")
        assert _by_subject(outputs) == _by_subject(reference.outputs)
        dead = await read_stream(s.js, s.config.streams.deadletter, f"{prefix}.deadletter.>")
        assert sorted((m.subject, m.msg_id, m.data) for m in dead) == sorted(
            (m.subject, m.msg_id, m.data) for m in reference.dead_letters
        )

        # The stream is the source of truth: a rebuild of partition 1 equals the live one.
        live = partition_directory(s.storage, 1)
        rebuilt = tmp_path / "rebuilt-1"
        env = s.env(partitions_count=count)
        code, out = _cli(s, env, "rebuild", "--partition", "1", "--into", str(rebuilt))
        assert code == 0, out
        code, out = _cli(s, env, "diff", str(live), str(rebuilt))
        assert code == 0, out
        # ... and diff does see a difference: the two partitions hold different rooms.
        code, out = _cli(s, env, "diff", str(live), str(partition_directory(s.storage, 0)))
        assert code == 1 and "only in" in out, out


def _cli(s: Site, env: dict[str, str], *args: str) -> tuple[int, str]:
    return cli(env, s.base / "cwd", *args)
