"""A fork in a large room (10,000 or 100,000 members) through the real pipeline and
SQLite file.

`python -m bench.fork_bench [--members N]`

The room is built with valid events (hashes, IDs, auth events) and fed to the pipeline
(once: the database and the branch events are cached in the temp dir); then two
branches grow from the same event: one bans three members and promotes a moderator,
the other lets fifty people join and changes the topic. The figures are the time the
pipeline takes, and the state triples it writes, per event: for the event that creates
the second forward extremity (the room's current state is resolved over both), for the
49 later joins on that branch and the topic change (each resolved again), and for the
event that merges the branches (the state before it is resolved). A resolved state is
stored as a delta on the closest snapshot, so the triples stay few in a large room.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import inspect
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

import worker.matrix.builder as builder_module
from worker.bus.subjects import Subjects
from worker.matrix.builder import RoomBuilder
from worker.matrix.events import CREATE, JOIN_RULES, MEMBER, POWER_LEVELS, Event
from worker.matrix.hashes import compute_event_id
from worker.matrix.room_versions import get_room_version
from worker.pipeline import Disposition, InboundMessage, Pipeline
from worker.runner.pipeline_process import GC_GEN0_THRESHOLD
from worker.storage.database import DB_FILENAME, Database

ADMIN = "@admin:example.org"
MOD = "@mod:example.org"
#: The room built once per size, version and source of this module and the builder.
CACHE = Path(tempfile.gettempdir()) / "roomserver-bench-cache"


def _feed(pipeline: Pipeline, pdus: list[dict[str, Any]], subject: str, seq: list[int]) -> None:
    for start in range(0, len(pdus), 256):
        _process(pipeline, pdus[start : start + 256], subject, seq)
        pipeline.db.outbox.delete_through(2**62)


def _process(pipeline: Pipeline, pdus: list[dict[str, Any]], subject: str, seq: list[int]) -> None:
    """One batch through the pipeline, committed (its outputs stay in the outbox)."""
    messages = []
    for pdu in pdus:
        seq[0] += 1
        body = msgpack.packb({"event": pdu}, use_bin_type=True)
        messages.append(InboundMessage(subject, body, seq[0]))
    results = pipeline.process_batch(messages)
    assert all(r is Disposition.ACK for r in results)


def _timed(
    pipeline: Pipeline, pdus: list[dict[str, Any]], subject: str, seq: list[int]
) -> dict[str, float]:
    """Per event: the mean time and state triples written over `pdus`, fed one by one."""
    stats = pipeline.state.stats
    before = stats.triples_written
    start, cpu_start = time.perf_counter(), time.process_time()
    for pdu in pdus:
        _process(pipeline, [pdu], subject, seq)
    return {
        "milliseconds": (time.perf_counter() - start) * 1000 / len(pdus),
        # CPU time of this process: what the figure is on a machine shared with others.
        "cpu_milliseconds": (time.process_time() - cpu_start) * 1000 / len(pdus),
        "triples_written": (stats.triples_written - before) / len(pdus),
    }


def _build_events(members: int, room_version: str) -> dict[str, Any]:
    """The room's PDUs: its setup (joins), then the two branches and the merge.

    Every event names its prev event and the few state entries its auth events come
    from, so building costs the same per event however large the room is (the
    builder's own state tracking copies the whole state for each state event)."""
    builder = RoomBuilder(room_version, ADMIN, keep_history=False)
    setup = builder.bootstrap()
    state = builder.current_state
    prev = setup[-1].event_id

    def auth_state(*keys: tuple[str, str], on: dict[tuple[str, str], str]) -> dict[Any, str]:
        needed = [(CREATE, ""), (POWER_LEVELS, ""), (JOIN_RULES, ""), (MEMBER, ADMIN), *keys]
        return {key: on[key] for key in needed if key in on}

    def add(event: Event, on: dict[tuple[str, str], str]) -> str:
        if event.is_state:
            on[event.key] = event.event_id
        return event.event_id

    users = [f"@user{i}:example.org" for i in range(members)]
    for user in [*users, MOD]:
        setup.append(
            builder.join(user, prev_events=[prev], state=auth_state((MEMBER, user), on=state))
        )
        prev = add(setup[-1], state)
    base = prev

    left: list[Event] = []
    left_state = dict(state)
    for user in users[:3]:
        left.append(
            builder.ban(
                ADMIN,
                user,
                prev_events=[prev],
                state=auth_state((MEMBER, user), on=left_state),
            )
        )
        prev = add(left[-1], left_state)
    left.append(
        builder.power_levels(
            ADMIN,
            {"users": {ADMIN: 100, MOD: 50}},
            prev_events=[prev],
            state=auth_state(on=left_state),
        )
    )
    right: list[Event] = []
    right_state = state
    prev = base
    for i in range(50):
        user = f"@new{i}:other.org"
        right.append(
            builder.join(user, prev_events=[prev], state=auth_state((MEMBER, user), on=right_state))
        )
        prev = add(right[-1], right_state)
    topic = builder.state_event(
        ADMIN,
        "m.room.topic",
        "",
        {"topic": "forked"},
        prev_events=[prev],
        state=auth_state(on=right_state),
    )
    add(topic, right_state)
    merge = builder.message(
        ADMIN,
        "merged",
        prev_events=[left[-1].event_id, topic.event_id],
        state=auth_state(on=right_state),
    )

    def pdus(events: list[Event]) -> list[dict[str, Any]]:
        return [dict(e.pdu) for e in events]

    return {
        "room_id": builder.room_id,
        "setup": pdus(setup),
        "left": pdus(left),
        "right": pdus(right),
        "topic": dict(topic.pdu),
        "merge": dict(merge.pdu),
    }


def _cache_key(members: int, room_version: str) -> str:
    source = Path(__file__).read_text("utf-8") + inspect.getsource(builder_module)
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    return f"fork-v{room_version}-m{members}-{digest}"


def _room(members: int, room_version: str, directory: Path) -> tuple[dict[str, Any], float]:
    """The built room's database in `directory` and its branch events, from the cache
    when it holds them; and the setup's events per second (when built now, else 0)."""
    cached = CACHE / _cache_key(members, room_version)
    if (cached / "events.msgpack").exists():
        shutil.copy(cached / DB_FILENAME, directory / DB_FILENAME)
        return msgpack.unpackb((cached / "events.msgpack").read_bytes(), raw=False), 0.0
    events = _build_events(members, room_version)
    db = Database(directory)
    pipeline = Pipeline(db, Subjects())
    start = time.perf_counter()
    _feed(pipeline, events["setup"], Subjects().input(events["room_id"]), [0])
    rate = len(events["setup"]) / (time.perf_counter() - start)
    db.close()
    partial = cached.with_suffix(".tmp")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    shutil.copy(directory / DB_FILENAME, partial / DB_FILENAME)
    del events["setup"]
    (partial / "events.msgpack").write_bytes(msgpack.packb(events, use_bin_type=True))
    shutil.rmtree(cached, ignore_errors=True)
    partial.replace(cached)
    return events, rate


def bench_fork(members: int = 10_000, room_version: str = "10") -> dict[str, Any]:
    # The worker process runs with this collector setting (worker.app); so does this.
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    with tempfile.TemporaryDirectory(prefix="fork-bench-") as tmp:
        events, build_rate = _room(members, room_version, Path(tmp))
        db = Database(Path(tmp))
        pipeline = Pipeline(db, Subjects())
        subject = Subjects().input(events["room_id"])
        # The sequence numbers only need to grow within this process.
        seq = [0]
        # Untimed: one branch (this also loads the room's state into the caches, as
        # a running worker has it).
        _feed(pipeline, events["left"], subject, seq)
        right = events["right"]
        fork = _timed(pipeline, right[:1], subject, seq)
        forked = _timed(pipeline, right[1:], subject, seq)
        topic = _timed(pipeline, [events["topic"]], subject, seq)
        merged = _timed(pipeline, [events["merge"]], subject, seq)
        merge_row = db.get_event_row(
            compute_event_id(events["merge"], get_room_version(room_version))
        )
        assert merge_row is not None
        state_size = len(pipeline.state.load(merge_row.before_snapshot_nid))
        db.close()
    return {
        "members": members,
        "room_version": room_version,
        "state_entries": state_size,
        "build_events_per_s": build_rate,
        "fork_event": fork,
        "event_while_forked": forked,
        "topic_while_forked": topic,
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
