"""The federation queries end to end: a real nats-server, the running worker, answers
read back with `worker.client`, checked against the spec's text and Synapse's own
functions (tests/oracle) on the same events.

One room (version 10) has a server ACL denying `evil.org`, history visibility `joined`,
messages from before and after a user of `remote.org` joined, and a fork left open (two
forward extremities whose states differ); a second room is restricted to members of
the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from tests.e2e.harness import deadletter_reader, input_for, publish_inputs, running_worker
from tests.query.scenario import wait_processed
from worker.bus.subjects import Subjects
from worker.client import RoomserverClient, RoomserverError
from worker.config import Config
from worker.matrix.builder import RoomBuilder
from worker.matrix.events import Event

pytest.importorskip("synapse")

from tests.oracle.synapse_prepare import synapse_auth_event_ids  # noqa: E402
from tests.oracle.synapse_restricted import synapse_restricted_join  # noqa: E402
from tests.oracle.synapse_state import resolve, synapse_event  # noqa: E402
from tests.oracle.synapse_visibility import synapse_filter_events_for_server  # noqa: E402
from tests.oracle.synapse_walks import StoredEvent, SynapseWalks  # noqa: E402

VERSION = "10"
ALICE = "@alice:example.org"
BOB = "@bob:example.org"
RITA = "@rita:remote.org"
ZED = "@zed:remote.org"
ACL = {"allow": ["*"], "deny": ["evil.org"], "allow_ip_literals": False}


@dataclass
class Rooms:
    main: RoomBuilder
    restricted: RoomBuilder
    named: dict[str, Event]
    #: Every input in publishing order (the arrival order of the worker).
    inputs: list[dict[str, Any]]
    #: The two forward extremities of the main room.
    heads: tuple[str, str]

    def id(self, name: str) -> str:
        return self.named[name].event_id


def build_rooms() -> Rooms:
    b = RoomBuilder(VERSION, ALICE)
    named: dict[str, Event] = {}
    inputs: list[dict[str, Any]] = []

    def add(name: str, event: Event) -> Event:
        named[name] = event
        inputs.append(input_for(event.pdu))
        return event

    for index, event in enumerate(b.bootstrap()):
        add(f"boot{index}", event)
    add("join_bob", b.join(BOB))
    add("acl", b.state_event(ALICE, "m.room.server_acl", "", ACL))
    add(
        "hv",
        b.state_event(ALICE, "m.room.history_visibility", "", {"history_visibility": "joined"}),
    )
    add("before1", b.message(ALICE, "before rita"))
    add("before2", b.message(BOB, "still before rita"))
    add("join_rita", b.join(RITA))
    add("after1", b.message(RITA, "hello from remote"))
    fork = add("after2", b.message(ALICE, "welcome"))
    # Two branches from `after2`, left unmerged: a topic on one, a name and Bob's exit
    # on the other, so the extremities' states differ.
    add(
        "topic",
        b.state_event(ALICE, "m.room.topic", "", {"topic": "t"}, prev_events=[fork.event_id]),
    )
    add("name", b.state_event(ALICE, "m.room.name", "", {"name": "n"}, prev_events=[fork.event_id]))
    add("bob_leaves", b.leave(BOB, prev_events=[named["name"].event_id]))

    r = RoomBuilder(VERSION, BOB, start_ts=2_000_000_000_000)
    for index, event in enumerate([r.create(), r.join(BOB), r.power_levels(BOB)]):
        add(f"r{index}", event)
    add(
        "r_rules",
        r.join_rules(
            BOB, "restricted", allow=[{"type": "m.room_membership", "room_id": b.room_id}]
        ),
    )
    add("r_alice", r.invite(BOB, ALICE))
    add("r_alice_join", r.join(ALICE))
    return Rooms(b, r, named, inputs, (named["topic"].event_id, named["bob_leaves"].event_id))


async def served(config: Config, js: JetStreamContext) -> Any:
    rooms = build_rooms()
    return rooms


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
        from tests.oracle.synapse_acl import synapse_server_allowed

        for server in ("example.org", "remote.org:8448", "evil.org", "EVIL.org:443", "1.2.3.4"):
            answer = await client.server_allowed(b.room_id, server)
            assert answer.acl_event_id == rooms.id("acl")
            assert answer.allowed == synapse_server_allowed(ACL, server.split(":")[0]), server
        assert not (await client.server_allowed(b.room_id, "evil.org")).allowed
        no_acl = await client.server_allowed(rooms.restricted.room_id, "evil.org")
        assert no_acl.allowed and no_acl.acl_event_id is None
