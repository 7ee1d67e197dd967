"""Worker threads that merge concurrent requests into model calls, with admission control."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING

from encoderfile.errors import NotReadyError, OverloadedError
from encoderfile.runtime.embedder import BATCH_SIZE, BATCH_TOKENS, call_cost
from encoderfile.runtime.serve.metrics import Metrics

if TYPE_CHECKING:
    from tokenizers import Encoding

    from encoderfile.runtime.embedder import Embedder, Embeddings


# Workers run at this much lower priority than the event loop (Linux: per thread), so reading,
# tokenizing and answering requests never waits behind a model call, and a client or sidecar on
# the same machine is not starved: a Python client at 64 connections got half the throughput
# without it (benchmarks/serve_speed.py, httpx rows). The model still gets every idle cycle.
WORKER_NICENESS = 5

# A lone call of at most this many padded tokens (inputs x the longest) runs on the caller's
# thread (the event loop) when the model is idle: waking a worker and then the loop again cost a
# lone client ~0.3 ms a request on this VM (a tenth of a short MiniLM call), more on a loaded
# machine. A count, not a time: a loaded machine slows the call and the hand-off alike. Longer
# calls hand off, which costs them little in proportion and keeps the loop (health checks,
# other clients) from waiting long: NomicBERT-sized models take ~0.5 s for 256 tokens.
INLINE_TOKENS = 256


def _now(fn: Callable[..., object], *args: object) -> None:
    fn(*args)


def _yield_to_the_event_loop() -> None:
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            tid = threading.get_native_id()
            priority = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, priority + WORKER_NICENESS)


@dataclasses.dataclass(eq=False)  # queued jobs are told apart by identity
class _Job:
    encodings: Sequence[Encoding]
    dimensions: int | None
    future: Future[Embeddings]
    enqueued: float

    @functools.cached_property  # read on every take while queued
    def longest(self) -> int:
        return max((len(e.ids) for e in self.encodings), default=0)

    @functools.cached_property
    def tokens(self) -> int:
        return max(1, sum(len(e.ids) for e in self.encodings))


class Batcher:
    """Merges queued requests into one Embedder call of at most `max_batch_size` inputs and
    `max_batch_tokens` padded tokens (inputs x the longest); a request is never split across
    calls, and the Embedder sorts the merged inputs by length into model batches. By default
    nothing waits: an idle model takes a request at once, and requests that arrive while it is
    busy share the next call (`max_wait_ms` > 0 trades latency for fuller batches).

    Callers tokenize (Embedder.tokenize), so a bad input fails its own request before queueing and
    the token budget is exact. Admission control counts inputs: over `max_inflight`, submit raises
    OverloadedError at once instead of queueing. A cancelled request (its client went away)
    leaves the queue at once and frees its share of `max_inflight`.

    With a `lane` (an Embedder on a single-threaded session) and `workers` threads, batches run
    side by side, one per CPU, when work piles up: one thread per call wastes no CPU keeping
    intra-op threads in step, and a preempted thread stalls only its own call. A worker then takes
    at most one model call's worth (BATCH_SIZE inputs, BATCH_TOKENS padded tokens), so the work
    spreads over the workers. The first worker takes every batch it can; the others only take
    work while it is busy. A batch that has the
    model to itself (no other call running, nothing queued) runs on `embedder`, whose session
    uses every CPU, so a lone client sees the latency of one plain call: on the first worker
    (alternating threads cost a lone client ~3% and doubled its p99), or on the caller's own
    thread through embed_now when the call is short. Both sessions run the same graph and give
    bitwise the same vectors.
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        lane: Embedder | None = None,
        workers: int = 1,
        max_inflight: int = 1024,
        max_batch_size: int = 256,
        max_batch_tokens: int = 32768,
        max_wait_ms: float = 0.0,
        metrics: Metrics | None = None,
    ):
        self._embedder = embedder
        self._lane = lane or embedder
        self._max_inflight = max_inflight
        spread = workers > 1
        self._max_batch_size = min(max_batch_size, BATCH_SIZE) if spread else max_batch_size
        self._max_batch_tokens = min(max_batch_tokens, BATCH_TOKENS) if spread else max_batch_tokens
        self._max_wait = max_wait_ms / 1000
        self._metrics = metrics or Metrics()
        self._queue: deque[_Job] = deque()
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the first worker waits here
        self._lanes_free = threading.Condition(lock)  # the other workers wait here
        self._inflight = 0
        self._running = 0  # calls on the model now
        self._first_busy = False
        self._closed = False
        self._threads = [
            threading.Thread(
                target=self._loop, args=(i == 0,), name=f"encoderfile-batcher-{i}", daemon=True
            )
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def idle(self) -> bool:
        """No model call running and nothing queued (a hint: read without the lock)."""
        return not self._running and not self._queue

    @property
    def inflight(self) -> int:
        """Inputs accepted and not yet answered."""
        return self._inflight

    def submit(
        self, encodings: Sequence[Encoding], *, dimensions: int | None = None
    ) -> Future[Embeddings]:
        """Queue tokenized inputs; the future resolves to their Embeddings, rows in order."""
        n = len(encodings)
        job = _Job(encodings, dimensions, Future(), time.monotonic())
        with self._cond:
            if self._closed:
                raise NotReadyError("The server is shutting down. Retry on another replica.")
            if self._inflight + n > self._max_inflight:
                raise OverloadedError(
                    f"{self._inflight} inputs are in flight and this request adds {n}, over the "
                    f"limit of {self._max_inflight}. Retry later, or raise --max-inflight."
                )
            self._inflight += n
            self._queue.append(job)
            (self._lanes_free if self._first_busy else self._cond).notify()
        job.future.add_done_callback(lambda _: self._finished(job))
        return job.future

    def _finished(self, job: _Job) -> None:
        """Answered, failed or cancelled: release the job's inputs (and drop it if queued)."""
        with self._cond:
            self._inflight -= len(job.encodings)
            if job.future.cancelled():
                self._metrics.cancelled.inc(len(job.encodings))
                if job in self._queue:
                    self._queue.remove(job)

    def embed_now(
        self,
        encodings: Sequence[Encoding],
        *,
        dimensions: int | None = None,
        later: Callable[..., object] | None = None,
    ) -> Embeddings | None:
        """The embeddings, computed on the calling thread on the all-CPU session, if the model is
        idle and the call has at most INLINE_TOKENS padded tokens; else None, and the caller
        submits. Same session, so bitwise the same vectors. `later(fn, *args)` (the service's
        Backlog.add) records the call's metrics after the caller's reply; by default they are
        recorded at once."""
        n, longest = len(encodings), max(len(e.ids) for e in encodings)
        with self._cond:
            if (
                self._closed
                or self._queue
                or self._running
                or n * longest > INLINE_TOKENS
                or self._inflight + n > self._max_inflight
            ):
                return None
            self._running += 1
            self._inflight += n
        try:
            answer = self._call(encodings, dimensions, self._embedder, later)
        finally:
            with self._cond:
                self._running -= 1
                self._inflight -= n
                if self._queue:  # submitted meanwhile from another thread
                    self._cond.notify()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self, timeout: float | None = None) -> None:
        """Refuse new work, finish what is queued, and stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._lanes_free.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _over(self, size: int, longest: int) -> bool:
        return size > self._max_batch_size or size * longest > self._max_batch_tokens

    def _full(self) -> bool:
        size = longest = 0
        for job in self._queue:
            size += len(job.encodings)
            longest = max(longest, job.longest)
            if self._over(size + 1, longest):
                return True
        return False

    def _take(self) -> list[_Job]:
        """The oldest job, then the queued jobs closest to it in length that lower the call's cost
        per real token, call_cost / tokens (CALL_TOKENS + inputs x longest), within the budget: the call
        pads little, and no request waits behind ever newer ones. (Sixteen closest regardless ran
        NomicBERT at 0.77 real tokens per padded one under 64 clients; bulk sorts to ~1.)"""
        oldest = self._queue.popleft()
        batch = [oldest]
        size, longest, tokens = len(oldest.encodings), oldest.longest, oldest.tokens
        for job in sorted(self._queue, key=lambda j: abs(j.longest - oldest.longest)):
            grown = size + len(job.encodings), max(longest, job.longest)
            cheaper = call_cost(*grown) / (tokens + job.tokens) <= call_cost(size, longest) / tokens
            if cheaper and not self._over(*grown):
                batch.append(job)
                size, longest, tokens = *grown, tokens + job.tokens
        if len(batch) > 1:
            taken = set(map(id, batch))
            self._queue = deque(j for j in self._queue if id(j) not in taken)
        return batch

    def _loop(self, first: bool) -> None:
        _yield_to_the_event_loop()
        wake = self._cond if first else self._lanes_free
        while True:
            with self._cond:
                while not self._closed and not (self._queue and (first or self._first_busy)):
                    wake.wait()
                if not self._queue:
                    return
                deadline = time.monotonic() + self._max_wait
                while self._queue and not self._closed and not self._full():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    wake.wait(remaining)
                if not self._queue:  # all cancelled while waiting
                    continue
                batch = self._take()
                alone = not self._running and not self._queue
                self._running += 1
                self._first_busy = self._first_busy or first
                if self._queue:
                    self._lanes_free.notify()
            self._run(batch, self._embedder if alone else self._lane, first)

    def _run(self, batch: list[_Job], embedder: Embedder, first: bool) -> None:
        """Embed the batch, one call per requested width, then answer its requests; the model
        counts as free again before the answers go out (the next request may be theirs)."""
        started = time.monotonic()
        groups: dict[int | None, list[_Job]] = {}
        for job in batch:
            # Skip requests whose client went away; once running, a future can't be cancelled.
            if job.future.set_running_or_notify_cancel():
                self._metrics.queue_seconds.observe(started - job.enqueued)
                groups.setdefault(job.dimensions, []).append(job)
        answers: list[tuple[list[_Job], Embeddings | Exception]] = []
        try:
            for dimensions, jobs in groups.items():
                encodings = [e for job in jobs for e in job.encodings]
                answers.append((jobs, self._call(encodings, dimensions, embedder)))
        finally:
            with self._cond:
                self._running -= 1
                self._first_busy = self._first_busy and not first
        for jobs, answer in answers:
            self._answer(jobs, answer)

    def _call(
        self,
        encodings: Sequence[Encoding],
        dimensions: int | None,
        embedder: Embedder,
        later: Callable[..., object] | None = None,
    ) -> Embeddings | Exception:
        started = time.monotonic()
        try:
            result = embedder.embed_encodings(encodings, dimensions=dimensions)
        except Exception as exc:  # callers validate first, so this is a bug; they re-raise it
            return exc
        (later or _now)(self._observe, time.monotonic() - started, len(encodings))
        return result

    def _observe(self, seconds: float, inputs: int) -> None:
        self._metrics.inference_seconds.observe(seconds)
        self._metrics.batch_inputs.observe(inputs)

    @staticmethod
    def _answer(jobs: list[_Job], answer: Embeddings | Exception) -> None:
        if isinstance(answer, Exception):
            for job in jobs:
                job.future.set_exception(answer)
            return
        start = 0
        for job in jobs:
            end = start + len(job.encodings)
            job.future.set_result(
                dataclasses.replace(
                    answer,
                    vectors=answer.vectors[start:end],
                    tokens=answer.tokens[start:end],
                    truncated=answer.truncated[start:end],
                )
            )
            start = end
