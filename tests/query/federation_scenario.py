"""Two rooms for the federation queries, fed to a real worker.

The main room (version 10) has a server ACL denying `evil.org`, history visibility
`joined`, messages from before and after a user of `remote.org` joined, and a fork left
open (two forward extremities whose states differ); a second room is restricted to
members of the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.harness.e2e import input_for
from worker.matrix.builder import RoomBuilder
from worker.matrix.events import Event

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
