"""Synapse's restricted-join checks as an oracle for `worker.matrix.restricted_join`.

`synapse.handlers.event_auth.EventAuthHandler` decides restricted joins in
`check_restricted_join_rules` (with `has_restricted_join_rules`,
`get_rooms_that_allow_join`, `is_user_in_rooms`) and picks the vouching user in
`get_user_which_could_invite` (with `synapse.handlers.room_member.
get_users_which_can_issue_invite`). The handler is made without a homeserver
(`__new__`) and given the attributes those methods read: a store answering
`get_event(s)`, `get_rooms_for_user`, `is_host_joined` and `get_local_users_in_room`
from plain data, the server name and `is_mine_id`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping

# Importing the handlers package through `synapse.handlers.room` first avoids a circular
# import that `synapse.handlers.event_auth` alone runs into.
import synapse.handlers.room  # noqa: F401  (isort: keep first)
from synapse.api.errors import AuthError, Codes, SynapseError
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.events import EventBase
from synapse.handlers.event_auth import EventAuthHandler
from synapse.handlers.room_member import get_users_which_can_issue_invite

from tests.oracle.synapse_auth import to_synapse
from worker.matrix.events import Event, StateKey


class _Store:
    def __init__(
        self,
        events: Mapping[str, EventBase],
        user_rooms: Collection[str],
        resident_rooms: Collection[str],
        local_members: Collection[str],
    ) -> None:
        self._events = events
        self._user_rooms = frozenset(user_rooms)
        self._resident = frozenset(resident_rooms)
        self._local_members = list(local_members)

    async def get_event(self, event_id: str) -> EventBase:
        return self._events[event_id]

    async def get_events(self, event_ids: Iterable[str], **_: object) -> dict[str, EventBase]:
        return {eid: self._events[eid] for eid in event_ids if eid in self._events}

    async def get_rooms_for_user(self, user_id: str) -> frozenset[str]:
        return self._user_rooms

    async def is_host_joined(self, room_id: str, host: str) -> bool:
        return room_id in self._resident

    async def get_local_users_in_room(self, room_id: str) -> list[str]:
        return self._local_members


def synapse_restricted_join(
    state: Mapping[StateKey, Event],
    user_id: str,
    server_name: str,
    user_rooms: Collection[str],
    resident_rooms: Collection[str],
) -> tuple[str, frozenset[str]]:
    """Synapse's outcome (`not_restricted`/`allowed`/`forbidden`/`unable_to_authorise`/
    `unable_to_grant`) and, when allowed, the set of users it may pick from."""
    events = {event.event_id: to_synapse(event) for event in state.values()}
    state_ids = {key: event.event_id for key, event in state.items()}
    local_members = [
        key[1]
        for key, event in state.items()
        if key[0] == "m.room.member"
        and event.membership == "join"
        and key[1].partition(":")[2] == server_name
    ]
    handler = EventAuthHandler.__new__(EventAuthHandler)
    handler._store = _Store(events, user_rooms, resident_rooms, local_members)  # type: ignore[assignment]
    handler._server_name = server_name
    handler._is_mine_id = lambda uid: uid.partition(":")[2] == server_name  # type: ignore[method-assign]
    create = state[("m.room.create", "")]
    room_version = KNOWN_ROOM_VERSIONS[create.room_version.identifier]
    member = state.get(("m.room.member", user_id))
    prev_membership = member.membership if member is not None else None

    async def decide() -> tuple[str, frozenset[str]]:
        if prev_membership in ("join", "invite") or not await handler.has_restricted_join_rules(
            state_ids, room_version
        ):
            return "not_restricted", frozenset()
        try:
            await handler.check_restricted_join_rules(
                state_ids, room_version, user_id, prev_membership
            )
        except SynapseError as error:
            if error.errcode == Codes.UNABLE_AUTHORISE_JOIN:
                return "unable_to_authorise", frozenset()
            if isinstance(error, AuthError) and error.code == 403:
                return "forbidden", frozenset()
            raise
        try:
            await handler.get_user_which_could_invite(create.room_id, state_ids)
        except SynapseError as error:
            if error.errcode == Codes.UNABLE_TO_GRANT_JOIN:
                return "unable_to_grant", frozenset()
            raise
        auth_events = {key: events[eid] for key, eid in state_ids.items()}
        candidates = set(get_users_which_can_issue_invite(auth_events)) & set(local_members)
        return "allowed", frozenset(candidates)

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(decide())
    finally:
        loop.close()
