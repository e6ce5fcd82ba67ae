"""The bounded caches of the storage layer: an LRU map bounded by a total weight, and a
memo emptied when full.

The storage caches that grow with the data (decoded states, packed blocks, block
lists, NID names, room versions, on the write side and the read side) sit behind
`LruByWeight`, so each has a configured bound that `weight` and `budget` let a test
check. `BoundedMemo` is for memos read far more often than written (state
resolution's facts about settled events), where a plain dict's reads are the point.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LruByWeight(Generic[K, V]):
    """An LRU map bounded by a total weight (state entries, say), not an item count, so
    one huge room and many small ones share the same memory budget. A weight of 1 per
    item makes it a plain LRU bounded by items.

    One item heavier than the whole budget is still kept (alone): the caller asked for
    it and is about to use it.
    """

    def __init__(self, budget: int) -> None:
        self._values: dict[K, V] = {}
        #: Key → weight, least recently used first.
        self._weights: OrderedDict[K, int] = OrderedDict()
        self.budget = budget
        self._weight = 0

    def __len__(self) -> int:
        return len(self._values)

    @property
    def weight(self) -> int:
        """The total weight held; at most `budget` unless one item alone exceeds it."""
        return self._weight

    def view(self) -> Mapping[K, V]:
        """The cached values as a live, read-only mapping, for bulk lookups on a hot
        path (say, naming 10,000 state entries) that cannot afford a recency update
        per key. Those lookups do not count as uses: an item only ever read this way
        ages out, and whoever misses it reads it again with `get`/`put`."""
        return MappingProxyType(self._values)

    def get(self, key: K) -> V | None:
        value = self._values.get(key)
        if value is not None:
            self._weights.move_to_end(key)
        return value

    def get_many(self, keys: Iterable[K]) -> tuple[dict[K, V], list[K]]:
        """The cached values of `keys` (each counted as a use) in a dict of their own,
        which stays complete for its holder whatever is evicted later; and the keys
        not cached."""
        values, use = self._values, self._weights.move_to_end
        wanted = set(keys)
        lacking = list(wanted - values.keys())
        found: dict[K, V] = {}
        for key in wanted & values.keys() if lacking else wanted:
            use(key)
            found[key] = values[key]
        return found, lacking

    def put(self, key: K, value: V, weight: int = 1) -> None:
        self._weight -= self._weights.pop(key, 0)
        self._values[key] = value
        self._weights[key] = weight
        self._weight += weight
        self._evict()

    def put_many(self, items: Mapping[K, V]) -> None:
        """`put` of each item with weight 1, in bulk (thousands of names at a time)."""
        weights = self._weights
        for key in items.keys() & weights.keys():
            self._weight -= weights.pop(key)
        self._values.update(items)
        for key in items:  # faster than OrderedDict.update, which is written in Python
            weights[key] = 1
        self._weight += len(items)
        self._evict()

    def _evict(self) -> None:
        while self._weight > self.budget and len(self._weights) > 1:
            dropped, dropped_weight = self._weights.popitem(last=False)
            del self._values[dropped]
            self._weight -= dropped_weight

    def oldest(self) -> tuple[K, V] | None:
        """The least recently used item, or None when empty (not counted as a use): for
        an owner that forgets items by their age as well as by the bound."""
        for key in self._weights:
            return key, self._values[key]
        return None

    def discard(self, key: K) -> None:
        if self._values.pop(key, None) is not None:
            self._weight -= self._weights.pop(key)

    def clear(self) -> None:
        self._values.clear()
        self._weights.clear()
        self._weight = 0


class BoundedMemo(dict[K, V]):
    """A plain dict of lasting facts (a hot path's memo), emptied when it reaches `limit`
    entries and one more is stored.

    Reads are the dict's own, at C speed: the memos this serves are read many times for
    each write, where an LRU's recency update on every read would cost more than the
    memo saves. Emptying at once forgets the hot entries too, but they come back after
    one miss each, and it keeps the bound without any bookkeeping. Only item
    assignment (`memo[key] = value`) is bounded: write through it alone.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: K, value: V) -> None:
        if len(self) >= self.limit and key not in self:
            self.clear()
        super().__setitem__(key, value)
