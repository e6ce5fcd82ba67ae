"""A Python client for the roomserver worker: what publishers and consumers import.

    async with await RoomserverClient.connect(config) as client:
        await client.publish(pdu)                            # input, with its msg ID
        state = await client.state(room_id)                  # typed query results
        async with client.outputs("my-consumer") as stream:  # durable, at least once
            async for output in stream:
                handle(output.type, output.body)

It speaks the contract (docs/queries.md, /work/shared/design/contract.md) and nothing
else: it never touches the worker's database, so it works against any worker that
answers on the same subjects. Query failures are raised as
`worker.errors.RoomserverError` carrying the contract's error code (`unavailable` when
no worker answers); the typed results are the reply dataclasses of
`worker.query.schema`, which the service builds its replies with.
"""

from worker.client.core import ClientCore, embedded_server_url, server_urls
from worker.client.federation import FederationQueries
from worker.client.operator import Operator
from worker.client.outputs import Output, OutputStream
from worker.client.publishing import Publishing
from worker.client.queries import RoomQueries
from worker.errors import RoomserverError
from worker.query.schema import (
    EventInfo,
    EventList,
    Events,
    HeldEvent,
    Latest,
    Membership,
    PreparedEvent,
    RestrictedJoin,
    RoomSummary,
    ServerAllowed,
    State,
    StateAndAuthChain,
    StateEntry,
    VisibleEvents,
)

__all__ = [
    "EventInfo",
    "EventList",
    "Events",
    "HeldEvent",
    "Latest",
    "Membership",
    "Output",
    "OutputStream",
    "PreparedEvent",
    "RestrictedJoin",
    "RoomSummary",
    "RoomserverClient",
    "RoomserverError",
    "ServerAllowed",
    "State",
    "StateAndAuthChain",
    "StateEntry",
    "VisibleEvents",
    "embedded_server_url",
    "server_urls",
]


class RoomserverClient(Publishing, RoomQueries, FederationQueries, Operator, ClientCore):
    """Publish inputs, read outputs and ask queries, over one NATS connection.

    Its parts, each in its own module: the connection and query routing
    (`ClientCore`), publishing, the room and federation queries, and the operator's
    requests. `config` names the subject prefix and streams (the worker's own
    configuration file works; only the [streams] section matters here).
    """
