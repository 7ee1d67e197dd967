"""Score (query, document) pairs with a reranker bundle (kind reranker): the graph applies the
activation, the runtime only tokenizes pairs, batches and runs, as for embeddings.

Pairs are tokenized with the tokenizer's pair template ([CLS] query [SEP] document [SEP] for BERT,
token_type_ids 0 then 1) and truncated as sentence-transformers' CrossEncoder does: longest first
within max_length, one token at a time from whichever side is longer. A query longer than
max_length is therefore cut too (and so is the document, down to the same length), never refused:
with truncate=False a pair over max_length is refused instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from encoderfile.errors import ArtifactError, RequestError
from encoderfile.runtime import texts as text_rule
from encoderfile.runtime.artifact import Bundle
from encoderfile.runtime.embedder import Embedder, Embeddings, cheapest_batches
from encoderfile.runtime.manifest import LOGIT_OUTPUT, SCORE_OUTPUT, Manifest

SCORE, LOGIT = 0, 1  # columns of a reranker's rows: [score, logit]
DIRECTIONS = ("right", "left")


@dataclass(frozen=True)
class Scores:
    scores: np.ndarray  # float32 [n]: the activation's score, or the logit with raw_scores
    tokens: list[int]  # tokens per pair (special tokens included)
    truncated: list[bool]  # the pair was longer than max_length and was cut


class Reranker(Embedder):
    """An Embedder whose rows are [score, logit] per (query, document) pair."""

    OUTPUTS = (SCORE_OUTPUT, LOGIT_OUTPUT)

    def __init__(
        self,
        bundle: Bundle,
        threads: int | None = None,
        session: ort.InferenceSession | None = None,
    ):
        if bundle.manifest.kind != "reranker":
            raise ArtifactError(
                f"{bundle.manifest.name} is an {bundle.manifest.kind} bundle, not a reranker. "
                "Score pairs with a bundle built from a 'kind: reranker' recipe."
            )
        super().__init__(bundle, threads, session)
        truncation = self._tokenizer.truncation or {}
        self._left = Tokenizer.from_str(bundle.tokenizer)
        self._left.no_padding()
        self._left.enable_truncation(
            int(truncation.get("max_length", self.manifest.max_length)),
            strategy=str(truncation.get("strategy", "longest_first")),
            direction="left",
        )

    def batches(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        """Cut where padding would cost more than another call (cheapest_batches): a shortlist
        mixes lengths widely, one query against documents of any length. Measured on a MiniLM-L6
        cross-encoder, one thread: 1.14-1.28x the fixed 16 / 2048 groups on SciFact shortlists,
        the same scores bit for bit (docs/rerank.md)."""
        return cheapest_batches(lengths)

    def tokenize_pairs(
        self, query: str, documents: Sequence[str], *, direction: str = "right"
    ) -> list[Encoding]:
        """Unpadded pair encodings, cut longest first to max_length (`overflowing` if cut);
        direction "left" cuts the start of the longer text instead of its end."""
        tokenizer = self._left if direction == "left" else self._tokenizer
        return tokenizer.encode_batch([(query, d) for d in documents])

    def embed_encodings(
        self, encodings: Sequence[Encoding], *, dimensions: int | None = None
    ) -> Embeddings:
        """Rows [score, logit] in input order (the batcher's call; `dimensions` is unused)."""
        return Embeddings(
            vectors=self._run(encodings),
            tokens=[sum(e.attention_mask) for e in encodings],
            truncated=[bool(e.overflowing) for e in encodings],
        )

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        raw_scores: bool = False,
        truncate: bool = True,
        direction: str = "right",
    ) -> Scores:
        """Each document's score against `query`, in input order."""
        text_rule.check(query if isinstance(query, str) else "", "the query")
        for i, text in enumerate(documents):
            text_rule.check(text if isinstance(text, str) else "", f"document {i}")
        encodings = check_length(
            self.tokenize_pairs(query, documents, direction=direction),
            truncate,
            self.manifest.max_length,
        )
        rows = self.embed_encodings(encodings)
        return Scores(pick(rows.vectors, raw_scores), rows.tokens, rows.truncated)


def check_length(encodings: list[Encoding], truncate: bool, max_length: int) -> list[Encoding]:
    """The encodings, or RequestError naming the first pair over max_length when truncate=False."""
    if not truncate:
        for i, enc in enumerate(encodings):
            if enc.overflowing:
                raise RequestError(
                    f"pair {i} (the query and document {i}) is longer than max_length={max_length} "
                    "tokens. Shorten it, or allow truncation.",
                    param="texts",
                )
    return encodings


def pick(rows: np.ndarray, raw_scores: bool) -> np.ndarray:
    """The score column of [score, logit] rows, or the logit one."""
    return np.ascontiguousarray(rows[:, LOGIT if raw_scores else SCORE])


def order(scores: np.ndarray, top_n: int | None = None, *, sort: bool = True) -> list[int]:
    """Indices by descending score (ties keep input order), the best top_n of them; with
    sort=False those same indices in input order."""
    best = sorted(range(len(scores)), key=lambda i: -float(scores[i]))[:top_n]
    return best if sort else sorted(best)


def model_class(manifest: Manifest) -> type[Embedder]:
    """The class that runs this bundle's text model, by its kind."""
    return Reranker if manifest.kind == "reranker" else Embedder
