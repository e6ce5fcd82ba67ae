"""The federation queries end to end: a real nats-server, the running worker, answers
read back with `worker.client`, checked against the spec's text and Synapse's own
functions (tests/oracle) on the same events.

One room (version 10) has a server ACL denying `evil.org`, history visibility `joined`,
messages from before and after a user of `remote.org` joined, and a fork left open (two
forward extremities whose states differ); a second room is restricted to members of
the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import msgpack
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from tests.harness.e2e import deadletter_reader, input_for, publish_inputs, running_worker
from tests.query.federation_scenario import ACL, ALICE, BOB, RITA, VERSION, ZED, Rooms, build_rooms
from tests.query.scenario import wait_processed
from worker.client import RoomserverClient, RoomserverError
from worker.config import Config
from worker.matrix.builder import RoomBuilder
from worker.storage.database import DB_FILENAME, Database
from worker.storage.schema import SCHEMA_VERSION

pytest.importorskip("synapse")

from tests.oracle.synapse_acl import synapse_server_allowed
from tests.oracle.synapse_prepare import synapse_auth_event_ids
from tests.oracle.synapse_restricted import synapse_restricted_join
from tests.oracle.synapse_state import resolve, synapse_event
from tests.oracle.synapse_visibility import synapse_filter_events_for_server
from tests.oracle.synapse_walks import StoredEvent, SynapseWalks


def plain(pdu: Any) -> dict[str, Any]:
    """A PDU as msgpack carries it back (lists for tuples)."""
    return msgpack.unpackb(msgpack.packb(pdu, use_bin_type=True), raw=False)


async def test_federation_queries(config: Config, js: JetStreamContext, nc: NATS) -> None:
    rooms = build_rooms()
    b = rooms.main
    async with running_worker(config) as worker:
        await publish_inputs(js, config, rooms.inputs, room_version=VERSION)
        await wait_processed(worker, len(rooms.inputs))
        client = RoomserverClient(nc, config)
        latest = await client.latest(b.room_id)
        assert sorted(latest.latest_event_ids) == sorted(rooms.heads)

        # -- server_allowed: the ACL content, judged by Synapse's evaluator too --------
        for server in ("example.org", "remote.org:8448", "evil.org", "EVIL.org:443", "1.2.3.4"):
            answer = await client.server_allowed(b.room_id, server)
            assert answer.acl_event_id == rooms.id("acl")
            assert answer.allowed == synapse_server_allowed(ACL, server.split(":")[0]), server
        assert not (await client.server_allowed(b.room_id, "evil.org")).allowed
        no_acl = await client.server_allowed(rooms.restricted.room_id, "evil.org")
        assert no_acl.allowed and no_acl.acl_event_id is None

        await _visibility(client, rooms)
        await _walks(client, rooms)
        await _state_and_auth_chain(client, rooms)
        await _prepare_event(client, rooms)
        await _restricted_join(client, rooms)
        await _rooms_for_user(client, rooms)
        await _acl_on_input(worker, client, config, js, rooms)
    _index_rebuilt_on_upgrade(config)


def _index_rebuilt_on_upgrade(config: Config) -> None:
    """A database of schema version 2 has no index: opening it with this worker's
    schema (3 or later) fills the index from every room's current state, to the same rows the
    write path kept."""
    path = Path(config.storage.path) / DB_FILENAME
    with contextlib.closing(sqlite3.connect(path)) as conn:
        kept = conn.execute("SELECT * FROM user_room_memberships ORDER BY 1, 2").fetchall()
        assert len(kept) == 5  # alice and bob in both rooms, rita in the main one
        with conn:
            conn.execute("DELETE FROM user_room_memberships")
            conn.execute("PRAGMA user_version = 2")
    Database(Path(config.storage.path)).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rebuilt = conn.execute("SELECT * FROM user_room_memberships ORDER BY 1, 2").fetchall()
        assert rebuilt == kept
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def _state_after(rooms: Rooms) -> dict[str, dict[tuple[str, str], str]]:
    b = rooms.main
    return {e.event_id: b.state_after(e.event_id) for e in b.events}


async def _visibility(client: RoomserverClient, rooms: Rooms) -> None:
    """Client-server API, "Room History Visibility": with `joined`, "events are
    accessible ... only from the point the user joined"; a server sees what its users
    could (Synapse's `filter_events_for_server`, driven directly, is the oracle)."""
    b = rooms.main
    asked = [e.event_id for e in b.events] + ["$not-stored", rooms.id("r_rules")]
    answer = await client.visible_to_server(b.room_id, "remote.org", asked)
    hidden = {rooms.id("hv"), rooms.id("before1"), rooms.id("before2")}
    assert set(answer.hidden) == hidden
    assert answer.visible == [e.event_id for e in b.events if e.event_id not in hidden]
    # Not in this room (or not stored at all): not served.
    assert answer.missing == ["$not-stored", rooms.id("r_rules")]
    synapse = await asyncio.to_thread(
        synapse_filter_events_for_server,
        b.events,
        _state_after(rooms),
        (),
        b.events,
        "remote.org",
        redact=True,
    )
    assert [plain(p) for p in answer.events] == [plain(p) for p in synapse]
    # Redacted, not withheld: the hidden message keeps its place but not its body.
    hidden_pdu = answer.events[[e.event_id for e in b.events].index(rooms.id("before1"))]
    assert hidden_pdu["content"] == {} and hidden_pdu["prev_events"]
    withheld = await client.visible_to_server(b.room_id, "remote.org", asked, redact=False)
    synapse_withheld = await asyncio.to_thread(
        synapse_filter_events_for_server,
        b.events,
        _state_after(rooms),
        (),
        b.events,
        "remote.org",
        redact=False,
    )
    assert [plain(p) for p in withheld.events] == [plain(p) for p in synapse_withheld]
    assert len(withheld.events) == len(b.events) - len(hidden)
    # A server with a joined user sees everything.
    everything = await client.visible_to_server(b.room_id, "example.org", asked)
    assert everything.hidden == [] and len(everything.visible) == len(b.events)
    with pytest.raises(RoomserverError) as unknown:
        await client.visible_to_server("!nowhere:example.org", "remote.org", asked)
    assert unknown.value.code == "unknown_room"


def _oracle_walks(rooms: Rooms) -> SynapseWalks:
    """The stored events of the main room as Synapse's tables hold them; the arrival
    order is the publishing order (the worker's stream ordering is its event NID)."""
    order = {item["event"]["origin_server_ts"]: i for i, item in enumerate(rooms.inputs)}
    return SynapseWalks(
        StoredEvent(
            e.event_id,
            e.room_id,
            e.depth,
            order[e.origin_server_ts],
            e.prev_event_ids,
        )
        for e in rooms.main.events
    )


async def _walks(client: RoomserverClient, rooms: Rooms) -> None:
    """Server-server API: `/get_missing_events` is "a breadth-first walk of the
    `prev_events` for the `latest_events`, ignoring any events in `earliest_events` and
    stopping at the `limit`"; `/backfill` returns "the PDUs given in `v` and the PDUs
    that preceded them ... up to the total number given by the `limit`". Synapse's own
    SQL (tests/oracle/synapse_walks) gives the events and the backfill order."""
    b = rooms.main
    oracle = _oracle_walks(rooms)
    try:
        for earliest, latest, limit in [
            ([rooms.id("before1")], [rooms.id("after2")], 10),
            ([], list(rooms.heads), 20),
            ([rooms.id("join_rita")], [rooms.heads[1]], 2),
        ]:
            got = await client.missing_events(b.room_id, earliest, latest, limit=limit)
            want = oracle.missing_events(b.room_id, earliest, latest, limit)
            assert set(got.event_ids) == set(want)
            # Oldest first ("approximately chronological").
            depths = [b.event(e).depth for e in got.event_ids]
            assert depths == sorted(depths)
            assert got.events == [b.event(e).pdu for e in got.event_ids]
        # Asked for more than 20: 20 at most (Synapse's cap).
        capped = await client.missing_events(b.room_id, [], list(rooms.heads), limit=500)
        assert len(capped.event_ids) == min(20, len(b.events) - 2)

        for seeds, limit in [
            ([rooms.id("after2")], 5),
            (list(rooms.heads), 100),
            (list(rooms.heads), 3),
        ]:
            got = await client.backfill(b.room_id, seeds, limit=limit)
            assert got.event_ids == oracle.backfill(b.room_id, seeds, limit)
        # Filtered for a server: what Synapse's filter makes of the same events.
        seeds = [rooms.id("after1")]
        got = await client.backfill(b.room_id, seeds, limit=6, server_name="remote.org")
        ids = oracle.backfill(b.room_id, seeds, 6)
        synapse = await asyncio.to_thread(
            synapse_filter_events_for_server,
            b.events,
            _state_after(rooms),
            (),
            [b.event(e) for e in ids],
            "remote.org",
            redact=True,
        )
        assert got.event_ids == ids
        assert [plain(p) for p in got.events] == [plain(p) for p in synapse]
        assert any(p["content"] == {} for p in got.events)  # something was hidden
        missing = await client.missing_events(
            b.room_id, [], [rooms.id("after1")], limit=4, server_name="remote.org"
        )
        synapse = await asyncio.to_thread(
            synapse_filter_events_for_server,
            b.events,
            _state_after(rooms),
            (),
            [b.event(e) for e in missing.event_ids],
            "remote.org",
            redact=True,
        )
        assert [plain(p) for p in missing.events] == [plain(p) for p in synapse]
    finally:
        oracle.close()


def _auth_chain(b: RoomBuilder, event_ids: list[str]) -> set[str]:
    chain: set[str] = set()
    todo = [a for e in event_ids for a in b.event(e).auth_event_ids]
    while todo:
        event_id = todo.pop()
        if event_id not in chain:
            chain.add(event_id)
            todo.extend(b.event(event_id).auth_event_ids)
    return chain


async def _state_and_auth_chain(client: RoomserverClient, rooms: Rooms) -> None:
    """`/state_ids` and `/state` give the state at an event (before it) and the auth
    chain of that state; `/send_join` the state before the join, whose prev events are
    the room's extremities: with several, the room version's state resolution, checked
    against Synapse's resolver on the same events."""
    b = rooms.main
    at = rooms.id("after1")
    ids = await client.state_and_auth_chain(b.room_id, event_id=at, ids_only=True)
    before = b.state_after(rooms.id("join_rita"))
    assert ids.state_event_ids == sorted(before.values())
    assert set(ids.auth_chain_ids) == _auth_chain(b, list(before.values()))
    assert ids.state is None and ids.auth_chain is None
    full = await client.state_and_auth_chain(b.room_id, event_id=at)
    assert full.state == [b.event(e).pdu for e in full.state_event_ids]
    assert full.auth_chain == [b.event(e).pdu for e in full.auth_chain_ids]

    one = await client.state_and_auth_chain(
        b.room_id, prev_event_ids=[rooms.heads[0]], ids_only=True
    )
    assert one.state_event_ids == sorted(b.state_after(rooms.heads[0]).values())

    states = [b.state_after(h) for h in rooms.heads]
    assert states[0] != states[1]
    synapse = resolve(
        VERSION,
        b.room_id,
        states,
        {e.event_id: synapse_event(e.pdu, VERSION) for e in b.events},
    )
    merged = await client.state_and_auth_chain(b.room_id, prev_event_ids=list(rooms.heads))
    assert merged.state_event_ids == sorted(synapse.values())
    # The worker's own current state is the same resolution, made by the pipeline.
    assert sorted((await client.state(b.room_id)).as_map().values()) == sorted(synapse.values())
    assert set(merged.auth_chain_ids) == _auth_chain(b, sorted(synapse.values()))

    for body, code in [
        ({"event_id": at, "prev_event_ids": [at]}, "bad_request"),
        ({}, "bad_request"),
        ({"prev_event_ids": ["$unknown"]}, "unknown_event"),
        ({"event_id": "$unknown"}, "unknown_event"),
    ]:
        with pytest.raises(RoomserverError) as failed:
            await client.request("state_and_auth_chain", {"room_id": b.room_id, **body})
        assert failed.value.code == code


async def _prepare_event(client: RoomserverClient, rooms: Rooms) -> None:
    """PDU schema: `depth` is "The maximum depth of the `prev_events`, plus one";
    `prev_events` are the forward extremities (at most 20); `auth_events` as Synapse's
    `compute_auth_events` selects them from the current state."""
    b = rooms.main
    current = (await client.state(b.room_id)).as_map()
    heads = sorted(rooms.heads, key=lambda e: (-b.event(e).depth, e))
    for event_type, state_key, sender, content in [
        ("m.room.message", None, ALICE, {"body": "hi"}),
        ("m.room.member", ZED, ZED, {"membership": "join"}),
        ("m.room.member", RITA, ALICE, {"membership": "ban"}),
        ("m.room.topic", "", ALICE, {"topic": "x"}),
    ]:
        prepared = await client.prepare_event(
            b.room_id, event_type, sender, content, state_key=state_key
        )
        assert prepared.room_version == VERSION
        assert prepared.prev_event_ids == heads
        assert prepared.depth == max(b.event(e).depth for e in heads) + 1
        assert set(prepared.auth_event_ids) == synapse_auth_event_ids(
            VERSION, b.room_id, event_type, state_key, sender, content, current
        )


async def _restricted_join(client: RoomserverClient, rooms: Rooms) -> None:
    """Client-server API, "Restricted rooms": a user joined to a room the allow list
    names may join without an invite, vouched for by a local member who can invite;
    Synapse's `EventAuthHandler` decides the same state."""
    r = rooms.restricted
    state = {key: r.event(e) for key, e in r.current_state.items()}
    known = {rooms.main.room_id, r.room_id}
    for user, want in [(RITA, "allowed"), (ZED, "forbidden"), (ALICE, "not_restricted")]:
        got = await client.restricted_join(r.room_id, user, "example.org")
        user_rooms = (
            {rooms.main.room_id} if user == RITA else {r.room_id} if user == ALICE else set()
        )
        outcome, candidates = await asyncio.to_thread(
            synapse_restricted_join, state, user, "example.org", user_rooms, known
        )
        assert got.outcome == outcome == want
        if want == "allowed":
            assert got.allowed and got.authoriser in candidates and got.errcode is None
        if want == "forbidden":
            assert not got.allowed and got.errcode == "M_FORBIDDEN"
    # No member of remote.org can vouch for anyone here.
    remote = await client.restricted_join(r.room_id, RITA, "remote.org")
    assert remote.outcome == "unable_to_grant" and remote.errcode == "M_UNABLE_TO_GRANT_JOIN"


async def _rooms_for_user(client: RoomserverClient, rooms: Rooms) -> None:
    main, other = rooms.main.room_id, rooms.restricted.room_id
    assert await client.rooms_for_user(ALICE) == sorted([main, other])
    # Bob left the main room on the branch the resolution kept.
    assert await client.rooms_for_user(BOB) == [other]
    assert await client.rooms_for_user(BOB, "leave") == [main]
    assert await client.rooms_for_user(RITA) == [main]
    assert await client.rooms_for_user(ZED) == []


async def _acl_on_input(
    worker: Any, client: RoomserverClient, config: Config, js: JetStreamContext, rooms: Rooms
) -> None:
    """Server-server API, ACLs on `/send`: "If the sending server is denied access to
    the room identified by `room_id`, the PDU MUST be ignored": dead-lettered with
    `server_acl`, nothing stored, no output, the room as it was."""
    b = rooms.main
    before = await client.latest(b.room_id, include_state=True)
    processed_before = worker.pipeline.counters.processed
    denied = b.message(RITA, "from a denied origin", prev_events=list(rooms.heads))
    allowed = b.message(RITA, "from an allowed origin", prev_events=list(rooms.heads))
    await publish_inputs(
        js,
        config,
        [
            input_for(denied.pdu, origin="evil.org:8448"),
            input_for(allowed.pdu, origin="remote.org"),
        ],
        room_version=VERSION,
    )
    await wait_processed(worker, len(rooms.inputs) + 2)
    (letter,) = await deadletter_reader(js, config).take(1)
    assert letter["error"] == "server_acl"
    assert msgpack.unpackb(letter["payload"], raw=False)["event"] == denied.pdu
    stored = await client.events([denied.event_id, allowed.event_id])
    assert stored.missing == [denied.event_id]
    assert [e.status for e in stored.events] == ["accepted"]
    after = await client.latest(b.room_id, include_state=True)
    assert after.latest_event_ids == [allowed.event_id]
    assert after.state == before.state
    counters = worker.pipeline.counters
    assert counters.processed == processed_before + 1
    assert counters.dead_letter_codes == {"server_acl": 1}
