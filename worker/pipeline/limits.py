"""Bounded memory for the pipeline's own caches, and the filter mirrored from a table.

The storage layer bounds its caches (events, states, NIDs); these are the pipeline's:
room rows, the rooms of input subjects, and the prev events stored events still await.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

from worker.storage.cache_budget import DEFAULT_BUDGET, CacheBudget

log = structlog.get_logger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class CacheLimits:
    """How many entries each of the pipeline's caches may hold: by default the default
    cache budget's shares (worker.storage.cache_budget), `of_budget` for another."""

    #: Room rows (~460 bytes each, their forward extremities included); a row forgotten
    #: costs one read of it again.
    rooms: int = DEFAULT_BUDGET.bound("room_rows")
    #: Input subjects with their room (one per active room, ~300 bytes each); a subject
    #: forgotten costs one parse of it again.
    subjects: int = DEFAULT_BUDGET.bound("subjects")
    #: IDs the awaited-prev-events filter mirrors before it gives up mirroring.
    awaited_prevs: int = DEFAULT_BUDGET.bound("filters")
    #: IDs the late-redaction-targets filter mirrors before it gives up mirroring.
    redaction_targets: int = DEFAULT_BUDGET.bound("filters")

    @classmethod
    def of_budget(cls, budget: CacheBudget) -> CacheLimits:
        return cls(
            rooms=budget.bound("room_rows"),
            subjects=budget.bound("subjects"),
            awaited_prevs=budget.bound("filters"),
            redaction_targets=budget.bound("filters"),
        )


class MaybeSet(Generic[K]):
    """Which keys a table may hold, in bounded memory: "certainly not" or "maybe".

    While the table's keys fit the budget, memory mirrors them and `may_contain` is
    exact (or errs towards "maybe" for a key removed from the table but not here).
    Beyond the budget it stops mirroring and answers "maybe" for every key, so the
    caller's own query decides: slower, never wrong. Callers only ever skip a query on
    "certainly not"."""

    def __init__(self, name: str, keys: Iterable[K], budget: int) -> None:
        self.name = name
        self.budget = budget
        self._keys: set[K] | None = set()
        self.add(keys)

    def __len__(self) -> int:
        return len(self._keys) if self._keys is not None else 0

    @property
    def mirroring(self) -> bool:
        """False once the table outgrew the budget (every answer is then "maybe")."""
        return self._keys is not None

    def may_contain(self, key: K) -> bool:
        return self._keys is None or key in self._keys

    def add(self, keys: Iterable[K]) -> None:
        if self._keys is None:
            return
        self._keys.update(keys)
        if len(self._keys) > self.budget:
            log.warning(
                "a filter outgrew its memory budget; the table is asked instead",
                filter=self.name,
                budget=self.budget,
            )
            self._keys = None

    def discard(self, key: K) -> None:
        if self._keys is not None:
            self._keys.discard(key)
