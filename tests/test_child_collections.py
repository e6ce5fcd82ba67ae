"""The pipeline process's collections (worker/runner/pipeline_process.py,
`CollectionPacer`): what the requests cache leaves the young generations between
requests, traversed once, and is not visited again by the young collections that fall
inside later transactions; garbage cycles among it are still freed, by the full
collection run between requests."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.pipeline import Harness
from worker.pipeline import Disposition
from worker.runner.pipeline_process import CollectionPacer
from worker.storage.events import StoredEvent


@pytest.fixture
def no_automatic_collections() -> Iterator[None]:
    """The collector on but never set off by allocations, so that only the pacer's
    collections run while the test looks at the generations."""
    thresholds = gc.get_threshold()
    gc.set_threshold(10**9, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def _young_cached_events() -> int:
    return sum(isinstance(o, StoredEvent) for g in (0, 1) for o in gc.get_objects(g))


def test_cached_events_leave_the_young_generations(
    tmp_path: Path, no_automatic_collections: None
) -> None:
    harness = Harness(tmp_path)
    for i in range(20):
        assert harness.send(harness.builder.message(harness.builder.creator, f"m{i}")) is (
            Disposition.ACK
        )
    # The requests above cached their events, young objects until a collection.
    assert _young_cached_events() > 0
    CollectionPacer(young_every_cpu=0.0).after_request()
    assert _young_cached_events() == 0
    assert gc.get_count()[0] < 100


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_a_cycle_dropped_after_promotion_is_freed_by_the_full_collection(
    no_automatic_collections: None,
) -> None:
    first, second = _Node(), _Node()
    first.other, second.other = second, first
    alive = weakref.ref(first)
    pacer = CollectionPacer(young_every_cpu=0.0, full_every=3600.0)
    pacer.after_request()  # the cycle survives, promoted to the oldest generation
    del first, second
    pacer.after_request()  # a young collection: the oldest generation is not looked at
    assert alive() is not None
    CollectionPacer(young_every_cpu=0.0, full_every=0.0).after_request()
    assert alive() is None
