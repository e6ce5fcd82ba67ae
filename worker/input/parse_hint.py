"""An input's event parsed ahead, where the CPU is spare, in a few bytes.

The pipeline's process is the worker's serial bottleneck, and parsing an input's PDU
(worker.matrix.pdu: its format, canonical JSON, size and both hashes) was a fifth of
its work (`python -m bench.pipeline_check [--hints] instructions linear`: 499.6k
instructions per message, 407.3k with hints); the event loop's process, idle half of
the time, has CPU to spare (a hint costs it ~17 us an input). So the event loop parses each
input as it is fetched, with the room version it expects, and sends beside the input's
bytes what the parse found when it found nothing to change: the room version and the
event ID. The pipeline then makes the `Event` from its own decoding of the same bytes
and that ID, as `parse_pdu` would have, if its room version is the one the hint names;
otherwise, and for every input without a hint, it parses as before. Sending the parsed
event itself would cost more than parsing it again (pickling a PDU's nested maps takes
about as long as parsing it).

A hint is only made for an event that `parse_pdu` returns as it is (not redacted for a
content hash that does not match, no `event_id` key to drop): the event is then the
decoded PDU with its ID, whatever the room version's rules. Every input that fails to
parse goes without a hint, so its error is raised by the pipeline, in its turn, with its
code, as before.
"""

from __future__ import annotations

from worker.input.decode import InputMessage
from worker.matrix.events import Event
from worker.matrix.pdu import parse_pdu
from worker.matrix.room_versions import RoomVersion

#: What parsing an input's event found (see the module docstring): the identifier of
#: the room version it was parsed with, and the event ID. A plain tuple: a named one
#: pickles through a Python call each (4 us; a batch's hints cross to the pipeline's
#: process), a plain one in C.
ParseHint = tuple[str, str]


def parse_ahead(inp: InputMessage, version: RoomVersion) -> ParseHint | None:
    """The hint for `inp` parsed with `version`, or None if the event does not parse as
    it is (an error, a redaction, an ID to drop)."""
    try:
        event = parse_pdu(inp.event, version, float_free=inp.float_free)
    except Exception:  # the pipeline raises it again, with its code, in the input's turn
        return None
    if event.redacted or event.pdu is not inp.event:
        return None
    return version.identifier, event.event_id


def hinted_event(inp: InputMessage, version: RoomVersion, hint: ParseHint) -> Event | None:
    """The event `parse_pdu(inp.event, version)` returns, made from `hint`; None if the
    hint was made for another room version."""
    identifier, event_id = hint
    if identifier != version.identifier:
        return None
    return Event(event_id, version, inp.event)
