"""Validating an incoming PDU: the spec's "checks performed on receipt of a PDU" that need
nothing but the PDU itself and its room version.

Signatures are the publisher's business (contract §3); authorization needs state and lives
elsewhere. What is left is here: the event format of the room version (field presence and
types, the v1–2 versus v3+ shapes of `prev_events`/`auth_events`, the v12 room ID rules),
canonical JSON where the version demands it, the size limits, the event ID and the content
hash. Every failure is a `PduError` whose `code` is a stable dead-letter code.

Failures of the *format* make the event unusable and are raised (a content hash that is
not base64 among them). A content hash that does not match is not a failure: the spec
says the event is then processed in redacted form, so `parse_pdu` returns the redacted
event with `redacted=True`.

Type checks are exact (`type(x) is int`): msgpack decodes to dict, list, str, int, float,
bytes, bool and None, and a bool must not pass for an integer, nor bytes for a string.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from worker.matrix.auth.identifiers import is_valid_user_id
from worker.matrix.canonical_json import (
    CanonicalJsonError,
    check_json,
    encode_canonical_json,
    encode_checked,
    encode_float_free,
)
from worker.matrix.events import CREATE, Event
from worker.matrix.hashes import (
    content_hash_view,
    encode_base64,
    event_id_from_reference_hash,
    expected_content_hash,
    reference_hash,
    reference_hash_unchecked,
)
from worker.matrix.redaction import redact
from worker.matrix.room_versions import (
    EventIdFormat,
    RoomVersion,
    UnknownRoomVersion,
    get_room_version,
)

#: The complete event, as canonical JSON, must not exceed this (client-server API, "Size
#: limits").
MAX_PDU_BYTES = 65_536
#: Limit on `type`, `state_key`, `sender`, `room_id` and `event_id`, in UTF-8 bytes.
MAX_ID_BYTES = 255
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10
#: Depth limit before canonical JSON's smaller integer range applies (v1–5).
MAX_DEPTH_LEGACY = 2**63 - 1

BAD_PDU = "bad_pdu"
TOO_LARGE = "too_large"
TOO_MANY_EDGES = "too_many_edges"
NOT_CANONICAL = "not_canonical"
BAD_EVENT_ID = "bad_event_id"
BAD_SENDER = "bad_sender"
UNKNOWN_ROOM_VERSION = "unknown_room_version"


class PduError(Exception):
    """A PDU that cannot be processed; `code` is a stable dead-letter code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _bad(message: str) -> PduError:
    return PduError(BAD_PDU, message)


def _show(value: object) -> str:
    """A value quoted for a message, cut short: messages end up in dead letters and logs."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _string(pdu: Mapping[str, Any], key: str, *, limit: bool = False) -> str:
    value = pdu.get(key)
    if type(value) is not str:
        if value is None and key not in pdu:
            raise _bad(f"the PDU has no `{key}`; every event needs one")
        raise _bad(f"`{key}` must be a string, not {type(value).__name__}")
    if limit and len(value) > MAX_ID_BYTES // 4 and len(value.encode()) > MAX_ID_BYTES:
        raise PduError(
            TOO_LARGE, f"`{key}` is {len(value.encode())} bytes; the limit is {MAX_ID_BYTES}"
        )
    return value


def _integer(pdu: Mapping[str, Any], key: str) -> int:
    value = pdu.get(key)
    if type(value) is not int:
        if key not in pdu:
            raise _bad(f"the PDU has no `{key}`; every event needs one")
        raise _bad(f"`{key}` must be an integer, not {type(value).__name__}")
    return value


def _object(pdu: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = pdu.get(key)
    if type(value) is not dict:
        if key not in pdu:
            raise _bad(f"the PDU has no `{key}`; every event needs one")
        raise _bad(f"`{key}` must be an object, not {type(value).__name__}")
    return value


def _check_edges(pdu: Mapping[str, Any], key: str, limit: int, pairs: bool) -> None:
    refs = pdu.get(key)
    if type(refs) is not list:
        if key not in pdu:
            raise _bad(f"the PDU has no `{key}`; every event needs one")
        raise _bad(f"`{key}` must be a list, not {type(refs).__name__}")
    if len(refs) > limit:
        raise PduError(
            TOO_MANY_EDGES, f"`{key}` lists {len(refs)} events; at most {limit} are allowed"
        )
    if not pairs:
        for ref in refs:
            if type(ref) is not str:
                raise _bad(f"each `{key}` entry must be an event ID string from room version 3 on")
        return
    for ref in refs:
        if (
            type(ref) is not list
            or len(ref) != 2
            or type(ref[0]) is not str
            or type(ref[1]) is not dict
            or type(ref[1].get("sha256")) is not str
        ):
            raise _bad(
                f'each `{key}` entry must be [event_id, {{"sha256": hash}}] in room '
                "versions 1 and 2"
            )


def _check_sender(sender: str) -> None:
    """The sender must be a user ID, `@localpart:domain` (spec appendices, "User
    Identifiers", and the historical grammar servers must still accept).

    The auth rules compare the sender's domain with others' and look its membership
    and power level up; a sender with no domain would, as a v12 create event's sender,
    become a room creator with infinite power. Synapse cannot process such an event
    either: taking the domain of an ID without `:` fails."""
    if not _is_user_id(sender):
        raise PduError(
            BAD_SENDER, f"`sender` {_show(sender)} is not a user ID of the form @localpart:domain"
        )


#: A room's events come from few senders; the grammar check (a regular expression over
#: the domain) cost a tenth of parsing a PDU, a cached answer almost nothing.
_is_user_id = lru_cache(maxsize=4096)(is_valid_user_id)


def _check_signatures(pdu: Mapping[str, Any]) -> None:
    signatures = pdu.get("signatures")
    if type(signatures) is not dict:
        signatures = _object(pdu, "signatures")
    for server, keys in signatures.items():
        if type(keys) is not dict:
            raise _bad(f"`signatures.{server}` must map key IDs to signature strings")
        for signature in keys.values():  # a loop: a generator costs more for one or two
            if type(signature) is not str:
                raise _bad(f"`signatures.{server}` must map key IDs to signature strings")


#: A string of at most this many characters is within `MAX_ID_BYTES` in UTF-8 (at most
#: four bytes a character), whatever it holds.
_SURELY_SHORT = MAX_ID_BYTES // 4


def _check_format(pdu: dict[str, Any], room_version: RoomVersion) -> None:
    """The event format of the room version, except the event ID.

    Each check tests the usual value inline; the helper that words the error (or
    accepts a valid value the inline test cannot, such as a long string within the
    byte limit) runs only when that test fails, at the same place in the order, so a
    PDU with several faults is refused for the same one."""
    get = pdu.get
    event_type = get("type")
    if type(event_type) is not str or len(event_type) > _SURELY_SHORT:
        event_type = _string(pdu, "type", limit=True)
    sender = get("sender")
    if type(sender) is not str or len(sender) > _SURELY_SHORT:
        sender = _string(pdu, "sender", limit=True)
    _check_sender(sender)
    if "state_key" in pdu:
        state_key = pdu["state_key"]
        if type(state_key) is not str or len(state_key) > _SURELY_SHORT:
            _string(pdu, "state_key", limit=True)
    if type(get("content")) is not dict:
        _object(pdu, "content")
    if type(get("origin_server_ts")) is not int:
        _integer(pdu, "origin_server_ts")
    depth = get("depth")
    if type(depth) is not int:
        depth = _integer(pdu, "depth")
    if depth < 0:
        raise _bad(f"`depth` is {depth}; it must not be negative")
    if depth > MAX_DEPTH_LEGACY:
        raise _bad(f"`depth` is {depth}; it must be less than 2**63")
    hashes = get("hashes")
    if type(hashes) is not dict:
        hashes = _object(pdu, "hashes")
    if type(hashes.get("sha256")) is not str:
        raise _bad("`hashes.sha256` must be the content hash as a base64 string")
    _check_signatures(pdu)
    if "unsigned" in pdu and type(pdu["unsigned"]) is not dict:
        _object(pdu, "unsigned")
    pairs = room_version.auth_events_are_pairs
    _check_edges(pdu, "prev_events", MAX_PREV_EVENTS, pairs)
    _check_edges(pdu, "auth_events", MAX_AUTH_EVENTS, pairs)
    if not room_version.updated_redaction_rules and "redacts" in pdu:
        _string(pdu, "redacts")
    if room_version.room_id_from_create and event_type == CREATE and get("state_key") == "":
        if "room_id" in pdu:
            raise _bad(
                "an m.room.create event has no `room_id` from room version 12 on: the room "
                "ID is derived from its event ID"
            )
        return
    room_id = get("room_id")
    if type(room_id) is not str or len(room_id) > _SURELY_SHORT:
        room_id = _string(pdu, "room_id", limit=True)
    if not room_id.startswith("!"):
        raise _bad(f"`room_id` {_show(room_id)} must start with '!'")


def _json_error(exc: CanonicalJsonError, room_version: RoomVersion) -> PduError:
    if exc.strict_violation:
        return PduError(
            NOT_CANONICAL,
            f"the PDU is not canonical JSON as room version {room_version.identifier} "
            f"requires: {exc}",
        )
    return _bad(f"the PDU is not JSON: {exc}")


def _encoded_size(view: dict[str, Any], view_bytes: bytes, pdu: dict[str, Any]) -> int:
    """Size of `pdu` as canonical JSON, given the encoding of `view` (a subset of its keys).

    Encoding only the few keys outside the view (signatures, hashes, unsigned) spares a
    second encoding of the whole, possibly 64 KiB, event: two sorted compact objects with
    disjoint keys merge into one by dropping a brace from each and adding a comma.
    """
    extra = {key: value for key, value in pdu.items() if key not in view}
    if not extra:
        return len(view_bytes)
    extra_size = len(encode_checked(extra))
    if not view:
        return extra_size
    return len(view_bytes) + extra_size - 1


def parse_pdu(pdu: object, room_version: RoomVersion, *, float_free: bool = False) -> Event:
    """Validate a PDU as received and return it as an `Event`.

    Raises `PduError` for anything that makes the event unusable. When the content hash does
    not match, the returned event carries the redacted PDU and `redacted=True`.

    From room version 3 an `event_id` key, which that format does not have, is accepted as
    the sender's claim of the ID: it must equal the computed ID and is removed from the
    returned PDU (it would otherwise change both hashes).

    `float_free` is the caller's promise that `pdu` was decoded from msgpack bytes with
    no float in them (see `worker.input.decode`): then one orjson pass in C checks and
    sizes the PDU where `check_json` would walk it in Python (`encode_float_free`).
    """
    if type(pdu) is not dict:
        raise _bad(f"a PDU must be a JSON object, not {type(pdu).__name__}")
    legacy = room_version.event_id_format is EventIdFormat.LEGACY
    has_claim = not legacy and "event_id" in pdu
    body = {k: v for k, v in pdu.items() if k != "event_id"} if has_claim else pdu

    whole = (
        encode_float_free(pdu, strict=room_version.strict_canonical_json) if float_free else None
    )
    try:
        view = content_hash_view(body)
        if whole is not None:  # checked and encoded whole in C: canonical, no floats
            rewrite = False
            view_bytes = encode_checked(view)
            size = len(whole)
        else:
            # One walk checks the whole PDU; afterwards its parts encode without checks.
            rewrite = check_json(pdu, strict=room_version.strict_canonical_json)
            if rewrite:  # v1–5 only: whole-number floats are written as integers
                size = len(encode_canonical_json(pdu, strict=False))
                view_bytes = encode_canonical_json(view, strict=False)
            else:
                view_bytes = encode_checked(view)
                size = _encoded_size(view, view_bytes, pdu)
    except CanonicalJsonError as exc:
        raise _json_error(exc, room_version) from None
    if size > MAX_PDU_BYTES:
        raise PduError(
            TOO_LARGE, f"the PDU is {size} bytes as canonical JSON; the limit is {MAX_PDU_BYTES}"
        )
    _check_format(body, room_version)

    if legacy:
        event_id = body.get("event_id")
        if type(event_id) is not str or not event_id.startswith("$") or ":" not in event_id:
            raise PduError(
                BAD_EVENT_ID,
                f"room versions 1 and 2 need an `event_id` of the form '$opaque_id:domain', "
                f"not {_show(event_id)}",
            )
        if len(event_id.encode()) > MAX_ID_BYTES:
            raise PduError(TOO_LARGE, f"`event_id` is longer than {MAX_ID_BYTES} bytes")
    else:
        digest = (
            reference_hash(body, room_version)
            if rewrite
            else reference_hash_unchecked(body, room_version)
        )
        event_id = event_id_from_reference_hash(digest, room_version)
        if has_claim and pdu["event_id"] != event_id:
            raise PduError(
                BAD_EVENT_ID,
                f"`event_id` {_show(pdu['event_id'])} is not the event's reference hash; "
                f"the PDU's ID is {event_id}",
            )

    computed = hashlib.sha256(view_bytes).digest()
    if body["hashes"]["sha256"] == encode_base64(computed):
        # The usual case, decided without decoding: the claim is the computed hash in
        # unpadded base64, so it is base64 and matches.
        return Event(event_id, room_version, body)
    expected = expected_content_hash(body)
    if expected is None:
        # A hash that is not base64 is no hash at all: Synapse refuses such a PDU
        # rather than process it redacted (docs/matrix.md).
        raise _bad(f"`hashes.sha256` {_show(body['hashes']['sha256'])} is not base64")
    if expected != computed:
        return Event(event_id, room_version, redact(body, room_version), redacted=True)
    return Event(event_id, room_version, body)


def room_version_of_create(pdu: object) -> RoomVersion:
    """The room version a create event declares (`content.room_version`, default "1").

    The pipeline needs it to parse the first event of a room. Raises `PduError` with code
    `bad_pdu` if `pdu` is not an `m.room.create` event with object content, and
    `unknown_room_version` for a version this server does not know.
    """
    if type(pdu) is not dict or pdu.get("type") != CREATE:
        raise _bad("only an m.room.create event declares the room version")
    content = pdu.get("content")
    if type(content) is not dict:
        raise _bad("the m.room.create event's `content` must be an object")
    identifier = content.get("room_version", "1")
    try:
        return get_room_version(identifier)
    except UnknownRoomVersion as exc:
        raise PduError(UNKNOWN_ROOM_VERSION, str(exc)) from None
