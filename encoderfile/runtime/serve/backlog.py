"""A request's bookkeeping (its metrics and log line) run in batches, off the replies' path."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

FLUSH_S = 0.1  # the longest a queued metric or log line waits


class Backlog:
    """Calls queued on the event loop and run together FLUSH_S after the first of them.

    A model call streams the weights through the CPU's caches, so the Python that follows runs
    cold: a lone request's log line and metrics took ~200 us on the event loop, where the next
    request waits for them (~15 us warm). Run in a batch, only the first call pays that; a lone
    gRPC client got 4% more requests a second (benchmarks/serve_profile.py). flush() runs what is
    queued at once, from any thread: /metrics calls it before rendering, shutdown before exiting.
    """

    def __init__(self, delay: float = FLUSH_S):
        self._delay = delay
        self._calls: deque[tuple[Callable[..., object], tuple[object, ...]]] = deque()
        self._timer_loop: asyncio.AbstractEventLoop | None = None  # whose timer will flush

    def add(self, fn: Callable[..., object], *args: object) -> None:
        """Queue `fn(*args)`; call from a running event loop's thread."""
        self._calls.append((fn, args))
        loop = asyncio.get_running_loop()
        if self._timer_loop is not loop:  # none pending, or on a loop that has since closed
            self._timer_loop = loop
            loop.call_later(self._delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer_loop = None
        self.flush()

    def flush(self) -> None:
        """Run every queued call now, in order (each once, whichever thread flushes)."""
        while True:
            try:
                fn, args = self._calls.popleft()
            except IndexError:
                return
            fn(*args)
