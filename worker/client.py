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

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

import msgpack
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from worker.bus.connection import connect
from worker.bus.deadletters import (
    DeadLetterRecord,
    Replayed,
    read_dead_letters,
    select,
)
from worker.bus.deadletters import replay as replay_records
from worker.bus.partitions import partition_of_room
from worker.bus.publisher import Outgoing, Publisher
from worker.bus.subjects import Subjects
from worker.config import Config
from worker.errors import BAD_REPLY, UNAVAILABLE, UNKNOWN_EVENT, RoomserverError, is_error_reply
from worker.matrix.hashes import compute_event_id
from worker.matrix.pdu import PduError, room_version_of_create
from worker.matrix.room_versions import RoomVersion, UnknownRoomVersion, get_room_version
from worker.query.gather import SPANNING, merge_replies
from worker.query.schema import (
    SERVICE_NAME,
    WORKER_HEADER,
    AuthChain,
    EventInfo,
    EventList,
    Events,
    Held,
    HeldEvent,
    Latest,
    Members,
    Membership,
    PreparedEvent,
    RestrictedJoin,
    Retried,
    Rooms,
    RoomsForUser,
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
]

DEFAULT_TIMEOUT: Final = 5.0


# -- outputs -----------------------------------------------------------------------------


@dataclass(slots=True)
class Output:
    """One output message (contract section 4) and the means to settle it."""

    type: str
    body: dict[str, Any]
    subject: str
    stream_sequence: int
    msg: Msg = field(repr=False)
    settled: bool = False

    @property
    def room_id(self) -> str | None:
        value = self.body.get("room_id")
        return value if isinstance(value, str) else None

    @property
    def event_id(self) -> str | None:
        value = self.body.get("event_id", self.body.get("redacted_event_id"))
        return value if isinstance(value, str) else None

    async def ack(self) -> None:
        if not self.settled:
            self.settled = True
            await self.msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        """Have it redelivered (after `delay` seconds)."""
        if not self.settled:
            self.settled = True
            await self.msg.nak(delay=delay)


class OutputStream:
    """Outputs from a durable pull consumer, oldest first; use `async with` then
    `async for`.

    With `auto_ack` (the default) an output is acknowledged when the loop asks for the
    next one, so an output whose handling raised or was interrupted is delivered again
    (at least once). Outputs fetched but not yet handed out when the block ends are
    given back at once (nak), so the next reader gets them without waiting for the
    consumer's ack timeout.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str,
        durable: str,
        *,
        batch: int,
        auto_ack: bool,
        idle_timeout: float | None,
        fetch_wait: float = 1.0,
    ) -> None:
        self._js = js
        self._stream = stream
        self._subject = subject
        self._durable = durable
        self._batch = batch
        self._auto_ack = auto_ack
        self._idle_timeout = idle_timeout
        self._fetch_wait = fetch_wait if idle_timeout is None else min(fetch_wait, idle_timeout)
        self._sub: JetStreamContext.PullSubscription | None = None
        self._pending: deque[Msg] = deque()
        self._in_hand: Output | None = None

    async def __aenter__(self) -> Self:
        self._sub = await self._js.pull_subscribe(
            self._subject,
            durable=self._durable,
            stream=self._stream,
            config=api.ConsumerConfig(
                durable_name=self._durable,
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Give back what was not handled; the durable consumer stays."""
        in_hand, self._in_hand = self._in_hand, None
        with contextlib.suppress(nats.errors.Error):
            if in_hand is not None:
                await in_hand.nak()
            while self._pending:
                await self._pending.popleft().nak()
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Output:
        if self._in_hand is not None and self._auto_ack:
            await self._in_hand.ack()
        self._in_hand = None
        if self._sub is None:
            raise RuntimeError("use the output stream inside `async with`")
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while not self._pending:
            # An empty fetch raises nats-py's TimeoutError, a subclass of the builtin.
            with contextlib.suppress(TimeoutError):
                self._pending.extend(await self._sub.fetch(self._batch, timeout=self._fetch_wait))
            if (
                not self._pending
                and self._idle_timeout is not None
                and loop.time() - idle_since >= self._idle_timeout
            ):
                raise StopAsyncIteration
        msg = self._pending.popleft()
        body = msgpack.unpackb(msg.data, raw=False)
        meta = msg.metadata
        output = Output(
            type=str(body.get("type", "")) if isinstance(body, dict) else "",
            body=body if isinstance(body, dict) else {},
            subject=msg.subject,
            stream_sequence=meta.sequence.stream if meta is not None else 0,
            msg=msg,
        )
        self._in_hand = output
        return output


# -- the client ---------------------------------------------------------------------------


class RoomserverClient:
    """Publish inputs, read outputs and ask queries, over one NATS connection.

    `config` names the subject prefix and streams (the worker's own configuration
    file works; only the [streams] section matters here).
    """

    def __init__(
        self,
        nc: NATS,
        config: Config | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        default_room_version: str | None = None,
    ) -> None:
        self.nc = nc
        self.config = config or Config()
        self.subjects = Subjects(self.config.streams.subject_prefix)
        self.timeout = timeout
        #: The version of rooms whose version the client has not learnt (from a create
        #: event, `remember_room_version` or `room_version=`): sent with their inputs.
        self.default_room_version = default_room_version
        self._js = nc.jetstream()
        self._publisher = Publisher(self._js, self.config, timeout=timeout)
        self._versions: dict[str, RoomVersion] = {}
        self._owns_connection = False
        #: The query service instance (micro service ID) that gave the last answer.
        self.answered_by: str | None = None

    @classmethod
    async def connect(
        cls,
        config: Config,
        *,
        name: str = "roomserver-client",
        timeout: float = DEFAULT_TIMEOUT,
        servers: Sequence[str] | None = None,
        connect_timeout: float | None = None,
    ) -> RoomserverClient:
        """Connect to `servers`, or as the configuration says (`server_urls`).

        NATS reconnects forever, also for the first connection (a worker must outlive
        a NATS restart); with `connect_timeout` the client gives up after that many
        seconds instead, raising RoomserverError `unavailable`.
        """
        targets = list(servers) if servers else server_urls(config)
        attempt = connect(config.nats, targets, name=name)
        try:
            nc = await asyncio.wait_for(attempt, connect_timeout)
        except TimeoutError:
            raise RoomserverError(
                UNAVAILABLE,
                f"cannot reach NATS at {', '.join(targets)} within {connect_timeout:g} s",
            ) from None
        client = cls(nc, config, timeout=timeout)
        client._owns_connection = True
        return client

    @property
    def server_url(self) -> str | None:
        """The NATS server this client is connected to (nats://host:port)."""
        url = self.nc.connected_url
        if url is None:
            return None
        return f"{url.scheme}://{url.netloc}"

    async def close(self) -> None:
        """Close the connection if `connect` made it (a borrowed one is left open)."""
        if self._owns_connection and not self.nc.is_closed:
            await self.nc.drain()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- publishing -------------------------------------------------------------------

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

    # -- outputs --------------------------------------------------------------------------

    def outputs(
        self,
        durable: str,
        *,
        room_id: str | None = None,
        batch: int = 100,
        auto_ack: bool = True,
        idle_timeout: float | None = None,
    ) -> OutputStream:
        """Outputs through the durable consumer `durable` (created if missing), of one
        room or all; `idle_timeout` ends the iteration after that many quiet seconds."""
        subject = self.subjects.output(room_id) if room_id else self.subjects.output_wildcard
        return OutputStream(
            self._js,
            self.config.streams.output,
            subject,
            durable,
            batch=batch,
            auto_ack=auto_ack,
            idle_timeout=idle_timeout,
        )

    # -- queries ---------------------------------------------------------------------------

    @property
    def partitions(self) -> int:
        """How many partitions the rooms are spread over (`partitions.count`)."""
        return self.config.partitions.count

    async def request(self, name: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Ask query `name` with a raw request map; the raw reply map.

        With partitions, a query naming a room goes to the worker of the room's
        partition (the hash nats-server files its inputs by), and a query naming none
        (`rooms`, `events`, ...) to every partition, whose replies are merged into the
        one a single worker would have given.
        """
        count = self.partitions
        if count < 2:
            return await self._request(self.subjects.query(name), name, body, self.timeout)
        room_id = (body or {}).get("room_id")
        if isinstance(room_id, str) or name not in SPANNING:
            partition = partition_of_room(room_id, count) if isinstance(room_id, str) else 0
            subject = self.subjects.query(name, partition)
            return await self._request(subject, name, body, self.timeout)
        replies = await asyncio.gather(
            *(
                self._request(self.subjects.query(name, k), name, body, self.timeout)
                for k in range(count)
            ),
            return_exceptions=True,
        )
        return merge_replies(name, body or {}, _answered(replies))

    async def _request(
        self, subject: str, name: str, body: Mapping[str, Any] | None, timeout: float
    ) -> dict[str, Any]:
        payload = msgpack.packb(dict(body or {}), use_bin_type=True)
        try:
            reply = await self.nc.request(subject, payload, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise RoomserverError(
                UNAVAILABLE,
                f"no worker answers on {subject}: is it running, with "
                f"subject prefix {self.subjects.prefix!r}?",
            ) from None
        except TimeoutError:
            raise RoomserverError(
                UNAVAILABLE, f"no answer to {name} within {timeout:g} s"
            ) from None
        self.answered_by = (reply.headers or {}).get(WORKER_HEADER)
        result = msgpack.unpackb(reply.data, raw=False)
        if not isinstance(result, dict):
            raise RoomserverError(BAD_REPLY, f"the reply to {name} is not a map")
        if is_error_reply(result):
            raise RoomserverError.from_wire(result)
        return result

    async def worker_info(self, service_id: str) -> dict[str, Any] | None:
        """The micro service INFO of the query service instance `service_id` (its
        metadata names the worker's storage, host and subject prefix); None when it
        does not answer."""
        subject = f"$SRV.INFO.{SERVICE_NAME}.{service_id}"
        try:
            reply = await self.nc.request(subject, b"", timeout=self.timeout)
        except (nats.errors.NoRespondersError, TimeoutError):
            return None
        info = json.loads(reply.data)
        return info if isinstance(info, dict) else None

    # -- operator requests -------------------------------------------------------------------

    async def retry(self, room_id: str, *, timeout: float | None = None) -> Retried:
        """Have the worker process a parked room's waiting inputs now (it may take a
        while: `timeout` defaults to the client's)."""
        partition = partition_of_room(room_id, self.partitions) if self.partitions > 1 else None
        reply = await self._request(
            self.subjects.admin("retry", partition),
            "retry",
            {"room_id": room_id},
            timeout or self.timeout,
        )
        return Retried.from_wire(reply)

    async def dead_letters(
        self, *, room_id: str | None = None, code: str | None = None
    ) -> list[DeadLetterRecord]:
        """The dead-letter stream's records (of one room, with one code), oldest first."""
        records = await read_dead_letters(
            self._js, self.config.streams.deadletter, self.subjects, room_id
        )
        return select(records, code=code, room_id=room_id)

    async def replay(self, records: Iterable[DeadLetterRecord]) -> list[Replayed]:
        """Publish dead letters' original inputs again, in order."""
        return await replay_records(self._js, records)

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
        return State.from_wire(await self.request("state", body))

    async def events(self, event_ids: Sequence[str]) -> Events:
        return Events.from_wire(await self.request("events", {"event_ids": list(event_ids)}))

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
        return Latest.from_wire(await self.request("latest", body))

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

    # -- what the rest of a homeserver asks (federation) --------------------------------------

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


def _answered(replies: Sequence[dict[str, Any] | BaseException]) -> list[dict[str, Any]]:
    """The replies of the partitions that answered. A partition that does not hold an
    event (`unknown_event`) simply has nothing to add; any other failure, or every
    partition failing, is raised (the first one)."""
    answered = [reply for reply in replies if isinstance(reply, dict)]
    for reply in replies:
        if isinstance(reply, RoomserverError) and reply.code == UNKNOWN_EVENT:
            continue
        if isinstance(reply, BaseException):
            raise reply
    if not answered:
        first = next(reply for reply in replies if isinstance(reply, BaseException))
        raise first
    return answered


def _is_create(event: Mapping[str, Any]) -> bool:
    return event.get("type") == "m.room.create" and event.get("state_key") == ""


def embedded_server_url(config: Config) -> str:
    """Where the worker's embedded nats-server listens, as a client URL."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(
        config.nats.listen_host, config.nats.listen_host
    )
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"nats://{host}:{config.nats.listen_port}"


def server_urls(config: Config, override: str | None = None) -> list[str]:
    """The NATS servers to connect to: `override` (a comma-separated list, as the
    `nats` CLI takes with -s or NATS_URL), else the configured servers, else the
    embedded server's address. A bare host:port gets the nats:// scheme."""
    if override:
        return [
            u if "://" in u else f"nats://{u}"
            for u in (p.strip() for p in override.split(","))
            if u
        ]
    return list(config.nats.servers) or [embedded_server_url(config)]
