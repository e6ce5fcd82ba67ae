"""The client's operator requests: retry, dead letters and their replay."""

from __future__ import annotations

from collections.abc import Iterable

from worker.bus.deadletters import (
    DeadLetterRecord,
    Replayed,
    read_dead_letters,
    select,
)
from worker.bus.deadletters import replay as replay_records
from worker.bus.partitions import partition_of_room
from worker.client.core import ClientCore
from worker.query.schema import (
    Retried,
)


class Operator(ClientCore):
    """An operator's requests: retry a parked room, read and replay dead letters."""

    async def retry(self, room_id: str, *, timeout: float | None = None) -> Retried:
        """Have the worker process a parked room's waiting inputs now (it may take a
        while: `timeout` defaults to the client's)."""
        partition = partition_of_room(room_id, self.partitions) if self.partitions > 1 else None
        return await self._request(
            self.subjects.admin("retry", partition),
            "retry",
            {"room_id": room_id},
            Retried.from_wire,
            timeout,
        )

    async def dead_letters(
        self, *, room_id: str | None = None, code: str | None = None
    ) -> list[DeadLetterRecord]:
        """The dead-letter stream's records (of one room, with one code), oldest first."""
        records = await read_dead_letters(
            self._js, self.config.streams.deadletter, self.subjects, room_id
        )
        return select(records, code=code, room_id=room_id)

    async def replay(self, records: Iterable[DeadLetterRecord]) -> list[Replayed]:
        """Publish dead letters' original inputs again, in order."""
        return await replay_records(self._js, records)
