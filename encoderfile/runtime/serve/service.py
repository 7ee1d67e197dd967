"""What the HTTP, gRPC and MCP transports share: limits, input checks, readiness, model info,
and embedding (inline or queued)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import encoderfile
from encoderfile.errors import (
    ClientGoneError,
    EncoderfileError,
    InvalidFieldError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    RequestError,
    UnauthorizedError,
)
from encoderfile.runtime import texts as text_rule
from encoderfile.runtime.artifact import Bundle
from encoderfile.runtime.describe import describe
from encoderfile.runtime.manifest import NO_PROMPT
from encoderfile.runtime.serve import routes
from encoderfile.runtime.serve.backlog import Backlog
from encoderfile.runtime.serve.batcher import Batcher
from encoderfile.runtime.serve.image_service import ImageService
from encoderfile.runtime.serve.metrics import Metrics

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Encoding

    from encoderfile.runtime.embedder import Embedder, Embeddings

_IMPORTED = time.monotonic()


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 2 * 1024 * 1024
    max_inputs: int = 256
    max_chars: int = 32768
    max_inflight: int = 1024


@dataclass(frozen=True)
class TokenIds:
    """Token-id input in the shape Embedder.embed_encodings reads from a tokenizers.Encoding."""

    ids: list[int]

    @property
    def attention_mask(self) -> list[int]:
        return [1] * len(self.ids)

    @property
    def type_ids(self) -> list[int]:
        return [0] * len(self.ids)

    @property
    def overflowing(self) -> list[Any]:
        return []


class Service:
    """One model behind one Batcher; transports parse requests and call check_*, then submit."""

    def __init__(
        self,
        bundle: Bundle,
        limits: Limits = Limits(),
        *,
        api_keys: Sequence[str] = (),
        metrics: Metrics | None = None,
    ):
        if limits.max_inputs > limits.max_inflight:
            raise EncoderfileError(
                f"--max-inputs={limits.max_inputs} exceeds --max-inflight={limits.max_inflight}, "
                "so a full request could never be admitted. Lower --max-inputs."
            )
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.limits = limits
        self.metrics = metrics or Metrics()
        self.backlog = Backlog()  # metrics and log lines, off the replies' path
        self.embedder: Embedder | None = None
        self.images = ImageService(bundle, limits.max_inputs)
        self.batcher: Batcher | None = None
        self.cold_start_s: float | None = None
        self._api_keys = [k.encode() for k in api_keys]
        self._ready = threading.Event()
        self._artifact_sha256: str | None = None
        self._embedding = 0  # embed() calls between checked and answered (on the event loop)
        self.metrics.gauge(
            "encoderfile_inflight_inputs",
            "Inputs accepted and not yet answered.",
            lambda: self.batcher.inflight if self.batcher else 0,
        )
        self.metrics.gauge("encoderfile_ready", "1 when serving.", lambda: int(self.ready))

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def load(self, threads: int | None = None) -> None:
        """Open the model (one session on every CPU, and a single-threaded one that the batcher's
        workers share, one per CPU: see Batcher), warm both up, then report ready."""
        from encoderfile.runtime.model_cache import ModelCache
        from encoderfile.runtime.reranker import model_class
        from encoderfile.runtime.session import available_cpus

        self.images.load(threads)
        if self.manifest.has_text:
            model = ModelCache(self.bundle)
            embedder = model_class(self.manifest)(self.bundle, threads, model.open(threads))
            workers = threads or available_cpus()
            lane = embedder.on_session(model.open(1)) if workers > 1 else None
            for warming in (embedder, lane):
                if warming is not None:
                    warming.embed(["warm up"])
            self.embedder = embedder
            self.batcher = Batcher(
                embedder,
                lane=lane,
                workers=workers,
                max_inflight=self.limits.max_inflight,
                metrics=self.metrics,
            )
        self.cold_start_s = process_age()
        self._ready.set()
        if self.bundle.source.is_file():
            threading.Thread(target=self._hash_artifact, daemon=True).start()

    def drain(self) -> None:
        """Report not ready; work already admitted still finishes (close() waits for it)."""
        self._ready.clear()

    def close(self, timeout: float | None = None) -> None:
        self.drain()
        if self.batcher is not None:
            self.batcher.close(timeout)

    def authorize(self, header: str | None) -> None:
        """Check an 'Authorization: Bearer KEY' value when the server has API keys."""
        if not self._api_keys:
            return
        scheme, _, key = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not any(
            hmac.compare_digest(key.strip().encode(), k) for k in self._api_keys
        ):
            raise UnauthorizedError(
                "Missing or wrong API key. Send the header 'Authorization: Bearer <key>' "
                "with a key from the server's --api-key-file."
            )

    def check_count(self, n: int, param: str) -> None:
        if n == 0:
            raise InvalidFieldError(f"'{param}' is empty. Send at least one input.", param=param)
        if n > self.limits.max_inputs:
            raise InvalidFieldError(
                f"'{param}' has {n} inputs, over the limit of {self.limits.max_inputs}. "
                "Split the request, or raise --max-inputs.",
                param=param,
            )

    def check_dimensions(self, dimensions: int | None, param: str = "dimensions") -> int:
        return self.manifest.width(dimensions, param)

    def check_prompt(self, prompt: str | None) -> str | None:
        if prompt is not None and prompt not in NO_PROMPT and prompt not in self.manifest.prompts:
            names = ", ".join(self.manifest.prompts) or "none (this model has no prompts)"
            raise InvalidFieldError(
                f"prompt {prompt!r} is unknown. Use one of: {names}; or 'none'.", param="prompt"
            )
        return prompt

    def tokenize(
        self,
        texts: Sequence[str],
        *,
        prompt: str | None = None,
        truncate: bool = True,
        param: str = "input",
        single: bool = False,
        decoded: bool = False,
    ) -> list[Encoding]:
        """Check texts against the limits and tokenize them (with the prompt's prefix).

        `decoded`: texts decoded from OpenAI token ids, which the client checked: no blank
        check, and cut to --max-chars instead of refused (the model sees far fewer tokens)."""
        self.check_count(len(texts), param)
        if decoded:
            texts = [t[: self.limits.max_chars] for t in texts]
        else:
            limit = self.limits.max_chars
            for i, text in enumerate(texts):
                if len(text) <= limit and text.isascii() and text.strip():
                    continue  # the rule holds (the common case, without a call)
                name = param if single else f"{param}[{i}]"
                text_rule.check(text, f"'{name}'", max_chars=limit, param=param)
        prefix = self.check_prompt(prompt)
        encodings = self._embedder().tokenize(texts, prompt=prefix)
        if not truncate:
            for i, enc in enumerate(encodings):
                if enc.overflowing:
                    name = param if single else f"{param}[{i}]"
                    raise InvalidFieldError(
                        f"'{name}' is longer than max_length={self.manifest.max_length} tokens. "
                        "Shorten it, or allow truncation.",
                        param=param,
                    )
        return encodings

    def token_ids(self, rows: Sequence[Sequence[int]], param: str = "input") -> list[TokenIds]:
        """Check token-id inputs (the model's own vocabulary, used as given)."""
        self._embedder()  # no text model: 404 before the vocabulary is read
        self.check_count(len(rows), param)
        for i, ids in enumerate(rows):
            if not ids:
                raise InvalidFieldError(
                    f"'{param}[{i}]' has no token ids. Send at least one.", param=param
                )
            if len(ids) > self.manifest.max_length:
                raise InvalidFieldError(
                    f"'{param}[{i}]' has {len(ids)} tokens; the model takes at most "
                    f"{self.manifest.max_length}. Send fewer tokens.",
                    param=param,
                )
            bad = next((t for t in ids if not 0 <= t < self._vocab_size), None)
            if bad is not None:
                raise InvalidFieldError(
                    f"'{param}[{i}]' has token id {bad}, outside this model's vocabulary "
                    f"(0 to {self._vocab_size - 1}). Send ids from POST /tokenize, or send text.",
                    param=param,
                )
        return [TokenIds(list(ids)) for ids in rows]

    def enqueue(
        self, encodings: Sequence[Encoding | TokenIds], dimensions: int | None = None
    ) -> Future[Embeddings]:
        """Queue checked inputs; raises OverloadedError at once when too much is in flight.

        While draining, requests the transports already accepted still run: only close() stops.
        """
        if self.batcher is None:
            raise NotReadyError("The model is still loading. Retry shortly.")
        return self.batcher.submit(encodings, dimensions=dimensions)  # type: ignore[arg-type]

    @property
    def model_idle(self) -> bool:
        """Loaded, with no model call running and nothing queued (a hint for Batcher.embed_now)."""
        return self.batcher is not None and self.batcher.idle

    async def embed_tokenized(
        self,
        encodings: Sequence[Encoding | TokenIds],
        dimensions: int | None = None,
        *,
        until: Callable[[], Awaitable[None]] | None = None,
        task: str = "embed",
    ) -> Embeddings:
        """Checked inputs embedded, for every transport: a lone request on an idle model runs
        on the event loop's thread (no hand-off to a worker, Batcher.embed_now), any other is
        queued in the Batcher to share model calls. `until` returns when the client has gone:
        then the queued job is cancelled (taken out of the queue) and ClientGoneError raised.
        `task` is what the route asks of the model (routes.TASKS): another kind's route is
        refused here, the one place every transport passes (WrongKindError)."""
        self.check_kind(task)
        self._embedding += 1
        try:
            batcher = self.batcher
            if batcher is not None and batcher.idle:
                await asyncio.sleep(0)  # requests read with this one get here before it decides
                if self._embedding == 1:
                    result = batcher.embed_now(
                        encodings,  # type: ignore[arg-type]
                        dimensions=dimensions,
                        later=self.backlog.add,
                    )
                    if result is not None:
                        return result
            job = self.enqueue(encodings, dimensions)
            if until is None:
                return await asyncio.wrap_future(job)
            return await _unless(job, until)
        finally:
            self._embedding -= 1

    def check_kind(self, task: str) -> None:
        """WrongKindError unless this artifact's kind serves `task` (routes.TASKS)."""
        routes.require(self.manifest, task)

    def tokenize_pairs(
        self,
        query: str,
        documents: Sequence[str],
        *,
        truncate: bool = True,
        direction: str = "right",
        param: str = "texts",
    ) -> list[Encoding]:
        """Check a rerank request (the artifact's kind, the limits, every text) and tokenize its
        (query, document) pairs; more documents than --max-inputs is 413, as TEI answers."""
        self.check_kind("rerank")
        if len(documents) > self.limits.max_inputs:
            raise PayloadTooLargeError(
                f"'{param}' has {len(documents)} documents, over the limit of "
                f"{self.limits.max_inputs}. Split the request, or raise --max-inputs."
            )
        self.check_count(len(documents), param)
        limit = self.limits.max_chars
        text_rule.check(query, "'query'", max_chars=limit, param="query")
        for i, text in enumerate(documents):
            text_rule.check(text, f"'{param}[{i}]'", max_chars=limit, param=param)
        from encoderfile.runtime.reranker import Reranker, check_length

        model = self._embedder()
        assert isinstance(model, Reranker)
        encodings = model.tokenize_pairs(query, documents, direction=direction)
        try:
            return check_length(encodings, truncate, self.manifest.max_length)
        except RequestError as e:
            raise InvalidFieldError(str(e), param=param) from None

    async def rerank(
        self,
        encodings: Sequence[Encoding],
        *,
        raw_scores: bool = False,
        until: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[np.ndarray, int]:
        """Scores of checked pairs (tokenize_pairs) in input order, through the one Batcher,
        and the pairs' tokens."""
        from encoderfile.runtime.reranker import pick

        rows = await self.embed_tokenized(encodings, until=until, task="rerank")
        return pick(rows.vectors, raw_scores), sum(rows.tokens)

    def info(self) -> dict[str, Any]:
        """Everything a client needs to know about the model and this server."""
        return {
            **describe(self.manifest),
            "limits": asdict(self.limits),
            "encoderfile_version": encoderfile.__version__,
            "artifact_sha256": self._artifact_sha256,
        }

    def _embedder(self) -> Embedder:
        if not self.manifest.has_text:
            raise NotFoundError(
                f"{self.manifest.name} has no text model, only an image model. "
                "Use POST /img/embed or /img/batch (gRPC EmbedImages)."
            )
        if self.embedder is None:
            raise NotReadyError("The model is still loading. Retry shortly.")
        return self.embedder

    def vocab_size(self) -> int:
        """The text model's vocabulary size (0 without a text model)."""
        return self._vocab_size if self.manifest.has_text else 0

    @functools.cached_property
    def _vocab_size(self) -> int:
        from tokenizers import Tokenizer

        size: int = Tokenizer.from_str(self.bundle.tokenizer).get_vocab_size(with_added_tokens=True)
        return size

    def _hash_artifact(self) -> None:
        digest = hashlib.sha256()
        with open(self.bundle.source, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        self._artifact_sha256 = digest.hexdigest()


async def _unless(job: Future[Embeddings], gone: Callable[[], Awaitable[None]]) -> Embeddings:
    """The job's result; if `gone` returns first, the job is cancelled, which takes it out of
    the batcher's queue (a job the model is already running just finishes)."""
    answer = asyncio.wrap_future(job)
    left = asyncio.ensure_future(gone())
    either: list[asyncio.Future[Any]] = [answer, left]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        answer.cancel()  # no-op once answered; else cancels `job` too
    if answer.cancelled():
        raise ClientGoneError("The client disconnected before the embeddings were ready.")
    return answer.result()


def process_age() -> float:
    """Seconds since this process was exec'd (so a frozen artifact's stub counts too)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


def read_api_keys(path: str) -> list[str]:
    """One key a line; blank lines and lines starting with '#' are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EncoderfileError(
            f"cannot read --api-key-file {path}: {e}. Pass a readable file."
        ) from None
    keys = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not keys:
        raise EncoderfileError(f"--api-key-file {path} holds no key. Write one key per line.")
    return keys
