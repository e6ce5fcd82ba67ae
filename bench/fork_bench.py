"""A fork in a 10,000-member room through the real pipeline and SQLite file.

`python -m bench.fork_bench [--members N]`

The room is built with valid events (hashes, IDs, auth events) and fed to the pipeline;
then two branches grow from the same event: one bans three members and promotes a
moderator, the other lets fifty people join and changes the topic. The figures are the
time the pipeline takes, and the state triples it writes, for the event that creates the
second forward extremity (the room's current state is resolved over both), for a later
event on one branch (resolved again), and for the event that merges the branches (the
state before it is resolved). A resolved state is stored as a delta on the closest
snapshot, so the triples stay few in a large room.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

from worker.app import GC_GEN0_THRESHOLD
from worker.bus.subjects import Subjects
from worker.matrix.builder import RoomBuilder
from worker.matrix.events import Event
from worker.pipeline import Disposition, InboundMessage, Pipeline
from worker.storage.database import Database

ADMIN = "@admin:example.org"
MOD = "@mod:example.org"


def _feed(pipeline: Pipeline, events: list[Event], subject: str, seq: list[int]) -> None:
    messages = []
    for event in events:
        seq[0] += 1
        body = msgpack.packb({"event": dict(event.pdu)}, use_bin_type=True)
        messages.append(InboundMessage(subject, body, seq[0]))
    for start in range(0, len(messages), 256):
        results = pipeline.process_batch(messages[start : start + 256])
        assert all(r is Disposition.ACK for r in results)
        pipeline.db.outbox.delete_through(2**62)


def _timed(pipeline: Pipeline, event: Event, subject: str, seq: list[int]) -> dict[str, float]:
    stats = pipeline.state.stats
    before = stats.triples_written
    start = time.perf_counter()
    _feed(pipeline, [event], subject, seq)
    return {
        "milliseconds": (time.perf_counter() - start) * 1000,
        "triples_written": stats.triples_written - before,
    }


def bench_fork(members: int = 10_000, room_version: str = "10") -> dict[str, Any]:
    # The worker process runs with this collector setting (worker.app); so does this.
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    with tempfile.TemporaryDirectory(prefix="fork-bench-") as tmp:
        db = Database(Path(tmp))
        pipeline = Pipeline(db, Subjects())
        builder = RoomBuilder(room_version, ADMIN, keep_history=True)
        setup = builder.bootstrap()
        users = [f"@user{i}:example.org" for i in range(members)]
        setup += [builder.join(user) for user in users]
        setup.append(builder.join(MOD))
        subject = Subjects().input(builder.room_id)
        seq = [0]
        start = time.perf_counter()
        _feed(pipeline, setup, subject, seq)
        build_seconds = time.perf_counter() - start
        base = setup[-1].event_id

        left: list[Event] = []
        prev = base
        for user in users[:3]:
            left.append(builder.ban(ADMIN, user, prev_events=[prev]))
            prev = left[-1].event_id
        left.append(
            builder.power_levels(ADMIN, {"users": {ADMIN: 100, MOD: 50}}, prev_events=[prev])
        )
        right: list[Event] = []
        prev = base
        for i in range(50):
            right.append(builder.join(f"@new{i}:other.org", prev_events=[prev]))
            prev = right[-1].event_id
        topic = builder.state_event(
            ADMIN, "m.room.topic", "", {"topic": "forked"}, prev_events=[prev]
        )
        merge = builder.message(ADMIN, "merged", prev_events=[left[-1].event_id, topic.event_id])
        _feed(pipeline, left, subject, seq)
        fork = _timed(pipeline, right[0], subject, seq)
        _feed(pipeline, right[1:], subject, seq)
        forked = _timed(pipeline, topic, subject, seq)
        merged = _timed(pipeline, merge, subject, seq)
        state_size = len(pipeline.state.load(db.get_event_row(merge.event_id).before_snapshot_nid))  # type: ignore[union-attr]
        db.close()
    return {
        "members": members,
        "room_version": room_version,
        "state_entries": state_size,
        "build_events_per_s": len(setup) / build_seconds,
        "fork_event": fork,
        "event_while_forked": forked,
        "merge_event": merged,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--room-version", default="10")
    args = parser.parse_args()
    print(bench_fork(args.members, args.room_version))


if __name__ == "__main__":
    main()
