"""Two faults of forked rooms, through the pipeline on a real SQLite file.

1. State resolution v2/v2.1 may put into the resolved state an event that is in none of
   the states being resolved: the full conflicted set holds the auth difference (and in
   v2.1 the conflicted subgraph), and the spec's iterative auth checks may admit one of
   those events while rejecting the events the states hold. The pipeline must map such
   an event back to its NID instead of failing the input.
2. An accepted event whose prev event is soft-failed ends the forward extremity of
   that event's own prev events too, as Synapse computes extremities.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.pipeline import ALICE, Harness
from worker.matrix.events import Event
from worker.pipeline import Disposition
from worker.storage.schema import STATUS_ACCEPTED, STATUS_REJECTED, STATUS_SOFT_FAILED

oracle = pytest.importorskip("tests.oracle.synapse_state")

BOB = "@bob:other.org"
MEMBER = "m.room.member"


def _state(h: Harness, snapshot: int) -> dict[tuple[str, str], str]:
    return h.pipeline.to_state_map(h.pipeline.state.load(snapshot))


def _room_latest(h: Harness) -> set[str]:
    room = h.db.get_room(h.room_id)
    assert room is not None
    return set(h.db.event_ids_of(room.latest_event_nids).values())


def _synapse_resolution(h: Harness, *tips: str) -> dict[tuple[str, str], str]:
    version = h.builder.room_version.identifier
    events = {e.event_id: oracle.synapse_event(e.pdu, version) for e in h.builder.events}
    states = [h.builder.state_after(tip) for tip in tips]
    return oracle.resolve(version, h.room_id, states, events)


@pytest.mark.parametrize("version", ["2", "3", "6", "10", "11", "12"])
def test_resolution_may_choose_an_event_from_the_auth_difference(
    tmp_path: Path, version: str
) -> None:
    """Bob joins, leaves and rejoins on one branch; on the other Alice makes the room
    invite-only. The spec (v2 state resolution) puts into the full conflicted set "the
    union of the set of conflicted events and the auth difference": Bob's leave is in
    the auth chain of his rejoin only, so it is in the auth difference. Join rules are a
    power event and resolve first (invite); then, in mainline order, Bob's first join
    and his rejoin fail ("If the join_rule is invite ... allow if membership state is
    invite or join") while his leave passes. The resolved state holds the leave, which
    is in neither state. Before the mend the pipeline failed the input with
    internal_error (KeyError); Synapse's resolver is the judge of the result.
    """
    h = Harness(tmp_path, version=version)
    b = h.builder
    join = b.join(BOB)
    leave = b.leave(BOB, prev_events=[join.event_id])
    rejoin = b.join(BOB, prev_events=[leave.event_id])
    invite_only = b.join_rules(ALICE, "invite", prev_events=[join.event_id])
    merge = b.message(ALICE, "merge", prev_events=[rejoin.event_id, invite_only.event_id])
    h.outbox()
    for event in (join, leave, rejoin, invite_only):
        assert h.send(event) is Disposition.ACK
    expected = _synapse_resolution(h, rejoin.event_id, invite_only.event_id)
    assert expected[(MEMBER, BOB)] == leave.event_id
    assert leave.event_id not in b.state_after(rejoin.event_id).values()
    assert leave.event_id not in b.state_after(invite_only.event_id).values()

    bodies = [body for _, body in h.outbox()]
    assert [body["type"] for body in bodies] == ["new_room_event"] * 4
    # The room's current state after the fork is the resolution, and the output says
    # how it moved: Bob's rejoin out, his leave and the join rules in.
    room = h.db.get_room(h.room_id)
    assert room is not None
    assert _state(h, room.snapshot_nid) == expected
    last = bodies[-1]
    assert sorted(last["adds_state_event_ids"]) == sorted([leave.event_id, invite_only.event_id])
    assert len(last["removes_state_event_ids"]) == 2
    assert rejoin.event_id in last["removes_state_event_ids"]

    assert h.send(merge) is Disposition.ACK
    row = h.db.get_event_row(merge.event_id)
    assert row is not None and row.status == STATUS_ACCEPTED
    assert _state(h, row.before_snapshot_nid) == expected
    assert h.pipeline.resolve_snapshots(
        room, [_after(h, rejoin), _after(h, invite_only)]
    ) == h.pipeline.state.load(row.before_snapshot_nid)


def _after(h: Harness, event: Event) -> int:
    row = h.db.get_event_row(event.event_id)
    assert row is not None
    return row.after_snapshot_nid


class _Fork:
    """Bob joined; then two branches: Alice's message `side` and Alice's ban of Bob
    `ban`. The room's forward extremities are both, and its current state (their
    resolution) has Bob banned."""

    def __init__(self, tmp_path: Path, version: str) -> None:
        self.h = Harness(tmp_path, version=version)
        b = self.h.builder
        self.join = b.join(BOB)
        self.side = b.message(ALICE, "side", prev_events=[self.join.event_id])
        self.ban = b.ban(ALICE, BOB, prev_events=[self.join.event_id])
        for event in (self.join, self.side, self.ban):
            assert self.h.send(event) is Disposition.ACK
        assert _room_latest(self.h) == {self.side.event_id, self.ban.event_id}

    def status(self, event: Event) -> int:
        row = self.h.db.get_event_row(event.event_id)
        assert row is not None
        return row.status


@pytest.mark.parametrize("version", ["2", "10", "12"])
def test_an_event_built_on_a_soft_failed_event_ends_its_parents_extremity(
    tmp_path: Path, version: str
) -> None:
    """Bob, not yet seeing the ban, speaks after `side`: allowed by the state before his
    message, not by the room's current state, so soft-failed (server-server spec:
    "the event is soft failed ... should not be added to the forward extremities").
    Alice's server then builds on Bob's message. Synapse's `_calculate_new_extremities`
    removes the new event's prev events and, through `_get_prevs_before_rejected`, the
    prev events of every soft-failed or rejected one among them, recursively: `side`
    is an ancestor of Alice's message and no extremity any more. Synapse's result:
    {ban, Alice's message}. Before the mend `side` stayed."""
    fork = _Fork(tmp_path, version)
    h, b = fork.h, fork.h.builder
    soft = b.message(BOB, "did I miss something?", prev_events=[fork.side.event_id])
    softer = b.message(BOB, "hello?", prev_events=[soft.event_id])
    reply = b.message(ALICE, "you are banned", prev_events=[softer.event_id])
    for event in (soft, softer, reply):
        assert h.send(event) is Disposition.ACK
    assert fork.status(soft) == STATUS_SOFT_FAILED
    assert fork.status(softer) == STATUS_SOFT_FAILED
    assert fork.status(reply) == STATUS_ACCEPTED
    expected = {fork.ban.event_id, reply.event_id}
    assert _room_latest(h) == expected
    [(_, body)] = [(s, b) for s, b in h.outbox() if b.get("event_id") == reply.event_id]
    assert set(body["latest_event_ids"]) == expected


@pytest.mark.parametrize("version", ["2", "10", "12"])
def test_an_event_built_on_a_rejected_event_leaves_its_parents_extremity(
    tmp_path: Path, version: str
) -> None:
    """Bob (power 0) sets the topic after `side`: rejected (needs the state default,
    50). Alice's next event names it as its prev event. Synapse's
    `_get_prevs_before_rejected` reads "find all those that have been soft-failed or
    rejected", but it walks the `event_edges` table, and Synapse writes no edges for a
    rejected event (`_store_rejected_events_txn` filters rejected events out before
    `_handle_mult_prev_events`). So the walk stops at a rejected event, and `side`, whose
    only child is rejected, stays an extremity: {side, ban, Alice's message}."""
    fork = _Fork(tmp_path, version)
    h, b = fork.h, fork.h.builder
    topic = b.state_event(
        BOB, "m.room.topic", "", {"topic": "mine"}, prev_events=[fork.side.event_id]
    )
    after = b.message(ALICE, "after", prev_events=[topic.event_id])
    for event in (topic, after):
        assert h.send(event) is Disposition.ACK
    assert fork.status(topic) == STATUS_REJECTED
    assert fork.status(after) == STATUS_ACCEPTED
    assert _room_latest(h) == {fork.side.event_id, fork.ban.event_id, after.event_id}


def test_an_accepted_prev_event_is_not_walked_through(tmp_path: Path) -> None:
    """Only soft-failed and rejected events are looked past: an event built on `side`
    itself ends `side` and nothing behind it (here the two branches' parent, which is
    no extremity anyway), and `ban` stays."""
    fork = _Fork(tmp_path, "10")
    h = fork.h
    reply = h.builder.message(ALICE, "reply", prev_events=[fork.side.event_id])
    assert h.send(reply) is Disposition.ACK
    assert _room_latest(h) == {fork.ban.event_id, reply.event_id}
