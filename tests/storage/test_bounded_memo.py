"""`BoundedMemo`: a dict that empties itself when full, and the resolver's memos built on it.

The resolver keeps facts about settled events across resolutions in these memos; a
memo emptied at any moment must only cost lookups, never change an answer. The room
test runs the differential generator's forked rooms with memos of 8 entries (emptied
all the time) and compares every outcome and state with Synapse's (`agrees`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.storage.lru import BoundedMemo


def test_emptied_when_full_and_only_then() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(3)
    for i, key in enumerate("abc"):
        memo[key] = i
    memo["a"] = 10  # a key it holds: replaced, nothing forgotten
    assert memo == {"a": 10, "b": 1, "c": 2}
    memo["d"] = 3  # a fourth key: the memo starts again from it
    assert memo == {"d": 3}
    assert memo.get("a") is None and len(memo) == 1


@pytest.mark.oracle
def test_resolver_memos_stay_bounded_and_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("synapse")
    from tests.oracle.differential import run_room
    from worker.pipeline import resolution

    limit = 8
    monkeypatch.setattr(resolution, "EVENT_MEMO_ENTRIES", limit)
    changes = resolution.NidResolver.changes
    seen = {"resolutions": 0, "largest": 0}

    def bounded(
        resolver: resolution.NidResolver, room_version: str, snapshots: list[int]
    ) -> resolution.Changes:
        found = changes(resolver, room_version, snapshots)
        kept = resolver._kept
        memos = [
            resolver._settled,
            resolver._usable,
            resolver.witnesses,
            resolver._key_nids,
            resolver._key_names,
            kept.auth_outcomes,
            kept.pl_parents,
            kept.auth_types,
            kept.power_events,
            kept.sender_levels,
        ]
        for memo in memos:
            assert isinstance(memo, BoundedMemo) and len(memo) <= limit
        seen["resolutions"] += 1
        seen["largest"] = max(seen["largest"], *map(len, memos))
        return found

    monkeypatch.setattr(resolution.NidResolver, "changes", bounded)
    assert run_room("10", 1, tmp_path, events=120, keep=False).agrees
    assert seen["resolutions"] >= 10 and seen["largest"] == limit, seen
