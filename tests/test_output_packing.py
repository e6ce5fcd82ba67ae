"""Output bodies packed by `ormsgpack` are the bytes `msgpack` made for them.

The outputs' wire form is msgpack (`msgpack.Packer(use_bin_type=True)` wrote every
output so far, and consumers and the outbox digest rely on those exact bytes):
`worker.input.outputs.pack_output` must give the same bytes for any body, and hand what
`ormsgpack` refuses to `msgpack`. The truth here is msgpack itself, driven directly.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.input.outputs import pack_output
from worker.synthetic import linear_room

_INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_SCALARS = (
    st.none()
    | st.booleans()
    | _INT64
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(max_size=300)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=40), inner, max_size=5)
    ),
    max_leaves=30,
)


def _msgpack(value: Any) -> bytes:
    return bytes(msgpack.Packer(use_bin_type=True).pack(value))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=20), _VALUES, max_size=8))
def test_any_json_like_body_packs_to_msgpacks_bytes(body: dict[str, Any]) -> None:
    assert pack_output(body, msgpack.Packer(use_bin_type=True)) == _msgpack(body)


@pytest.mark.parametrize(
    "value",
    [
        # each width's edges, where the shortest form changes (within 64 bits)
        *(
            v
            for n in (0, 7, 8, 15, 16, 31, 32, 63, 64)
            for v in (2**n - 1, 2**n, -(2**n), -(2**n) - 1)
            if -(2**63) <= v < 2**64
        ),
        2**64 - 1,
        -(2**63),
        "x" * 31,
        "x" * 32,
        "é" * 128,
        "x" * 65_536,
        b"",
        b"x" * 256,
        [None] * 16,
        list(range(65_536)),
        {str(i): i for i in range(16)},
        (1, "two"),
        1.5,
        float("inf"),
        -0.0,
        float("nan"),
    ],
)
def test_edge_values_pack_alike(value: Any) -> None:
    body = {"event": value}
    assert pack_output(body, msgpack.Packer(use_bin_type=True)) == _msgpack(body)


def test_a_linear_rooms_pdus_pack_alike() -> None:
    packer = msgpack.Packer(use_bin_type=True)
    for pdu in linear_room("10", members=20, events=50, seed=3):
        body = {"type": "new_room_event", "event": pdu, "latest_event_ids": ["$a"]}
        assert pack_output(body, packer) == _msgpack(body)


@pytest.mark.parametrize("value", [{1: "int key"}, {b"bytes key": 1}])
def test_what_ormsgpack_refuses_is_packed_by_msgpack(value: Any) -> None:
    body = {"event": value}
    assert pack_output(body, msgpack.Packer(use_bin_type=True)) == _msgpack(body)


def test_an_int_beyond_64_bits_fails_as_msgpack_fails() -> None:
    with pytest.raises(OverflowError):
        pack_output({"event": 2**64}, msgpack.Packer(use_bin_type=True))
