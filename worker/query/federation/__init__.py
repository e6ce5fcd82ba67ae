"""What the rest of a homeserver asks its roomserver: the federation queries.

A homeserver's federation API answers other servers (`/backfill`,
`/get_missing_events`, `/state`, `/make_join`, ...) and builds events of its own; the
decisions behind those answers are pure rules in `worker.matrix` (server ACLs,
history visibility, graph walks, restricted joins, new-event fields). This package
feeds them from storage, through the read-only reader and
`worker.storage.federation_reads`, and shapes the replies of `worker.query.schema`:
one class per family of queries (`visibility`: ACLs, visibility and graph walks;
`state`: state and auth chain; `joins`: new events, restricted joins, rooms for a user),
each on the shared loading of `loading`.
The request fields and errors of each query are in docs/queries.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from worker.query.federation.joins import JoinQueries
from worker.query.federation.state import StateQueries
from worker.query.federation.visibility import VisibilityQueries
from worker.query.requests import Fields
from worker.query.schema import Wire
from worker.storage.reader import Reader

Handler = Callable[[Fields], Awaitable[Wire]]


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
        self.visibility = VisibilityQueries(reader)
        self.state = StateQueries(reader)
        self.joins = JoinQueries(reader)

    def handlers(self) -> dict[str, Handler]:
        vis, state, joins = self.visibility, self.state, self.joins
        return {
            "server_allowed": vis.server_allowed,
            "visible_to_server": vis.visible_to_server,
            "missing_events": vis.missing_events,
            "backfill": vis.backfill,
            "state_and_auth_chain": state.state_and_auth_chain,
            "prepare_event": joins.prepare_event,
            "restricted_join": joins.restricted_join,
            "rooms_for_user": joins.rooms_for_user,
        }
