"""The events of a large forked room for `make bench`: several servers, netsplits, honest
and adversarial senders, ~15 % merges, soft-fails and rejections, in a room where hundreds
of members have joined.

`python -m bench.forked_room [--members 800] [--events 5000]` builds (or loads) the room
and prints its outcome counts.

The activity comes from the random forked-room generator of the oracle tests
(`tests.oracle.forked_rooms.ForkedRoom`, which needs no Synapse): its eight actors race
power changes, bans and kicks on both sides of netsplits. Here `members` quieter users
join after the bootstrap and then mostly talk, change their display names, leave and
come back, so the room's state has the size of a busy public room and membership
events reach the conflicted sets. The generator needs, for each event, what a server
made of it; that truth is the worker's own pipeline, in memory of this process, on a
temporary SQLite file (the oracle sweep checks that it agrees with Synapse's).

Building costs as much as processing the room once, so the PDUs are cached on disk,
keyed by the parameters and this file's and the generator's source.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack

import tests.oracle.forked_rooms as forked_rooms
from tests.oracle.forked_rooms import ACTORS, SERVERS, Actor, ForkedRoom, StateMap
from worker.bus.subjects import Subjects
from worker.config import LogConfig
from worker.logs import configure_logging
from worker.matrix.events import JOIN_RULES, MEMBER, Event
from worker.pipeline import Disposition, InboundMessage, Pipeline
from worker.storage.database import Database
from worker.storage.schema import STATUS_ACCEPTED, STATUS_REJECTED, STATUS_SOFT_FAILED

CACHE = Path(tempfile.gettempdir()) / "roomserver-bench-cache"
OUTCOMES = {
    STATUS_ACCEPTED: "accepted",
    STATUS_SOFT_FAILED: "soft_failed",
    STATUS_REJECTED: "rejected",
}
#: Share of events sent by the quieter members once they have joined.
MEMBER_SHARE = 0.55
#: Forward extremities are looked for among this many latest events only (see `_tips`).
TIP_WINDOW = 300


class BigForkedRoom(ForkedRoom):
    """`ForkedRoom` with `members` extra users on the same servers."""

    def __init__(self, room_version: str, seed: int, members: int) -> None:
        self.members = [Actor(f"@member{i}:{SERVERS[i % len(SERVERS)]}") for i in range(members)]
        super().__init__(room_version, seed)

    def _bootstrap_events(self) -> list[Event]:
        events = super()._bootstrap_events()
        return events + [self.builder.join(m.user_id) for m in self.members]

    def _tips(self, actor: Actor) -> list[str]:
        """`ForkedRoom._tips` over the latest `TIP_WINDOW` events: the generator's own
        walk over every known event grows with the square of the room. An event is
        followed only by later ones, so within the window the answer is the same; an
        older branch nobody built on is simply not extended any more."""
        known = self.known[actor.server]
        recent = [e for e in self.order[-TIP_WINDOW:] if e in known]

        def usable(eid: str) -> bool:
            if eid not in self.rejected:
                return True
            return actor.stubborn and self.builder.event(eid).sender == actor.user_id

        followed = {p for c in recent if usable(c) for p in self.builder.event(c).prev_event_ids}
        return [e for e in recent if usable(e) and e not in followed]

    def _random_event(self) -> Event:
        """A member's event (`MEMBER_SHARE`), else an actor's as `ForkedRoom` picks them,
        except that an actor with nothing it wants to do leaves the turn to a member.

        Over thousands of events the actors tend to leave, get banned or lock the room
        (invite only); left to `ForkedRoom`, they would then send little but events that
        are rejected, and the room would stop being a forked room with some spam in it."""
        rng = self.rng
        if rng.random() >= MEMBER_SHARE:
            for _ in range(20):
                actor = rng.choice(ACTORS)
                self._sync(actor.server)
                prevs, state = self._parents(actor)
                if self._wants_to_act(actor, state):
                    return self._action(actor, prevs, state)
        return self._member_event()

    def _wants_to_act(self, actor: Actor, state: StateMap) -> bool:
        """An adversarial actor outside a room it may not join tries only now and then."""
        if actor.adversarial and not self._may_join(actor, state):
            return self.rng.random() < 0.1
        return super()._wants_to_act(actor, state)

    def _may_join(self, actor: Actor, state: StateMap) -> bool:
        membership = self._content(state, (MEMBER, actor.user_id)).get("membership")
        if membership in ("join", "invite"):
            return True
        public = self._content(state, (JOIN_RULES, "")).get("join_rule") == "public"
        return public and membership != "ban"

    def _member_event(self) -> Event:
        """A member in the room, or one who may join, acts; an actor if none is found."""
        for _ in range(20):
            actor = self.rng.choice(self.members)
            self._sync(actor.server)
            prevs, state = self._parents(actor)
            if self._may_join(actor, state):
                return self._member_action(actor, prevs, state)
        return super()._random_event()

    def _member_action(self, actor: Actor, prevs: list[str], state: StateMap) -> Event:
        """A quiet member talks, renames itself, leaves, or (re)joins when outside."""
        b, me, roll = self.builder, actor.user_id, self.rng.random()
        opts: dict[str, Any] = {"prev_events": prevs, "state": state}
        if self._content(state, (MEMBER, me)).get("membership") != "join":
            return b.join(me, **opts)
        if roll < 0.85:
            return b.message(me, f"hello {len(self.order)}", **opts)
        if roll < 0.96:
            return b.join(me, content={"displayname": f"m{len(self.order)}"}, **opts)
        return b.leave(me, **opts)


class PipelineTruth:
    """What the worker's pipeline makes of each event, one event per batch."""

    def __init__(self, directory: Path) -> None:
        self.db = Database(directory)
        self.pipeline = Pipeline(self.db, Subjects())
        self.seq = 0
        self.room_id = ""
        #: Messages the pipeline has written to its outbox (one or more per input).
        self.outputs = 0

    def receive(self, event: Event) -> tuple[str, StateMap, StateMap]:
        """(outcome, state before, state after) of `event`."""
        self.seq += 1
        self.room_id = event.room_id
        data = msgpack.packb({"event": dict(event.pdu)}, use_bin_type=True)
        message = InboundMessage(Subjects().input(event.room_id), data, self.seq)
        [disposition] = self.pipeline.process_batch([message])
        if disposition is not Disposition.ACK:
            raise RuntimeError(f"the pipeline did not take {event.event_id}: {disposition}")
        self.outputs += len(self.db.outbox.pending())
        self.db.outbox.delete_through(2**62)
        row = self.db.get_event_row(event.event_id)
        assert row is not None
        return (
            OUTCOMES[row.status],
            self._state(row.before_snapshot_nid),
            self._state(row.after_snapshot_nid),
        )

    def state_before(self, prev_event_ids: list[str]) -> StateMap:
        """The resolved state after `prev_event_ids`, as the pipeline would compute it."""
        rows = [self.db.get_event_row(e) for e in prev_event_ids]
        snapshots = sorted({r.after_snapshot_nid for r in rows if r is not None})
        room = self.db.get_room(self.room_id)
        assert room is not None
        return self.pipeline.to_state_map(self.pipeline.resolve_snapshots(room, snapshots))

    def _state(self, snapshot: int) -> StateMap:
        return self.pipeline.to_state_map(dict(self.pipeline.state.load(snapshot)))

    def close(self) -> None:
        self.db.close()


def _cache_key(room_version: str, members: int, events: int, seed: int) -> str:
    source = inspect.getsource(forked_rooms) + Path(__file__).read_text("utf-8")
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    return f"forked-v{room_version}-m{members}-e{events}-s{seed}-{digest}"


def build_forked_room(
    room_version: str = "10", members: int = 800, events: int = 5000, seed: int = 1
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """PDUs of the room, in the order they were built, and the outcome counts (plus
    "outputs": how many output messages the worker writes for them)."""
    path = CACHE / (_cache_key(room_version, members, events, seed) + ".msgpack")
    if path.exists():
        cached = msgpack.unpackb(path.read_bytes(), raw=False)
        return cached["pdus"], cached["outcomes"]
    room = BigForkedRoom(room_version, seed, members)
    outcomes: Counter[str] = Counter()
    pdus = []
    # In memory when there is a /dev/shm: one commit per event need not wait for a disk.
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="forked-build-", dir=shm) as tmp:
        truth = PipelineTruth(Path(tmp))
        room.resolve = truth.state_before
        try:
            for _ in range(len(room._bootstrap) + events):
                event = room.next_event()
                outcome, before, after = truth.receive(event)
                room.observe(event, outcome, before, after)
                outcomes[outcome] += 1
                pdus.append(dict(event.pdu))
            outcomes["outputs"] = truth.outputs
        finally:
            truth.close()
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_bytes(msgpack.packb({"pdus": pdus, "outcomes": dict(outcomes)}))
    partial.replace(path)
    return pdus, dict(outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--room-version", default="10")
    parser.add_argument("--members", type=int, default=800)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    configure_logging(LogConfig(level="warning"))
    start = time.perf_counter()
    pdus, outcomes = build_forked_room(args.room_version, args.members, args.events, args.seed)
    merges = sum(1 for p in pdus if len(p["prev_events"]) > 1)
    print(f"{len(pdus)} events ({merges} merges), {outcomes}, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
