"""`roomserver verify` finds and names every kind of fault it promises to."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.harness.pipeline import ALICE, Harness
from worker.verify import verify

BOB = "@bob:example.org"


def _room_with_a_fork(path: Path) -> Harness:
    h = Harness(path)
    join = h.builder.join(BOB)
    left = h.builder.state_event(
        ALICE, "m.room.topic", "", {"topic": "l"}, prev_events=[join.event_id]
    )
    right = h.builder.state_event(
        ALICE, "m.room.name", "", {"name": "r"}, prev_events=[join.event_id]
    )
    for event in (join, left, right):
        h.send(event)
    h.db.close()
    return h


def test_a_healthy_database_has_no_faults(tmp_path: Path) -> None:
    _room_with_a_fork(tmp_path)
    report = verify(tmp_path)
    assert report.faults == []
    assert report.rooms == 1 and report.events == 7 and report.snapshots > 0


def test_verify_leaves_no_wal_behind(tmp_path: Path) -> None:
    """The checks read through a read-only connection beside the writer's; the writer's
    closes last, so the files are left as a stopped worker leaves them (and `roomserver
    stats` reports the same size before and after)."""
    _room_with_a_fork(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert verify(tmp_path).faults == []
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def test_a_corrupt_block_is_named(tmp_path: Path) -> None:
    h = _room_with_a_fork(tmp_path)
    with sqlite3.connect(h.db.path) as conn:
        nid = conn.execute("SELECT max(nid) FROM state_blocks").fetchone()[0]
        conn.execute("UPDATE state_blocks SET entries = x'0102' WHERE nid = ?", (nid,))
    faults = verify(tmp_path).faults
    assert any(f"state block {nid} does not decode" in f for f in faults)
    assert any(f"uses block {nid}" in f for f in faults)


def test_missing_event_json_is_named(tmp_path: Path) -> None:
    h = _room_with_a_fork(tmp_path)
    with sqlite3.connect(h.db.path) as conn:
        conn.execute("DELETE FROM event_json WHERE event_nid = 2")
    faults = verify(tmp_path).faults
    assert any("event NID 2 has no stored JSON" in f for f in faults)


def test_an_event_stored_twice_or_under_a_wrong_key_is_named(tmp_path: Path) -> None:
    """No unique index refuses a second row of an event ID (schema version 5): verify
    is what proves each event is stored once, under its ID's key."""
    h = _room_with_a_fork(tmp_path)
    with sqlite3.connect(h.db.path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
        copied = ", ".join(c for c in columns if c != "nid")
        conn.execute(f"INSERT INTO events ({copied}) SELECT {copied} FROM events WHERE nid = 2")
        event_id = conn.execute("SELECT event_id FROM events WHERE nid = 2").fetchone()[0]
        conn.execute("UPDATE events SET id_key = id_key + 1 WHERE nid = 3")
    faults = verify(tmp_path).faults
    assert f"event {event_id} is stored 2 times" in faults, faults
    assert any(f.startswith("event NID 3 (") and "its ID's key" in f for f in faults), faults


def test_a_wrong_current_state_is_named(tmp_path: Path) -> None:
    h = _room_with_a_fork(tmp_path)
    with sqlite3.connect(h.db.path) as conn:
        create_snapshot = conn.execute(
            "SELECT after_snapshot_nid FROM events ORDER BY nid LIMIT 1"
        ).fetchone()[0]
        conn.execute("UPDATE rooms SET snapshot_nid = ?", (create_snapshot,))
    faults = verify(tmp_path).faults
    assert any("current state differs from the resolution" in f for f in faults), faults


def _cli(storage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ROOMSERVER_STORAGE_PATH": str(storage)}
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "verify", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_exit_codes(tmp_path: Path) -> None:
    missing = _cli(tmp_path / "nothing")
    # Not found (6), as for `roomserver stats`.
    assert missing.returncode == 6 and "no roomserver database" in missing.stderr
    h = _room_with_a_fork(tmp_path)
    healthy = _cli(tmp_path)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "1 rooms, 7 events" in healthy.stdout and "0 faults" in healthy.stdout
    with sqlite3.connect(h.db.path) as conn:
        conn.execute("DELETE FROM event_json WHERE event_nid = 3")
    broken = _cli(tmp_path, "--json")
    assert broken.returncode == 1
    assert "event NID 3 has no stored JSON" in json.loads(broken.stdout)["faults"]
