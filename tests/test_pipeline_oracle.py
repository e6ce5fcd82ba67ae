"""The whole pipeline against Synapse 1.163's own code, on random forked rooms.

For every event the worker's outcome (accepted / soft-failed / rejected) and its state
before and after, and after every batch the room's forward extremities and current
state, must be what Synapse's federation handler and event persister compute for the same
events in the same order (`tests/oracle/synapse_room.py` drives `_check_event_auth`,
`_check_for_soft_fail`, `_calculate_new_extremities` and `_get_new_state_after_events`;
the generator is `tests/oracle/forked_rooms.py`). `make oracle-sweep` runs thousands of
rooms over room versions 1–12; these are a few seeds per version.

The spec's checks on receipt (server-server API, "Checks performed on receipt of a PDU"):
"4. Passes authorisation rules based on the event's auth events, otherwise it is
rejected. 5. Passes authorisation rules based on the state before the event, otherwise it
is rejected. 6. Passes authorisation rules based on the current state of the room,
otherwise it is "soft failed"." And ("Soft failure"): the current state is "the resolved
state across all forward extremities"; a soft-failed event should not "be added to the
server's list of forward extremities of the room. Soft failed events are otherwise
handled as usual." Where the spec leaves details open (which extremities an event built
on soft-failed or rejected events ends), Synapse's persister is the truth.

Documented difference, not compared: Synapse prunes forward extremities
(`_prune_extremities`) and sends dummy events to merge them; the worker keeps every
forward extremity until an event names it as a prev event. `SynapseRoom` calls
`_get_new_state_after_events(..., should_prune=False)`.
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

pytest.importorskip("synapse")

from tests.oracle.differential import SUBJECTS, run_room
from tests.oracle.synapse_room import ACCEPTED, REJECTED, SynapseRoom
from worker.matrix.builder import RoomBuilder
from worker.pipeline import Disposition, InboundMessage, Pipeline
from worker.storage.database import Database

pytestmark = pytest.mark.oracle

VERSIONS = ["1", "2", "10", "11", "12"]
SEEDS = [1, 2, 3, 4]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("version", VERSIONS)
def test_random_forked_room_agrees_with_synapse(tmp_path: Path, version: str, seed: int) -> None:
    result = run_room(version, seed, tmp_path, events=100)
    assert result.agrees, "\n".join(result.mismatches[:20])
    # The room must exercise what the comparison is about.
    assert result.by_outcome.get(REJECTED, 0) >= 5, result.by_outcome
    assert result.by_outcome.get(ACCEPTED, 0) >= 20, result.by_outcome
    assert result.events == result.outcomes == result.before == result.after
    assert result.batches == result.extremities == result.current


def test_event_built_on_a_rejected_event_leaves_its_grandparent_an_extremity(
    tmp_path: Path,
) -> None:
    """Synapse writes no `event_edges` rows for rejected events (`_store_rejected_events_txn`
    filters them out before `_update_metadata_tables_txn` inserts the edges), so
    `_get_prevs_before_rejected` finds nothing behind a rejected prev event: when an
    accepted event names a rejected one as its only prev event, the rejected event's own
    prev event stays a forward extremity beside the new event (walking back happens only
    through soft-failed events)."""
    alice, mallory = "@alice:a.example", "@mallory:d.example"
    builder = RoomBuilder("10", alice)
    events = builder.bootstrap()
    base = events[-1].event_id
    message = builder.message(alice, "a", prev_events=[base])
    # Mallory is no member: rejected against its own auth events.
    intruder = builder.state_event(
        mallory, "m.room.topic", "", {"topic": "x"}, prev_events=[message.event_id]
    )
    child = builder.message(alice, "b", prev_events=[intruder.event_id])
    events += [message, intruder, child]

    truth = SynapseRoom("10")
    verdicts = [truth.receive(event.pdu) for event in events]
    assert [v.outcome for v in verdicts[-2:]] == [REJECTED, ACCEPTED]
    assert truth.extremities == {message.event_id, child.event_id}

    db = Database(tmp_path / "room.sqlite3")
    pipeline = Pipeline(db, SUBJECTS)
    for seq, event in enumerate(events, 1):
        data = bytes(msgpack.packb({"event": dict(event.pdu)}, use_bin_type=True))
        message_in = InboundMessage(SUBJECTS.input(builder.room_id), data, seq)
        assert pipeline.process_batch([message_in]) == [Disposition.ACK]
    room = db.get_room(builder.room_id)
    assert room is not None
    latest = set(pipeline.events.ids_of(room.latest_event_nids).values())
    assert latest == truth.extremities
