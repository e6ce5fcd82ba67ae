"""`storage.cache_mb` bounds every cache of a worker together (worker.storage.cache_budget).

The budget is shared out in parts, each turned into a bound in the cache's own unit by
what a unit was measured to cost (tests/storage/test_cache_memory.py measures the
state caches' units with tracemalloc). Here a tiny budget (1 MiB) meets real work on a
real SQLite file: small linear rooms and a forked room through the pipeline, then the
state of every room through the reader and the query service's encoder. Every cache
must end at or below its bound, the ones this work fills must reach it (or the test
would not show the bound holding), and all of them together, unit by unit, must come
to no more than the budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Sized
from pathlib import Path
from typing import Any

import msgpack
import pytest

from bench.forked_room import build_forked_room
from worker.bus.subjects import Subjects
from worker.config import ConfigError, load_config
from worker.matrix.hashes import compute_event_id
from worker.matrix.room_versions import get_room_version
from worker.pipeline import InboundMessage, Pipeline
from worker.query.requests import Fields
from worker.query.schema import ACCEPT_STATE_HEADER, GROUPED
from worker.query.service import Queries
from worker.storage.cache_budget import DEFAULT_CACHE_MB, MIB, SHARES, CacheBudget
from worker.storage.database import Database
from worker.storage.lru import BoundedMemo, LruByWeight
from worker.storage.reader import Reader
from worker.synthetic import linear_room

SUBJECTS = Subjects("rs")
BUDGET = CacheBudget(1)
VERSION = "10"
#: Caches this work fills to their bound at 1 MiB (one of the copies, for a shared part).
FILLED = {
    *("derived", "blocks", "block_lists", "events", "nid_names", "room_rows", "subjects"),
    *("resolutions", "resolved_snapshots"),
    # Not the reader's merged states: the 41 rooms' current states are about half of
    # its part, sized for federation queries' states at many events of a large room.
    *("reader_blocks", "reader_block_lists", "reader_names", "packed_states"),
}


def _messages(pdus: Iterable[dict[str, Any]], first_seq: int) -> list[InboundMessage]:
    room_version = get_room_version(VERSION)
    out = []
    for seq, pdu in enumerate(pdus, first_seq):
        room_id = pdu.get("room_id") or "!" + compute_event_id(pdu, room_version)[1:]
        body = msgpack.packb({"event": pdu}, use_bin_type=True)
        out.append(InboundMessage(SUBJECTS.input(room_id), body, seq))
    return out


def _weight(cache: Any) -> int:
    """A cache's weight in its unit: an LRU's own weight, a memo's or map's entries."""
    if isinstance(cache, LruByWeight):
        return cache.weight
    assert isinstance(cache, Sized)
    return len(cache)


def _bound(cache: Any, name: str) -> int:
    if isinstance(cache, LruByWeight):
        assert cache.budget == BUDGET.bound(name), name
    elif isinstance(cache, BoundedMemo):
        assert cache.limit == BUDGET.bound(name), name
    return BUDGET.bound(name)


def _pipeline_caches(pipeline: Pipeline) -> list[tuple[str, Any]]:
    """Every cache of the writer, with the share it draws on."""
    state, events, resolver = pipeline.state, pipeline.events, pipeline.resolver
    kept = resolver._kept
    memos = [resolver._settled, resolver._usable, resolver.witnesses]
    memos += [kept.auth_outcomes, kept.auth_types, kept.pl_parents, kept.power_events]
    memos += [kept.sender_levels]
    memos += [resolver._key_nids, resolver._key_names]
    return [
        ("states", state.cache.caches()["states"]),
        ("blocks", state.cache.caches()["blocks"]),
        ("block_lists", state.cache.caches()["block_lists"]),
        ("derived", state.derived),
        ("events", events._cache),
        ("event_ids", events._ids),
        ("room_versions", events._room_versions),
        *[("nid_names", cache) for cache in pipeline.db.nid_caches().values()],
        ("room_rows", pipeline.rooms.cached_rooms),
        ("subjects", pipeline.rooms.subject_rooms),
        ("output_subjects", pipeline.outputs._output_subjects),
        ("passed_auth", pipeline.authorize._passed),
        ("resolutions", resolver.cache),
        ("resolved_snapshots", pipeline.states._resolved),
        ("auth_chains", resolver._chains),
        *[("event_memos", memo) for memo in memos],
        ("auth_citers", resolver.citers._rooms),
        ("filters", pipeline.extremities.awaited_prevs),
        ("filters", pipeline.recipe.p.redactions._late_targets),
    ]


def _reader_caches(reader: Reader, queries: Queries) -> list[tuple[str, Any]]:
    caches = reader.caches()
    named = (
        "type_names",
        "type_nids",
        "state_key_names",
        "event_ids",
        "memberships",
        "auth_events",
    )
    return [
        ("reader_states", caches["states"]),
        ("reader_blocks", caches["blocks"]),
        ("reader_block_lists", caches["block_lists"]),
        *[("reader_names", caches[name]) for name in named],
        ("packed_states", queries.packed_states._items),
    ]


def test_parts_share_out_the_whole_budget() -> None:
    assert sum(share.part for share in SHARES.values()) == pytest.approx(1)
    for mb in (16, DEFAULT_CACHE_MB, 1024):
        budget = CacheBudget(mb)
        spent = sum(
            budget.bytes_of(name, budget.bound(name)) * share.copies
            for name, share in SHARES.items()
        )
        assert 0.99 * mb * MIB <= spent <= mb * MIB, (mb, spent / MIB)


def test_cache_mb_is_a_setting_with_a_floor() -> None:
    assert load_config(None, {}).storage.cache_budget == CacheBudget(DEFAULT_CACHE_MB)
    config = load_config(None, {"ROOMSERVER_STORAGE_CACHE_MB": "64"})
    assert config.storage.cache_budget.bound("events") == CacheBudget(64).bound("events")
    with pytest.raises(ConfigError, match=r"storage\.cache_mb"):
        load_config(None, {"ROOMSERVER_STORAGE_CACHE_MB": "4"})


async def test_the_budget_bounds_every_cache_together(tmp_path: Path) -> None:
    db = Database(tmp_path, BUDGET.bound("nid_names"))
    pipeline = Pipeline(db, SUBJECTS, budget=BUDGET)
    pdus: list[dict[str, Any]] = []
    for seed in range(1, 41):
        pdus += linear_room(VERSION, members=10, events=20, seed=seed)
    forked, _ = build_forked_room(VERSION, members=20, events=300)
    messages = _messages(pdus + forked, 1)
    for first in range(0, len(messages), 64):
        pipeline.process_batch(messages[first : first + 64])
    caches = _pipeline_caches(pipeline)
    assert pipeline.resolver.cache.weight > 0  # the forked room was resolved

    reader = await Reader.open(tmp_path, budget=BUDGET)
    queries = Queries(reader, BUDGET.bound("packed_states"))
    try:
        room_ids = [row[0] for row in await reader.rows("SELECT room_id FROM rooms")]
        assert len(room_ids) == 41
        for room_id in room_ids:
            for grouped in (True, False):
                headers = {ACCEPT_STATE_HEADER: GROUPED} if grouped else {}
                fields = Fields({"room_id": room_id}, Queries.FIELDS["state"], headers)
                assert await queries.state(fields)
        caches += _reader_caches(reader, queries)
    finally:
        await reader.close()
        db.close()

    weights: dict[str, list[int]] = {}
    for name, cache in caches:
        bound, weight = _bound(cache, name), _weight(cache)
        assert weight <= bound or len(cache) == 1, (name, weight, bound)
        weights.setdefault(name, []).append(weight)
    assert weights.keys() == SHARES.keys()
    spent = 0
    for name, held in weights.items():
        if name in FILLED:
            assert max(held) > BUDGET.bound(name) * 0.8, (name, held, BUDGET.bound(name))
        # A part shared by copies holds what they hold together; the memos' unit is
        # an entry in each of them, so their longest counts.
        units = sum(held) if SHARES[name].copies > 1 else max(held)
        spent += BUDGET.bytes_of(name, units)
    assert spent <= BUDGET.mb * MIB, spent / MIB
