"""Randomized forked rooms through the pipeline, against a reference model built from the
pure rules: every event's state before and after, and whether it is rejected.

The model is the spec's definition, written plainly: the state before an event is the
resolution of the states after its prev events; the event is rejected if it fails against
its own auth events or that state; the state after it adds the event unless rejected.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.harness.pipeline import ALICE, Harness
from worker.matrix.auth import AuthError, check_auth, validate_auth_events
from worker.matrix.events import CREATE, Event, StateKey, StateMap
from worker.matrix.state_res import resolve_state
from worker.pipeline import Disposition
from worker.storage.schema import STATUS_REJECTED, STATUS_SOFT_FAILED

USERS = [ALICE, *(f"@u{i}:example.org" for i in range(4)), "@x:other.org", "@y:other.org"]


class Model:
    def __init__(self, h: Harness) -> None:
        self.h = h
        self.events: dict[str, Event] = {}
        self.after: dict[str, StateMap] = {}
        self.before: dict[str, StateMap] = {}
        self.rejected: set[str] = set()

    def state_before(self, prevs: list[str]) -> StateMap:
        if not prevs:
            return {}
        if len(prevs) == 1:
            return dict(self.after[prevs[0]])
        return resolve_state(
            self.h.builder.room_version,
            [self.after[p] for p in prevs],
            self.events.get,
            is_rejected=self.rejected.__contains__,
        )

    def add(self, event: Event, before: StateMap) -> None:
        self.events[event.event_id] = event
        self.before[event.event_id] = before
        ok = self._passes(event, before)
        if not ok:
            self.rejected.add(event.event_id)
        after = dict(before)
        if ok and event.is_state:
            after[event.key] = event.event_id
        self.after[event.event_id] = after

    def _passes(self, event: Event, before: StateMap) -> bool:
        auth = {eid: self.events.get(eid) for eid in event.auth_event_ids}
        try:
            validate_auth_events(event, auth, self.rejected)
            auth_state: dict[StateKey, Event] = {
                e.key: e for e in auth.values() if e is not None and e.is_state
            }
            if event.room_version.room_id_from_create and event.type != CREATE:
                auth_state[(CREATE, "")] = self.events["$" + event.room_id[1:]]
            check_auth(event, auth_state)
            check_auth(event, {k: self.events[v] for k, v in before.items()})
        except AuthError:
            return False
        return True


def _random_event(h: Harness, rng: random.Random, prevs: list[str], before: StateMap) -> Event:
    b = h.builder
    sender = rng.choice(USERS)
    target = rng.choice(USERS)
    options = {"prev_events": prevs, "state": before}
    action = rng.choice(
        ["join", "join", "leave", "ban", "kick", "power", "topic", "message", "rules", "unban"]
    )
    if action == "join":
        return b.join(sender, **options)
    if action == "leave":
        return b.leave(sender, **options)
    if action == "ban":
        return b.ban(sender, target, **options)
    if action == "unban":
        return b.member(sender, target, "leave", **options)
    if action == "kick":
        return b.kick(sender, target, **options)
    if action == "power":
        users = {ALICE: 100, target: rng.choice([0, 50, 100])}
        return b.power_levels(sender, {"users": users}, **options)
    if action == "topic":
        return b.state_event(sender, "m.room.topic", "", {"topic": f"t{rng.random()}"}, **options)
    if action == "rules":
        return b.join_rules(sender, rng.choice(["public", "invite"]), **options)
    return b.message(sender, "hi", **options)


@pytest.mark.parametrize("version", ["1", "2", "10", "11", "12"])
def test_random_forked_room_matches_the_reference_model(tmp_path: Path, version: str) -> None:
    rng = random.Random(f"forks-{version}")
    h = Harness(tmp_path, version=version)
    model = Model(h)
    order: list[str] = []
    for event in h.bootstrap:
        model.add(event, model.state_before(list(event.prev_event_ids)))
        order.append(event.event_id)
    for _ in range(80):
        pool = [eid for eid in order[-8:] if eid not in model.rejected] or [order[3]]
        prevs = rng.sample(pool, k=min(len(pool), rng.choice([1, 1, 2, 3])))
        before = model.state_before(prevs)
        event = _random_event(h, rng, prevs, before)
        model.add(event, before)
        order.append(event.event_id)
        assert h.send(event) is Disposition.ACK

    rejected = soft_failed = 0
    for event_id in order:
        row = h.db.get_event_row(event_id)
        assert row is not None, event_id
        assert (
            h.pipeline.to_state_map(h.pipeline.state.load(row.before_snapshot_nid))
            == (model.before[event_id])
        ), event_id
        assert (
            h.pipeline.to_state_map(h.pipeline.state.load(row.after_snapshot_nid))
            == (model.after[event_id])
        ), event_id
        assert (row.status == STATUS_REJECTED) == (event_id in model.rejected), event_id
        rejected += row.status == STATUS_REJECTED
        soft_failed += row.status == STATUS_SOFT_FAILED
    # The generator must exercise both outcomes for the comparison to mean something.
    assert rejected > 5
    assert len(order) - rejected > 20
