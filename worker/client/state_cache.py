"""The client's copy of rooms' current states, checked with the worker on every query.

A client that asks for a room's whole current state again (a sync worker, a bot: the
same room, over and over) mostly gets back what it already has. So the client keeps
the last whole current state of recently asked rooms with the tag the worker gave it
(docs/queries.md, "Asking again for an unchanged state"), and sends the tag with the
next request; if the room's current state is still that snapshot, the worker answers
in a few bytes that it is unchanged, and the client returns its copy. The worker
decides every time, from the room's row read then, so the answer is never staler than
a full reply would have been; only the bytes and the decoding are saved.

The copy is bounded by entries (least recently asked room out first): a state bigger
than the whole budget is never kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from worker.query.schema import Columns
from worker.storage.lru import LruByWeight

#: Entries kept by default: five states of a 10,000-member room (~230 bytes an entry
#: when the caller keeps nothing else of them: about 11 MB at most).
DEFAULT_STATE_CACHE_ENTRIES: Final = 50_000


@dataclass(frozen=True, slots=True)
class CachedState:
    """A room's whole current state as one worker named it (its tag)."""

    tag: str
    #: The state as the grouped form brought it (read-only: each State made from it
    #: makes its own entries).
    columns: Columns
    size: int


class StateCache:
    """Rooms' last whole current states, within a budget of entries."""

    def __init__(self, budget: int = DEFAULT_STATE_CACHE_ENTRIES) -> None:
        self._states: LruByWeight[str, CachedState] = LruByWeight(budget)

    def get(self, room_id: str) -> CachedState | None:
        return self._states.get(room_id)

    def put(self, room_id: str, tag: str, columns: Columns, size: int) -> None:
        """Keep `columns` (`size` entries, decoded as tuples: nothing the caller can
        change) as the room's state; one bigger than the whole budget is not kept (nor
        an older copy)."""
        if size > self._states.budget:
            self._states.discard(room_id)
            return
        self._states.put(room_id, CachedState(tag, columns, size), size)

    def discard(self, room_id: str) -> None:
        self._states.discard(room_id)

    def __len__(self) -> int:
        return len(self._states)
