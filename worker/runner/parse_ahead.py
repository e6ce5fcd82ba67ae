"""Inputs in hand parsed in the event loop, so that the pipeline does not parse them.

See worker.input.parse_hint for what a hint is and why. Here the inputs the loop has
fetched are decoded and parsed in a task of their own, a few at a time, so that the
loop's other work (reading the pipeline's answer, acknowledging, publishing) never
waits long behind it; a request takes the hints of its inputs, and parses at once
any that the task has not come to yet.

The room version each input is parsed with is the one the pipeline will use if the
loop has guessed right: a create event's own, or the room's as the pipeline last
reported it (a batch's result names the versions of its rooms whose inputs went
without a usable hint), or the one the input names. A wrong guess costs a parse here
and nothing else: the pipeline ignores a hint made for another version.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from worker.input.decode import decode_input
from worker.input.parse_hint import ParseHint, parse_ahead
from worker.matrix.events import CREATE
from worker.matrix.pdu import room_version_of_create
from worker.matrix.room_versions import RoomVersion, get_room_version
from worker.pipeline import InboundMessage

#: Inputs parsed between two turns of the event loop.
SLICE: Final = 16
#: Rooms whose version is remembered (by input subject); past this many, all are
#: forgotten and learned again from the pipeline's results.
MAX_ROOMS: Final = 100_000

#: A hint not made yet (the input waits in the queue); told apart by identity.
_PENDING: Final[ParseHint] = ("", "not parsed yet")


class ParseAhead:
    """Hints for the inputs in hand (see the module docstring)."""

    def __init__(self) -> None:
        #: Each input in hand: its hint, None (no hint), or `_PENDING`.
        self._hints: dict[InboundMessage, ParseHint | None] = {}
        self._queue: deque[InboundMessage] = deque()
        self._task: asyncio.Future[None] | None = None
        #: Room versions by input subject, as far as known.
        self._versions: dict[str, RoomVersion] = {}

    def add(self, messages: Iterable[InboundMessage]) -> None:
        """Parse `messages` (just fetched) in the background."""
        hints, queue = self._hints, self._queue
        for message in messages:
            if message not in hints:
                hints[message] = _PENDING
                queue.append(message)
        if queue and self._task is None:
            self._task = asyncio.ensure_future(self._drain())

    def hints(self, messages: Sequence[InboundMessage]) -> list[ParseHint | None]:
        """The hints of a request's inputs, parsing those not parsed yet."""
        hints = self._hints
        out: list[ParseHint | None] = []
        for message in messages:
            hint = hints.get(message, _PENDING)
            if hint is _PENDING:
                hint = hints[message] = self._parse(message)
            out.append(hint)
        return out

    def forget(self, messages: Iterable[InboundMessage]) -> None:
        """`messages` are done: their hints are not needed any more."""
        hints = self._hints
        for message in messages:
            hints.pop(message, None)

    def learn(self, versions: Mapping[str, str]) -> None:
        """Room versions (by input subject) the pipeline reported."""
        if len(self._versions) + len(versions) > MAX_ROOMS:
            self._versions.clear()
        for subject, identifier in versions.items():
            self._versions[subject] = get_room_version(identifier)

    def close(self) -> None:
        """Stop parsing in the background (the loop is stopping)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def _drain(self) -> None:
        queue, hints = self._queue, self._hints
        try:
            while queue:
                for _ in range(min(SLICE, len(queue))):
                    message = queue.popleft()
                    if hints.get(message) is _PENDING:
                        hints[message] = self._parse(message)
                await asyncio.sleep(0)
        finally:
            self._task = None

    def _parse(self, message: InboundMessage) -> ParseHint | None:
        try:
            inp = decode_input(message.data)
        except Exception:  # the pipeline dead-letters it, with its code
            return None
        version = self._version(message.subject, inp.event, inp.room_version)
        return None if version is None else parse_ahead(inp, version)

    def _version(
        self, subject: str, event: dict[str, object], named: str | None
    ) -> RoomVersion | None:
        """The version the pipeline will likely parse `event` with (see
        worker.pipeline.rooms.Rooms.version_for), or None if there is no telling."""
        try:
            if event.get("type") == CREATE and event.get("state_key") == "":
                version = room_version_of_create(event)
                if len(self._versions) >= MAX_ROOMS:
                    self._versions.clear()
                self._versions[subject] = version
                return version
            known = self._versions.get(subject)
            if known is not None:
                return known
            return None if named is None else get_room_version(named)
        except Exception:  # an unknown version, a create without content: no hint
            return None
