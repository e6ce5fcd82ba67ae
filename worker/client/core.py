"""The client's core: one NATS connection, the contract's subjects, and a query's
route to the worker of its room's partition (or to every partition, merged)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Self, TypeVar

import msgpack
import nats.errors
from nats.aio.client import Client as NATS

from worker.bus.connection import connect
from worker.bus.lifecycle import Started
from worker.bus.partitions import partition_of_room
from worker.bus.publisher import Publisher
from worker.bus.subjects import Subjects
from worker.client.outputs import OutputStream
from worker.client.replies import NoResponders, ReplyInbox, read_reply
from worker.client.state_cache import DEFAULT_STATE_CACHE_ENTRIES, StateCache
from worker.config import Config
from worker.errors import UNAVAILABLE, UNKNOWN_EVENT, RoomserverError
from worker.matrix.room_versions import RoomVersion
from worker.query.gather import SPANNING, merge_replies
from worker.query.schema import SERVICE_NAME

DEFAULT_TIMEOUT: Final = 5.0

T = TypeVar("T")


def _as_map(reply: dict[str, Any]) -> dict[str, Any]:
    return reply


class ClientCore(Started):
    """The connection, its subjects and the routing of a query to the partition (or
    partitions) that answer it: what every part of `RoomserverClient` builds on.

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
        state_cache_entries: int = DEFAULT_STATE_CACHE_ENTRIES,
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
        self._replies = ReplyInbox(nc)
        self._owns_connection = False
        #: The query service instance (micro service ID) that gave the last answer.
        self.answered_by: str | None = None
        #: Rooms' last whole current states, checked with the worker before use
        #: (worker.client.state_cache); `state_cache_entries=0` keeps none.
        self.state_cache = StateCache(state_cache_entries)

    @classmethod
    async def connect(
        cls,
        config: Config,
        *,
        name: str = "roomserver-client",
        timeout: float = DEFAULT_TIMEOUT,
        servers: Sequence[str] | None = None,
        connect_timeout: float | None = None,
        state_cache_entries: int = DEFAULT_STATE_CACHE_ENTRIES,
    ) -> Self:
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
        client = cls(nc, config, timeout=timeout, state_cache_entries=state_cache_entries)
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
        await self._replies.close()
        if self._owns_connection and not self.nc.is_closed:
            await self.nc.drain()

    async def start(self) -> None:
        """Nothing to start: `connect` made the connection, or the caller lent it."""

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

    @property
    def partitions(self) -> int:
        """How many partitions the rooms are spread over (`partitions.count`)."""
        return self.config.partitions.count

    async def request(self, name: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Ask query `name` with a raw request map; the raw reply map.

        With partitions, a query naming a room goes to the worker of the room's
        partition (the hash nats-server files its inputs by), and a query naming none
        (`rooms`, `events`, ...) to every partition, whose replies are merged into the
        one a single worker would have given. A reply too big for one NATS message
        comes in chunks, put back together here (worker.client.replies).
        """
        return await self.ask(name, body, _as_map)

    async def ask(
        self,
        name: str,
        body: Mapping[str, Any] | None,
        read: Callable[[dict[str, Any]], T],
        *,
        tuples: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> T:
        """`request`, with the reply map turned into a typed result by `read` (while
        a big reply's decoding still has the garbage collector paused); with
        `tuples`, the reply's arrays come as tuples (`read_reply`); `headers` go with
        the request (the grouped state form is asked for so: docs/queries.md)."""
        count = self.partitions
        if count < 2:
            subject = self.subjects.query(name)
            return await self._request(subject, name, body, read, tuples=tuples, headers=headers)
        room_id = (body or {}).get("room_id")
        if isinstance(room_id, str) or name not in SPANNING:
            partition = partition_of_room(room_id, count) if isinstance(room_id, str) else 0
            subject = self.subjects.query(name, partition)
            return await self._request(subject, name, body, read, tuples=tuples, headers=headers)
        replies = await asyncio.gather(
            *(
                self._request(self.subjects.query(name, k), name, body, _as_map)
                for k in range(count)
            ),
            return_exceptions=True,
        )
        return read(merge_replies(name, body or {}, _answered(replies)))

    async def _request(
        self,
        subject: str,
        name: str,
        body: Mapping[str, Any] | None,
        read: Callable[[dict[str, Any]], T],
        timeout: float | None = None,
        *,
        tuples: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> T:
        payload = msgpack.packb(dict(body or {}), use_bin_type=True)
        wait = timeout or self.timeout
        try:
            data, self.answered_by = await self._replies.ask(subject, name, payload, wait, headers)
        except NoResponders:
            raise RoomserverError(
                UNAVAILABLE,
                f"no worker answers on {subject}: is it running, with "
                f"subject prefix {self.subjects.prefix!r}?",
            ) from None
        return read_reply(name, data, read, tuples=tuples)

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
