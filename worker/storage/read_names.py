"""The read side's NID lookups: names of types, state keys and events, memberships and
auth events by NID, each behind its own cache.

A NID always names the same thing and an event's auth events and membership never
change once committed (a redaction keeps `membership`), so nothing here is ever
invalidated; the caches are bounded LRUs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from worker.storage.blocks import unpack_nids
from worker.storage.connection import json_list
from worker.storage.faults import ReadError
from worker.storage.lru import LruByWeight
from worker.storage.schema import EMPTY_STATE_KEY_NID

#: Runs one statement on the read-only connection: (SQL, parameters) → rows.
Rows = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]


class NidNames:
    """NID ↔ name lookups for the reader, read in one statement per call for all the
    NIDs not cached."""

    def __init__(self, rows: Rows, entries: int) -> None:
        self._rows = rows
        self.type_names: LruByWeight[int, str] = LruByWeight(entries)
        self.type_nids: LruByWeight[str, int] = LruByWeight(entries)
        self.state_key_names: LruByWeight[int, str] = LruByWeight(entries)
        self.event_ids: LruByWeight[int, str] = LruByWeight(entries)
        self._memberships: LruByWeight[int, str] = LruByWeight(entries)
        self._auth: LruByWeight[int, list[int]] = LruByWeight(entries)

    def caches(self) -> dict[str, LruByWeight[Any, Any]]:
        return {
            "type_names": self.type_names,
            "type_nids": self.type_nids,
            "state_key_names": self.state_key_names,
            "event_ids": self.event_ids,
            "memberships": self._memberships,
            "auth_events": self._auth,
        }

    async def of_state(
        self, state: Mapping[tuple[int, int], int]
    ) -> tuple[dict[int, str], dict[int, str], dict[int, str]]:
        """Type, state key and event ID maps that cover every NID in `state`."""
        types = await self.types_of(t for t, _ in state)
        keys = await self.state_keys_of(s for _, s in state)
        ids = await self.event_ids_of(state.values())
        return types, keys, ids

    async def _fill(
        self, cache: LruByWeight[int, str], nids: Iterable[int], sql: str
    ) -> dict[int, str]:
        """NID → value for every NID given: cached, or read with `sql` (which takes the
        lacking NIDs as one JSON list) and cached."""
        found, lacking = cache.get_many(nids)
        if not lacking:
            return found
        fetched = {
            int(nid): str(value) for nid, value in await self._rows(sql, (json_list(lacking),))
        }
        if len(fetched) < len(lacking):
            absent = [nid for nid in lacking if nid not in fetched]
            raise ReadError("internal_error", f"NIDs {absent[:10]} are referenced but not stored")
        cache.put_many(fetched)
        found.update(fetched)
        return found

    async def event_ids_of(self, nids: Iterable[int]) -> dict[int, str]:
        return await self._fill(
            self.event_ids,
            nids,
            "SELECT nid, event_id FROM events WHERE nid IN (SELECT value FROM json_each(?))",
        )

    async def state_keys_of(self, nids: Iterable[int]) -> dict[int, str]:
        return await self._fill(
            self.state_key_names,
            nids,
            "SELECT nid, state_key FROM state_keys WHERE nid IN (SELECT value FROM json_each(?))",
        )

    async def types_of(self, nids: Iterable[int]) -> dict[int, str]:
        names = await self._fill(
            self.type_names,
            nids,
            "SELECT nid, name FROM event_types WHERE nid IN (SELECT value FROM json_each(?))",
        )
        for nid, name in names.items():
            self.type_nids.put(name, nid)
        return names

    async def type_nids_of(self, names: Iterable[str]) -> dict[str, int]:
        """Type name → NID for the names that have one (unknown types match nothing)."""
        found, lacking = self.type_nids.get_many(names)
        if lacking:
            for nid, name in await self._rows(
                "SELECT nid, name FROM event_types WHERE name IN (SELECT value FROM json_each(?))",
                (json_list(lacking),),
            ):
                found[str(name)] = int(nid)
                self.type_nids.put(str(name), int(nid))
                self.type_names.put(int(nid), str(name))
        return found

    async def state_key_nids_of(self, keys: Iterable[str]) -> dict[str, int]:
        wanted = set(keys)
        result = {"": EMPTY_STATE_KEY_NID} if "" in wanted else {}
        lacking = [key for key in wanted if key != ""]
        if lacking:
            for nid, key in await self._rows(
                "SELECT nid, state_key FROM state_keys "
                "WHERE state_key IN (SELECT value FROM json_each(?))",
                (json_list(lacking),),
            ):
                result[str(key)] = int(nid)
        return result

    async def memberships_of(self, event_nids: Iterable[int]) -> dict[int, str]:
        return await self._fill(
            self._memberships,
            event_nids,
            "SELECT event_nid, coalesce(json_extract(CAST(json AS TEXT), "
            "'$.content.membership'), '') FROM event_json "
            "WHERE event_nid IN (SELECT value FROM json_each(?))",
        )

    async def auth_events_of(self, nids: Iterable[int]) -> dict[int, list[int]]:
        found, lacking = self._auth.get_many(nids)
        if not lacking:
            return found
        fetched = {
            int(nid): unpack_nids(packed)
            for nid, packed in await self._rows(
                "SELECT nid, auth_event_nids FROM events "
                "WHERE nid IN (SELECT value FROM json_each(?))",
                (json_list(lacking),),
            )
        }
        for nid in lacking:
            auth = fetched.setdefault(nid, [])
            self._auth.put(nid, auth, len(auth) + 1)
        found.update(fetched)
        return found
