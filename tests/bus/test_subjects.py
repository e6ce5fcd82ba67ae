"""Room tokens and subject builders (contract section 1)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.bus.subjects import (
    UNKNOWN_ROOM_TOKEN,
    Subjects,
    room_id_from_token,
    room_token,
)

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@given(st.text(min_size=1))
def test_token_round_trips_and_is_subject_safe(room_id: str) -> None:
    token = room_token(room_id)
    assert TOKEN_RE.match(token)
    assert "=" not in token
    assert room_id_from_token(token) == room_id


@given(st.text(min_size=1), st.text(min_size=1))
def test_distinct_rooms_never_share_a_token(a: str, b: str) -> None:
    if a != b:
        assert room_token(a) != room_token(b)


@given(st.binary(min_size=1))
def test_any_token_that_decodes_re_encodes_to_itself(raw: bytes) -> None:
    token = room_token(raw.decode("utf-8", "replace"))
    assert room_token(room_id_from_token(token)) == token


def test_known_token() -> None:
    # "!a:b" is 21 61 3a 62 -> base64 "IWE6Yg==" without padding.
    assert room_token("!a:b") == "IWE6Yg"
    assert room_id_from_token("IWE6Yg") == "!a:b"
    # Characters that would break a subject come out as plain token characters.
    assert room_token("!a.b*c>d e:x") == "IWEuYipjPmQgZTp4"
    # Bytes that standard base64 writes as '+' and '/' use the URL-safe alphabet.
    assert room_token("??>") == "Pz8-"
    assert room_token("???") == "Pz8_"


@pytest.mark.parametrize(
    "token",
    [
        "",  # empty
        "A",  # one character cannot hold a byte
        "IWE6Yg==",  # padding
        "IWE6Yg=",
        "IW+6Yg",  # standard alphabet
        "IW/6Yg",
        "IWE.Yg",  # separator
        "IWE6Yh",  # non-canonical: stray bits in the last character
        "_w",  # decodes to 0xff, not UTF-8
        UNKNOWN_ROOM_TOKEN,
        "IWE6Y g",
    ],
)
def test_bad_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError):
        room_id_from_token(token)


def test_subject_builders() -> None:
    subjects = Subjects("rs")
    assert subjects.input("!a:b") == "rs.input.IWE6Yg"
    assert subjects.output("!a:b") == "rs.output.IWE6Yg"
    assert subjects.deadletter("!a:b") == "rs.deadletter.IWE6Yg"
    assert subjects.deadletter(None) == "rs.deadletter._"
    assert subjects.query("auth_chain") == "rs.query.auth_chain"
    assert subjects.input_wildcard == "rs.input.>"
    assert subjects.output_wildcard == "rs.output.>"
    assert subjects.deadletter_wildcard == "rs.deadletter.>"
    assert subjects.query_wildcard == "rs.query.*"
    assert Subjects().input("!a:b") == "roomserver.input.IWE6Yg"


@pytest.mark.parametrize("name", ["", "a.b", "a*", ">", "a b"])
def test_bad_query_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        Subjects("rs").query(name)


def test_parsing_subjects() -> None:
    subjects = Subjects("my.prefix")
    assert subjects.input_token("my.prefix.input.IWE6Yg") == "IWE6Yg"
    assert subjects.room_of_input("my.prefix.input.IWE6Yg") == "!a:b"
    assert subjects.query_name("my.prefix.query.state") == "state"
    for bad in ("my.prefix.output.IWE6Yg", "my.prefix.input.IWE6Yg.x", "other.input.IWE6Yg"):
        with pytest.raises(ValueError):
            subjects.input_token(bad)
    with pytest.raises(ValueError):
        subjects.room_of_input("my.prefix.input.A")
    for bad in ("my.prefix.query.", "my.prefix.query.a.b", "my.prefix.input.state"):
        with pytest.raises(ValueError):
            subjects.query_name(bad)


@given(st.text(min_size=1))
def test_input_subject_round_trip(room_id: str) -> None:
    subjects = Subjects("roomserver")
    assert subjects.room_of_input(subjects.input(room_id)) == room_id
