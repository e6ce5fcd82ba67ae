"""The query service: request/reply on `<prefix>.query.<name>`, msgpack both ways.

Built on nats-py's micro-services API, so the service answers `$SRV.PING`, `$SRV.INFO`
and `$SRV.STATS` like any NATS micro service (`nats micro ls`, `nats micro stats
roomserver`) and counts requests and processing time per endpoint.

Every failure is answered with the contract's map, `{"error": code, "message": ...}`,
in the body (so that a client needs nothing but msgpack), and also with micro's error
headers (so that generic NATS tooling sees an error). micro counts in `num_errors`
only the failures its own wrapper sees; this service answers its errors itself, so
its stats put them in each endpoint's `data`: `{"errors": {code: count}}`.
"""

from __future__ import annotations

import importlib.metadata
import os
import secrets
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import msgpack
import structlog
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER, Request
from nats.micro.service import EndpointStats, Service

from worker.bus.subjects import Subjects
from worker.errors import (
    BAD_REQUEST,
    INTERNAL_ERROR,
    NO_STATE,
    TOO_LARGE,
    UNKNOWN_EVENT,
    UNKNOWN_ROOM,
    RoomserverError,
)
from worker.heap import keep_freed_memory
from worker.query.chunks import ACCEPT_CHUNKS_HEADER, accepts_chunks, chunk_size, split
from worker.query.federation import FederationQueries
from worker.query.requests import BadRequest, Fields, decode_request
from worker.query.schema import (
    IF_STATE_HEADER,
    SERVICE_NAME,
    WORKER_HEADER,
    AuthChain,
    EventInfo,
    Events,
    Held,
    HeldEvent,
    Latest,
    Members,
    Membership,
    RawMsgpack,
    Rooms,
    RoomSummary,
    State,
    StateEntry,
    Wire,
    accepts_grouped,
    grouped_state,
    pack_reply,
    state_entries,
)
from worker.storage.cache_budget import DEFAULT_BUDGET, CacheBudget
from worker.storage.lru import LruByWeight
from worker.storage.reader import AFTER, BEFORE, Reader

log = structlog.get_logger(__name__)


#: Error codes → the status code micro's error header carries (HTTP's, by convention).
_STATUS: Final = {
    BAD_REQUEST: "400",
    UNKNOWN_ROOM: "404",
    UNKNOWN_EVENT: "404",
    NO_STATE: "409",
    TOO_LARGE: "413",
    INTERNAL_ERROR: "500",
}

Handler = Callable[[Fields], Awaitable[Wire]]


def _version() -> str:
    try:
        return importlib.metadata.version("roomserver-worker")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


#: A cached encoding's key: the snapshot NID, and whether it is the grouped form.
PackedKey = tuple[int, bool]


class PackedStates:
    """Whole states, encoded, by snapshot NID and form, within a byte budget (least
    recently used first out).

    A snapshot never changes, so its encoding never goes stale, and the question asked
    most (a room's current state, by every client that syncs it) then costs a lookup
    instead of naming and encoding every entry again: for a 10,000-entry room that is
    the difference between well under a millisecond and several.
    """

    def __init__(self, budget: int) -> None:
        self._items: LruByWeight[PackedKey, RawMsgpack] = LruByWeight(budget)

    def get(self, key: PackedKey) -> RawMsgpack | None:
        return self._items.get(key)

    def put(self, key: PackedKey, packed: RawMsgpack) -> None:
        """Keep `packed`, weighed by its bytes; one bigger than the whole budget is
        not kept (it would push out everything else), nor one already kept again."""
        if len(packed) > self._items.budget or key in self._items.view():
            return
        self._items.put(key, packed, len(packed))

    def clear(self) -> None:
        self._items.clear()


class Queries:
    """The queries themselves, NATS-free: request fields in, reply map out (built by
    the reply dataclasses of `worker.query.schema`, which the client decodes with)."""

    #: name → fields the request may carry.
    FIELDS: Final[dict[str, tuple[str, ...]]] = {
        "state": ("room_id", "event_id", "at", "types", "keys"),
        "events": ("event_ids",),
        "latest": ("room_id", "include_state", "types", "keys"),
        "membership": ("room_id", "user_id", "membership", "event_id", "at"),
        "rooms": (),
        "auth_chain": ("event_ids",),
        "held": ("room_id",),
        **FederationQueries.FIELDS,
    }

    def __init__(
        self, reader: Reader, packed_state_bytes: int = DEFAULT_BUDGET.bound("packed_states")
    ) -> None:
        self.reader = reader
        self.packed_states = PackedStates(packed_state_bytes)
        self.federation = FederationQueries(reader)
        #: Makes state tags unique to this instance: snapshot NIDs are this database's
        #: own, so a tag from another worker (or an earlier run) must never match.
        self._instance = secrets.token_hex(6)

    def handlers(self) -> dict[str, Handler]:
        return {
            "state": self.state,
            "events": self.events,
            "latest": self.latest,
            "membership": self.membership,
            "rooms": self.rooms,
            "auth_chain": self.auth_chain,
            "held": self.held,
            **self.federation.handlers(),
        }

    @staticmethod
    def _at(fields: Fields) -> tuple[str | None, str]:
        event_id = fields.optional_string("event_id")
        at = fields.choice("at", (BEFORE, AFTER), BEFORE)
        if event_id is None and fields.has("at"):
            raise BadRequest("at needs event_id: the current state has no before or after")
        return event_id, at

    async def _state(
        self,
        snapshot_nid: int,
        types: list[str] | None,
        keys: list[tuple[str, str]] | None,
        grouped: bool,
    ) -> tuple[list[StateEntry], RawMsgpack | None]:
        """A snapshot's state for a reply, as entries or (a whole state, from the
        cache) already encoded, in the grouped form when `grouped`."""
        if types is not None or keys is not None or snapshot_nid == 0:
            return state_entries(await self.reader.state_entries(snapshot_nid, types, keys)), None
        key = (snapshot_nid, grouped)
        packed = self.packed_states.get(key)
        if packed is None:
            entries = await self.reader.state_entries(snapshot_nid)
            value = grouped_state(entries) if grouped else entries
            packed = RawMsgpack(msgpack.packb(value, use_bin_type=True))
            self.packed_states.put(key, packed)
        return [], packed

    async def state(self, fields: Fields) -> Wire:
        room_id = fields.string("room_id")
        event_id, at = self._at(fields)
        types = fields.optional_string_list("types")
        keys = fields.optional_key_list("keys")
        grouped = accepts_grouped(fields.headers)
        snapshot_nid, _ = await self.reader.snapshot_at(room_id, event_id, at)
        tag: str | None = None
        if grouped and event_id is None and types is None and keys is None:
            # A whole current state: named, so that the client can ask again with it.
            tag = f"{self._instance}.{snapshot_nid}"
            if fields.headers.get(IF_STATE_HEADER) == tag:
                return State.unchanged(room_id, tag)
        entries, packed = await self._state(snapshot_nid, types, keys, grouped)
        at_or_none = at if event_id is not None else None
        return State(room_id, event_id, at_or_none, entries, packed, grouped, tag).to_wire()

    async def events(self, fields: Fields) -> Wire:
        found, missing = await self.reader.events(fields.string_list("event_ids"))
        infos = [
            EventInfo(r.event_id, r.room_id, r.event, r.status, r.reason, r.redacted_by)
            for r in found
        ]
        return Events(infos, missing).to_wire()

    async def latest(self, fields: Fields) -> Wire:
        with_state = fields.flag("include_state")
        types = fields.optional_string_list("types")
        keys = fields.optional_key_list("keys")
        record = await self.reader.latest(fields.string("room_id"))
        grouped = accepts_grouped(fields.headers)
        state: list[StateEntry] | None = None
        packed: RawMsgpack | None = None
        if with_state or types is not None or keys is not None:
            state, packed = await self._state(record.snapshot_nid, types, keys, grouped)
        return Latest(
            record.room_id,
            record.room_version,
            record.depth,
            record.latest_event_ids,
            state,
            packed,
            grouped,
        ).to_wire()

    async def membership(self, fields: Fields) -> Wire:
        room_id = fields.string("room_id")
        user_id = fields.optional_string("user_id")
        event_id, at = self._at(fields)
        if user_id is not None:
            if fields.has("membership"):
                raise BadRequest("membership filters the member list; it cannot go with user_id")
            record = await self.reader.membership(room_id, user_id, event_id=event_id, at=at)
            return Membership(room_id, user_id, record.membership, record.event_id).to_wire()
        membership = fields.optional_string("membership") or "join"
        members = await self.reader.members(
            room_id, membership=membership, event_id=event_id, at=at
        )
        return Members(room_id, membership, members).to_wire()

    async def rooms(self, fields: Fields) -> Wire:
        summaries = [
            RoomSummary(r.room_id, r.room_version, r.events) for r in await self.reader.rooms()
        ]
        return Rooms(summaries).to_wire()

    async def auth_chain(self, fields: Fields) -> Wire:
        return AuthChain(await self.reader.auth_chain(fields.string_list("event_ids"))).to_wire()

    async def held(self, fields: Fields) -> Wire:
        room_id = fields.optional_string("room_id")
        held = [
            HeldEvent(
                r.event_id,
                r.room_id,
                r.missing_prev_event_ids,
                r.waiting_for,
                r.held_since_ms,
                r.stream_sequence,
            )
            for r in await self.reader.held(room_id)
        ]
        return Held(held).to_wire()


def error_body(error: RoomserverError) -> bytes:
    packed: bytes = msgpack.packb(error.to_wire(), use_bin_type=True)
    return packed


class QueryService:
    """The micro service and its reader; `start` it beside the consumer, `stop` it
    before the database closes."""

    def __init__(
        self,
        nc: NATS,
        reader: Reader,
        subjects: Subjects,
        partition: int | None = None,
        budget: CacheBudget = DEFAULT_BUDGET,
    ) -> None:
        self._nc = nc
        self.reader = reader
        self.queries = Queries(reader, budget.bound("packed_states"))
        self.subjects = subjects
        #: The partition whose rooms this worker holds: it answers only on
        #: <prefix>.query.<partition>.<name> (None: unpartitioned, every room).
        self.partition = partition
        self.errors: dict[str, Counter[str]] = {name: Counter() for name in Queries.FIELDS}
        self._service: Service | None = None

    @classmethod
    async def start(
        cls,
        nc: NATS,
        storage_path: Path,
        subjects: Subjects,
        partition: int | None = None,
        budget: CacheBudget = DEFAULT_BUDGET,
    ) -> QueryService:
        """Open a read-only reader on the worker's database and serve every query (of
        one partition's rooms, when partitioned), its caches within `budget`'s shares;
        the C heap is set to keep what its large replies free (worker.heap)."""
        keep_freed_memory()
        reader = await Reader.open(storage_path, budget=budget)
        service = cls(nc, reader, subjects, partition, budget)
        try:
            await service._serve()
        except BaseException:
            await reader.close()
            raise
        return service

    async def _serve(self) -> None:
        self._service = await add_service(
            self._nc,
            name=SERVICE_NAME,
            version=_version(),
            description="Matrix roomserver queries (msgpack request/reply)",
            # What `roomserver` prints as "answered by": which worker, which files.
            metadata={
                "subject_prefix": self.subjects.prefix,
                "storage": str(self.reader.path),
                "host": socket.gethostname(),
                "pid": str(os.getpid()),
                "partition": "" if self.partition is None else str(self.partition),
            },
            stats_handler=self._endpoint_data,
        )
        for name, handler in self.queries.handlers().items():
            await self._service.add_endpoint(
                name=name,
                subject=self.subjects.query(name, self.partition),
                handler=self._wrap(name, handler),
            )
        await self._nc.flush()
        log.info("query service started", subjects=self._subject_pattern())

    def _subject_pattern(self) -> str:
        part = "" if self.partition is None else f"{self.partition}."
        return f"{self.subjects.prefix}.query.{part}*"

    def clear_caches(self) -> None:
        """Forget every decoded and encoded state (for measuring cold queries)."""
        self.reader.clear_caches()
        self.queries.packed_states.clear()

    @property
    def service_id(self) -> str | None:
        """This instance's micro service ID (`$SRV.<verb>.roomserver.<id>`)."""
        return self._service.id if self._service is not None else None

    async def stop(self) -> None:
        service, self._service = self._service, None
        try:
            if service is not None and not self._nc.is_closed:
                await service.stop()
        finally:
            await self.reader.close()

    def _endpoint_data(self, stats: EndpointStats) -> dict[str, Any]:
        return {"errors": dict(self.errors.get(stats.name, {}))}

    def _wrap(self, name: str, handler: Handler) -> Callable[[Request], Awaitable[None]]:
        allowed = Queries.FIELDS[name]
        errors = self.errors[name]

        async def handle(request: Request) -> None:
            try:
                fields = Fields(decode_request(request.data), allowed, request.headers)
                body = pack_reply(await handler(fields))
                chunked = len(body) > self._nc.max_payload
                if chunked and not accepts_chunks(request.headers):
                    raise RoomserverError(
                        TOO_LARGE,
                        f"the reply would be {len(body)} bytes, over the NATS server's "
                        f"max_payload of {self._nc.max_payload}; ask for less (filter by "
                        "types or keys, or list fewer IDs), or accept a chunked reply "
                        f"(request header {ACCEPT_CHUNKS_HEADER}: 1, as worker.client does)",
                    )
            except RoomserverError as exc:
                await self._fail(request, errors, exc)
            except Exception as exc:
                log.exception("query failed", query=name)
                failed = RoomserverError(INTERNAL_ERROR, f"the query failed: {exc!r}")
                await self._fail(request, errors, failed)
            else:
                if chunked:
                    await self._respond_in_chunks(request, name, body)
                else:
                    await self._respond(request, body)

        return handle

    async def _fail(self, request: Request, errors: Counter[str], error: RoomserverError) -> None:
        errors[error.code] += 1
        # A header is one line; room and event IDs may hold any character.
        one_line = " ".join(error.message.splitlines())
        headers = {ERROR_HEADER: one_line, ERROR_CODE_HEADER: _STATUS.get(error.code, "500")}
        await self._respond(request, error_body(error), headers)

    async def _respond_in_chunks(self, request: Request, name: str, body: bytes) -> None:
        """Send a reply over max_payload as numbered chunks to the requester's inbox
        (worker.query.chunks): published back to back, so NATS keeps their order."""
        size = chunk_size(self._nc.max_payload)
        count = -(-len(body) // size)
        log.debug("reply sent in chunks", query=name, bytes=len(body), chunks=count)
        for part, headers in split(body, size):
            await self._respond(request, part, headers)

    async def _respond(
        self, request: Request, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        named = {**(headers or {}), WORKER_HEADER: self.service_id or ""}
        try:
            await request.respond(body, headers=named)
        except ValueError:
            # Published without a reply subject: there is no one to answer.
            log.debug("query without a reply subject ignored", subject=request.subject)
