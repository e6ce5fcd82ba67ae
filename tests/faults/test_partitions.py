"""Partitions with real processes: `roomserver run` supervising two partition workers
against a real nats-server, one of them SIGKILLed mid-feed, then a rebuild from the
stream that `roomserver diff` finds identical to the live partition.

The reference is the fault suite's undisturbed single-worker run of the same feed: with
partitions, every room must end exactly as it did there, each room held by the one
partition NATS's hash gives it, every output published once and in its room's order.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.harness.feed import Feed
from tests.harness.procs import cli
from tests.harness.sites import (
    RunResult,
    Site,
    compare_partitions,
    partitioned,
    partitions_settled,
    site,
)
from worker.config import partition_directory

PARTITIONS = 2


async def test_two_partitions_end_like_one_worker_despite_a_sigkill(
    tmp_path: Path, feed: Feed, reference: RunResult
) -> None:
    async with site(tmp_path) as s:
        partitioned(s, PARTITIONS)
        count = str(PARTITIONS)
        supervisor = s.worker()
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
            await supervisor.until(lambda: partitions_settled(s), "both partitions settled", 90)
            assert await supervisor.stop(signal.SIGINT) == 0, supervisor.log_tail()
        finally:
            supervisor.ensure_dead()

        await compare_partitions(s, reference, feed)

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
