"""A random generator of forked rooms: several servers that see each other late or not at
all (netsplits), honest and adversarial senders, merges of concurrent branches.

Every event is a valid PDU of its room version (`RoomBuilder` fills in hashes, IDs and
v12 room IDs). Its auth events are chosen by the spec's selection rules from the state
its *sender* sees, which is usually the true state before the event (Synapse's, handed
in by the caller through `observe`), but not always:

- a stubborn sender keeps building on its own rejected events, believing they applied
  (its state then holds the rejected event, so its auth events may name it);
- an adversarial sender sometimes forges auth events from an old state in which it still
  had the power it has since lost;
- senders attempt whatever they like: state changes without the power, bans, kicks and
  power changes racing each other on both sides of a netsplit, joins to invite-only
  rooms, messages after being banned.

Honest servers build on any event that is not rejected, including events another server
soft-failed (soft-failing is local to a receiver). About 15% of events merge concurrent
branches (more when a server's view has many tips).

The generator is driven one event at a time: `next_event()` builds an event, the caller
feeds it to the truth (`SynapseRoom.receive`) and reports the verdict with `observe()`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.matrix.builder import RoomBuilder
from worker.matrix.events import JOIN_RULES, MEMBER, POWER_LEVELS, Event

StateKey = tuple[str, str]
StateMap = dict[StateKey, str]


@dataclass(frozen=True)
class Actor:
    user_id: str
    #: Attempts things it may not do, and forges auth events from old states.
    adversarial: bool = False
    #: Builds on its own rejected events as if they had been accepted.
    stubborn: bool = False

    @property
    def server(self) -> str:
        return self.user_id.partition(":")[2]


CREATOR = Actor("@alice:a.example")
ACTORS = (
    CREATOR,
    Actor("@bob:a.example"),
    Actor("@carol:b.example"),
    Actor("@dan:b.example"),
    Actor("@erin:c.example"),
    Actor("@frank:c.example", adversarial=True),
    Actor("@mallory:d.example", adversarial=True, stubborn=True),
    Actor("@trudy:d.example", adversarial=True),
)
SERVERS = sorted({a.server for a in ACTORS})
LEVELS = (0, 0, 25, 50, 50, 75, 100)


class ForkedRoom:
    """Builds the events of one random forked room."""

    def __init__(self, room_version: str, seed: int | str, *, merge_rate: float = 0.15) -> None:
        self.rng = random.Random(f"{room_version}:{seed}")
        self.merge_rate = merge_rate
        self.builder = RoomBuilder(room_version, CREATOR.user_id)
        self.version = self.builder.room_version
        #: Events in build order, and what the truth made of them.
        self.order: list[str] = []
        self.rejected: set[str] = set()
        #: The state after each event as its sender believes it: the true state after,
        #: except after a rejected event, where the sender believes it applied.
        self.believed: dict[str, StateMap] = {}
        self.known: dict[str, set[str]] = {s: set() for s in SERVERS}
        #: Netsplit: the group of each server, and events left until the network heals.
        self.group: dict[str, int] = {s: 0 for s in SERVERS}
        self.split_left = 0
        self._bootstrap = self._bootstrap_events()
        self._pending: Event | None = None
        #: The truth's state before a set of prev events (set by the caller).
        self.resolve: Any = None

    # -- driving -------------------------------------------------------------------------

    def _bootstrap_events(self) -> list[Event]:
        b = self.builder
        #: From v12 creators have infinite power and may not be listed in power levels.
        self.creators: set[str] = set()
        additional: list[str] | None = None
        users = {"@bob:a.example": 100, "@carol:b.example": 50, "@erin:c.example": 50}
        if self.version.room_id_from_create:
            self.creators.add(CREATOR.user_id)
            if self.rng.random() < 0.5:
                additional = ["@carol:b.example"]
                self.creators.update(additional)
        else:
            users[CREATOR.user_id] = 100
        levels = b.default_power_levels()
        levels["users"] = {u: v for u, v in users.items() if u not in self.creators}
        return b.bootstrap(power_levels=levels, additional_creators=additional)

    def next_event(self) -> Event:
        """The next event to send (the bootstrap first)."""
        if len(self.order) < len(self._bootstrap):
            event = self._bootstrap[len(self.order)]
        else:
            event = self._random_event()
        self._pending = event
        return event

    def observe(self, event: Event, outcome: str, before: StateMap, after: StateMap) -> None:
        """What the truth made of the event `next_event` returned."""
        assert event is self._pending
        self.order.append(event.event_id)
        believed = dict(after)
        if outcome == "rejected":
            self.rejected.add(event.event_id)
            if event.is_state:
                believed = dict(before)
                believed[event.key] = event.event_id
        self.believed[event.event_id] = believed
        origin = event.sender.partition(":")[2]
        if len(self.order) <= len(self._bootstrap):
            for known in self.known.values():
                known.add(event.event_id)
        else:
            self.known[origin].add(event.event_id)
        self._tick_netsplit()

    # -- the network ------------------------------------------------------------------

    def _tick_netsplit(self) -> None:
        if self.split_left:
            self.split_left -= 1
            if not self.split_left:
                self.group = {s: 0 for s in SERVERS}
            return
        if self.rng.random() < 0.03:
            while True:
                self.group = {s: self.rng.randrange(2) for s in SERVERS}
                if len(set(self.group.values())) == 2:
                    break
            self.split_left = self.rng.randint(20, 60)

    def _sync(self, server: str) -> None:
        """The server hears from the servers it can reach, each with some delay."""
        for other in SERVERS:
            reachable = other != server and self.group[other] == self.group[server]
            if reachable and self.rng.random() < 0.3:
                self.known[server] |= self.known[other]

    def _tips(self, actor: Actor) -> list[str]:
        """Events the actor's server knows that no known accepted-looking event follows.

        Rejected events are skipped (every server rejects them alike), except a stubborn
        actor's own."""
        known = self.known[actor.server]

        def usable(eid: str) -> bool:
            if eid not in self.rejected:
                return True
            return actor.stubborn and self.builder.event(eid).sender == actor.user_id

        followed = {p for c in known if usable(c) for p in self.builder.event(c).prev_event_ids}
        index = {eid: i for i, eid in enumerate(self.order)}
        return sorted((e for e in known if usable(e) and e not in followed), key=index.__getitem__)

    # -- one random event ---------------------------------------------------------------

    def _random_event(self) -> Event:
        rng = self.rng
        for _ in range(20):
            actor = rng.choice(ACTORS)
            self._sync(actor.server)
            prevs, state = self._parents(actor)
            if self._wants_to_act(actor, state):
                break
        return self._action(actor, prevs, state)

    def _parents(self, actor: Actor) -> tuple[list[str], StateMap]:
        """The prev events the actor builds on and the state it believes is before them."""
        rng = self.rng
        tips = self._tips(actor)
        prevs = [tips[-1]]
        if len(tips) >= 2 and (rng.random() < self.merge_rate or len(tips) > 6):
            k = min(len(tips) - 1, rng.choice([1, 1, 2, 3]))
            prevs += rng.sample(tips[:-1], k)
        elif len(tips) >= 2 and rng.random() < 0.2:
            prevs = [rng.choice(tips)]
        own_rejected = [
            e for e in tips if e in self.rejected and self.builder.event(e).sender == actor.user_id
        ]
        if own_rejected and rng.random() < 0.7:
            prevs = [own_rejected[-1]]
        state = self.believed[prevs[0]] if len(prevs) == 1 else self.resolve(prevs)
        if actor.adversarial and rng.random() < 0.1:
            known = [e for e in self.order if e in self.known[actor.server]]
            state = self.believed[rng.choice(known)]
        return prevs, state

    def _wants_to_act(self, actor: Actor, state: StateMap) -> bool:
        """Honest actors outside the room only try to join when they believe they may."""
        membership = self._content(state, (MEMBER, actor.user_id)).get("membership")
        if membership == "join" or actor.adversarial:
            return True
        if membership == "ban":
            return False
        rule = self._content(state, (JOIN_RULES, "")).get("join_rule")
        return rule == "public" or membership == "invite"

    def _content(self, state: Mapping[StateKey, str], key: StateKey) -> dict[str, Any]:
        eid = state.get(key)
        return dict(self.builder.event(eid).content) if eid else {}

    def _action(self, actor: Actor, prevs: list[str], state: StateMap) -> Event:
        rng, b, me = self.rng, self.builder, actor.user_id
        opts: dict[str, Any] = {"prev_events": prevs, "state": state}
        target = rng.choice(ACTORS).user_id
        membership = self._content(state, (MEMBER, me)).get("membership")
        if membership != "join" and rng.random() < (0.3 if actor.adversarial else 0.05):
            membership = "join"  # try to act without being in the room
        if membership != "join":
            return b.join(me, **opts) if rng.random() < 0.9 else b.leave(me, **opts)
        action = rng.choices(
            [
                "message",
                "topic",
                "power",
                "ban",
                "kick",
                "unban",
                "invite",
                "rules",
                "leave",
                "redact",
                "custom",
                "profile",
            ],
            weights=[34, 8, 9, 6, 5, 3, 4, 4, 4, 3, 4, 4],
        )[0]
        if action == "message":
            return b.message(me, f"m{len(self.order)}", **opts)
        if action == "topic":
            return b.state_event(me, "m.room.topic", "", {"topic": f"t{len(self.order)}"}, **opts)
        if action == "power":
            content = self._content(state, (POWER_LEVELS, "")) or b.default_power_levels()
            users = dict(content.get("users", {}))
            who = me if actor.adversarial and rng.random() < 0.4 else target
            # Never a v12 creator: Synapse raises SynapseError (not AuthError) for that,
            # which drops the event unprocessed instead of rejecting it.
            if who not in self.creators:
                users[who] = 100 if who == me and actor.adversarial else rng.choice(LEVELS)
            content["users"] = users
            if rng.random() < 0.2:
                content[rng.choice(["state_default", "ban", "kick", "invite"])] = rng.choice(LEVELS)
            return b.power_levels(me, content, **opts)
        if action == "ban":
            return b.ban(me, target, **opts)
        if action == "kick":
            return b.kick(me, target, **opts)
        if action == "unban":
            return b.member(me, target, "leave", **opts)
        if action == "invite":
            return b.invite(me, target, **opts)
        if action == "rules":
            rules = ["public", "invite"] if actor.adversarial else ["public"] * 3 + ["invite"]
            return b.join_rules(me, rng.choice(rules), **opts)
        if action == "leave":
            return b.leave(me, **opts)
        if action == "redact":
            # Only messages are redacted: redacting state would change the auth content
            # Synapse reads back, which this test does not model.
            messages = [
                e
                for e in self.order
                if e in self.known[actor.server]
                and not b.event(e).is_state
                and b.event(e).type == "m.room.message"
            ]
            if messages:
                return b.redaction(me, rng.choice(messages), **opts)
            return b.message(me, "nothing to redact", **opts)
        if action == "custom":
            key = rng.choice(["", me, target])
            return b.state_event(me, "org.example.state", key, {"n": len(self.order)}, **opts)
        return b.join(me, content={"displayname": f"d{len(self.order)}"}, **opts)
