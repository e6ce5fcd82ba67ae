"""The client's typed queries about rooms: state, events, membership, held events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from worker.client.core import ClientCore
from worker.errors import BAD_REPLY, UNKNOWN_EVENT, RoomserverError
from worker.query.schema import (
    ACCEPT_STATE_HEADER,
    GROUPED,
    IF_STATE_HEADER,
    TAG_FIELD,
    UNCHANGED_FIELD,
    AuthChain,
    EventInfo,
    Events,
    Held,
    HeldEvent,
    Latest,
    Members,
    Membership,
    Rooms,
    RoomSummary,
    State,
)

#: The typed state queries read states in the grouped form (docs/queries.md).
_GROUPED: Final = {ACCEPT_STATE_HEADER: GROUPED}


class RoomQueries(ClientCore):
    """The typed queries about a room's state and events (docs/queries.md)."""

    async def state(
        self,
        room_id: str,
        *,
        event_id: str | None = None,
        at: str = "before",
        types: Sequence[str] | None = None,
        keys: Sequence[tuple[str, str]] | None = None,
    ) -> State:
        """The room's current state, or the state before/after `event_id`, optionally
        only some types or (type, state key) pairs."""
        body: dict[str, Any] = {"room_id": room_id}
        if event_id is not None:
            body["event_id"] = event_id
            body["at"] = at
        if types is not None:
            body["types"] = list(types)
        if keys is not None:
            body["keys"] = [list(k) for k in keys]
        if event_id is None and types is None and keys is None:
            return await self._current_state(room_id, body)
        return await self.ask("state", body, State.from_wire, tuples=True, headers=_GROUPED)

    async def _current_state(self, room_id: str, body: dict[str, Any]) -> State:
        """A room's whole current state, sent with the tag of the copy the client has
        (if any): the worker answers `unchanged` while that is still the current state
        (worker.client.state_cache)."""
        cached = self.state_cache.get(room_id)
        headers = _GROUPED if cached is None else {**_GROUPED, IF_STATE_HEADER: cached.tag}

        def read(wire: Mapping[str, Any]) -> State:
            tag = wire.get(TAG_FIELD)
            if wire.get(UNCHANGED_FIELD):
                if cached is None or tag != cached.tag:
                    raise RoomserverError(
                        BAD_REPLY, f"the reply to state says unchanged, but not from {tag!r}"
                    )
                return State(room_id, None, None, columns=cached.columns)
            state = State.from_wire(wire)
            if isinstance(tag, str):
                self.state_cache.put(room_id, tag, state.by_type, len(state))
            else:  # a worker that names no states
                self.state_cache.discard(room_id)
            return state

        return await self.ask("state", body, read, tuples=True, headers=headers)

    async def events(self, event_ids: Sequence[str]) -> Events:
        return await self.ask("events", {"event_ids": list(event_ids)}, Events.from_wire)

    async def event(self, event_id: str) -> EventInfo:
        """One event; RoomserverError `unknown_event` when the worker does not have it."""
        result = await self.events([event_id])
        if not result.events:
            raise RoomserverError(UNKNOWN_EVENT, f"event {event_id} is not stored")
        return result.events[0]

    async def latest(
        self,
        room_id: str,
        *,
        include_state: bool = False,
        types: Sequence[str] | None = None,
        keys: Sequence[tuple[str, str]] | None = None,
    ) -> Latest:
        """Forward extremities, depth and version; with the current state (or part
        of it) when asked."""
        body: dict[str, Any] = {"room_id": room_id}
        if include_state:
            body["include_state"] = True
        if types is not None:
            body["types"] = list(types)
        if keys is not None:
            body["keys"] = [list(k) for k in keys]
        return await self.ask("latest", body, Latest.from_wire, tuples=True, headers=_GROUPED)

    async def membership(
        self, room_id: str, user_id: str, *, event_id: str | None = None, at: str = "before"
    ) -> Membership:
        body: dict[str, Any] = {"room_id": room_id, "user_id": user_id}
        if event_id is not None:
            body["event_id"] = event_id
            body["at"] = at
        return Membership.from_wire(await self.request("membership", body))

    async def members(
        self,
        room_id: str,
        *,
        membership: str = "join",
        event_id: str | None = None,
        at: str = "before",
    ) -> list[str]:
        """User IDs with `membership` (joined, by default), sorted."""
        body: dict[str, Any] = {"room_id": room_id, "membership": membership}
        if event_id is not None:
            body["event_id"] = event_id
            body["at"] = at
        return Members.from_wire(await self.request("membership", body)).members

    async def rooms(self) -> list[RoomSummary]:
        return Rooms.from_wire(await self.request("rooms")).rooms

    async def auth_chain(self, event_ids: Sequence[str]) -> list[str]:
        reply = await self.request("auth_chain", {"event_ids": list(event_ids)})
        return AuthChain.from_wire(reply).event_ids

    async def held(self, room_id: str | None = None) -> list[HeldEvent]:
        """Events waiting for missing prev events (one room, or every room)."""
        return Held.from_wire(
            await self.request("held", {"room_id": room_id} if room_id else {})
        ).held
