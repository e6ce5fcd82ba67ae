"""Randomized forked rooms, resolved by this package and by Synapse (the oracle).

Each room starts like a real one (create, admins, a public join rule, members) and then
grows a DAG whose events pick their prev events among the newest ones, so branches fork
and merge all the time while users concurrently ban, kick, promote and demote each other,
change the join rules, invite, join and leave. Every state before an event with several
prev events is resolved by both implementations from the same state maps, and every
event is authorized by both against the same state; the room's final state (over all
forward extremities) is compared too. Room versions 1 (v1), 2, 10, 11 (v2) and 12 (v2.1).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest

pytest.importorskip("synapse")

from tests.oracle import synapse_state as oracle
from worker.matrix.auth import AuthError, auth_types_for_event, check_auth
from worker.matrix.events import (
    CREATE,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    Event,
    StateKey,
    StateMap,
)
from worker.matrix.room_versions import RoomVersion, get_room_version
from worker.matrix.state_res import resolve_state

USERS = [f"@{name}:example.com" for name in ("alice", "bob", "carol", "dave", "eve", "frank")]
ALICE, BOB, CAROL, DAVE = USERS[:4]
CREATE_KEY: StateKey = (CREATE, "")
PL_KEY: StateKey = (POWER_LEVELS, "")
JR_KEY: StateKey = (JOIN_RULES, "")
LEVELS = [0, 25, 50, 75, 100]


class Mismatch(AssertionError):
    pass


class ForkedRoom:
    """One room built event by event, every event known to both implementations."""

    def __init__(self, version_id: str, rng: random.Random) -> None:
        self.version_id = version_id
        self.version: RoomVersion = get_room_version(version_id)
        self.rng = rng
        self.ours: dict[str, Event] = {}
        self.theirs: dict[str, Any] = {}
        self.after: dict[str, StateMap] = {}
        self.order: list[str] = []
        self.has_children: set[str] = set()
        self.room_id = "!room:example.com"
        self.ts = 1000
        self.resolutions = 0

    # -- building ----------------------------------------------------------------------

    def _refs(self, event_ids: Sequence[str]) -> list[Any]:
        if self.version.auth_events_are_pairs:
            return [[e, {"sha256": "x"}] for e in event_ids]
        return list(event_ids)

    def auth_chain(self, event_ids: Iterable[str]) -> set[str]:
        """Storage's fast path, naively: the auth chains of the events, without them."""
        seen: set[str] = set()
        stack = [a for e in event_ids for a in self.ours[e].auth_event_ids]
        while stack:
            event_id = stack.pop()
            if event_id not in seen:
                seen.add(event_id)
                stack.extend(self.ours[event_id].auth_event_ids)
        return seen

    def resolve(self, states: Sequence[Mapping[StateKey, str]]) -> StateMap:
        ours = resolve_state(self.version, states, self.ours.get)
        theirs = oracle.resolve(self.version_id, self.room_id, states, self.theirs)
        with_chains = resolve_state(self.version, states, self.ours.get, self.auth_chain)
        assert with_chains == ours, "the auth_chain fast path changed the result"
        self.resolutions += 1
        if ours != theirs:
            differing = sorted(
                (k, ours.get(k), theirs.get(k))
                for k in ours.keys() | theirs.keys()
                if ours.get(k) != theirs.get(k)
            )
            raise Mismatch(f"v{self.version_id}: ours vs Synapse differ on {differing}")
        return ours

    def state_before(self, prevs: Sequence[str]) -> StateMap:
        if not prevs:
            return {}
        if len(prevs) == 1:
            return self.after[prevs[0]]
        return self.resolve([self.after[p] for p in prevs])

    def add(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any],
        state_key: str | None,
        prevs: Sequence[str],
    ) -> str | None:
        """Build the event on `prevs`; keep it if both implementations authorize it."""
        before = self.state_before(prevs)
        keys = auth_types_for_event(self.version, event_type, state_key, sender, content)
        auth_ids = sorted(before[k] for k in keys if k in before)
        self.ts += self.rng.choice((0, 1, 1, 7))
        pdu: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": dict(content),
            "origin_server_ts": self.ts,
            "depth": 1 + max((self.ours[p].depth for p in prevs), default=0),
            "prev_events": self._refs(prevs),
            "auth_events": self._refs(auth_ids),
            "signatures": {},
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if not (event_type == CREATE and self.version.room_id_from_create):
            pdu["room_id"] = self.room_id
        if self.version.auth_events_are_pairs:
            pdu["event_id"] = f"${len(self.order)}-{self.rng.randrange(10**6)}:example.com"
        digest = hashlib.sha256(json.dumps(pdu, sort_keys=True).encode()).digest()
        pdu["hashes"] = {"sha256": base64.b64encode(digest).decode().rstrip("=")}
        theirs = oracle.synapse_event(pdu, self.version_id)
        event_id = theirs.event_id
        if event_id in self.ours:
            return None
        ours = Event(event_id, self.version, pdu)
        if event_type == CREATE:
            self.room_id = ours.room_id
        self.ours[event_id] = ours
        self.theirs[event_id] = theirs

        our_auth = {k: self.ours[before[k]] for k in keys | {CREATE_KEY} if k in before}
        their_auth = [self.theirs[e.event_id] for e in our_auth.values()]
        try:
            check_auth(ours, our_auth)
            allowed = True
        except AuthError:
            allowed = False
        if allowed != oracle.allows(theirs, their_auth):
            raise Mismatch(
                f"v{self.version_id}: authorization of {event_type} by {sender} "
                f"{content} differs (ours: {allowed})"
            )
        if not allowed:
            del self.ours[event_id], self.theirs[event_id]
            return None
        after = dict(before)
        if state_key is not None:
            after[(event_type, state_key)] = event_id
        self.after[event_id] = after
        self.order.append(event_id)
        self.has_children.update(prevs)
        return event_id

    def chain(
        self, event_type: str, sender: str, content: Mapping[str, Any], state_key: str
    ) -> str:
        prevs = self.order[-1:]
        event_id = self.add(event_type, sender, content, state_key, prevs)
        assert event_id is not None, f"bootstrap {event_type} by {sender} was refused"
        return event_id

    def bootstrap(self) -> None:
        create: dict[str, Any] = {"room_version": self.version_id}
        if not self.version.implicit_room_creator:
            create["creator"] = ALICE
        self.chain(CREATE, ALICE, create, "")
        self.chain(MEMBER, ALICE, {"membership": "join"}, ALICE)
        users = {BOB: 100, CAROL: 50}
        if not self.version.room_id_from_create:
            users[ALICE] = 100
        self.chain(POWER_LEVELS, ALICE, {"users": users, "ban": 50, "kick": 50}, "")
        self.chain(JOIN_RULES, ALICE, {"join_rule": "public"}, "")
        for user in (BOB, CAROL, DAVE):
            self.chain(MEMBER, user, {"membership": "join"}, user)

    # -- random growth -----------------------------------------------------------------

    def pick_prevs(self) -> list[str]:
        rng = self.rng
        recent = self.order[-8:]
        extremities = [e for e in self.order if e not in self.has_children]
        roll = rng.random()
        if roll < 0.35 and len(extremities) > 1:
            return rng.sample(extremities, min(len(extremities), rng.choice((2, 2, 3))))
        if roll < 0.75:
            return [rng.choice(recent)]
        return rng.sample(recent, min(2, len(recent)))

    def random_event(self) -> None:
        rng = self.rng
        prevs = self.pick_prevs()
        before = self.state_before(prevs)

        def membership(user: str) -> str | None:
            event_id = before.get((MEMBER, user))
            return self.ours[event_id].membership if event_id is not None else None

        joined = [u for u in USERS if membership(u) == "join"] or [ALICE]
        sender = rng.choice(joined)
        other = rng.choice([u for u in USERS if u != sender])
        action = rng.choice(
            ("ban", "ban", "kick", "unban", "power", "power", "power", "join", "join",
             "leave", "invite", "join_rules", "topic")
        )  # fmt: skip
        if action == "ban":
            self.add(MEMBER, sender, {"membership": "ban"}, other, prevs)
        elif action in ("kick", "unban"):
            self.add(MEMBER, sender, {"membership": "leave"}, other, prevs)
        elif action == "power":
            pl_id = before.get(PL_KEY)
            content = json.loads(json.dumps(self.ours[pl_id].content)) if pl_id else {}
            users = content.setdefault("users", {})
            target = rng.choice([u for u in USERS if not self._is_v12_creator(u)])
            users[target] = rng.choice(LEVELS)
            if rng.random() < 0.2:
                content[rng.choice(("ban", "kick", "state_default"))] = rng.choice(LEVELS)
            if rng.random() < 0.2 and not self.version.enforce_int_power_levels:
                users[target] = str(users[target])
            self.add(POWER_LEVELS, sender, content, "", prevs)
        elif action == "join":
            user = rng.choice([u for u in USERS if membership(u) != "join"] or USERS)
            self.add(MEMBER, user, {"membership": "join"}, user, prevs)
        elif action == "leave":
            self.add(MEMBER, sender, {"membership": "leave"}, sender, prevs)
        elif action == "invite":
            self.add(MEMBER, sender, {"membership": "invite"}, other, prevs)
        elif action == "join_rules":
            rule = rng.choice(("public", "invite"))
            self.add(JOIN_RULES, sender, {"join_rule": rule}, "", prevs)
        else:
            self.add("m.room.topic", sender, {"topic": f"t{rng.randrange(100)}"}, "", prevs)

    def _is_v12_creator(self, user: str) -> bool:
        return self.version.room_id_from_create and user == ALICE

    def final_state(self) -> StateMap:
        extremities = [e for e in self.order if e not in self.has_children]
        return self.resolve([self.after[e] for e in extremities])


VERSIONS = ["1", "2", "10", "11", "12"]
SEEDS = range(20)
EVENTS_PER_ROOM = 55


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("version_id", VERSIONS)
def test_random_forks_agree_with_synapse(version_id: str, seed: int) -> None:
    rng = random.Random(f"{version_id}/{seed}")
    room = ForkedRoom(version_id, rng)
    room.bootstrap()
    for _ in range(EVENTS_PER_ROOM):
        room.random_event()
    room.final_state()
    # The room must really have forked and merged for the comparison to mean anything.
    assert room.resolutions >= 5


@pytest.mark.parametrize("version_id", VERSIONS)
def test_doctored_state_maps_agree_with_synapse(version_id: str) -> None:
    """State maps another server could claim: real states with some keys swapped for
    other (older, newer, or other branches') events of the same key, or dropped."""
    rng = random.Random(f"doctored/{version_id}")
    room = ForkedRoom(version_id, rng)
    room.bootstrap()
    for _ in range(EVENTS_PER_ROOM):
        room.random_event()
    by_key: dict[StateKey, list[str]] = {}
    for event_id in room.order:
        event = room.ours[event_id]
        if event.is_state:
            by_key.setdefault(event.key, []).append(event_id)
    for _ in range(60):
        states = []
        for _ in range(rng.choice((2, 2, 3))):
            state = dict(room.after[rng.choice(room.order)])
            for key in rng.sample(sorted(by_key), rng.randint(0, 3)):
                if key != CREATE_KEY and rng.random() < 0.2:
                    state.pop(key, None)
                elif key != CREATE_KEY:
                    state[key] = rng.choice(by_key[key])
            states.append(state)
        room.resolve(states)


def test_oracle_store_matches_synapse_in_memory_path() -> None:
    """The oracle's own store agrees with Synapse's in-memory auth difference code."""
    for version_id in ("11", "12"):
        rng = random.Random(f"store/{version_id}")
        room = ForkedRoom(version_id, rng)
        room.bootstrap()
        for _ in range(EVENTS_PER_ROOM):
            room.random_event()
        extremities = [e for e in room.order if e not in room.has_children]
        for size in (2, 3):
            states = [room.after[e] for e in extremities[-size:]] + [
                room.after[e] for e in rng.sample(room.order, 2)
            ]
            in_memory = oracle.resolve(version_id, room.room_id, states, room.theirs)
            persisted = oracle.resolve(
                version_id, room.room_id, states, room.theirs, persisted=True
            )
            assert in_memory == persisted
            assert resolve_state(room.version, states, room.ours.get) == in_memory
