"""What the rest of a homeserver asks its roomserver: the federation queries.

A homeserver's federation API answers other servers (`/backfill`,
`/get_missing_events`, `/state`, `/make_join`, ...) and builds events of its own; the
decisions behind those answers are pure rules in `worker.matrix` (server ACLs,
history visibility, graph walks, restricted joins, new-event fields). This module
feeds them from storage, through the read-only reader and
`worker.storage.federation_reads`, and shapes the replies of `worker.query.schema`.
The request fields and errors of each query are in docs/queries.md.

The rules are synchronous and the reader is async: the walks get their nodes loaded
up front (a walk of at most `limit` steps needs at most `limit` hops of the graph), and
state resolution, which may look at any event of the room's auth graph, runs in a
thread whose lookups are answered by the reader in this event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

from worker.errors import NO_STATE, UNKNOWN_EVENT, RoomserverError
from worker.matrix.auth import auth_types_for_event
from worker.matrix.auth.identifiers import domain_of
from worker.matrix.event_walks import (
    DEFAULT_MISSING_EVENTS_LIMIT,
    MAX_BACKFILL_EVENTS,
    MAX_MISSING_EVENTS,
    DagNode,
    backfill_events,
    missing_events,
)
from worker.matrix.events import MEMBER, Event, StateKey, StateMap
from worker.matrix.prepare import auth_event_ids, choose_prev_events, depth_for_new_event
from worker.matrix.restricted_join import Outcome, allow_conditions, restricted_join
from worker.matrix.room_versions import RoomVersion, get_room_version
from worker.matrix.server_acl import server_allowed
from worker.matrix.state_res import resolve_state
from worker.matrix.visibility import (
    HISTORY_VISIBILITY_KEY,
    SHARED,
    WORLD_READABLE,
    StateContents,
    effective_history_visibility,
    event_visible_to_server,
    filter_events_for_server,
)
from worker.query.requests import BadRequest, Fields
from worker.query.schema import (
    EventList,
    PreparedEvent,
    RestrictedJoin,
    RoomsForUser,
    ServerAllowed,
    StateAndAuthChain,
    VisibleEvents,
    Wire,
)
from worker.storage.federation_reads import EventPlace, FederationReads
from worker.storage.reader import AFTER, BEFORE, Reader, ReadError

SERVER_ACL: Final = "m.room.server_acl"
CREATE_KEY: Final = ("m.room.create", "")
JOIN_RULES_KEY: Final = ("m.room.join_rules", "")
POWER_LEVELS_KEY: Final = ("m.room.power_levels", "")
#: Matrix error codes of the refusals (server-server API, "Restricted rooms").
_ERRCODES: Final = {
    Outcome.UNABLE_TO_AUTHORISE: "M_UNABLE_TO_AUTHORISE_JOIN",
    Outcome.UNABLE_TO_GRANT: "M_UNABLE_TO_GRANT_JOIN",
    Outcome.FORBIDDEN: "M_FORBIDDEN",
}
#: A walk reloads the graph around an event it reached unloaded at most this often
#: (the first load covers every event a walk of `limit` steps can reach).
_MAX_WALK_LOADS: Final = 20

T = TypeVar("T")
Handler = Callable[[Fields], Awaitable[Wire]]


class _NotLoaded(Exception):
    def __init__(self, event_id: str) -> None:
        super().__init__(event_id)
        self.event_id = event_id


class FederationQueries:
    """The federation queries, NATS-free: request fields in, reply map out."""

    FIELDS: Final[dict[str, tuple[str, ...]]] = {
        "server_allowed": ("room_id", "server_name"),
        "visible_to_server": ("room_id", "server_name", "event_ids", "redact"),
        "missing_events": (
            "room_id",
            "earliest_events",
            "latest_events",
            "limit",
            "min_depth",
            "server_name",
        ),
        "backfill": ("room_id", "event_ids", "limit", "server_name"),
        "state_and_auth_chain": ("room_id", "event_id", "prev_event_ids", "ids_only"),
        "prepare_event": ("room_id", "type", "state_key", "sender", "content"),
        "restricted_join": ("room_id", "user_id", "server_name"),
        "rooms_for_user": ("user_id", "membership"),
    }

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.reads = FederationReads(reader)

    def handlers(self) -> dict[str, Handler]:
        return {
            "server_allowed": self.server_allowed,
            "visible_to_server": self.visible_to_server,
            "missing_events": self.missing_events,
            "backfill": self.backfill,
            "state_and_auth_chain": self.state_and_auth_chain,
            "prepare_event": self.prepare_event,
            "restricted_join": self.restricted_join,
            "rooms_for_user": self.rooms_for_user,
        }

    # -- server ACLs ---------------------------------------------------------------------

    async def server_allowed(self, fields: Fields) -> Wire:
        room_id = fields.string("room_id")
        server_name = fields.string("server_name")
        current = await self.reader.state(room_id, keys=[(SERVER_ACL, "")])
        acl_id = current.entries[0][2] if current.entries else None
        content = (await self._pdus([acl_id]))[acl_id].get("content", {}) if acl_id else None
        allowed = server_allowed(content, server_name)
        return ServerAllowed(room_id, server_name, allowed, acl_id).to_wire()

    # -- history visibility ----------------------------------------------------------------

    async def visible_to_server(self, fields: Fields) -> Wire:
        room_id = fields.string("room_id")
        server_name = fields.string("server_name")
        event_ids = list(dict.fromkeys(fields.string_list("event_ids")))
        redact = fields.flag("redact") if fields.has("redact") else True
        room_nid = await self.reads.room_nid(room_id)
        version = await self._room_version(room_id)
        places = await self.reads.places(room_nid, event_ids)
        served = [e for e in event_ids if e in places and places[e].status != "rejected"]
        events = await self._events(version, served)
        states = await self._visibility_states(room_id, [places[e] for e in served], server_name)
        found = [e.event_id for e in events]
        visible = [e for e in found if event_visible_to_server(states[e], server_name)]
        shown = set(visible)
        pdus = filter_events_for_server(events, states.get, server_name, redact_hidden=redact)
        return VisibleEvents(
            room_id,
            server_name,
            [dict(p) for p in pdus],
            visible,
            [e for e in found if e not in shown],
            [e for e in event_ids if e not in set(found)],
        ).to_wire()

    async def _visibility_states(
        self, room_id: str, places: Sequence[EventPlace], server_name: str
    ) -> dict[str, StateContents | None]:
        """The state after each event, as far as the visibility rules read it: the
        history visibility, and (only where it is `invited` or `joined`) the joined and
        invited members of `server_name`. Events sharing a state share the work."""
        by_snapshot: dict[int, list[EventPlace]] = {}
        result: dict[str, StateContents | None] = {}
        for place in places:
            if place.status == "outlier" or not place.after_snapshot_nid:
                result[place.event_id] = None  # no state known: treated as `shared`
            else:
                by_snapshot.setdefault(place.after_snapshot_nid, []).append(place)
        for snapshot_nid, sharing in by_snapshot.items():
            state = await self._visibility_state(room_id, snapshot_nid, sharing[0], server_name)
            for place in sharing:
                result[place.event_id] = state
        return result

    async def _visibility_state(
        self, room_id: str, snapshot_nid: int, place: EventPlace, server_name: str
    ) -> StateContents:
        entries = await self.reader.state_entries(snapshot_nid, keys=[HISTORY_VISIBILITY_KEY])
        state: dict[StateKey, Mapping[str, Any]] = {}
        if entries:
            hv_id = entries[0][2]
            state[HISTORY_VISIBILITY_KEY] = (await self._pdus([hv_id]))[hv_id].get("content", {})
        if effective_history_visibility(state.get(HISTORY_VISIBILITY_KEY)) in (
            WORLD_READABLE,
            SHARED,
        ):
            return state
        for membership in ("join", "invite"):
            members = await self.reader.members(
                room_id, membership=membership, event_id=place.event_id, at=AFTER
            )
            for user_id in members:
                if domain_of(user_id) == server_name:
                    state[(MEMBER, user_id)] = {"membership": membership}
        return state

    async def _filtered(
        self,
        room_id: str,
        room_nid: int,
        version: RoomVersion,
        ids: Sequence[str],
        server: str | None,
    ) -> EventList:
        """The events as PDUs in the given order; with `server`, those it may not see
        redacted, as `/backfill` and `/get_missing_events` send them."""
        events = await self._events(version, ids)
        if server is None:
            return EventList(room_id, [dict(e.pdu) for e in events], [e.event_id for e in events])
        places = await self.reads.places(room_nid, [e.event_id for e in events])
        states = await self._visibility_states(room_id, list(places.values()), server)
        pdus = filter_events_for_server(events, states.get, server, redact_hidden=True)
        return EventList(room_id, [dict(p) for p in pdus], [e.event_id for e in events])

    # -- graph walks -------------------------------------------------------------------------

    async def _walk(
        self,
        room_nid: int,
        seeds: Sequence[str],
        hops: int,
        outliers: bool,
        walk: Callable[[Callable[[str], DagNode | None]], list[str]],
    ) -> list[str]:
        """Run a pure walk over nodes loaded up to `hops` steps from `seeds`; should it
        reach an event not loaded, load around that event too and walk again."""
        nodes, looked = await self.reads.dag_nodes(room_nid, seeds, hops=hops, outliers=outliers)

        def get_node(event_id: str) -> DagNode | None:
            node = nodes.get(event_id)
            if node is None and event_id not in looked:
                raise _NotLoaded(event_id)
            return node

        for _ in range(_MAX_WALK_LOADS):
            try:
                return walk(get_node)
            except _NotLoaded as exc:
                more, seen = await self.reads.dag_nodes(
                    room_nid, [exc.event_id], hops=hops, outliers=outliers
                )
                nodes.update(more)
                looked |= seen
        raise RuntimeError(f"the walk still needs more of the graph after {_MAX_WALK_LOADS} loads")

    async def missing_events(self, fields: Fields) -> Wire:
        room_id = fields.string("room_id")
        earliest = fields.string_list("earliest_events")
        latest = fields.string_list("latest_events")
        asked = fields.integer("limit", DEFAULT_MISSING_EVENTS_LIMIT, minimum=0)
        limit = min(asked, MAX_MISSING_EVENTS)
        min_depth = fields.integer("min_depth", 0)
        server = fields.optional_string("server_name")
        room_nid = await self.reads.room_nid(room_id)
        version = await self._room_version(room_id)
        ids = await self._walk(
            room_nid,
            latest,
            limit + 1,
            True,
            lambda get: missing_events(get, earliest, latest, limit, min_depth),
        )
        return (await self._filtered(room_id, room_nid, version, ids, server)).to_wire()

    async def backfill(self, fields: Fields) -> Wire:
        room_id = fields.string("room_id")
        seeds = fields.string_list("event_ids")
        limit = min(fields.integer("limit", MAX_BACKFILL_EVENTS, minimum=0), MAX_BACKFILL_EVENTS)
        server = fields.optional_string("server_name")
        room_nid = await self.reads.room_nid(room_id)
        version = await self._room_version(room_id)
        ids = await self._walk(
            room_nid, seeds, limit, False, lambda get: backfill_events(get, seeds, limit)
        )
        return (await self._filtered(room_id, room_nid, version, ids, server)).to_wire()

    # -- state -------------------------------------------------------------------------------

    async def state_and_auth_chain(self, fields: Fields) -> Wire:
        room_id = fields.string("room_id")
        event_id = fields.optional_string("event_id")
        prevs = fields.optional_string_list("prev_event_ids")
        ids_only = fields.flag("ids_only")
        if (event_id is None) == (prevs is None):
            raise BadRequest("give either event_id or prev_event_ids")
        if event_id is not None:
            # `/state` and `/state_ids`: the state before the event.
            snapshot_nid, _ = await self.reader.snapshot_at(room_id, event_id, BEFORE)
            state_ids = [e for _, _, e in await self.reader.state_entries(snapshot_nid)]
        else:
            assert prevs is not None
            if not prevs:
                raise BadRequest("prev_event_ids must list at least one event")
            state_ids = list((await self._state_before_new_event(room_id, prevs)).values())
        state_ids.sort()
        chain_ids = await self.reader.auth_chain(state_ids) if state_ids else []
        state = chain = None
        if not ids_only:
            pdus = await self._pdus([*state_ids, *chain_ids])
            state = [pdus[e] for e in state_ids]
            chain = [pdus[e] for e in chain_ids]
        return StateAndAuthChain(
            room_id, event_id, prevs, state_ids, chain_ids, state, chain
        ).to_wire()

    async def _state_before_new_event(self, room_id: str, prevs: Sequence[str]) -> StateMap:
        """The state an event with these prev events would have before it: the state
        after its one prev event, or the room version's resolution of several."""
        room_nid = await self.reads.room_nid(room_id)
        places = await self.reads.places(room_nid, prevs)
        unknown = [e for e in prevs if e not in places]
        if unknown:
            raise RoomserverError(
                UNKNOWN_EVENT, f"events not stored in room {room_id}: {', '.join(unknown[:20])}"
            )
        outliers = [e for e in prevs if places[e].status == "outlier"]
        if outliers:
            raise RoomserverError(
                NO_STATE, f"prev events stored without their state: {', '.join(outliers[:20])}"
            )
        snapshots = list(dict.fromkeys(places[e].after_snapshot_nid for e in prevs))
        states = [
            {(t, s): e for t, s, e in await self.reader.state_entries(nid)} for nid in snapshots
        ]
        if len(states) == 1:
            return states[0]
        return await self._resolve(room_nid, await self._room_version(room_id), states)

    async def _resolve(
        self, room_nid: int, version: RoomVersion, states: Sequence[StateMap]
    ) -> StateMap:
        """State resolution in a worker thread; its lookups are answered by the reader in
        this loop, one at a time, as the pipeline's are by its own store."""
        loop = asyncio.get_running_loop()
        events: dict[str, Event | None] = {}
        rejected: set[str] = set()

        async def load(event_ids: Iterable[str]) -> None:
            wanted = [e for e in dict.fromkeys(event_ids) if e not in events]
            if not wanted:
                return
            records, missing = await self.reader.events(wanted)
            for record in records:
                events[record.event_id] = Event(record.event_id, version, record.event)
                if record.status == "rejected":
                    rejected.add(record.event_id)
            for event_id in missing:
                events[event_id] = None

        async def chain(event_ids: Iterable[str]) -> set[str]:
            stored = await self.reads.places(room_nid, list(event_ids))
            return set(await self.reader.auth_chain(list(stored))) if stored else set()

        def wait(coroutine: Coroutine[Any, Any, T]) -> T:
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

        def get_event(event_id: str) -> Event | None:
            if event_id not in events:
                wait(load([event_id]))
            return events[event_id]

        # The conflicted entries are looked at first: load them in one go.
        conflicted: set[str] = set()
        for key in set().union(*states):
            entries = {state.get(key) for state in states}
            if len(entries) > 1:
                conflicted.update(e for e in entries if e is not None)
        await load(conflicted)
        return await asyncio.to_thread(
            resolve_state,
            version,
            states,
            get_event,
            lambda ids: wait(chain(ids)),
            lambda event_id: get_event(event_id) is not None and event_id in rejected,
        )

    # -- new events ---------------------------------------------------------------------------

    async def prepare_event(self, fields: Fields) -> Wire:
        room_id = fields.string("room_id")
        event_type = fields.string("type")
        state_key = fields.optional_text("state_key")
        sender = fields.string("sender")
        content = fields.mapping("content")
        room_nid = await self.reads.room_nid(room_id)
        latest = await self.reader.latest(room_id)
        version = get_room_version(latest.room_version)
        depths = await self.reads.places(room_nid, latest.latest_event_ids)
        prevs = choose_prev_events((e, depths[e].depth) for e in latest.latest_event_ids)
        depth = depth_for_new_event(version, (depths[e].depth for e in prevs))
        keys = sorted(auth_types_for_event(version, event_type, state_key, sender, content))
        state = (
            {
                (t, s): e
                for t, s, e in await self.reader.state_entries(latest.snapshot_nid, keys=keys)
            }
            if keys
            else {}
        )
        auth = auth_event_ids(version, event_type, state_key, sender, content, state)
        return PreparedEvent(room_id, latest.room_version, prevs, depth, auth).to_wire()

    async def restricted_join(self, fields: Fields) -> Wire:
        room_id = fields.string("room_id")
        user_id = fields.string("user_id")
        server_name = fields.string("server_name")
        latest = await self.reader.latest(room_id)
        if not latest.snapshot_nid:
            raise RoomserverError(NO_STATE, f"room {room_id} has no current state yet")
        version = get_room_version(latest.room_version)
        # Only what the rule reads: create, join rules, power levels, the joining user's
        # membership, and the members of this server (the possible authorisers).
        wanted = await self.reader.state_entries(
            latest.snapshot_nid,
            keys=[CREATE_KEY, JOIN_RULES_KEY, POWER_LEVELS_KEY, (MEMBER, user_id)],
        )
        members = await self.reader.state_entries(latest.snapshot_nid, types=[MEMBER])
        local = [m for m in members if domain_of(m[1]) == server_name]
        entries = {(t, s): e for t, s, e in [*wanted, *local]}
        loaded = {e.event_id: e for e in await self._events(version, list(entries.values()))}
        state = {key: loaded[e] for key, e in entries.items() if e in loaded}
        joined: dict[str, bool | None] = {}
        join_rules = state.get(JOIN_RULES_KEY)
        if join_rules is not None:
            for other in allow_conditions(join_rules.content).room_ids:
                joined[other] = await self._joined_in(other, user_id)
        verdict = restricted_join(state, user_id, server_name, joined.get)
        allowed = verdict.outcome in (Outcome.ALLOWED, Outcome.NOT_RESTRICTED)
        return RestrictedJoin(
            room_id,
            user_id,
            verdict.outcome.value,
            allowed,
            verdict.authoriser,
            _ERRCODES.get(verdict.outcome),
        ).to_wire()

    async def _joined_in(self, room_id: str, user_id: str) -> bool | None:
        """Whether the user is joined to a room in its current state; None when this
        roomserver does not have the room's state."""
        try:
            record = await self.reader.membership(room_id, user_id)
        except ReadError as exc:
            if exc.code == "unknown_room":
                return None
            raise
        return record.membership == "join"

    async def rooms_for_user(self, fields: Fields) -> Wire:
        user_id = fields.string("user_id")
        membership = fields.optional_string("membership") or "join"
        rooms = await self.reads.rooms_for_user(user_id, membership)
        return RoomsForUser(user_id, membership, rooms).to_wire()

    # -- loading ----------------------------------------------------------------------------

    async def _room_version(self, room_id: str) -> RoomVersion:
        return get_room_version((await self.reader.latest(room_id)).room_version)

    async def _events(self, version: RoomVersion, event_ids: Sequence[str]) -> list[Event]:
        """The stored events, in the order given (unknown ones left out)."""
        records, _ = await self.reader.events(event_ids)
        return [Event(r.event_id, version, r.event) for r in records]

    async def _pdus(self, event_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        records, missing = await self.reader.events(event_ids)
        if missing:
            raise ReadError(
                "internal_error", f"events {missing[:10]} are referenced but not stored"
            )
        return {r.event_id: r.event for r in records}
