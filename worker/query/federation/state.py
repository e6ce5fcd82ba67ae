"""`state_and_auth_chain`: the state at an event, or before a new event with given prev
events, and its auth chain (`/state`, `/state_ids`, and what `/send_join` returns).

State resolution, which may look at any event of the room's auth graph, runs in a
thread whose lookups are answered by the reader in this event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from worker.errors import NO_STATE, UNKNOWN_EVENT, RoomserverError
from worker.matrix.events import Event, StateMap
from worker.matrix.room_versions import RoomVersion
from worker.matrix.state_res import resolve_state
from worker.query.federation.loading import Loading
from worker.query.requests import BadRequest, Fields
from worker.query.schema import StateAndAuthChain, Wire
from worker.storage.reader import BEFORE

T = TypeVar("T")


class StateQueries(Loading):
    """`state_and_auth_chain`, with the resolution of several prev events' states."""

    async def state_and_auth_chain(self, fields: Fields) -> Wire:
        room_id = fields.string("room_id")
        event_id = fields.optional_string("event_id")
        prevs = fields.optional_string_list("prev_event_ids")
        ids_only = fields.flag("ids_only")
        if (event_id is None) == (prevs is None):
            raise BadRequest("give either event_id or prev_event_ids")
        if event_id is not None:
            # `/state` and `/state_ids`: the state before the event.
            snapshot_nid, _ = await self.reader.snapshot_at(room_id, event_id, BEFORE)
            state_ids = [e for _, _, e in await self.reader.state_entries(snapshot_nid)]
        else:
            assert prevs is not None
            if not prevs:
                raise BadRequest("prev_event_ids must list at least one event")
            state_ids = list((await self._state_before_new_event(room_id, prevs)).values())
        state_ids.sort()
        chain_ids = await self.reader.auth_chain(state_ids) if state_ids else []
        state = chain = None
        if not ids_only:
            pdus = await self.pdus([*state_ids, *chain_ids])
            state = [pdus[e] for e in state_ids]
            chain = [pdus[e] for e in chain_ids]
        return StateAndAuthChain(
            room_id, event_id, prevs, state_ids, chain_ids, state, chain
        ).to_wire()

    async def _state_before_new_event(self, room_id: str, prevs: Sequence[str]) -> StateMap:
        """The state an event with these prev events would have before it: the state
        after its one prev event, or the room version's resolution of several."""
        room_nid = await self.reads.room_nid(room_id)
        places = await self.reads.places(room_nid, prevs)
        unknown = [e for e in prevs if e not in places]
        if unknown:
            raise RoomserverError(
                UNKNOWN_EVENT, f"events not stored in room {room_id}: {', '.join(unknown[:20])}"
            )
        outliers = [e for e in prevs if places[e].status == "outlier"]
        if outliers:
            raise RoomserverError(
                NO_STATE, f"prev events stored without their state: {', '.join(outliers[:20])}"
            )
        snapshots = list(dict.fromkeys(places[e].after_snapshot_nid for e in prevs))
        states = [
            {(t, s): e for t, s, e in await self.reader.state_entries(nid)} for nid in snapshots
        ]
        if len(states) == 1:
            return states[0]
        return await self._resolve(room_nid, await self.room_version(room_id), states)

    async def _resolve(
        self, room_nid: int, version: RoomVersion, states: Sequence[StateMap]
    ) -> StateMap:
        """State resolution in a worker thread; its lookups are answered by the reader in
        this loop, one at a time, as the pipeline's are by its own store."""
        loop = asyncio.get_running_loop()
        events: dict[str, Event | None] = {}
        rejected: set[str] = set()

        async def load(event_ids: Iterable[str]) -> None:
            wanted = [e for e in dict.fromkeys(event_ids) if e not in events]
            if not wanted:
                return
            records, missing = await self.reader.events(wanted)
            for record in records:
                events[record.event_id] = Event(record.event_id, version, record.event)
                if record.status == "rejected":
                    rejected.add(record.event_id)
            for event_id in missing:
                events[event_id] = None

        async def chain(event_ids: Iterable[str]) -> set[str]:
            stored = await self.reads.places(room_nid, list(event_ids))
            return set(await self.reader.auth_chain(list(stored))) if stored else set()

        def wait(coroutine: Coroutine[Any, Any, T]) -> T:
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

        def get_event(event_id: str) -> Event | None:
            if event_id not in events:
                wait(load([event_id]))
            return events[event_id]

        # The conflicted entries are looked at first: load them in one go.
        conflicted: set[str] = set()
        for key in set().union(*states):
            entries = {state.get(key) for state in states}
            if len(entries) > 1:
                conflicted.update(e for e in entries if e is not None)
        await load(conflicted)
        return await asyncio.to_thread(
            resolve_state,
            version,
            states,
            get_event,
            lambda ids: wait(chain(ids)),
            lambda event_id: get_event(event_id) is not None and event_id in rejected,
        )
