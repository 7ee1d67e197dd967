"""Hugging Face text-embeddings-inference's HTTP API (TEI 1.9) over the same Service.

`POST /` and `POST /embed` with `inputs` answer a bare `[[float, ...], ...]`; `/embed` with
`input` stays nomic-serve's route (http_app tells the two apart by the field). `/tokenize` with
`inputs`, `/decode`, `/embed_all` and the routes of other model kinds (`/rerank`, `/predict`,
`/embed_sparse`) answer in TEI's shapes, errors in TEI's envelope
`{"error": "...", "error_type": "Validation"}` with TEI's status codes.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import encoderfile
from encoderfile.errors import (
    InvalidFieldError,
    RequestError,
)
from encoderfile.runtime.serve import wire
from encoderfile.runtime.serve.kinds import kind_of
from encoderfile.runtime.serve.service import Service, TokenIds

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

# Routes only TEI has; /embed and /tokenize are TEI's when the body has `inputs` (STATE_KEY).
PATHS = frozenset({"/", "/embed_all", "/decode", "/rerank", "/predict", "/embed_sparse"})
STATE_KEY = "api"  # scope["state"][STATE_KEY] == "tei": answer errors in TEI's envelope
AUTO_TRUNCATE = True  # like TEI's --auto-truncate: `truncate` left out means true (as /embed)
# Which kind of model each other TEI route needs (TEI answers 424 when the model is not one).
OTHER_KINDS = {
    "/predict": "a sequence classifier",
}


class TeiError(RequestError):
    """A request error with TEI's status code and error_type named explicitly."""

    def __init__(self, message: str, status: int, error_type: str, param: str | None = None):
        super().__init__(message, param=param)
        self.status, self.error_type = status, error_type


def error(exc: BaseException) -> tuple[int, dict[str, str]]:
    """(HTTP status, body) in TEI's envelope; error_type as TEI's OpenAPI ErrorType spells it."""
    status, kind = _status(exc)
    return status, {"error": str(exc), "error_type": kind}


def _status(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, TeiError):
        return exc.status, exc.error_type
    return kind_of(exc).tei


def is_tei(scope: Any) -> bool:
    return bool(scope["path"] in PATHS or scope.get("state", {}).get(STATE_KEY) == "tei")


class Tei:
    """TEI's request handling on a Service; http_app turns requests into calls of these."""

    def __init__(self, service: Service):
        self.service = service
        self._lock = threading.Lock()
        self._tokenizers: dict[str, Tokenizer] = {}

    # -- /embed, POST / --------------------------------------------------------------------

    def embed_inputs(
        self, body: dict[str, Any]
    ) -> tuple[list[Encoding | TokenIds], int | None, bool]:
        """The checked inputs, the width and whether to L2-normalise, from a TEI EmbedRequest."""
        req = wire.parse(wire.TeiEmbedRequest, body)
        normalize = True if req.normalize is None else req.normalize
        manifest = self.service.manifest
        if not normalize and manifest.normalized:
            raise TeiError(
                f"normalize=false: {manifest.name}'s graph ends in L2 normalisation, so it has "
                "no unnormalised vector. Leave 'normalize' out, or send true.",
                422,
                "Validation",
                "normalize",
            )
        width = self.service.check_dimensions(req.dimensions)
        truncate = AUTO_TRUNCATE if req.truncate is None else req.truncate
        direction = (req.truncation_direction or "right").lower()
        encodings = self.encode(req.inputs, req.prompt_name, truncate, direction)
        return encodings, width, normalize and not manifest.normalized

    def sparse_inputs(self, body: dict[str, Any]) -> tuple[list[Encoding | TokenIds], bool]:
        """The checked inputs of a TEI EmbedSparseRequest, and whether to return tokens."""
        req = wire.parse(wire.TeiEmbedSparseRequest, body)
        truncate = AUTO_TRUNCATE if req.truncate is None else req.truncate
        direction = (req.truncation_direction or "right").lower()
        encodings = self.encode(req.inputs, req.prompt_name, truncate, direction)
        return encodings, bool(req.return_tokens)

    def encode(
        self, value: Any, prompt: str | None, truncate: bool, direction: str
    ) -> list[Encoding | TokenIds]:
        """TEI's Input: a string, token ids, or a list of those (token ids are this model's)."""
        items = value if _is_batch(value) else [value]
        if not items:
            raise TeiError("`inputs` cannot be empty. Send at least one input.", 400, "Empty")
        if len(items) > self.service.limits.max_inputs:
            raise TeiError(
                f"batch size {len(items)} > maximum allowed batch size "
                f"{self.service.limits.max_inputs}. Split the request, or raise --max-inputs.",
                413,
                "Validation",
                "inputs",
            )
        texts = [(i, t) for i, t in enumerate(items) if isinstance(t, str)]
        ids = [(i, t) for i, t in enumerate(items) if _is_ids(t)]
        if len(texts) + len(ids) != len(items):
            raise InvalidFieldError(
                "'inputs' must be a string, a list of token ids, or a list of those. "
                "Send text (or ids from POST /tokenize).",
                param="inputs",
            )
        out: list[Encoding | TokenIds | None] = [None] * len(items)
        if texts:
            strings = [t for _, t in texts]
            single = len(items) == 1
            if direction == "right" or not truncate:
                encoded = self.service.tokenize(
                    strings, prompt=prompt, truncate=truncate, param="inputs", single=single
                )
            else:
                self.service.tokenize(strings, prompt=prompt, param="inputs", single=single)
                encoded = self._left(strings, prompt)
            for (i, _), enc in zip(texts, encoded, strict=True):
                out[i] = enc
        if ids:  # used as given: `prompt_name` applies to the text inputs only
            rows = [list(t) for _, t in ids]
            if truncate:
                keep = self.service.manifest.max_length
                rows = [r[-keep:] if direction == "left" else r[:keep] for r in rows]
            for (i, _), token_ids in zip(ids, self.service.token_ids(rows, "inputs"), strict=True):
                out[i] = token_ids
        return [e for e in out if e is not None]

    def _left(self, texts: list[str], prompt: str | None) -> list[Encoding]:
        """Texts (with the prompt's prefix) truncated from the left, TEI's truncation_direction."""
        embedder = self.service._embedder()
        prefix = embedder.prefix(self.service.check_prompt(prompt))
        tokenizer = self._tokenizer("left")
        return list(tokenizer.encode_batch([prefix + t for t in texts]))

    def _tokenizer(self, kind: str) -> Tokenizer:
        """The artifact's tokenizer unpadded, truncating from the left ("left") or not at all
        ("plain"); built once each (a Tokenizer encodes from several threads at once)."""
        with self._lock:
            if kind not in self._tokenizers:
                from tokenizers import Tokenizer

                tokenizer = Tokenizer.from_str(self.service.bundle.tokenizer)
                tokenizer.no_padding()
                settings = tokenizer.truncation
                if kind == "left" and settings is not None:
                    tokenizer.enable_truncation(
                        settings["max_length"],
                        stride=settings["stride"],
                        strategy=settings["strategy"],
                        direction="left",
                    )
                elif kind == "plain":
                    tokenizer.no_truncation()
                self._tokenizers[kind] = tokenizer
            return self._tokenizers[kind]

    # -- /tokenize, /decode ----------------------------------------------------------------

    def tokenize(self, body: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """TEI's /tokenize: per input, its tokens as {id, text, special, start, stop}."""
        req = wire.parse(wire.TeiTokenizeRequest, body)
        texts = req.inputs if isinstance(req.inputs, list) else [req.inputs]
        if not texts:
            raise TeiError("`inputs` cannot be empty. Send at least one text.", 400, "Empty")
        self._check_batch(len(texts), "inputs")
        special = True if req.add_special_tokens is None else req.add_special_tokens
        prompt = req.prompt_name
        self.service.tokenize(texts, prompt=prompt, param="inputs", single=len(texts) == 1)
        prefix = self.service._embedder().prefix(self.service.check_prompt(prompt))
        full = [prefix + t for t in texts]
        encodings = self._tokenizer("plain").encode_batch(full, add_special_tokens=special)
        return [_tokens(text, enc) for text, enc in zip(full, encodings, strict=True)]

    def decode(self, body: dict[str, Any]) -> list[str]:
        """TEI's /decode: token ids of this model's vocabulary back to text."""
        req = wire.parse(wire.TeiDecodeRequest, body)
        value: Any = req.ids
        rows: list[list[int]]
        if _is_ids(value):
            rows = [list(value or ())]
        elif isinstance(value, list) and all(_is_ids(v) for v in value):
            rows = value
            if not rows:
                raise TeiError(
                    "`ids` cannot be empty. Send at least one list of ids.", 400, "Empty"
                )
        else:
            raise InvalidFieldError(
                "'ids' must be a list of token ids or a list of such lists.", param="ids"
            )
        self._check_batch(len(rows), "ids")
        size = self.service.vocab_size()
        for row in rows:
            bad = next((t for t in row if not 0 <= t < size), None)
            if bad is not None:
                raise InvalidFieldError(
                    f"token id {bad} is outside this model's vocabulary (0 to {size - 1}). "
                    "Send ids from POST /tokenize.",
                    param="ids",
                )
        skip = True if req.skip_special_tokens is None else req.skip_special_tokens
        return list(self._tokenizer("plain").decode_batch(rows, skip_special_tokens=skip))

    def _check_batch(self, n: int, param: str) -> None:
        if n > self.service.limits.max_inputs:
            raise TeiError(
                f"batch size {n} > maximum allowed batch size {self.service.limits.max_inputs}. "
                "Split the request, or raise --max-inputs.",
                413,
                "Validation",
                param,
            )

    # -- routes this model kind cannot serve ------------------------------------------------

    def embed_all(self) -> TeiError:
        manifest = self.service.manifest
        states = manifest.graph.token_states if manifest.graph else "the token states"
        return TeiError(
            f"{manifest.name} cannot give per-token vectors: its graph pools {states!r} inside "
            "and outputs only the pooled 'sentence_embedding'. Use POST /embed for one vector "
            "per input.",
            424,
            "Backend",
        )

    def other_kind(self, path: str) -> TeiError:
        return TeiError(
            f"{path} needs {OTHER_KINDS[path]}; {self.service.manifest.name} is an embedding "
            "model. Use POST /embed (TEI), /v1/embeddings (OpenAI) or /embed/batch.",
            424,
            "Backend",
        )

    # -- GET /info ---------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The fields of TEI's Info that /info does not already have under the same name."""
        manifest, limits = self.service.manifest, self.service.limits
        from encoderfile.runtime.embedder import BATCH_TOKENS

        model = manifest.model
        return {
            "model_sha": model.revision if model else None,
            "model_dtype": _dtype(manifest.precision.mode),
            "served_model_name": manifest.name,
            "model_type": {"embedding": {"pooling": pooling(manifest.steps)}},
            "max_concurrent_requests": limits.max_inflight,
            "max_input_length": manifest.max_length,
            "max_batch_tokens": BATCH_TOKENS,
            "max_batch_requests": None,
            "max_client_batch_size": limits.max_inputs,
            "auto_truncate": AUTO_TRUNCATE,
            "tokenization_workers": 1,
            "sha": None,
            "docker_label": None,
            "router_version": f"encoderfile {encoderfile.__version__}",
        }


def pooling(steps: Any) -> str:
    """TEI's name for the recipe's pooling step (mean, cls, last_token)."""
    for step in steps:
        if step.get("op") == "pooling":
            return str(step.get("mode", "mean"))
    return "mean"


def _dtype(mode: str) -> str:
    return {"fp32": "float32", "fp16": "float16"}.get(mode, mode)


def _tokens(text: str, encoding: Encoding) -> list[dict[str, Any]]:
    special = encoding.special_tokens_mask
    out = []
    for i, (token_id, (start, stop)) in enumerate(zip(encoding.ids, encoding.offsets, strict=True)):
        if special[i]:
            out.append(
                {
                    "id": token_id,
                    "text": encoding.tokens[i],
                    "special": True,
                    "start": None,
                    "stop": None,
                }
            )
        else:
            out.append(
                {
                    "id": token_id,
                    "text": text[start:stop],
                    "special": False,
                    "start": start,
                    "stop": stop,
                }
            )
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(t) for t in value)


def _is_batch(value: Any) -> bool:
    """A list of inputs, not one input of token ids: [1, 2] is one input, [[1, 2], "a"] two."""
    return isinstance(value, list) and not _is_ids(value)
