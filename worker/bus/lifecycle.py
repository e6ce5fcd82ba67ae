"""The `async with` shape shared by the bus's long-lived parts (the embedded server, a
consumer, the connection's health watch): started on entry, closed on exit, also
usable without `async with` by calling `start` and `close` directly."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class Started(ABC):
    """A part that is started before use and closed after it, whatever happened."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
