"""A pass against an event's auth events is reused for a later event with the same
verdict key (worker.pipeline.authorize, `Authorizer._passed`) only while the events it
rests on are unchanged: once a cited event is rejected, the next event citing it is
rejected as the spec's auth rules say, as if nothing had been remembered."""

from __future__ import annotations

from pathlib import Path

from tests.harness.pipeline import ALICE, Harness
from worker.matrix.events import CREATE, POWER_LEVELS
from worker.pipeline import Disposition

BOB = "@bob:example.org"


def test_a_pass_is_not_reused_once_a_cited_event_is_rejected(tmp_path: Path) -> None:
    """Room version 10 auth rules, "Considering the event's auth_events": "If there are
    entries which were themselves rejected under the checks performed on receipt of a
    PDU, reject." Bob's join cites the public join rule but follows the change to
    invite-only: as an outlier it passes against its auth events, as a timeline event
    it fails against the state before it and is rejected. Bob's two messages cite the
    same events and differ only in their text (the same verdict key); the first is
    checked while the join is an outlier, the second once it is rejected."""
    h = Harness(tmp_path)
    builder = h.builder
    public = dict(builder.current_state)
    invite_only = builder.join_rules(ALICE, "invite", prev_events=[h.head])
    assert h.send(invite_only) is Disposition.ACK
    h.outbox()
    join = builder.join(BOB, prev_events=[invite_only.event_id], state=public)
    assert h.send(join, kind="outlier") is Disposition.ACK

    cited = [public[(CREATE, "")], public[(POWER_LEVELS, "")], join.event_id]
    first = builder.message(BOB, "first", prev_events=[invite_only.event_id], auth_events=cited)
    assert h.send(first) is Disposition.ACK
    [(_, rejected_first)] = h.outbox()
    assert rejected_first["type"] == "rejected_event"
    # It passed against its auth events (the outlier join), not the state before it.
    assert rejected_first["reason"].startswith("against the state before it")

    assert h.send(join) is Disposition.ACK
    [(_, rejected_join)] = h.outbox()
    assert rejected_join["type"] == "rejected_event"
    assert rejected_join["event_id"] == join.event_id

    second = builder.message(BOB, "second", prev_events=[invite_only.event_id], auth_events=cited)
    assert h.send(second) is Disposition.ACK
    [(_, rejected_second)] = h.outbox()
    assert rejected_second["type"] == "rejected_event"
    assert rejected_second["reason"].startswith("against its auth events")
    assert rejected_second["reason"].endswith(f"{join.event_id}, which was rejected")


def test_held_by_reads_a_derived_state_as_its_mapping_does() -> None:
    """`PassedAuth.held_by` reads a `DerivedState`'s two maps itself (not through its
    `get`): the answer must be the one the state's mapping gives, for every way an entry
    can stand there: in the base only, changed, removed (0 in the changes), absent."""
    from worker.pipeline.authorize import PassedAuth
    from worker.storage.state import DerivedState

    a, b, c = (1, 1), (2, 5), (3, 7)
    base = {a: 10, b: 20, c: 30}
    states = [
        DerivedState(base, {}),
        DerivedState(base, {b: 21}),
        DerivedState(base, {c: 0}),
        DerivedState(base, {(9, 9): 90}),
        DerivedState({a: 10}, {b: 20, c: 30}),
        DerivedState({a: 10, b: 20}, {c: 31}),
    ]
    for entries in [((a, 10), (b, 20), (c, 30)), ((a, 10), (b, 21)), ((c, 30),), ((b, 20),)]:
        passed = PassedAuth({}, entries, complete=True)
        for state in states:
            as_mapping = dict(state.items())
            assert passed.held_by(state) == passed.held_by(as_mapping), (entries, as_mapping)
            assert passed.held_by(as_mapping) == all(as_mapping.get(k) == n for k, n in entries)
