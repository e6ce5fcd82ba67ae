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
