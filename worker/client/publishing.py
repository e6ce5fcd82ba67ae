"""The client's publishing: input messages (subject, msgpack body, msg ID) and their
publication, one at a time or pipelined."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgpack
from nats.js import api

from worker.bus.publisher import Outgoing
from worker.client.core import ClientCore
from worker.matrix.hashes import compute_event_id
from worker.matrix.pdu import PduError, room_version_of_create
from worker.matrix.room_versions import RoomVersion, UnknownRoomVersion, get_room_version


class Publishing(ClientCore):
    """Inputs with their event ID as msg ID, so JetStream drops a duplicate publish."""

    def remember_room_version(self, room_id: str, room_version: str) -> None:
        """Tell the client a room's version, so events of rooms whose create event it
        has not published still get their event ID as msg ID."""
        self._versions[room_id] = get_room_version(room_version)

    def input_message(
        self,
        event: Mapping[str, Any],
        *,
        kind: str = "new",
        room_version: str | None = None,
        state_event_ids: Sequence[str] | None = None,
        origin: str | None = None,
        send_as_server: str | None = None,
        transaction_id: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Outgoing:
        """The subject, msgpack body and msg ID (the event ID) of one input.

        The event ID needs the room version, chosen in this order: a create event's
        own, the `room_version` argument, what the client learnt earlier for the room,
        then `default_room_version` (sent in the input, since the worker may not know
        the room either). Without one the input is still valid but carries no msg ID,
        so JetStream cannot drop a duplicate publish. `extra` holds input fields this
        client does not know, passed on as they are (the worker ignores unknown ones).
        """
        if room_version is None and not _is_create(event):
            room_id = event.get("room_id")
            if not (isinstance(room_id, str) and room_id in self._versions):
                room_version = self.default_room_version
        version = self._version_for(event, room_version)
        event_id: str | None = None
        if version is not None:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                event_id = compute_event_id(event, version)
        elif isinstance(event.get("event_id"), str):
            event_id = event["event_id"]
        room_id = event.get("room_id")
        if room_id is None and version is not None and version.room_id_from_create and event_id:
            room_id = "!" + event_id[1:]
        if not isinstance(room_id, str):
            raise ValueError("the event has no room_id, so it has no input subject")
        if version is not None:
            self._versions.setdefault(room_id, version)
        body: dict[str, Any] = {**(extra or {}), "event": dict(event)}
        if kind != "new":
            body["kind"] = kind
        if room_version is not None:
            body["room_version"] = room_version
        if state_event_ids is not None:
            body["state_event_ids"] = list(state_event_ids)
        if origin is not None:
            body["origin"] = origin
        if send_as_server is not None:
            body["send_as_server"] = send_as_server
        if transaction_id is not None:
            body["transaction_id"] = dict(transaction_id)
        payload: bytes = msgpack.packb(body, use_bin_type=True)
        return Outgoing(self.subjects.input(room_id), payload, event_id)

    def _version_for(
        self, event: Mapping[str, Any], room_version: str | None
    ) -> RoomVersion | None:
        try:
            if _is_create(event):
                return room_version_of_create(event)
            if room_version is not None:
                return get_room_version(room_version)
        except (PduError, UnknownRoomVersion):
            return None
        room_id = event.get("room_id")
        return self._versions.get(room_id) if isinstance(room_id, str) else None

    async def publish(self, event: Mapping[str, Any], **options: Any) -> api.PubAck:
        """Publish one input and wait for JetStream's ack (`duplicate` set if dropped).

        Options are those of `input_message`: kind, room_version, state_event_ids,
        origin, send_as_server, transaction_id.
        """
        subject, payload, msg_id = self.input_message(event, **options)
        return await self._publisher.publish(subject, payload, msg_id)

    async def publish_many(
        self, events: Iterable[Mapping[str, Any]], **options: Any
    ) -> list[api.PubAck]:
        """Publish several inputs pipelined (one round trip), in order."""
        return await self.publish_messages(
            [self.input_message(event, **options) for event in events]
        )

    async def publish_messages(self, messages: Sequence[Outgoing]) -> list[api.PubAck]:
        """Publish inputs made by `input_message` pipelined, in order (each input
        with its own options: what `roomserver publish` does with a file)."""
        return await self._publisher.publish_many(messages)


def _is_create(event: Mapping[str, Any]) -> bool:
    return event.get("type") == "m.room.create" and event.get("state_key") == ""
