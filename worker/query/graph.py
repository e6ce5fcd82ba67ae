"""`roomserver graph`: a room's event DAG as Graphviz DOT, for looking inside storage.

Each event is a box: its type and state key, depth and status, and the snapshot and
blocks its state uses (S12 = b3(840) b9(16) b11(1): snapshot 12 is block 3 with 840
entries, then 9, then 11, later blocks overriding earlier ones). Edges point from an
event to its prev events, drawn oldest at the top. Rejected events are red,
soft-failed ones orange and dashed, outliers grey and dotted; forward extremities
have a double border; held events (waiting for missing prev events) are dashed
ellipses pointing at what they wait for.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from worker.storage.inspection import GraphEvent, RoomGraph

#: (fill colour, border colour, border style) by status.
_STYLE = {
    "accepted": ("#ffffff", "#333333", "solid"),
    "rejected": ("#f4cccc", "#cc0000", "solid"),
    "soft_failed": ("#fce5cd", "#e69138", "dashed"),
    "outlier": ("#eeeeee", "#999999", "dotted"),
}
REASON_CHARS = 70
BLOCKS_PER_LINE = 6


def _q(text: str) -> str:
    """A DOT quoted string. Backslashes are doubled so that an ID or state key holding
    `\\N` or `\\l` is shown as written, not read as a Graphviz escape."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r", "").replace("\n", "\\n") + '"'


def _label(*lines: str) -> str:
    """Several lines as one DOT label (each line escaped, joined by `\\n`)."""
    return "\\n".join(_q(line)[1:-1] for line in lines)


def _short(event_id: str) -> str:
    return event_id if len(event_id) <= 16 else event_id[:12] + "…"


def _snapshot(graph: RoomGraph, snapshot_nid: int) -> list[str]:
    """`S12 = b3(840) b9(16) …`, wrapped every BLOCKS_PER_LINE blocks (up to 64)."""
    if snapshot_nid == 0:
        return ["S0 (empty)"]
    blocks = [
        f"b{b}({graph.block_sizes.get(b, '?')})" for b in graph.snapshots.get(snapshot_nid, [])
    ]
    lines = [
        " ".join(blocks[i : i + BLOCKS_PER_LINE]) for i in range(0, len(blocks), BLOCKS_PER_LINE)
    ]
    return [f"S{snapshot_nid} = {lines[0] if lines else ''}", *("  " + line for line in lines[1:])]


def _event_node(graph: RoomGraph, event: GraphEvent, latest: set[str]) -> str:
    what = event.type if event.state_key is None else f"{event.type} {event.state_key!r}"
    lines = [_short(event.event_id), what, f"depth {event.depth} · {event.status}"]
    if event.status == "outlier":
        lines.append("no state (outlier)")
    else:
        before = _snapshot(graph, event.before_snapshot)
        lines += ["before " + before[0], *before[1:]]
        if event.after_snapshot != event.before_snapshot:
            after = _snapshot(graph, event.after_snapshot)
            lines += ["after " + after[0], *after[1:]]
    if event.reason:
        reason = event.reason
        if len(reason) > REASON_CHARS:
            reason = reason[: REASON_CHARS - 1] + "…"
        lines.append(reason)
    if event.redacted_by:
        lines.append(f"redacted by {_short(event.redacted_by)}")
    fill, border, style = _STYLE.get(event.status, _STYLE["accepted"])
    attrs = [
        f'label="{_label(*lines)}"',
        f'fillcolor="{fill}"',
        f'color="{border}"',
        f'style="filled,{style}"',
        f"tooltip={_q(event.event_id)}",
    ]
    if event.event_id in latest:
        attrs.append("peripheries=2")
    return f"  {_q(event.event_id)} [{', '.join(attrs)}];"


def render_dot(graph: RoomGraph) -> str:
    """The DOT text of a room graph (deterministic: same storage, same text)."""
    latest = set(graph.latest_event_ids)
    shown = {event.event_id for event in graph.events}
    out = [
        f"digraph {_q(graph.room_id)} {{",
        "  rankdir=BT;",
        '  node [shape=box, fontname="monospace", fontsize=10];',
        '  edge [color="#555555", arrowsize=0.6];',
    ]
    current = _snapshot(graph, graph.current_snapshot)
    summary = [
        graph.room_id,
        f"room version {graph.room_version}",
        "current state " + current[0],
        *current[1:],
        f"{len(graph.events)} events shown"
        + (f", {graph.omitted} older not shown" if graph.omitted else ""),
    ]
    # Event IDs start with `$`, so no event can be called "summary".
    out.append(
        f'  "summary" [shape=note, label="{_label(*summary)}", style=filled, fillcolor="#fff2cc"];'
    )
    out.extend(_event_node(graph, event, latest) for event in graph.events)
    outside: set[str] = set()
    for event in graph.events:
        for prev in event.prev_event_ids:
            if prev not in shown:
                outside.add(prev)
            out.append(f"  {_q(event.event_id)} -> {_q(prev)};")
    for held in graph.held:
        lines = [_short(held.event_id), "held: waiting for", *map(_short, held.waiting_for)]
        out.append(
            f'  {_q(held.event_id)} [shape=ellipse, style="dashed", color="#3d85c6", '
            f'label="{_label(*lines)}", tooltip={_q(held.event_id)}];'
        )
        for missing in held.missing_prev_event_ids:
            if missing not in shown:
                outside.add(missing)
            out.append(f'  {_q(held.event_id)} -> {_q(missing)} [style=dashed, color="#3d85c6"];')
    for event_id in sorted(outside - {h.event_id for h in graph.held}):
        why = "older, not shown" if event_id in graph.stored_elsewhere else "not stored"
        out.append(
            f'  {_q(event_id)} [shape=box, style="dashed", color="#999999", '
            f'label="{_label(_short(event_id), why)}", tooltip={_q(event_id)}];'
        )
    out.append("}")
    return "\n".join(out) + "\n"


def write_graph(graph: RoomGraph, dot_path: Path, *, svg: bool = True) -> list[Path]:
    """Write the DOT file, and beside it an SVG when Graphviz's `dot` is installed;
    returns the paths written. A failing `dot` raises CalledProcessError."""
    dot_path.write_text(render_dot(graph), encoding="utf-8")
    written = [dot_path]
    binary = shutil.which("dot") if svg else None
    if binary is not None:
        svg_path = dot_path.with_suffix(".svg")
        subprocess.run(
            [binary, "-Tsvg", "-o", str(svg_path), str(dot_path)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        written.append(svg_path)
    return written
