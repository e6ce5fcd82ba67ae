"""Synapse's server ACL evaluator as an oracle for `worker.matrix.server_acl`.

Synapse builds its evaluator from an ACL event with
`synapse.storage.controllers.state.server_acl_evaluator_from_event` (which reads the
content leniently) and asks the Rust `ServerAclEvaluator.server_matches_acl_event` with
the server name *without its port*: its federation server strips the port with
`synapse.util.stringutils.parse_server_name` before checking (`check_server_matches_acl`).
This wrapper does the same three steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from synapse.api.room_versions import RoomVersions
from synapse.events import make_event_from_dict
from synapse.storage.controllers.state import server_acl_evaluator_from_event
from synapse.util.stringutils import parse_server_name


def synapse_server_allowed(acl_content: Mapping[str, Any] | None, server_name: str) -> bool:
    """Synapse's answer: may `server_name` (port allowed) take part in the room?"""
    if acl_content is None:
        # `check_server_matches_acl`: no ACL evaluator for the room → allowed.
        return True
    event = make_event_from_dict(
        {
            "type": "m.room.server_acl",
            "state_key": "",
            "room_id": "!r:s",
            "sender": "@a:s",
            "content": dict(acl_content),
            "hashes": {"sha256": ""},
            "signatures": {},
            "depth": 1,
            "origin_server_ts": 0,
            "prev_events": [],
            "auth_events": [],
        },
        RoomVersions.V10,
    )
    host, _port = parse_server_name(server_name)
    return bool(server_acl_evaluator_from_event(event).server_matches_acl_event(host))
