"""The client's typed queries for the federation side of a homeserver: ACLs,
visibility, missing events, backfill, state for /state and /send_join, joins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worker.client.core import ClientCore
from worker.query.schema import (
    EventList,
    PreparedEvent,
    RestrictedJoin,
    RoomsForUser,
    ServerAllowed,
    StateAndAuthChain,
    VisibleEvents,
)


class FederationQueries(ClientCore):
    """What the rest of a homeserver asks to answer other servers (docs/queries.md)."""

    async def server_allowed(self, room_id: str, server_name: str) -> ServerAllowed:
        """Whether the room's current server ACL lets `server_name` take part."""
        body = {"room_id": room_id, "server_name": server_name}
        return ServerAllowed.from_wire(await self.request("server_allowed", body))

    async def visible_to_server(
        self, room_id: str, server_name: str, event_ids: Sequence[str], *, redact: bool = True
    ) -> VisibleEvents:
        """Which of the events `server_name` may see in full; the others redacted (or,
        with `redact=False`, left out)."""
        body = {
            "room_id": room_id,
            "server_name": server_name,
            "event_ids": list(event_ids),
            "redact": redact,
        }
        return VisibleEvents.from_wire(await self.request("visible_to_server", body))

    async def missing_events(
        self,
        room_id: str,
        earliest_events: Sequence[str],
        latest_events: Sequence[str],
        *,
        limit: int = 10,
        min_depth: int = 0,
        server_name: str | None = None,
    ) -> EventList:
        """What `/get_missing_events` returns (at most 20 events), filtered for
        `server_name` when given."""
        body: dict[str, Any] = {
            "room_id": room_id,
            "earliest_events": list(earliest_events),
            "latest_events": list(latest_events),
            "limit": limit,
            "min_depth": min_depth,
        }
        if server_name is not None:
            body["server_name"] = server_name
        return EventList.from_wire(await self.request("missing_events", body))

    async def backfill(
        self,
        room_id: str,
        event_ids: Sequence[str],
        *,
        limit: int = 100,
        server_name: str | None = None,
    ) -> EventList:
        """What `/backfill` returns (at most 100 events, newest first), filtered for
        `server_name` when given."""
        body: dict[str, Any] = {"room_id": room_id, "event_ids": list(event_ids), "limit": limit}
        if server_name is not None:
            body["server_name"] = server_name
        return EventList.from_wire(await self.request("backfill", body))

    async def state_and_auth_chain(
        self,
        room_id: str,
        *,
        event_id: str | None = None,
        prev_event_ids: Sequence[str] | None = None,
        ids_only: bool = False,
    ) -> StateAndAuthChain:
        """The state before `event_id` (or before a new event with `prev_event_ids`)
        and its auth chain: what `/state`, `/state_ids` and `/send_join` send."""
        body: dict[str, Any] = {"room_id": room_id, "ids_only": ids_only}
        if event_id is not None:
            body["event_id"] = event_id
        if prev_event_ids is not None:
            body["prev_event_ids"] = list(prev_event_ids)
        return StateAndAuthChain.from_wire(await self.request("state_and_auth_chain", body))

    async def prepare_event(
        self,
        room_id: str,
        event_type: str,
        sender: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
    ) -> PreparedEvent:
        """Prev events, depth and auth events for a new event in the room as it stands."""
        body: dict[str, Any] = {
            "room_id": room_id,
            "type": event_type,
            "sender": sender,
            "content": dict(content),
        }
        if state_key is not None:
            body["state_key"] = state_key
        return PreparedEvent.from_wire(await self.request("prepare_event", body))

    async def restricted_join(self, room_id: str, user_id: str, server_name: str) -> RestrictedJoin:
        """Whether `user_id` may join through the room's allow list, and which user of
        `server_name` (this resident server) can authorise it."""
        body = {"room_id": room_id, "user_id": user_id, "server_name": server_name}
        return RestrictedJoin.from_wire(await self.request("restricted_join", body))

    async def rooms_for_user(self, user_id: str, membership: str = "join") -> list[str]:
        """The rooms whose current state gives the user `membership`, sorted."""
        body = {"user_id": user_id, "membership": membership}
        return RoomsForUser.from_wire(await self.request("rooms_for_user", body)).room_ids
