"""The build-time gate for fp16/int8 graphs: quality against fp32 and batch invariance.

Quality: every held-out text (none of them a calibration text) is embedded by the fp32 graph and
by the lower-precision graph; the cosine of the two vectors must reach the recipe's mean and min.
Batch invariance: each held-out text embedded alone must equal, within batch_max_abs_diff, the
same text inside mixed padded batches (all texts together, and in reverse order in pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from encoderfile import verify
from encoderfile.errors import VerifyError
from encoderfile.recipe import Gate
from encoderfile.runtime.manifest import TEXT_OUTPUT, GateFigures

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


def _embed(
    sess: ort.InferenceSession, tokenizer: Tokenizer, texts: list[str], inputs: list[str]
) -> np.ndarray:
    batch = verify.encode(tokenizer, texts, inputs)
    return verify.run(sess, batch, TEXT_OUTPUT, "the lowered graph")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(1) / np.maximum(norms, 1e-12)


def batch_max_abs_diff(
    sess: ort.InferenceSession, tokenizer: Tokenizer, texts: list[str], inputs: list[str]
) -> float:
    """Largest |alone - batched| over the texts, in two mixed padded batch compositions."""
    alone = np.concatenate([_embed(sess, tokenizer, [t], inputs) for t in texts])
    together = _embed(sess, tokenizer, texts, inputs)
    reverse = texts[::-1]
    pairs = np.concatenate(
        [_embed(sess, tokenizer, reverse[i : i + 2], inputs) for i in range(0, len(texts), 2)]
    )[::-1]
    return float(max(np.abs(alone - together).max(), np.abs(alone - pairs).max()))


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
        raise VerifyError(
            f"the {precision} graph failed the quality gate on {len(texts)} held-out texts: "
            f"{', '.join(problems)}. Worst cosines to fp32: {shown}. Use a higher precision "
            f"({'fp16 or ' if precision == 'int8' else ''}fp32)"
            + (
                ", keep int8.ffn_down false, give int8.calibration_texts closer to your data"
                if precision == "int8"
                else ""
            )
            + ", or relax the recipe's gate thresholds if this loss is acceptable."
        )
    return result
