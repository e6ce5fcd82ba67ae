"""Differential test: our authorization verdicts against Synapse's, on generated rooms.

A seeded random walk builds each room event by event: joins, leaves, kicks, bans,
unbans, invites (also third-party ones with real signatures), knocks, power level and
join rule changes, topics, messages, custom state, aliases and redactions, from senders
with and without power. Now and then an event cites stale, extra or missing auth events.
Every event gets two verdicts from each side: against its own auth events (rejection)
and against the room's current state (soft failure). They must agree.

The generator stays inside what both implementations read the same way: it does not
produce shapes where Synapse is knowingly looser or stricter than the spec (booleans as
power levels, a non-boolean `m.federate`, a redaction without `redacts`, an undecodable
public key ahead of a good one in `m.room.third_party_invite`), which the unit tests
cover against the spec instead.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("synapse.event_auth")

from nacl.signing import SigningKey

from tests.oracle.synapse_auth import SynapseOracle, synapse_event_id
from worker.matrix.auth import (
    AuthError,
    auth_types_for_event,
    check_auth,
    state_from_auth_events,
    validate_auth_events,
)
from worker.matrix.canonical_json import encode_canonical_json
from worker.matrix.events import CREATE, JOIN_RULES, MEMBER, POWER_LEVELS, Event, StateKey
from worker.matrix.hashes import encode_base64
from worker.matrix.room_versions import ROOM_VERSIONS

USERS = ["@alice:a", "@bob:b", "@carol:a", "@dave:c", "@erin:b", "@frank:d"]
CREATOR = USERS[0]
JOIN_RULE_CHOICES = ["public", "invite", "knock", "restricted", "knock_restricted", "private"]
LEVELS = [0, 1, 10, 49, 50, 51, 75, 99, 100, 101]
NAMED = ["users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"]
IDENTITY_KEYS = [SigningKey(bytes([n]) * 32) for n in range(3)]

#: (room version, number of rooms, events per room)
PLAN = [("1", 40, 100), ("6", 40, 100), ("10", 40, 100), ("11", 40, 100), ("12", 50, 100)]
PLAN += [(str(v), 8, 80) for v in (2, 3, 4, 5, 7, 8, 9)]


def _domain(user: str) -> str:
    return user.partition(":")[2]


class RoomWalk:
    """One generated room, checked against Synapse as it grows."""

    def __init__(self, version: str, seed: int) -> None:
        self.version = ROOM_VERSIONS[version]
        self.rng = random.Random(f"{version}/{seed}")
        self.oracle = SynapseOracle()
        self.state: dict[StateKey, Event] = {}
        self.history: dict[StateKey, list[Event]] = {}
        self.events: dict[str, Event] = {}
        self.rejected: set[str] = set()
        self.last: Event | None = None
        self.counter = 0
        self.create: Event | None = None
        self.room_id = f"!r{seed}:a"
        self.snapshots: list[dict[StateKey, Event]] = []
        #: Off while the room is set up: its first events must be accepted.
        self.perturb = False
        self.verdicts: Counter[str] = Counter()
        #: (kind of event, verdict) counts, to show the walk covers each rule both ways.
        self.kinds: Counter[tuple[str, str]] = Counter()

    # -- building ------------------------------------------------------------------

    def build(
        self, event_type: str, sender: str, content: dict[str, Any], state_key: str | None = None
    ) -> Event:
        self.counter += 1
        version = self.version
        auth_ids = self._auth_ids(event_type, sender, content, state_key)
        prev = [self.last.event_id] if self.last is not None else []
        pairs = version.auth_events_are_pairs
        pdu: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": content,
            "prev_events": [[p, {}] for p in prev] if pairs else prev,
            "auth_events": [[a, {}] for a in auth_ids] if pairs else auth_ids,
            "depth": self.counter,
            "origin_server_ts": 1_000_000 + self.counter,
            "hashes": {"sha256": "AAAA"},
            "signatures": {},
        }
        if not (version.room_id_from_create and event_type == CREATE):
            pdu["room_id"] = self.room_id
        if state_key is not None:
            pdu["state_key"] = state_key
        if pairs:
            origin = sender if self.rng.random() < 0.8 else self.rng.choice(USERS)
            pdu["event_id"] = f"${self.counter}:{_domain(origin)}"
        event_id = synapse_event_id(pdu, version)
        return Event(event_id=event_id, room_version=version, pdu=pdu)

    def _auth_ids(
        self, event_type: str, sender: str, content: dict[str, Any], state_key: str | None
    ) -> list[str]:
        if event_type == CREATE:
            return []
        keys = sorted(auth_types_for_event(self.version, event_type, state_key, sender, content))
        # Mostly the current state; sometimes a state from a while ago, as an event sent
        # from a stale fork would cite (the case soft failure exists for).
        source = self.state
        if not self.perturb:
            return [source[key].event_id for key in keys if key in source]
        if len(self.snapshots) > 1 and self.rng.random() < 0.12:
            source = self.rng.choice(self.snapshots[-12:-1])
        ids = []
        for key in keys:
            event = source.get(key)
            if event is None:
                continue
            roll = self.rng.random()
            if roll < 0.04:
                continue  # cite nothing for this key
            versions = self.history[key]
            if roll < 0.08 and len(versions) > 1:
                ids.append(self.rng.choice(versions).event_id)  # any version of it
            else:
                ids.append(event.event_id)
        roll = self.rng.random()
        if roll < 0.03 and self.state:
            ids.append(self.rng.choice(list(self.state.values())).event_id)  # maybe not allowed
        elif roll < 0.05 and self.rejected:
            ids.append(self.rng.choice(sorted(self.rejected)))
        return ids

    # -- judging -------------------------------------------------------------------

    def ours_against_auth_events(self, event: Event) -> str | None:
        try:
            known = {eid: self.events.get(eid) for eid in event.auth_event_ids}
            validate_auth_events(event, known, self.rejected)
            if event.type == CREATE:
                check_auth(event, {})
                return None
            cited = [e for e in known.values() if e is not None]
            v12_create = self.create if self.version.room_id_from_create else None
            check_auth(event, state_from_auth_events(cited, v12_create))
        except AuthError as exc:
            return exc.reason
        return None

    def ours_against_state(self, event: Event) -> str | None:
        try:
            check_auth(event, self.state)
        except AuthError as exc:
            return exc.reason
        return None

    def submit(self, event: Event) -> bool:
        """Judge an event both ways on both sides, then apply it if it is accepted."""
        ours = self.ours_against_auth_events(event)
        theirs = self.oracle.check_against_auth_events(event)
        assert (ours is None) == (theirs is None), self._explain(event, ours, theirs, "auth events")
        accepted = ours is None
        if accepted and event.type != CREATE:
            ours_now = self.ours_against_state(event)
            theirs_now = self.oracle.check_against_state(event, self.state)
            assert (ours_now is None) == (theirs_now is None), self._explain(
                event, ours_now, theirs_now, "current state"
            )
            if ours_now is not None:
                self.verdicts["soft_failed"] += 1
                accepted = False  # keep soft-failed events out of the walk's state
        self.events[event.event_id] = event
        self.oracle.add(event, rejected=ours is not None)
        kind = f"{event.type}:{event.membership}" if event.type == MEMBER else event.type
        verdict = "rejected" if ours is not None else "allowed" if accepted else "soft_failed"
        self.verdicts[verdict] += 1
        self.kinds[(kind, verdict)] += 1
        if ours is not None:
            self.rejected.add(event.event_id)
        if not accepted:
            return False
        self.last = event
        if event.is_state:
            self.state[event.key] = event
            self.history.setdefault(event.key, []).append(event)
            self.snapshots.append(dict(self.state))
        if event.type == CREATE:
            self.create = event
            self.room_id = event.room_id
        return True

    def _explain(self, event: Event, ours: str | None, theirs: str | None, against: str) -> str:
        state = {f"{k[0]}|{k[1]}": v.content for k, v in self.state.items()}
        return (
            f"verdicts differ against {against} in v{self.version.identifier}: "
            f"ours={ours!r} synapse={theirs!r}\nevent={dict(event.pdu)}\nstate={state}"
        )

    # -- the walk ------------------------------------------------------------------

    def start(self) -> None:
        content: dict[str, Any] = {"room_version": self.version.identifier}
        if not self.version.implicit_room_creator:
            content["creator"] = CREATOR
        if self.version.room_id_from_create and self.rng.random() < 0.4:
            content["additional_creators"] = [self.rng.choice(USERS[1:])]
        assert self.submit(self.build(CREATE, CREATOR, content, ""))
        assert self.submit(self.build(MEMBER, CREATOR, {"membership": "join"}, CREATOR))
        if self.rng.random() < 0.8:
            self.submit(self.build(POWER_LEVELS, CREATOR, self._initial_power(), ""))
        if self.rng.random() < 0.8:
            rule = self.rng.choice(["public", "public", "public", "invite", "knock", "restricted"])
            self.submit(self.build(JOIN_RULES, CREATOR, {"join_rule": rule}, ""))
        self.perturb = True

    def _initial_power(self) -> dict[str, Any]:
        users = {u: self.rng.choice(LEVELS) for u in self.rng.sample(USERS[1:], 3)}
        if not self.version.room_id_from_create:
            users[CREATOR] = 100
        else:
            for creator in self._creators():
                users.pop(creator, None)
        content: dict[str, Any] = {"users": users}
        for name in self.rng.sample(NAMED, 3):
            content[name] = self.rng.choice(LEVELS)
        return content

    def _creators(self) -> set[str]:
        assert self.create is not None
        return {self.create.sender, *self.create.content.get("additional_creators", [])}

    def step(self) -> None:
        actions: list[tuple[int, Callable[[], Event]]] = [
            (6, self._join),
            (2, self._leave),
            (3, self._kick),
            (2, self._ban),
            (1, self._unban),
            (3, self._invite),
            (1, self._third_party_invite_event),
            (2, self._third_party_invite),
            (2, self._knock),
            (4, self._power_change),
            (2, self._join_rules_change),
            (3, self._topic),
            (3, self._message),
            (1, self._custom_state),
            (1, self._aliases),
            (1, self._redaction),
        ]
        weights = [w for w, _ in actions]
        make = self.rng.choices([a for _, a in actions], weights)[0]
        self.submit(make())

    def _user(self) -> str:
        return self.rng.choice(USERS)

    def _sender(self) -> str:
        """Mostly a joined member (whose events can pass), sometimes anyone."""
        joined = [k[1] for k, e in self.state.items() if k[0] == MEMBER and e.membership == "join"]
        return self.rng.choice(joined) if joined and self.rng.random() < 0.75 else self._user()

    def _member(self, sender: str, membership: str, target: str, **extra: Any) -> Event:
        return self.build(MEMBER, sender, {"membership": membership, **extra}, target)

    def _join(self) -> Event:
        user = self._user()
        extra: dict[str, Any] = {}
        if self.rng.random() < 0.5:
            extra["join_authorised_via_users_server"] = self._user()
        sender = user if self.rng.random() < 0.95 else self._user()
        return self._member(sender, "join", user, **extra)

    def _leave(self) -> Event:
        user = self._user()
        return self._member(user, "leave", user)

    def _kick(self) -> Event:
        return self._member(self._sender(), "leave", self._user())

    def _ban(self) -> Event:
        return self._member(self._sender(), "ban", self._user())

    def _unban(self) -> Event:
        banned = [k[1] for k, e in self.state.items() if k[0] == MEMBER and e.membership == "ban"]
        target = self.rng.choice(banned) if banned else self._user()
        return self._member(self._sender(), "leave", target)

    def _invite(self) -> Event:
        return self._member(self._sender(), "invite", self._user())

    def _knock(self) -> Event:
        user = self._user()
        return self._member(user, "knock", user)

    def _third_party_invite_event(self) -> Event:
        # Synapse stops at the first undecodable key, where the spec goes on to the next
        # one, so every key here is a real one.
        key, other = self.rng.sample(IDENTITY_KEYS, 2)
        public = encode_base64(bytes(key.verify_key))
        content: dict[str, Any] = (
            {"public_key": public}
            if self.rng.random() < 0.5
            else {
                "public_key": encode_base64(bytes(other.verify_key)),
                "public_keys": [{"public_key": public}],
            }
        )
        token = self.rng.choice(["t1", "t2"])
        return self.build("m.room.third_party_invite", self._sender(), content, token)

    def _third_party_invite(self) -> Event:
        target = self._user()
        mxid = target if self.rng.random() < 0.85 else self._user()
        signed: dict[str, Any] = {"mxid": mxid, "token": self.rng.choice(["t1", "t2", "t3"])}
        key = self.rng.choice(IDENTITY_KEYS)
        signature = key.sign(encode_canonical_json(signed, strict=True)).signature
        signed["signatures"] = {"id.example": {"ed25519:0": encode_base64(signature)}}
        tpi_senders = [
            e.sender for k, e in self.state.items() if k[0] == "m.room.third_party_invite"
        ]
        sender = (
            self.rng.choice(tpi_senders)
            if tpi_senders and self.rng.random() < 0.7
            else self._user()
        )
        content = {"display_name": "x", "signed": signed}
        return self._member(sender, "invite", target, third_party_invite=content)

    def _power_change(self) -> Event:
        current = self.state.get((POWER_LEVELS, ""))
        content: dict[str, Any] = {k: v for k, v in (current.content if current else {}).items()}
        users = dict(content.get("users", {}))
        for _ in range(self.rng.randint(1, 3)):
            roll = self.rng.random()
            if roll < 0.45:
                users[self._user()] = self.rng.choice(LEVELS)
            elif roll < 0.55 and users:
                users.pop(self.rng.choice(sorted(users)))
            elif roll < 0.75:
                content[self.rng.choice(NAMED)] = self.rng.choice(LEVELS)
            elif roll < 0.82:
                content.pop(self.rng.choice(NAMED), None)
            elif roll < 0.92:
                events = dict(content.get("events", {}))
                events[self.rng.choice(["m.room.topic", "m.room.message", POWER_LEVELS])] = (
                    self.rng.choice(LEVELS)
                )
                content["events"] = events
            else:
                notifications = dict(content.get("notifications", {}))
                notifications["room"] = self.rng.choice(LEVELS)
                content["notifications"] = notifications
        if self.version.room_id_from_create and self.rng.random() < 0.9:
            for creator in self._creators():
                users.pop(creator, None)
        if not self.version.enforce_int_power_levels and self.rng.random() < 0.3:
            users = {u: self.rng.choice([str(v), f" {v} ", f"+{v}", v]) for u, v in users.items()}
        if self.rng.random() < 0.03:
            users["not-a-user"] = 0
        content["users"] = users
        sender = self._sender() if self.rng.random() < 0.6 else self._powerful_user()
        return self.build(POWER_LEVELS, sender, content, "")

    def _powerful_user(self) -> str:
        current = self.state.get((POWER_LEVELS, ""))
        users = current.content.get("users", {}) if current else {}
        return max(USERS, key=lambda u: int(users.get(u, -1)) + (1000 if u == CREATOR else 0))

    def _join_rules_change(self) -> Event:
        rule = self.rng.choice(JOIN_RULE_CHOICES)
        content: dict[str, Any] = {"join_rule": rule}
        if "restricted" in rule:
            content["allow"] = [{"type": "m.room_membership", "room_id": "!other:a"}]
        return self.build(JOIN_RULES, self._sender(), content, "")

    def _topic(self) -> Event:
        return self.build("m.room.topic", self._sender(), {"topic": f"t{self.counter}"}, "")

    def _message(self) -> Event:
        return self.build("m.room.message", self._sender(), {"body": "hello"})

    def _custom_state(self) -> Event:
        sender = self._sender()
        state_key = self.rng.choice([sender, self._user(), "", "plain"])
        return self.build("org.example.state", sender, {}, state_key)

    def _aliases(self) -> Event:
        sender = self._user()
        server = _domain(sender) if self.rng.random() < 0.7 else _domain(self._user())
        return self.build("m.room.aliases", sender, {"aliases": [f"#x:{server}"]}, server)

    def _redaction(self) -> Event:
        target = self.rng.choice(list(self.events)) if self.events else "$x:a"
        extra: dict[str, Any] = {}
        if not self.version.updated_redaction_rules:
            extra["redacts"] = target
        event = self.build("m.room.redaction", self._sender(), {"redacts": target})
        if extra:
            pdu = {**event.pdu, **extra}
            event = Event(
                event_id=synapse_event_id(pdu, self.version), room_version=self.version, pdu=pdu
            )
            if self.version.auth_events_are_pairs:
                event = Event(event_id=pdu["event_id"], room_version=self.version, pdu=pdu)
        return event


@pytest.mark.parametrize(("version", "rooms", "steps"), PLAN, ids=[p[0] for p in PLAN])
def test_verdicts_match_synapse(version: str, rooms: int, steps: int) -> None:
    verdicts: Counter[str] = Counter()
    kinds: Counter[tuple[str, str]] = Counter()
    for seed in range(rooms):
        walk = RoomWalk(version, seed)
        try:
            walk.start()
            for _ in range(steps):
                walk.step()
        finally:
            walk.oracle.close()
        verdicts.update(walk.verdicts)
        kinds.update(walk.kinds)
    # The walk must exercise every rule both ways, or agreement would prove little.
    assert verdicts["allowed"] >= rooms * 10, verdicts
    assert verdicts["rejected"] >= rooms * 10, verdicts
    if rooms < 10:
        return
    assert verdicts["soft_failed"] >= 5, verdicts
    covered = [MEMBER + ":" + m for m in ("join", "invite", "leave", "ban")]
    covered += [POWER_LEVELS, JOIN_RULES, "m.room.topic", "m.room.message"]
    if ROOM_VERSIONS[version].knock:
        covered.append(MEMBER + ":knock")
    for kind in covered:
        assert kinds[(kind, "allowed")] and kinds[(kind, "rejected")], (kind, kinds)
