"""Server ACLs, history visibility and the graph walks of `/get_missing_events` and
`/backfill`: what another server may see of a room.

The walks are pure and synchronous and the reader is async: the walks get their nodes
loaded up front (a walk of at most `limit` steps needs at most `limit` hops of the
graph), and load more only if they reach an event not loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from worker.matrix.auth.identifiers import domain_of
from worker.matrix.event_walks import (
    DEFAULT_MISSING_EVENTS_LIMIT,
    MAX_BACKFILL_EVENTS,
    MAX_MISSING_EVENTS,
    DagNode,
    backfill_events,
    missing_events,
)
from worker.matrix.events import MEMBER, StateKey
from worker.matrix.room_versions import RoomVersion
from worker.matrix.server_acl import server_allowed
from worker.matrix.visibility import (
    HISTORY_VISIBILITY_KEY,
    SHARED,
    WORLD_READABLE,
    StateContents,
    effective_history_visibility,
    event_visible_to_server,
    filter_events_for_server,
)
from worker.query.federation.loading import Loading
from worker.query.requests import Fields
from worker.query.schema import EventList, ServerAllowed, VisibleEvents, Wire
from worker.storage.federation_reads import EventPlace
from worker.storage.reader import AFTER

SERVER_ACL: Final = "m.room.server_acl"
#: A walk reloads the graph around an event it reached unloaded at most this often
#: (the first load covers every event a walk of `limit` steps can reach).
_MAX_WALK_LOADS: Final = 20


class _NotLoaded(Exception):
    def __init__(self, event_id: str) -> None:
        super().__init__(event_id)
        self.event_id = event_id


class VisibilityQueries(Loading):
    """`server_allowed`, `visible_to_server`, `missing_events` and `backfill`."""

    async def server_allowed(self, fields: Fields) -> Wire:
        room_id = fields.string("room_id")
        server_name = fields.string("server_name")
        current = await self.reader.state(room_id, keys=[(SERVER_ACL, "")])
        acl_id = current.entries[0][2] if current.entries else None
        content = (await self.pdus([acl_id]))[acl_id].get("content", {}) if acl_id else None
        allowed = server_allowed(content, server_name)
        return ServerAllowed(room_id, server_name, allowed, acl_id).to_wire()

    # -- history visibility ----------------------------------------------------------------

    async def visible_to_server(self, fields: Fields) -> Wire:
        room_id = fields.string("room_id")
        server_name = fields.string("server_name")
        event_ids = list(dict.fromkeys(fields.string_list("event_ids")))
        redact = fields.flag("redact") if fields.has("redact") else True
        room_nid = await self.reads.room_nid(room_id)
        version = await self.room_version(room_id)
        places = await self.reads.places(room_nid, event_ids)
        served = [e for e in event_ids if e in places and places[e].status != "rejected"]
        events = await self.events(version, served)
        states = await self.visibility_states(room_id, [places[e] for e in served], server_name)
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

    async def visibility_states(
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
            state[HISTORY_VISIBILITY_KEY] = (await self.pdus([hv_id]))[hv_id].get("content", {})
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
        events = await self.events(version, ids)
        if server is None:
            return EventList(room_id, [dict(e.pdu) for e in events], [e.event_id for e in events])
        places = await self.reads.places(room_nid, [e.event_id for e in events])
        states = await self.visibility_states(room_id, list(places.values()), server)
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
        version = await self.room_version(room_id)
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
        version = await self.room_version(room_id)
        ids = await self._walk(
            room_nid, seeds, limit, False, lambda get: backfill_events(get, seeds, limit)
        )
        return (await self._filtered(room_id, room_nid, version, ids, server)).to_wire()
