"""Queries behind building events and joining: `prepare_event` (the fields of a new
event), `restricted_join` (may this user join through this server) and
`rooms_for_user`."""

from __future__ import annotations

from typing import Final

from worker.errors import NO_STATE, RoomserverError
from worker.matrix.auth import auth_types_for_event
from worker.matrix.auth.identifiers import domain_of
from worker.matrix.events import MEMBER
from worker.matrix.prepare import auth_event_ids, choose_prev_events, depth_for_new_event
from worker.matrix.restricted_join import Outcome, allow_conditions, restricted_join
from worker.matrix.room_versions import get_room_version
from worker.query.federation.loading import Loading
from worker.query.requests import Fields
from worker.query.schema import PreparedEvent, RestrictedJoin, RoomsForUser, Wire
from worker.storage.reader import ReadError

CREATE_KEY: Final = ("m.room.create", "")
JOIN_RULES_KEY: Final = ("m.room.join_rules", "")
POWER_LEVELS_KEY: Final = ("m.room.power_levels", "")
#: Matrix error codes of the refusals (server-server API, "Restricted rooms").
_ERRCODES: Final = {
    Outcome.UNABLE_TO_AUTHORISE: "M_UNABLE_TO_AUTHORISE_JOIN",
    Outcome.UNABLE_TO_GRANT: "M_UNABLE_TO_GRANT_JOIN",
    Outcome.FORBIDDEN: "M_FORBIDDEN",
}


class JoinQueries(Loading):
    """`prepare_event`, `restricted_join` and `rooms_for_user`."""

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
        loaded = {e.event_id: e for e in await self.events(version, list(entries.values()))}
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
