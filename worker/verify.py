"""`roomserver verify`: prove the stored state is whole and consistent.

Operators run it after a crash, a disk problem or an upgrade. It reads everything once
and reports every fault it finds, naming the snapshot, block, event or room, instead
of stopping at the first: a repair needs the whole list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from worker.pipeline.resolution import NidResolver
from worker.storage.blocks import MAX_BLOCKS, TRIPLE_BYTES, merge_blocks, unpack_nids
from worker.storage.database import DB_FILENAME, Database
from worker.storage.events import EventStore
from worker.storage.inspection import EventFacts, Inspector, StoredRows
from worker.storage.schema import STATUS_ACCEPTED, STATUS_REJECTED
from worker.storage.state import StateStore


@dataclass(slots=True)
class Report:
    rooms: int = 0
    events: int = 0
    snapshots: int = 0
    blocks: int = 0
    faults: list[str] = field(default_factory=list)

    def fault(self, text: str) -> None:
        self.faults.append(text)


def verify(storage_path: Path) -> Report:
    """Check the database under `storage_path`; FileNotFoundError if there is none
    (creating an empty one would report a healthy nothing)."""
    if not (storage_path / DB_FILENAME).exists():
        raise FileNotFoundError(f"no roomserver database under {storage_path}")
    db = Database(storage_path)
    try:
        # The inspector closes first, so that the writer's connection is the last one
        # and leaves no WAL behind, as before.
        with Inspector.open(storage_path) as inspector:
            return _verify(inspector.rows, db)
    finally:
        db.close()


def _verify(rows: StoredRows, db: Database) -> Report:
    """Every check reads through the read-only `rows`; `db` serves only the
    resolution of each room's forward extremities."""
    report = Report()
    for problem in rows.integrity_problems():
        report.fault(f"SQLite integrity: {problem}")
    events = rows.event_facts()
    report.events = len(events)
    types = rows.type_nids()
    blocks = _check_blocks(rows, report, events, types, rows.state_key_nids())
    snapshots = _check_snapshots(rows, report, blocks)
    _check_events(report, events, rows.event_nids_with_json(), types, snapshots)
    _check_event_ids(rows, report)
    _check_rooms(rows, db, report, events, snapshots)
    return report


def _check_blocks(
    rows: StoredRows,
    report: Report,
    events: dict[int, EventFacts],
    types: set[int],
    state_keys: set[int],
) -> dict[int, bytes]:
    """Each block decodes to its count, and files stored, non-rejected events under
    their own (type, state key); the blocks that decode, by NID."""
    blocks: dict[int, bytes] = {}
    for nid, count, data in rows.blocks():
        report.blocks += 1
        if len(data) % TRIPLE_BYTES or len(data) // TRIPLE_BYTES != count:
            report.fault(f"state block {nid} does not decode to its {count} entries")
            continue
        blocks[nid] = data
        state = merge_blocks([data], keep_removed=True)
        for (type_nid, sk_nid), event_nid in state.items():
            if type_nid not in types or sk_nid not in state_keys:
                report.fault(f"state block {nid} names an unknown type or state key NID")
            if event_nid and event_nid not in events:
                report.fault(f"state block {nid} names event NID {event_nid}, which is not stored")
            elif event_nid:
                _, e_type, e_sk, status, _, _ = events[event_nid]
                if (e_type, e_sk) != (type_nid, sk_nid):
                    report.fault(
                        f"state block {nid} files event NID {event_nid} under the wrong key"
                    )
                if status == STATUS_REJECTED:
                    report.fault(f"state block {nid} holds rejected event NID {event_nid}")
    return blocks


def _check_snapshots(rows: StoredRows, report: Report, blocks: dict[int, bytes]) -> dict[int, int]:
    """Each snapshot's block list decodes, is within bounds and names good blocks; the
    snapshots' rooms, by snapshot NID."""
    snapshots: dict[int, int] = {}
    for nid, room_nid, packed in rows.snapshots():
        report.snapshots += 1
        snapshots[nid] = room_nid
        try:
            block_nids = unpack_nids(packed)
        except ValueError:
            report.fault(f"state snapshot {nid} has a block list that does not decode")
            continue
        if len(block_nids) > MAX_BLOCKS:
            report.fault(f"state snapshot {nid} has {len(block_nids)} blocks (limit {MAX_BLOCKS})")
        for block_nid in block_nids:
            if block_nid not in blocks:
                report.fault(
                    f"state snapshot {nid} uses block {block_nid}, which is missing or bad"
                )
    return snapshots


def _check_events(
    report: Report,
    events: dict[int, EventFacts],
    with_json: set[int],
    types: set[int],
    snapshots: dict[int, int],
) -> None:
    """Each event has its JSON, a known type, and its states in its own room."""
    for nid, (room_nid, type_nid, _, _, before, after) in events.items():
        if nid not in with_json:
            report.fault(f"event NID {nid} has no stored JSON")
        if type_nid not in types:
            report.fault(f"event NID {nid} has an unknown type NID {type_nid}")
        for which, snap in (("before", before), ("after", after)):
            if snap and snapshots.get(snap) != room_nid:
                report.fault(f"event NID {nid}: its state {which} (snapshot {snap}) is missing")


def _check_event_ids(rows: StoredRows, report: Report) -> None:
    """Each event ID is stored once, under its own key (nothing in the schema refuses
    a second row of an ID: `worker.storage.id_keys`)."""
    repeated, wrong_keys = rows.event_id_faults()
    for event_id, count in repeated:
        report.fault(f"event {event_id} is stored {count} times")
    for nid, event_id in wrong_keys:
        report.fault(f"event NID {nid} ({event_id}) is not stored under its ID's key")


def _check_rooms(
    rows: StoredRows,
    db: Database,
    report: Report,
    events: dict[int, EventFacts],
    snapshots: dict[int, int],
) -> None:
    """Each room's current state is stored, and is the resolution of its forward
    extremities, which are stored and accepted."""
    states = StateStore(db)
    resolver = NidResolver(db, states, EventStore(db))
    for room in rows.rooms():
        room_nid, room_id = room.nid, room.room_id
        report.rooms += 1
        if room.snapshot_nid and snapshots.get(room.snapshot_nid) != room_nid:
            report.fault(f"room {room_id}: current snapshot {room.snapshot_nid} is missing")
            continue
        latest_snapshots: list[int] = []
        for event_nid in room.latest_event_nids:
            if event_nid not in events:
                report.fault(f"room {room_id}: forward extremity NID {event_nid} is not stored")
                continue
            status, after = events[event_nid][3], events[event_nid][5]
            if status != STATUS_ACCEPTED:
                report.fault(f"room {room_id}: forward extremity NID {event_nid} is not accepted")
            latest_snapshots.append(after)
        if not latest_snapshots or len(latest_snapshots) != len(room.latest_event_nids):
            continue
        try:
            expected = resolver.resolve(room.room_version, latest_snapshots)
            current = states.load(room.snapshot_nid)
        except Exception as exc:  # a broken snapshot must be reported, not crash the check
            report.fault(f"room {room_id}: could not load or resolve its state ({exc})")
            continue
        if expected != current:
            missing = len(set(expected.items()) - set(current.items()))
            extra = len(set(current.items()) - set(expected.items()))
            report.fault(
                f"room {room_id}: current state differs from the resolution of its forward "
                f"extremities ({missing} entries missing, {extra} unexpected)"
            )
