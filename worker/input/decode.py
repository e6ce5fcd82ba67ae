"""Decoding and checking the input envelope (contract section 2).

Only the envelope is checked here; the PDU inside is validated by
`worker.matrix.pdu` once the room version is known.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, NamedTuple

import msgpack

from worker.input.errors import DeadLetter

#: Generous bound on a whole input message: the PDU limit plus room for
#: state_event_ids (a large room's state can list many thousands of IDs).
MAX_INPUT_BYTES = 8 * 1024 * 1024


class Kind(Enum):
    NEW = "new"
    OUTLIER = "outlier"
    OLD = "old"


#: Kinds by value: a dict look-up, where calling the enum costs several Python calls.
_KINDS: dict[object, Kind] = {kind.value: kind for kind in Kind}


class InputMessage(NamedTuple):
    """A decoded input. A named tuple: made in one step, where a frozen dataclass sets
    each of its fields through `object.__setattr__` (once per input, it showed)."""

    kind: Kind
    event: dict[str, Any]
    room_version: str | None
    state_event_ids: tuple[str, ...] | None
    origin: str | None
    send_as_server: str | None
    transaction_id: dict[str, Any] | None
    #: No float anywhere in the message: its bytes hold neither of msgpack's two float
    #: markers (0xca, 0xcb; a marker byte inside a string or integer only makes this
    #: False). The PDU's canonical JSON check can then run in C (`parse_pdu`).
    float_free: bool = False


def decode_input(data: bytes) -> InputMessage:
    """Parse a msgpack input map, raising `DeadLetter` with a precise reason.

    Unknown keys are ignored, so publishers can add fields before the worker knows them.
    """
    if len(data) > MAX_INPUT_BYTES:
        raise DeadLetter(
            "too_large", f"the input message is {len(data)} bytes; the limit is {MAX_INPUT_BYTES}"
        )
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad data
        raise DeadLetter("bad_msgpack", f"the message body is not valid msgpack ({exc})") from exc
    if not isinstance(body, dict):
        raise DeadLetter(
            "bad_input", f"the message body must be a msgpack map, not {type(body).__name__}"
        )
    kind_value = body.get("kind", "new")
    try:
        kind = _KINDS[kind_value]
    except (KeyError, TypeError):  # TypeError: an unhashable value (a map, a list)
        raise DeadLetter(
            "bad_input", f"kind must be one of new, outlier, old; got {kind_value!r}"
        ) from None
    event = body.get("event")
    if not isinstance(event, dict):
        raise DeadLetter("bad_input", "the input has no `event` map (the PDU)")
    room_version = _optional_str(body, "room_version")
    state_ids = body.get("state_event_ids")
    state_event_ids: tuple[str, ...] | None = None
    if state_ids is not None:
        if kind is not Kind.NEW:
            raise DeadLetter("bad_input", "state_event_ids is only allowed with kind `new`")
        if not isinstance(state_ids, list) or not all(isinstance(i, str) for i in state_ids):
            raise DeadLetter("bad_input", "state_event_ids must be a list of event ID strings")
        state_event_ids = tuple(state_ids)
    transaction_id = body.get("transaction_id")
    if transaction_id is not None and not isinstance(transaction_id, dict):
        raise DeadLetter("bad_input", "transaction_id must be a map")
    return InputMessage(
        kind=kind,
        event=event,
        room_version=room_version,
        state_event_ids=state_event_ids,
        origin=_optional_str(body, "origin"),
        send_as_server=_optional_str(body, "send_as_server"),
        transaction_id=transaction_id,
        # `find`, not `in`: `in` first tries the operand as a byte value, and raising
        # and clearing that TypeError costs more than the scan.
        float_free=data.find(b"\xca") < 0 and data.find(b"\xcb") < 0,
    )


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise DeadLetter("bad_input", f"{key} must be a string, not {type(value).__name__}")
    return value
