"""The build-time gate for fp16/int8 graphs: quality against fp32 and batch invariance.

Quality of an embedder: every held-out text (none of them a calibration text) is embedded by the
fp32 graph and by the lower-precision graph; the cosine of the two vectors must reach the recipe's
mean and min.
Quality of a reranker: each held-out query scores every held-out text as its documents, on both
graphs. Score agreement: the largest |score - fp32 score| as a share of the range of the fp32
scores (a scale-free figure, whatever the activation). Rank agreement: Spearman's correlation
between the two rankings of a query's documents, at least rank_min_spearman for every query.
Batch invariance: each held-out text (or pair) run alone must equal, within batch_max_abs_diff,
the same input inside mixed padded batches (all together, and in reverse order in pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from encoderfile import verify
from encoderfile.errors import VerifyError
from encoderfile.recipe import Gate
from encoderfile.runtime.manifest import SCORE_OUTPUT, TEXT_OUTPUT, GateFigures, ScoreGateFigures

WORST_SHOWN = 5

HELD_OUT_TEXTS = [
    "Hello!",
    "a",
    "The weather today is sunny with a light breeze from the west.",
    "Protein folding determines the function of most enzymes.",
    "Where can I buy cheap flights to Lisbon in October?",
    "Quantum computers use qubits that can hold superpositions of states.",
    "He scored two goals in the final minutes of the cup final.",
    "The quick brown fox jumps over the lazy dog.",
    "search_query: how do vaccines train the immune system?",
    "search_document: Vaccines expose the immune system to a harmless antigen.",
    "Le chat dort sur le canapé depuis ce matin.",
    "東京は日本の首都です。",
    "for i in range(10): print(i ** 2)",
    "Refunds are processed within five business days of receiving the returned item.",
    "The committee postponed the vote until more evidence was available.",
    "Deep sea creatures produce light through bioluminescence.",
    "Interest rates rose for the third consecutive quarter.",
    "My phone battery drains very fast after the last update.",
    "Shakespeare wrote Hamlet around the year 1600.",
    "Wash your hands before handling food. 🧼",
    " ".join(["A held-out passage long enough to be truncated at the maximum length."] * 24),
    "Transformers replaced recurrent networks for most language tasks.",
    "BRCA1 mutations raise the lifetime risk of breast and ovarian cancer.",
    "What time does the museum open on Sundays?",
]


@dataclass(frozen=True)
class GateResult:
    precision: str
    texts: int
    mean_cosine: float
    min_cosine: float
    worst: list[tuple[str, float]]
    batch_max_abs_diff: float
    thresholds: Gate

    def to_manifest(self) -> GateFigures:
        return GateFigures(
            held_out_texts=self.texts,
            mean_cosine=round(self.mean_cosine, 6),
            min_cosine=round(self.min_cosine, 6),
            worst=tuple({"text": _short(t), "cosine": round(c, 6)} for t, c in self.worst),
            batch_max_abs_diff=self.batch_max_abs_diff,
            thresholds=self.thresholds.model_dump(),
        )


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


Inputs = list[str] | list[tuple[str, str]]  # texts, or (query, document) pairs


def _embed(
    sess: ort.InferenceSession,
    tokenizer: Tokenizer,
    texts: Inputs,
    inputs: list[str],
    output: str = TEXT_OUTPUT,
) -> np.ndarray:
    batch = verify.encode(tokenizer, texts, inputs)
    return verify.run(sess, batch, output, "the lowered graph")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(1) / np.maximum(norms, 1e-12)


def batch_max_abs_diff(
    sess: ort.InferenceSession,
    tokenizer: Tokenizer,
    texts: Inputs,
    inputs: list[str],
    output: str = TEXT_OUTPUT,
) -> float:
    """Largest |alone - batched| over the inputs, in two mixed padded batch compositions."""

    def run(chunk: Inputs) -> np.ndarray:
        return _embed(sess, tokenizer, chunk, inputs, output)

    alone = np.concatenate([run(texts[i : i + 1]) for i in range(len(texts))])
    reverse = texts[::-1]
    twos = np.concatenate([run(reverse[i : i + 2]) for i in range(0, len(texts), 2)])[::-1]
    return float(max(np.abs(alone - run(texts)).max(), np.abs(alone - twos).max()))


def check(
    reference: ort.InferenceSession,
    lowered: ort.InferenceSession,
    tokenizer: Tokenizer,
    inputs: list[str],
    precision: str,
    thresholds: Gate,
    texts: list[str] = HELD_OUT_TEXTS,
) -> GateResult:
    """Fail the build (VerifyError with the worst texts) unless both halves of the gate pass."""
    cos = _cosines(
        _embed(reference, tokenizer, texts, inputs), _embed(lowered, tokenizer, texts, inputs)
    )
    order = np.argsort(cos)[:WORST_SHOWN]
    worst = [(texts[i], float(cos[i])) for i in order]
    diff = batch_max_abs_diff(lowered, tokenizer, texts, inputs)
    result = GateResult(
        precision, len(texts), float(cos.mean()), float(cos.min()), worst, diff, thresholds
    )
    problems = []
    if not result.mean_cosine >= thresholds.mean_cosine:
        problems.append(f"mean cosine {result.mean_cosine:.4f} < {thresholds.mean_cosine}")
    if not result.min_cosine >= thresholds.min_cosine:
        problems.append(f"min cosine {result.min_cosine:.4f} < {thresholds.min_cosine}")
    if not diff <= thresholds.batch_max_abs_diff:
        problems.append(
            f"batch invariance: a text's vector alone vs in a padded batch differs by {diff:.3g} "
            f"> {thresholds.batch_max_abs_diff}"
        )
    if problems:
        shown = "; ".join(f"{c:.4f} {_short(t)!r}" for t, c in worst)
        raise _failed(
            precision, f"{len(texts)} held-out texts", problems, f"Worst cosines to fp32: {shown}"
        )
    return result


def _failed(precision: str, measured_on: str, problems: list[str], worst: str) -> VerifyError:
    return VerifyError(
        f"the {precision} graph failed the quality gate on {measured_on}: {', '.join(problems)}. "
        f"{worst}. Use a higher precision ({'fp16 or ' if precision == 'int8' else ''}fp32)"
        + (
            ", keep int8.ffn_down false, give int8.calibration_texts closer to your data"
            if precision == "int8"
            else ""
        )
        + ", or relax the recipe's gate thresholds if this loss is acceptable."
    )


# kind reranker: each query ranks every HELD_OUT_TEXTS entry as its documents.
HELD_OUT_QUERIES = [
    "how do vaccines train the immune system?",
    "cheap flights to Lisbon",
    "what is the capital of Japan?",
    "who wrote Hamlet?",
    "why does my phone battery drain so fast?",
    "genetic risk of breast cancer",
]


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties broken by position (scores here are continuous)."""
    return np.argsort(np.argsort(scores, axis=-1, kind="stable"), axis=-1).astype(np.float64)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of each row of a with the same row of b."""
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean(-1, keepdims=True)
    rb -= rb.mean(-1, keepdims=True)
    return (ra * rb).sum(-1) / np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))


def check_scores(
    reference: ort.InferenceSession,
    lowered: ort.InferenceSession,
    tokenizer: Tokenizer,
    inputs: list[str],
    precision: str,
    thresholds: Gate,
    queries: list[str] = HELD_OUT_QUERIES,
    documents: list[str] = HELD_OUT_TEXTS,
) -> ScoreGateFigures:
    """A reranker's gate: score and rank agreement with fp32, and batch invariance of pairs."""
    pairs = [(q, d) for q in queries for d in documents]
    shape = (len(queries), len(documents))
    fp32 = _embed(reference, tokenizer, pairs, inputs, SCORE_OUTPUT).reshape(shape)
    low = _embed(lowered, tokenizer, pairs, inputs, SCORE_OUTPUT).reshape(shape)
    diff = np.abs(low - fp32)
    spread = float(fp32.max() - fp32.min())
    rel = float(diff.max()) / max(spread, 1e-12)
    rho = spearman(fp32, low)
    top1 = int((fp32.argmax(1) == low.argmax(1)).sum())
    worst = [
        {
            "query": _short(queries[i // shape[1]]),
            "document": _short(documents[i % shape[1]]),
            "fp32": round(float(fp32.flat[i]), 6),
            precision: round(float(low.flat[i]), 6),
        }
        for i in np.argsort(-diff, axis=None)[:WORST_SHOWN]
    ]
    batch = batch_max_abs_diff(
        lowered, tokenizer, pairs[:: len(documents) // 4], inputs, SCORE_OUTPUT
    )
    figures = ScoreGateFigures(
        held_out_pairs=len(pairs),
        queries=len(queries),
        score_max_abs_diff=round(float(diff.max()), 6),
        score_range=round(spread, 6),
        score_rel_diff=round(rel, 6),
        spearman_mean=round(float(rho.mean()), 6),
        spearman_min=round(float(rho.min()), 6),
        top1_agreement=f"{top1}/{len(queries)}",
        worst=tuple(worst),
        batch_max_abs_diff=batch,
        thresholds=thresholds.model_dump(),
    )
    problems = []
    if not rel <= thresholds.score_rel_diff:
        problems.append(
            f"score diff {diff.max():.3g} is {rel:.1%} of the scores' range > "
            f"{thresholds.score_rel_diff:.1%}"
        )
    if not rho.min() >= thresholds.rank_min_spearman:
        problems.append(
            f"rank agreement: Spearman {rho.min():.4f} for {queries[int(rho.argmin())]!r} "
            f"< {thresholds.rank_min_spearman}"
        )
    if not batch <= thresholds.batch_max_abs_diff:
        problems.append(
            f"batch invariance: a pair's score alone vs in a padded batch differs by {batch:.3g} "
            f"> {thresholds.batch_max_abs_diff}"
        )
    if problems:
        shown = "; ".join(
            f"{w['fp32']:.4f} -> {w[precision]:.4f} {w['query']!r} / {w['document']!r}"
            for w in worst[:3]
        )
        raise _failed(
            precision,
            f"{len(pairs)} held-out pairs ({len(queries)} queries)",
            problems,
            f"Largest score changes: {shown}",
        )
    return figures
