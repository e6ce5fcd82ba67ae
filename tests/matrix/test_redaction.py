"""The redaction algorithm of every room version."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.matrix.redaction import redact, redact_content
from worker.matrix.room_versions import ROOM_VERSIONS, get_room_version

FIXTURES = Path(__file__).parent.parent / "fixtures" / "format"
CASES = json.loads((FIXTURES / "redaction.json").read_text("utf-8"))["cases"]
EXPECTATIONS = [
    (case["name"], version, case["input"], group["output"])
    for case in CASES
    for group in case["expected"]
    for version in group["versions"]
]


@pytest.mark.parametrize(
    ("name", "version", "pdu", "expected"),
    EXPECTATIONS,
    ids=[f"{e[0]}-v{e[1]}" for e in EXPECTATIONS],
)
def test_fixture(name: str, version: str, pdu: dict[str, Any], expected: dict[str, Any]) -> None:
    original = copy.deepcopy(pdu)
    assert redact(pdu, get_room_version(version)) == expected
    assert pdu == original  # the input is not modified


def test_every_version_is_covered() -> None:
    covered = {version for _, version, _, _ in EXPECTATIONS}
    assert covered == set(ROOM_VERSIONS)


def test_top_level_keys_by_version() -> None:
    pdu: dict[str, Any] = {
        key: 1 for key in ("origin", "membership", "prev_state", "unsigned", "redacts")
    }
    pdu |= {"type": "m.room.message", "content": {"body": "x"}, "age_ts": 5, "outlier": True}
    for version in ROOM_VERSIONS.values():
        kept = set(redact(pdu, version))
        if version.updated_redaction_rules:
            assert kept == {"type", "content"}
        else:
            assert kept == {"type", "content", "origin", "membership", "prev_state"}


def test_content_that_is_not_an_object_becomes_empty() -> None:
    for version in ROOM_VERSIONS.values():
        assert redact({"type": "m.room.member", "content": "x"}, version)["content"] == {}
        assert redact_content("m.room.create", ["x"], version) == {}


def test_create_content_is_copied_not_shared() -> None:
    pdu = {"type": "m.room.create", "content": {"room_version": "11"}}
    redacted = redact(pdu, get_room_version("11"))
    assert redacted["content"] == pdu["content"]
    assert redacted["content"] is not pdu["content"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
events = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "m.room.member",
                "m.room.create",
                "m.room.join_rules",
                "m.room.power_levels",
                "m.room.aliases",
                "m.room.history_visibility",
                "m.room.redaction",
                "m.room.message",
            ]
        ),
        "content": st.dictionaries(
            st.sampled_from(
                [
                    "membership",
                    "third_party_invite",
                    "join_authorised_via_users_server",
                    "allow",
                    "join_rule",
                    "invite",
                    "users",
                    "aliases",
                    "redacts",
                    "creator",
                    "body",
                ]
            ),
            json_values,
        ),
    },
    optional={
        key: json_values
        for key in ("origin", "membership", "prev_state", "unsigned", "redacts", "room_id")
    },
)


@pytest.mark.slow
@settings(max_examples=300)
@given(st.sampled_from(list(ROOM_VERSIONS.values())), events)
def test_redaction_is_idempotent(version: Any, pdu: dict[str, Any]) -> None:
    once = redact(pdu, version)
    assert redact(once, version) == once


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(ROOM_VERSIONS.values())), events)
def test_agrees_with_synapse(version: Any, pdu: dict[str, Any]) -> None:
    rust_events = pytest.importorskip("synapse.synapse_rust.events")
    room_versions = pytest.importorskip("synapse.api.room_versions")
    if version.room_id_from_create and pdu["type"] == "m.room.create":
        pdu.pop("room_id", None)  # Synapse strips it; the spec's algorithm keeps it
    theirs = rust_events.redact_event_dict(
        room_versions.KNOWN_ROOM_VERSIONS[version.identifier], copy.deepcopy(pdu)
    )
    theirs.pop("unsigned", None)  # Synapse adds an empty one for clients
    assert redact(pdu, version) == theirs
