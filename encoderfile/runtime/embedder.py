"""Tokenize, batch by length and run the bundle's graph; all the maths lives in the graph."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from encoderfile.errors import ArtifactError, RequestError
from encoderfile.runtime import texts as text_rule
from encoderfile.runtime.artifact import Bundle
from encoderfile.runtime.manifest import (
    ATTENTION_MASK,
    INPUT_IDS,
    NO_PROMPT,
    TEXT_INPUTS,
    TEXT_OUTPUT,
    TOKEN_TYPE_IDS,
    Manifest,
    text_columns,
)
from encoderfile.runtime.model_cache import ModelCache
from encoderfile.runtime.session import all_finite, available_cpus, open_session, shorten

# One model call takes at most BATCH_SIZE inputs and BATCH_TOKENS padded tokens (inputs x the
# longest of them), inputs sorted by length: short texts go 16 at a time, 256-token texts 8 at a
# time. Larger calls were no faster on 2 cores (benchmarks/results/runtime_settings_*.md), and the
# best batch of a plain ORT loop was 8-16 for MiniLM and NomicBERT (docs/benchmarks.md).
BATCH_SIZE = 16
BATCH_TOKENS = 2048
# Bulk work of this many model calls or more runs them side by side, one thread per CPU on one
# shared single-threaded session (lanes): no CPU waits to keep intra-op threads in step. A lane's
# calls are smaller (smaller activations stay in cache: MiniLM, mixed texts, 2 cores: 30%
# less CPU than one session on both, and 100 MB more at peak instead of 400 MB with a session per
# lane and full-size calls). Fewer calls do not pay for opening the lanes' session. Calls of 512
# padded tokens (2 texts of 256) ran SciFact abstracts 4.5% and mixed texts 3.5% faster than calls
# of 1024 (AVX-512 VNNI, in-process medians of 5); short texts the same (8 a call either way).
LANES_FROM = 8
LANE_BATCH_SIZE, LANE_BATCH_TOKENS = 8, 512
# A model call costs about as much as this many more padded tokens: at batch 1 most of its time
# goes to streaming the weights (single-threaded, on 2 cores: 26 for all-MiniLM-L6-v2 and 23 for
# NomicBERT). The serve batcher's takes and a reranker's calls weigh it against padding.
CALL_TOKENS = 24


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 [n, dimensions or manifest.dimension]
    tokens: list[int]  # non-padding tokens per input (special tokens included)
    truncated: list[bool]  # input was longer than max_length and was cut


class Embedder:
    """One ORT session and tokenizer over a verified bundle. embed_encodings keeps no state, so
    several threads may call it at once (the serve batcher's workers share one Embedder)."""

    OUTPUTS: tuple[str, ...] = (TEXT_OUTPUT,)  # the graph outputs _run reads, side by side

    def __init__(
        self,
        bundle: Bundle,
        threads: int | None = None,
        session: ort.InferenceSession | None = None,
    ):
        if not bundle.manifest.has_text:
            raise RequestError(
                f"{bundle.manifest.name} has no text model, only an image model. "
                "Embed images (embed --image, POST /img/embed)."
            )
        self.manifest: Manifest = bundle.manifest
        if session is None and bundle.model:
            session = open_session(bundle.model, threads, f"{bundle.source}: model.onnx")
        elif session is None:  # opened with read_model=False: the cached copy, if it checks out
            session = ModelCache(bundle).open(threads)
        self._session = session
        self._lanes: _Lanes | None = None
        self._inputs = [i.name for i in self._session.get_inputs()]
        unknown = set(self._inputs) - set(TEXT_INPUTS)
        if unknown or not set(self.OUTPUTS) <= {o.name for o in self._session.get_outputs()}:
            raise ArtifactError(
                f"{bundle.source}: model.onnx must take input_ids/attention_mask[/token_type_ids] "
                f"and output {' and '.join(map(repr, self.OUTPUTS))} (inputs: "
                f"{', '.join(self._inputs)}). Rebuild the bundle."
            )
        self._tokenizer = Tokenizer.from_str(bundle.tokenizer)
        padding = self._tokenizer.padding or {}
        self._pad_id = int(padding.get("pad_id", 0))
        self._pad_type_id = int(padding.get("pad_type_id", 0))
        self._pad_left = padding.get("direction") == "left"
        self._tokenizer.no_padding()  # padded per batch below, after sorting by length

    def on_session(self, session: ort.InferenceSession) -> Embedder:
        """This embedder running `session`, another session over the same graph."""
        twin = copy.copy(self)
        twin._session = session
        twin._lanes = None
        return twin

    def prefix(self, prompt: str | None) -> str:
        """The text prepended for `prompt`, or for the manifest's default_prompt when None."""
        name = prompt if prompt is not None else self.manifest.default_prompt
        if name is None or name in NO_PROMPT:
            return ""
        if name not in self.manifest.prompts:
            names = ", ".join(self.manifest.prompts) or "none"
            raise RequestError(f"unknown prompt {name!r}. Use one of: {names}; or 'none'.")
        return self.manifest.prompts[name]

    def tokenize(self, texts: Sequence[str], *, prompt: str | None = None) -> list[Encoding]:
        """Unpadded encodings, truncated to max_length (`len(e.overflowing) > 0` if cut)."""
        prefix = self.prefix(prompt)
        if prefix:
            texts = [prefix + t for t in texts]
        return self._tokenizer.encode_batch(list(texts))

    def embed(
        self,
        texts: Sequence[str],
        *,
        prompt: str | None = None,
        dimensions: int | None = None,
        truncate: bool = True,
    ) -> Embeddings:
        for i, text in enumerate(texts):
            text_rule.check(text if isinstance(text, str) else "", f"input {i}")
        width = self.manifest.width(dimensions)
        encodings = self.tokenize(texts, prompt=prompt)
        if not truncate:
            for i, enc in enumerate(encodings):
                if enc.overflowing:
                    raise RequestError(
                        f"input {i} is longer than max_length={self.manifest.max_length} tokens. "
                        "Shorten it or allow truncation."
                    )
        return self.embed_encodings(encodings, dimensions=width)

    def embed_encodings(
        self, encodings: Sequence[Encoding], *, dimensions: int | None = None
    ) -> Embeddings:
        """Embed already tokenized inputs (from `tokenize`), rows in input order."""
        width = self.manifest.width(dimensions)
        vectors = self._run(encodings)
        vectors = shorten(vectors, width, self.manifest.normalized)
        return Embeddings(
            vectors=vectors,
            tokens=[sum(e.attention_mask) for e in encodings],
            truncated=[bool(e.overflowing) for e in encodings],
        )

    def embed_raw(self, texts: Sequence[str]) -> np.ndarray:
        """Full-width vectors with no prompt at all (how the golden vectors were computed)."""
        return self._run(self._tokenizer.encode_batch(list(texts)))

    def spread(self, open_session: Callable[[], ort.InferenceSession], lanes: int) -> None:
        """Run a call of LANES_FROM model batches or more on `lanes` threads side by side, on one
        single-threaded session (opened by `open_session` on the first such call): bulk work."""
        self._lanes = _Lanes(open_session, lanes) if lanes > 1 else None

    def batches(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        """Row indices grouped into model calls (a call's own, outside the lanes)."""
        return _batches(lengths)

    def _run(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """[n, dimension] for one output; [n, outputs] for several outputs of shape [batch]."""
        width = self.manifest.dimension if len(self.OUTPUTS) == 1 else len(self.OUTPUTS)
        lengths = [len(e.ids) for e in encodings]
        groups = list(self.batches(lengths))

        def call(session: ort.InferenceSession, rows: list[int]) -> np.ndarray:
            results = session.run(list(self.OUTPUTS), self._feed([encodings[i] for i in rows]))
            return results[0] if len(results) == 1 else np.stack(results, axis=1)

        if len(groups) == 1 and groups[0] == list(range(len(encodings))):
            out = call(self._session, groups[0])  # one call, rows in order: nothing to copy
        else:
            out = np.empty((len(encodings), width), dtype=np.float32)
            if self._lanes is not None and len(groups) >= LANES_FROM:
                lane_groups = list(_batches(lengths, LANE_BATCH_SIZE, LANE_BATCH_TOKENS))
                for rows, values in self._lanes.map(call, lane_groups):
                    out[rows] = values
            else:
                for rows in groups:
                    out[rows] = call(self._session, rows)
        if not all_finite(out):
            raise ArtifactError("model.onnx produced NaN or infinite values. Rebuild the bundle.")
        return out

    def _feed(self, batch: Sequence[Encoding]) -> dict[str, Any]:
        rows = [text_columns(enc) for enc in batch]
        lengths = [len(columns[INPUT_IDS]) for columns in rows]
        length = max(lengths)
        if min(lengths) == length:  # nothing to pad (a lone input, say): ~30 us less cold
            return {name: np.array([c[name] for c in rows], np.int64) for name in self._inputs}
        pads = {INPUT_IDS: self._pad_id, ATTENTION_MASK: 0, TOKEN_TYPE_IDS: self._pad_type_id}
        feed = {name: np.full((len(batch), length), pads[name], np.int64) for name in self._inputs}
        for row, (columns, n) in enumerate(zip(rows, lengths, strict=True)):
            cols = slice(length - n, None) if self._pad_left else slice(0, n)
            for name in feed:
                feed[name][row, cols] = columns[name]
        return feed


def _batches(
    lengths: Sequence[int], size: int = BATCH_SIZE, tokens: int = BATCH_TOKENS
) -> Iterator[list[int]]:
    """Row indices grouped for model calls: sorted by length so little is padding, each group
    within `size` inputs and `tokens` padded tokens (one over-long input goes alone)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batch: list[int] = []
    for i in order:  # ascending, so lengths[i] is the padded length if i joins
        if batch and (len(batch) == size or (len(batch) + 1) * lengths[i] > tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def call_cost(inputs: int, longest: int) -> int:
    """A model call's cost in tokens' worth: the call itself, and every input padded to the longest."""
    return CALL_TOKENS + inputs * longest


def cheapest_batches(
    lengths: Sequence[int], size: int = BATCH_SIZE, tokens: int = BATCH_TOKENS
) -> Iterator[list[int]]:
    """Row indices sorted by length and cut where the calls' total call_cost is least (exact:
    dynamic programming over the cut points), each group within `size` and `tokens`."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ascending = [lengths[i] for i in order]
    least = [0] + [0] * len(order)  # least[j]: the cheapest cost of the first j rows
    start = [0] * (len(order) + 1)  # start[j]: where the last group of that cut begins
    for j in range(1, len(order) + 1):
        options = [
            (least[k] + call_cost(j - k, ascending[j - 1]), k)
            for k in range(max(0, j - size), j)
            if j - k == 1 or (j - k) * ascending[j - 1] <= tokens
        ]
        least[j], start[j] = min(options)
    groups, j = [], len(order)
    while j:
        groups.append(order[start[j] : j])
        j = start[j]
    return reversed(groups)


def for_bulk(bundle: Bundle, threads: int | None, model: ModelCache | None = None) -> Embedder:
    """An Embedder for many texts (embed, shards, stream): one session on `threads` CPUs (default
    all), and for a call of LANES_FROM model batches or more, one lane per CPU."""
    model = model or ModelCache(bundle)
    session = model.open(threads) if bundle.manifest.has_text else None
    embedder = Embedder(bundle, threads, session)
    embedder.spread(lambda: model.open(1), threads or available_cpus())
    return embedder


class _Lanes:
    """`count` threads running model calls on one single-threaded session (onnxruntime runs
    calls on one session concurrently), each taking the next group as it finishes one."""

    def __init__(self, open_session: Callable[[], ort.InferenceSession], count: int):
        self._open, self._count = open_session, count
        self._session: ort.InferenceSession | None = None
        self._pool: ThreadPoolExecutor | None = None

    def map(
        self, call: Callable[[ort.InferenceSession, list[int]], np.ndarray], groups: list[list[int]]
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """(rows, call(session, rows)) for every group, in no particular order."""
        if self._pool is None:
            self._session = self._open()
            self._pool = ThreadPoolExecutor(self._count, thread_name_prefix="encoderfile-lane")
        session = self._session
        pending, lock, stop = iter(groups), threading.Lock(), threading.Event()

        def lane() -> list[tuple[list[int], np.ndarray]]:
            done = []
            while not stop.is_set():
                with lock:
                    rows = next(pending, None)
                if rows is None:
                    break
                done.append((rows, call(session, rows)))
            return done

        futures = [self._pool.submit(lane) for _ in range(self._count)]
        try:
            for future in as_completed(futures):  # the first to fail, at once
                yield from future.result()
        finally:  # an error (or Ctrl-C) in one lane: the others take no more batches
            stop.set()
