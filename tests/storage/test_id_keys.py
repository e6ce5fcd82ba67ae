"""Events are found by ID through `events_id_key`, the index of a 64-bit key of the ID
(schema version 5, worker.storage.id_keys), on every connection that asks.

Every statement the writer, the reader and the inspector run while a room is written
and queried is recorded (SQLite's trace callback), and each one that matches an
`events` row by its event ID is planned again with EXPLAIN QUERY PLAN: none may read
`events` other than through that index. On version 4's code the same statements go
through the unique index of `event_id`, and the test fails.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from tests.harness.pipeline import ALICE, Harness
from worker.pipeline import Disposition
from worker.storage.database import DB_FILENAME
from worker.storage.federation_reads import FederationReads
from worker.storage.id_keys import id_key, register
from worker.storage.inspection import Inspector
from worker.storage.reader import Reader

pytestmark = pytest.mark.unit

BOB = "@bob:example.org"

#: A statement reading `events` (as itself or as `e`) by event ID or by its key.
_BY_EVENT_ID = re.compile(r"\b(?:e\.)?(?:event_id|id_key)\s*(?:=|IN\b)")
_READS_EVENTS = re.compile(r"\b(?:FROM|JOIN)\s+events\b")


def _plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    params = [None] * sql.count("?")
    return [str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


def test_the_key_of_an_id() -> None:
    """A hashed ID's key is its first eight bytes after the `$`; a legacy ID's (chosen
    by its server) a hash of it; any string has one that fits an SQLite INTEGER."""
    hashed = "$LXEWQrcmsEQBYnyp-6wy9chTD7GQPMTbAiWHF5IaSIE"
    assert id_key(hashed) == int.from_bytes(b"LXEWQrcm", "big", signed=True)
    assert id_key("$a:example.org") != id_key("$a:example.com")
    for odd in ("", "$", "$é" * 40, "$\udc00"[:1]):
        assert -(2**63) <= id_key(odd) < 2**63


async def test_every_query_by_event_id_uses_the_key_index(tmp_path: Path) -> None:
    statements: list[str] = []
    h = Harness(tmp_path)
    h.db.conn.set_trace_callback(statements.append)
    message = h.message("hello")
    assert h.send(message) is Disposition.ACK
    h.outbox()
    join = h.builder.join(BOB, prev_events=[h.head])
    assert h.send(join) is Disposition.ACK
    h.outbox()
    redaction = h.builder.redaction(ALICE, message.event_id, prev_events=[h.head])
    assert h.send(redaction) is Disposition.ACK
    h.outbox()
    early = h.builder.redaction(ALICE, "$not-yet:example.org", prev_events=[h.head])
    assert h.send(early) is Disposition.ACK
    assert h.send(early) is Disposition.ACK  # a duplicate
    assert h.db.redactions.targets_not_stored() == ["$not-yet:example.org"]
    h.db.conn.set_trace_callback(None)
    h.db.close()

    reader = await Reader.open(tmp_path)
    await reader._conn.set_trace_callback(statements.append)
    try:
        ids = [message.event_id, join.event_id, "$unknown"]
        records, unknown = await reader.events(ids)
        assert unknown == ["$unknown"] and len(records) == 2
        assert await reader.auth_chain([join.event_id])
        await reader.snapshot_at(h.room_id, join.event_id)
        federation = FederationReads(reader)
        room_nid = await federation.room_nid(h.room_id)
        nodes, _ = await federation.dag_nodes(
            room_nid, [redaction.event_id], hops=3, outliers=False
        )
        assert join.event_id in nodes
        assert set(await federation.places(room_nid, ids)) == set(ids[:2])
    finally:
        await reader.close()
    with Inspector.open(tmp_path) as inspector:
        inspector._conn.set_trace_callback(statements.append)
        assert inspector._stored(ids) == set(ids[:2])

    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    register(conn)
    checked = set()
    for sql in dict.fromkeys(statements):
        if not (_READS_EVENTS.search(sql) and _BY_EVENT_ID.search(sql)):
            continue
        plan = _plan(conn, sql)
        reads = [step for step in plan if re.search(r"\b(?:events|e)\b", step)]
        assert reads, (sql, plan)
        for step in reads:
            assert "USING INDEX events_id_key" in step or "INTEGER PRIMARY KEY" in step, (
                sql,
                plan,
            )
        checked.add(sql)
    conn.close()
    # The writer's (one and many), the reader's (one, many, the auth chain's), the
    # federation walk's and places, the inspector's, and the redactions' question for
    # targets not stored.
    assert len(checked) >= 10, sorted(checked)
