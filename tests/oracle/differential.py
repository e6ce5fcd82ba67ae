"""The whole pipeline against Synapse, one random forked room at a time.

`run_room` builds a room with `ForkedRoom`, hands every event to `SynapseRoom` (Synapse's
own functions) and, in the same order, to the worker's `Pipeline.process_batch` as `new`
inputs, a few per batch, on a real SQLite file. It then reads back from the worker's
storage and compares:

- per event: the outcome (accepted / soft_failed / rejected), the state before and after;
- after each batch: the room's forward extremities and current state, against Synapse's
  after the batch's last event.

A documented difference is not compared: Synapse prunes forward extremities
(`_prune_extremities`) and sends dummy events; the worker does neither. `SynapseRoom`
counts how often Synapse would have pruned (`prunable`).
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from tests.oracle.forked_rooms import ForkedRoom
from tests.oracle.synapse_room import SynapseRoom, Verdict
from worker.bus.subjects import Subjects
from worker.pipeline import Disposition, InboundMessage, Pipeline
from worker.storage.database import Database
from worker.storage.schema import STATUS_ACCEPTED, STATUS_REJECTED, STATUS_SOFT_FAILED

SUBJECTS = Subjects("rs")
OUTCOMES = {
    STATUS_ACCEPTED: "accepted",
    STATUS_SOFT_FAILED: "soft_failed",
    STATUS_REJECTED: "rejected",
}


@dataclass
class RoomResult:
    """The comparison of one room; every count is of agreements out of `events`/`batches`."""

    room_version: str
    seed: int
    events: int = 0
    batches: int = 0
    outcomes: int = 0
    before: int = 0
    after: int = 0
    extremities: int = 0
    current: int = 0
    #: Events after which Synapse would have pruned extremities (not compared).
    prunable: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.mismatches


def _diff(name: str, ours: Mapping[Any, str], synapse: Mapping[Any, str]) -> str:
    keys = sorted(set(ours) | set(synapse))
    lines = [
        f"    {key}: worker={ours.get(key)} synapse={synapse.get(key)}"
        for key in keys
        if ours.get(key) != synapse.get(key)
    ]
    return f"  {name} differs:\n" + "\n".join(lines)


class _Worker:
    def __init__(self, path: Path) -> None:
        self.db = Database(path)
        self.pipeline = Pipeline(self.db, SUBJECTS)
        self.seq = 0

    def send(self, room_id: str, pdus: list[dict[str, Any]]) -> list[Disposition]:
        messages = []
        for pdu in pdus:
            self.seq += 1
            data = bytes(msgpack.packb({"event": pdu}, use_bin_type=True))
            messages.append(InboundMessage(SUBJECTS.input(room_id), data, self.seq))
        return self.pipeline.process_batch(messages)

    def state(self, snapshot: int) -> dict[tuple[str, str], str]:
        return self.pipeline.to_state_map(self.pipeline.state.load(snapshot))

    def room(self, room_id: str) -> tuple[frozenset[str], dict[tuple[str, str], str]]:
        row = self.db.get_room(room_id)
        assert row is not None
        ids = self.pipeline.events.ids_of(row.latest_event_nids)
        return frozenset(ids.values()), self.state(row.snapshot_nid)

    def dead_letters(self) -> list[str]:
        return [
            msgpack.unpackb(payload, raw=False).get("message", "")
            for _, subject, _, payload in self.db.outbox.pending()
            if ".deadletter." in subject
        ]

    def close(self) -> None:
        self.db.close()


def run_room(
    room_version: str,
    seed: int,
    directory: Path,
    *,
    events: int | None = None,
    keep: bool = True,
) -> RoomResult:
    """Build, process and compare one room; `events` defaults to a random 60–160.
    The worker's storage goes under `directory`, and is deleted afterwards unless `keep`."""
    result = RoomResult(room_version, seed)
    room = ForkedRoom(room_version, seed)
    truth = SynapseRoom(room_version)
    room.resolve = truth.state_before
    total = events if events is not None else random.Random(seed).randint(60, 160)
    storage = directory / f"v{room_version}-{seed}"
    worker = _Worker(storage)
    where = f"room version {room_version}, seed {seed}"
    verdicts: dict[str, Verdict] = {}
    index: dict[str, int] = {}
    rng = random.Random(f"batches:{seed}")
    try:
        batch: list[dict[str, Any]] = []
        batch_size = rng.randint(1, 4)
        for i in range(total + 4):
            event = room.next_event()
            verdict = truth.receive(event.pdu)
            room.observe(event, verdict.outcome, verdict.before, verdict.after)
            verdicts[event.event_id] = verdict
            index[event.event_id] = i
            batch.append(dict(event.pdu))
            if len(batch) < batch_size and i < total + 3:
                continue
            room_id = room.builder.room_id
            dispositions = worker.send(room_id, batch)
            result.batches += 1
            if any(d is not Disposition.ACK for d in dispositions):
                result.dead_letters += sum(d is not Disposition.ACK for d in dispositions)
                result.mismatches.append(
                    f"{where}, batch ending at event {i}: dead letters {worker.dead_letters()}"
                )
            extremities, current = worker.room(room_id)
            if extremities == verdict.extremities:
                result.extremities += 1
            else:
                result.mismatches.append(
                    f"{where}, after event {i} ({event.event_id}): forward extremities "
                    f"worker={sorted(extremities)} synapse={sorted(verdict.extremities)}"
                )
            if current == verdict.current_state:
                result.current += 1
            else:
                result.mismatches.append(
                    f"{where}, after event {i} ({event.event_id}): current state\n"
                    + _diff("current state", current, verdict.current_state)
                )
            batch = []
            batch_size = rng.randint(1, 4)
        _compare_events(worker, verdicts, index, where, result)
        result.prunable = truth.prunable
    finally:
        worker.close()
        if not keep:
            shutil.rmtree(storage, ignore_errors=True)
    return result


def _compare_events(
    worker: _Worker,
    verdicts: Mapping[str, Verdict],
    index: Mapping[str, int],
    where: str,
    result: RoomResult,
) -> None:
    for event_id, verdict in verdicts.items():
        result.events += 1
        result.by_outcome[verdict.outcome] = result.by_outcome.get(verdict.outcome, 0) + 1
        at = f"{where}, event {index[event_id]} ({event_id})"
        row = worker.db.get_event_row(event_id)
        if row is None:
            result.mismatches.append(f"{at}: not stored by the worker")
            continue
        outcome = OUTCOMES.get(row.status, f"status {row.status}")
        if outcome == verdict.outcome:
            result.outcomes += 1
        else:
            result.mismatches.append(
                f"{at}: outcome worker={outcome} ({row.reason}) "
                f"synapse={verdict.outcome} ({verdict.reason})"
            )
        before = worker.state(row.before_snapshot_nid)
        if before == verdict.before:
            result.before += 1
        else:
            result.mismatches.append(f"{at}:\n" + _diff("state before", before, verdict.before))
        after = worker.state(row.after_snapshot_nid)
        if after == verdict.after:
            result.after += 1
        else:
            result.mismatches.append(f"{at}:\n" + _diff("state after", after, verdict.after))
