"""Synapse's choice of a new event's auth events, as an oracle for `worker.matrix.prepare`.

`EventAuthHandler.compute_auth_events(event, current_state_ids)` looks up each key of
`synapse.event_auth.auth_types_for_event` in the state; it reads nothing from `self`,
so it is called unbound. The prospective event is a Synapse event made from the fields
a builder would have (no prev or auth events yet). From room version 12,
`synapse.events.builder.EventBuilder.build` removes the create event from the result
("All other events do not reference the create event in auth_events, as the room ID
/is/ the create event"); so does this wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import synapse.handlers.room  # noqa: F401  (avoids a circular import; see synapse_restricted)
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.events import make_event_from_dict
from synapse.handlers.event_auth import EventAuthHandler

from worker.matrix.events import StateKey


def synapse_auth_event_ids(
    room_version: str,
    room_id: str,
    event_type: str,
    state_key: str | None,
    sender: str,
    content: Mapping[str, Any],
    state: Mapping[StateKey, str],
) -> set[str]:
    pdu: dict[str, Any] = {
        "type": event_type,
        "room_id": room_id,
        "sender": sender,
        "content": dict(content),
        "depth": 5,
        "origin_server_ts": 0,
        "prev_events": [],
        "auth_events": [],
        "hashes": {"sha256": ""},
        "signatures": {},
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    version = KNOWN_ROOM_VERSIONS[room_version]
    if not version.event_format or version.identifier in ("1", "2"):
        pdu["event_id"] = "$new:x"
    event = make_event_from_dict(pdu, version)
    ids = set(EventAuthHandler.compute_auth_events(None, event, dict(state)))  # type: ignore[arg-type]
    if version.msc4291_room_ids_as_hashes and event_type != "m.room.create":
        # `EventBuilder.build` then drops the create event, which the room ID names.
        ids.discard("$" + room_id[1:])
    return ids
