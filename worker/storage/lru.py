"""The one bounded cache of the storage layer: an LRU map bounded by a total weight.

The storage caches that grow with the data (decoded states, packed blocks, block
lists, NID names, room versions, on the write side and the read side) sit behind this
class, so each has a configured bound that `weight` and `budget` let a test check.
"""

from __future__ import annotations

from collections import OrderedDict
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
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.budget = budget
        self._weight = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def weight(self) -> int:
        """The total weight held; at most `budget` unless one item alone exceeds it."""
        return self._weight

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V, weight: int = 1) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._weight -= old[1]
        self._items[key] = (value, weight)
        self._weight += weight
        while self._weight > self.budget and len(self._items) > 1:
            _, (_, dropped) = self._items.popitem(last=False)
            self._weight -= dropped

    def discard(self, key: K) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._weight -= old[1]

    def clear(self) -> None:
        self._items.clear()
        self._weight = 0
