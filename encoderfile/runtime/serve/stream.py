"""Pipelining for streaming RPCs: start each message as it arrives, answer in order, so a
stream's messages share model calls in the Batcher like concurrent unary calls do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

Message = TypeVar("Message")
Started = TypeVar("Started")

WINDOW = 64  # messages started and not yet answered, per stream


class _End:
    def __init__(self, error: BaseException | None = None):
        self.error = error


class Pipeline(Generic[Message, Started]):
    """`async for started in Pipeline(messages, start, cancel)`: `start(message)` runs as each
    message arrives, at most `window` ahead of the consumer; on early exit the started items
    the consumer never took are passed to `cancel`."""

    def __init__(
        self,
        messages: AsyncIterator[Message],
        start: Callable[[Message], Started],
        cancel: Callable[[Started], None],
        window: int = WINDOW,
    ):
        self._messages, self._start, self._cancel = messages, start, cancel
        self._slots = asyncio.Semaphore(window)
        self._queue: asyncio.Queue[Started | _End] = asyncio.Queue()

    async def __aiter__(self) -> AsyncIterator[Started]:
        reader = asyncio.create_task(self._read())
        try:
            while not isinstance(item := await self._queue.get(), _End):
                yield item
                self._slots.release()
            if item.error is not None:
                raise item.error
        finally:
            reader.cancel()
            while not self._queue.empty():
                left = self._queue.get_nowait()
                if not isinstance(left, _End):
                    self._cancel(left)

    async def _read(self) -> None:
        try:
            async for message in self._messages:
                await self._slots.acquire()
                self._queue.put_nowait(self._start(message))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the client's half of the stream failed
            self._queue.put_nowait(_End(e))
            return
        self._queue.put_nowait(_End())
