"""The DOT text itself: escaping of IDs and state keys that hold quotes, backslashes
or line breaks, and (where Graphviz is installed) that `dot` accepts it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from worker.query.graph import render_dot, write_graph
from worker.storage.inspection import GraphEvent, RoomGraph
from worker.storage.reader import HeldRecord

NASTY = 'a "quoted" \\N key\nwith a line break'


def _graph() -> RoomGraph:
    create = GraphEvent("$create", "m.room.create", "", 1, "accepted", None, 0, 1, [], None)
    odd = GraphEvent(
        '$odd"id\\',
        "m.custom",
        NASTY,
        2,
        "rejected",
        'because \\l "no"',
        1,
        1,
        ["$create"],
        None,
    )
    redacted = GraphEvent(
        "$msg",
        "m.room.message",
        None,
        3,
        "accepted",
        None,
        1,
        1,
        ["$create", "$gone"],
        "$redaction",
    )
    return RoomGraph(
        room_id='!room"\\:example.org',
        room_version="10",
        events=[create, odd, redacted],
        latest_event_ids=["$msg"],
        current_snapshot=1,
        snapshots={1: [7, 8]},
        block_sizes={7: 1, 8: 2},
        held=[HeldRecord("$held", "!room", ["$gone"], ["$gone"], 1, 9)],
        omitted=0,
        stored_elsewhere=set(),
    )


def test_escaping() -> None:
    dot = render_dot(_graph())
    assert 'digraph "!room\\"\\\\:example.org" {' in dot
    assert '"$odd\\"id\\\\" [' in dot
    # The state key is shown as Python writes it (quoted, line break as \n), then
    # escaped for DOT: every backslash doubled, every double quote escaped.
    assert r"""m.custom 'a \"quoted\" \\\\N key\\nwith a line break'""" in dot
    assert '"$msg" -> "$gone";' in dot and '"$held" -> "$gone"' in dot
    assert "redacted by $redaction" in dot
    assert "S1 = b7(1) b8(2)" in dot
    # Every line is one statement: no raw line break leaked from a label.
    body = dot.splitlines()[1:-1]
    assert all(line.endswith(";") for line in body)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_graphviz_accepts_it(tmp_path: Path) -> None:
    written = write_graph(_graph(), tmp_path / "g.dot")
    assert [p.name for p in written] == ["g.dot", "g.svg"]
    svg = (tmp_path / "g.svg").read_text(encoding="utf-8")
    assert "with a line break" in svg and "redacted by" in svg
    plain = subprocess.run(
        ["dot", "-Tplain", str(tmp_path / "g.dot")], check=True, capture_output=True, text=True
    ).stdout
    assert plain.count("\nnode ") == 6  # summary, 3 events, the held one, the missing one
