"""State resolution of a fork in a 10,000-member room: how long `resolve_state` takes.

`python -m bench.state_res_bench [--members N] [--repeat R]`

The room is built in memory from plain dicts (no hashing, readable event IDs): a create
event, an admin, power levels, public join rules, then N members (one in ten invited
first, one in twenty with a later display name change). Three forks are resolved:

- simple: one branch bans three members and promotes a moderator while the other lets
  fifty people join, two leave and changes the topic;
- deep: the same, but the first branch changes the power levels three times and
  re-sends members' display names, so superseded events sit in the auth difference's
  candidates and the unconflicted members' chains must be probed.

- netsplit: the second branch instead has N/5 joins and N/20 leaves, so thousands of
  events are conflicted and go through the orderings and the auth checks.

Each is resolved as room version 10 (v2) and 12 (v2.1); the best of R runs is printed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from worker.matrix.events import Event, StateKey, StateMap
from worker.matrix.room_versions import RoomVersion, get_room_version
from worker.matrix.state_res import resolve_state

ADMIN = "@admin:example.org"
MOD = "@mod:example.org"


class Room:
    def __init__(self, version: RoomVersion) -> None:
        self.version = version
        self.events: dict[str, Event] = {}
        self.state: StateMap = {}
        self.ts = 1_000
        self.room_id = "!bench:example.org"

    def add(
        self,
        event_type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str,
        state: StateMap | None = None,
    ) -> str:
        """Add a state event built on `state` (default: the room's main line)."""
        base = self.state if state is None else state
        v12 = self.version.room_id_from_create
        keys: list[StateKey] = [("m.room.power_levels", ""), ("m.room.member", sender)]
        if not v12:
            keys.append(("m.room.create", ""))
        if event_type == "m.room.member":
            keys.append(("m.room.member", state_key))
            if content.get("membership") in ("join", "invite"):
                keys.append(("m.room.join_rules", ""))
        auth = sorted({base[k] for k in keys if k in base})
        event_id = f"${len(self.events)}"
        pdu: dict[str, Any] = {
            "type": event_type,
            "state_key": state_key,
            "sender": sender,
            "content": content,
            "origin_server_ts": self.ts,
            "depth": len(self.events),
            "prev_events": [],
            "auth_events": auth,
        }
        if event_type == "m.room.create" and v12:
            self.room_id = "!" + event_id[1:]
        else:
            pdu["room_id"] = self.room_id
        self.ts += 1
        self.events[event_id] = Event(event_id, self.version, pdu)
        base[(event_type, state_key)] = event_id
        return event_id


def build(version_id: str, members: int, scenario: str) -> tuple[Room, StateMap, StateMap]:
    version = get_room_version(version_id)
    room = Room(version)
    create: dict[str, Any] = {"room_version": version_id}
    if not version.implicit_room_creator:
        create["creator"] = ADMIN
    room.add("m.room.create", ADMIN, create, "")
    room.add("m.room.member", ADMIN, {"membership": "join"}, ADMIN)
    users = {MOD: 50} if version.room_id_from_create else {ADMIN: 100, MOD: 50}
    room.add("m.room.power_levels", ADMIN, {"users": users}, "")
    room.add("m.room.join_rules", ADMIN, {"join_rule": "public"}, "")
    room.add("m.room.member", MOD, {"membership": "join"}, MOD)
    names = [f"@user{i}:example.org" for i in range(members)]
    for i, user in enumerate(names):
        if i % 10 == 0:
            room.add("m.room.member", ADMIN, {"membership": "invite"}, user)
        room.add("m.room.member", user, {"membership": "join"}, user)
        if i % 20 == 0:
            room.add("m.room.member", user, {"membership": "join", "displayname": "x"}, user)

    fork = dict(room.state)
    left = dict(fork)
    right = dict(fork)
    for i in (3, 300, 3000):
        room.add("m.room.member", ADMIN, {"membership": "ban"}, names[i % members], left)
    deep = scenario == "deep"
    power_rounds = 3 if deep else 1
    for level in range(power_rounds):
        promoted = {**users, names[1]: 50 + level}
        room.add("m.room.power_levels", ADMIN, {"users": promoted}, "", left)
    if deep:
        for i in range(0, members, members // 25 or 1):
            content = {"membership": "join", "displayname": "renamed"}
            room.add("m.room.member", names[i], content, names[i], left)
    newcomers = members // 5 if scenario == "netsplit" else 50
    for i in range(newcomers):
        room.add("m.room.member", f"@new{i}:example.org", {"membership": "join"},
                 f"@new{i}:example.org", right)  # fmt: skip
    leavers = range(7, members, 20) if scenario == "netsplit" else (7, 70)
    for i in leavers:
        room.add("m.room.member", names[i], {"membership": "leave"}, names[i], right)
    room.add("m.room.topic", MOD, {"topic": "concurrent"}, "", right)
    return room, left, right


def resolve_fork(room: Room, left: StateMap, right: StateMap) -> StateMap:
    return resolve_state(room.version, [left, right], room.events.get)


def best_of(repeat: int, call: Callable[[], StateMap]) -> tuple[float, StateMap]:
    best = float("inf")
    result: StateMap = {}
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'fork':<10}{'version':<9}{'state':>8}{'events':>8}{'resolve (ms)':>14}")
    for scenario in ("simple", "deep", "netsplit"):
        for version_id in ("10", "12"):
            room, left, right = build(version_id, args.members, scenario)
            seconds, result = best_of(args.repeat, partial(resolve_fork, room, left, right))
            assert len(result) > args.members
            print(
                f"{scenario:<10}{version_id:<9}{len(result):>8}{len(room.events):>8}"
                f"{seconds * 1000:>14.1f}"
            )


if __name__ == "__main__":
    main()
