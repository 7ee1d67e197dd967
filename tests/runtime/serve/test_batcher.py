"""Batcher: merges requests without changing any vector; admission control answers at once."""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encoderfile.errors import NotReadyError, OverloadedError
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.embedder import CALL_TOKENS, Embedder, Embeddings
from encoderfile.runtime.serve.batcher import WORKER_NICENESS, Batcher
from encoderfile.runtime.serve.metrics import Metrics

TEXTS = [
    "hello",
    "the quick brown fox jumps over the lazy dog",
    "a b c",
    "search query hello world the quick brown fox jumps over the lazy dog a b c",
    "dog",
]


class GatedEmbedder:
    """Wraps an Embedder: each call waits for the gate and records its batch size."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[int] = []

    def embed_encodings(self, encodings: Any, dimensions: int | None = None) -> Embeddings:
        self.entered.set()
        assert self.gate.wait(10)
        self.calls.append(len(encodings))
        return self.embedder.embed_encodings(encodings, dimensions=dimensions)


@pytest.fixture(scope="module")
def embedder(shared_tiny_bundle: Path) -> Embedder:
    return Embedder(open_bundle(shared_tiny_bundle), threads=1)


def test_vector_alone_equals_vector_batched_with_neighbours(embedder: Embedder) -> None:
    gated = GatedEmbedder(embedder)
    batcher = Batcher(gated, max_wait_ms=50)  # type: ignore[arg-type]
    try:
        gated.gate.set()
        alone = [batcher.submit(embedder.tokenize([t])).result(10).vectors[0] for t in TEXTS]
        gated.gate.clear()
        gated.entered.clear()
        blocker = batcher.submit(embedder.tokenize(["hello"]))
        assert gated.entered.wait(10)
        futures = [batcher.submit(embedder.tokenize([t])) for t in TEXTS]  # queue while blocked
        gated.gate.set()
        blocker.result(10)
        batched = [f.result(10).vectors[0] for f in futures]
    finally:
        batcher.close(10)
    assert gated.calls[-1] == len(TEXTS), "the queued requests ran as one model call"
    for text, a, b in zip(TEXTS, alone, batched, strict=True):
        assert np.array_equal(a, b), f"{text!r} changed when batched"
        assert np.array_equal(a, embedder.embed([text]).vectors[0])


def test_rows_go_back_to_their_request_in_order(embedder: Embedder) -> None:
    batcher = Batcher(embedder, max_wait_ms=20)
    try:
        futures = [
            batcher.submit(embedder.tokenize(TEXTS[i:] + TEXTS[:i]), dimensions=d)
            for i, d in zip(range(len(TEXTS)), (None, 4, None, 4, 8), strict=True)
        ]
        results = [f.result(10) for f in futures]
    finally:
        batcher.close(10)
    for i, (result, d) in enumerate(zip(results, (None, 4, None, 4, 8), strict=True)):
        expected = embedder.embed(TEXTS[i:] + TEXTS[:i], dimensions=d)
        assert np.array_equal(result.vectors, expected.vectors)
        assert result.tokens == expected.tokens


def test_over_the_inflight_bound_fails_at_once(embedder: Embedder) -> None:
    gated = GatedEmbedder(embedder)
    batcher = Batcher(gated, max_inflight=3)  # type: ignore[arg-type]
    try:
        first = batcher.submit(embedder.tokenize(["a", "b"]))
        assert gated.entered.wait(10)
        assert batcher.inflight == 2
        with pytest.raises(OverloadedError, match="--max-inflight"):
            batcher.submit(embedder.tokenize(["c", "dog"]))
        second = batcher.submit(embedder.tokenize(["c"]))  # exactly at the bound
        gated.gate.set()
        assert len(first.result(10).vectors) == 2
        assert len(second.result(10).vectors) == 1
    finally:
        gated.gate.set()
        batcher.close(10)
    assert batcher.inflight == 0


def test_batches_respect_size_and_token_budget(embedder: Embedder) -> None:
    gated = GatedEmbedder(embedder)
    batcher = Batcher(gated, max_batch_size=4, max_batch_tokens=1000)  # type: ignore[arg-type]
    try:
        blocker = batcher.submit(embedder.tokenize(["a"]))
        assert gated.entered.wait(10)
        futures = [batcher.submit(embedder.tokenize(["a", "b", "c"])) for _ in range(3)]
        gated.gate.set()
        for f in [blocker, *futures]:
            f.result(10)
    finally:
        batcher.close(10)
    assert gated.calls == [1, 3, 3, 3], "a request is never split, a call never exceeds 4"


def test_cancelled_request_is_skipped_and_close_drains(embedder: Embedder) -> None:
    gated = GatedEmbedder(embedder)
    batcher = Batcher(gated)  # type: ignore[arg-type]
    blocker = batcher.submit(embedder.tokenize(["a"]))
    assert gated.entered.wait(10)
    cancelled = batcher.submit(embedder.tokenize(["b"]))
    kept = batcher.submit(embedder.tokenize(["c"]))
    assert cancelled.cancel()
    closer = threading.Thread(target=batcher.close, args=(10,))
    closer.start()
    gated.gate.set()
    closer.join(10)
    assert not closer.is_alive()
    assert len(blocker.result(0).vectors) == len(kept.result(0).vectors) == 1
    with pytest.raises(CancelledError):
        cancelled.result(0)
    assert gated.calls == [1, 1] and batcher.inflight == 0
    with pytest.raises(NotReadyError):
        batcher.submit(embedder.tokenize(["a"]))


def test_cancelled_request_leaves_the_queue_and_frees_its_inputs(embedder: Embedder) -> None:
    gated = GatedEmbedder(embedder)
    batcher = Batcher(gated, max_inflight=3)  # type: ignore[arg-type]
    try:
        blocker = batcher.submit(embedder.tokenize(["a"]))
        assert gated.entered.wait(10)
        queued = batcher.submit(embedder.tokenize(["b", "c"]))
        with pytest.raises(OverloadedError):
            batcher.submit(embedder.tokenize(["d"]))
        assert queued.cancel()
        assert batcher.inflight == 1, "a cancelled request no longer counts against admission"
        admitted = batcher.submit(embedder.tokenize(["d", "e"]))
        gated.gate.set()
        assert len(admitted.result(10).vectors) == 2 and len(blocker.result(10).vectors) == 1
    finally:
        gated.gate.set()
        batcher.close(10)
    assert gated.calls == [1, 2], "the cancelled request never reached the model"


@pytest.mark.parametrize(
    ("queued", "calls"),
    [
        # the oldest short, then the shorts closest to it in length (4 x 3 tokens); the long one
        # would pad them all to 12 (over the budget, and dearer per token), so it goes next
        ("SSLSS", [1, 4, 1]),
        # the oldest (long) goes first, and alone: padding a short to 12 tokens costs more than
        # the call it saves, (24 + 2 x 12) / 15 > (24 + 12) / 12; then the four shorts
        ("LSSSS", [1, 1, 4]),
        # the mediums pad by 2 tokens each, which the saved calls pay for: (24 + 3 x 12) / 32;
        # the short would raise that to (24 + 4 x 12) / 35
        ("LMMS", [1, 3, 1]),
    ],
)
def test_calls_group_by_length_and_cost_per_token_oldest_first(
    embedder: Embedder, queued: str, calls: list[int]
) -> None:
    assert CALL_TOKENS == 24  # the figures above
    gated = GatedEmbedder(embedder)
    batcher = Batcher(gated, max_batch_tokens=48)  # type: ignore[arg-type]
    inputs = {
        kind: embedder.tokenize([text])
        for kind, text in (("S", "a"), ("M", "a b c a b c a b"), ("L", "a b c a b c a b c a"))
    }
    assert [len(inputs[kind][0].ids) for kind in "SML"] == [3, 10, 12]
    try:
        blocker = batcher.submit(inputs["S"])
        assert gated.entered.wait(10)
        futures = [batcher.submit(inputs[kind]) for kind in queued]
        gated.gate.set()
        for f in [blocker, *futures]:
            f.result(10)
    finally:
        batcher.close(10)
    assert gated.calls == calls, gated.calls


def test_piled_up_batches_run_side_by_side_on_the_lane(embedder: Embedder) -> None:
    wide, lane = GatedEmbedder(embedder), GatedEmbedder(embedder)
    batcher = Batcher(wide, lane=lane, workers=2)  # type: ignore[arg-type]
    try:
        first = batcher.submit(embedder.tokenize([TEXTS[0]]))
        assert wide.entered.wait(10)  # alone: the session on every CPU
        second = batcher.submit(embedder.tokenize([TEXTS[1]]))
        assert lane.entered.wait(10), "the second worker did not start while the first ran"
        wide.gate.set()
        lane.gate.set()
        assert np.array_equal(first.result(10).vectors, embedder.embed([TEXTS[0]]).vectors)
        assert np.array_equal(second.result(10).vectors, embedder.embed([TEXTS[1]]).vectors)
        batcher.submit(embedder.tokenize([TEXTS[2]])).result(10)  # alone again
        assert (wide.calls, lane.calls) == ([1, 1], [1])
    finally:
        wide.gate.set()
        lane.gate.set()
        batcher.close(10)


@pytest.mark.slow
def test_minilm_vector_alone_equals_vector_batched(minilm_bundle: Path) -> None:
    embedder = Embedder(open_bundle(minilm_bundle), threads=1)
    together = embedder.embed(TEXTS).vectors
    for text, row in zip(TEXTS, together, strict=True):
        assert np.array_equal(embedder.embed([text]).vectors[0], row), text


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priority is Linux's")
def test_workers_yield_the_cpu_to_the_event_loop(embedder: Embedder) -> None:
    seen: list[int] = []

    class Recording(GatedEmbedder):
        def embed_encodings(self, encodings: Any, dimensions: int | None = None) -> Embeddings:
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return super().embed_encodings(encodings, dimensions)

    recording = Recording(embedder)
    recording.gate.set()
    batcher = Batcher(recording, lane=recording, workers=2)  # type: ignore[arg-type]
    try:
        batcher.submit(embedder.tokenize(["hello"])).result(10)
    finally:
        batcher.close(10)
    loop_priority = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == [loop_priority + WORKER_NICENESS]


def test_a_short_lone_call_runs_on_the_callers_thread(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []

    class Recording(GatedEmbedder):
        def embed_encodings(self, encodings: Any, dimensions: int | None = None) -> Embeddings:
            threads.append(threading.current_thread().name)
            return super().embed_encodings(encodings, dimensions)

    wide = Recording(embedder)
    wide.gate.set()
    batcher = Batcher(wide, lane=Recording(embedder), workers=2)  # type: ignore[arg-type]
    one = embedder.tokenize([TEXTS[1]])
    try:
        now = batcher.embed_now(one)  # the very first call too: no timing needed
        assert now is not None
        submitted = batcher.submit(one).result(10)
        assert np.array_equal(now.vectors, submitted.vectors)
        assert threads == [threading.current_thread().name, "encoderfile-batcher-0"]
        assert batcher.idle
        tokens = len(one[0].ids)
        monkeypatch.setattr("encoderfile.runtime.serve.batcher.INLINE_TOKENS", 2 * tokens - 1)
        assert batcher.embed_now(one) is not None
        two = embedder.tokenize([TEXTS[1]] * 2)
        assert batcher.embed_now(two) is None, "over INLINE_TOKENS padded tokens: a worker's job"
    finally:
        batcher.close(10)


def test_a_lone_calls_metrics_wait_for_later(embedder: Embedder) -> None:
    """The service passes its backlog's add: the call's metrics are recorded after the reply."""
    metrics = Metrics()
    batcher = Batcher(embedder, metrics=metrics)
    deferred: list[tuple[Any, ...]] = []
    try:
        answer = batcher.embed_now(
            embedder.tokenize([TEXTS[0]]), later=lambda *call: deferred.append(call)
        )
        assert answer is not None and len(deferred) == 1
        assert metrics.inference_seconds.count() == metrics.batch_inputs.count() == 0
        fn, *args = deferred[0]
        fn(*args)
        assert metrics.inference_seconds.count() == metrics.batch_inputs.count() == 1
        assert batcher.embed_now(embedder.tokenize([TEXTS[0]])) is not None  # no `later`: at once
        assert metrics.inference_seconds.count() == 2
    finally:
        batcher.close(10)


def test_no_call_on_the_callers_thread_while_the_model_is_busy(embedder: Embedder) -> None:
    gated = GatedEmbedder(embedder)
    batcher = Batcher(gated, lane=gated, workers=2)  # type: ignore[arg-type]
    one = embedder.tokenize([TEXTS[0]])
    try:
        gated.gate.clear()
        gated.entered.clear()
        running = batcher.submit(one)
        assert gated.entered.wait(10)
        assert not batcher.idle
        assert batcher.embed_now(one) is None
        gated.gate.set()
        running.result(10)
    finally:
        gated.gate.set()
        batcher.close(10)
