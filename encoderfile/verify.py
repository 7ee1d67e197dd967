"""Check the spliced graph against a numpy reference of the same steps on the original token states."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from encoderfile.errors import VerifyError
from encoderfile.recipe import Recipe, Step
from encoderfile.runtime.manifest import ATTENTION_MASK, Golden, text_columns
from encoderfile.runtime.session import DISABLED_OPTIMIZERS
from encoderfile.splice import splade

BUILD_TOLERANCE = 1e-5  # spliced graph vs numpy reference, same machine
GOLDEN_TOLERANCE = 1e-4  # artifact self-check on another machine (other CPU kernels)

SAMPLE_TEXTS = [
    "Hello!",
    "The quick brown fox jumps over the lazy dog.",
    "search_query: what is a Matryoshka embedding?",
    "Embeddings map text to vectors so that similar meanings lie close together; "
    "truncating a Matryoshka embedding keeps most of its quality at a fraction of the size.",
    "naïve café – 東京 – 😀",
    "a",
    " ".join(["A long passage that is repeated to exceed the model's maximum length."] * 24),
]


@dataclass(frozen=True)
class Batch:
    feeds: dict[str, np.ndarray]
    mask: np.ndarray


def encode(
    tokenizer: Tokenizer, texts: Sequence[str] | Sequence[tuple[str, str]], inputs: list[str]
) -> Batch:
    """Texts, or (query, document) pairs with the tokenizer's pair template, in one padded batch."""
    columns = [text_columns(e) for e in tokenizer.encode_batch(list(texts))]
    feeds = {name: np.array([c[name] for c in columns], dtype=np.int64) for name in inputs}
    mask = np.array([c[ATTENTION_MASK] for c in columns], dtype=np.int64)
    return Batch(feeds, mask)


def session(model: bytes | Path) -> ort.InferenceSession:
    """A session optimised as the runtime's are, so golden vectors and gate figures are its own."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model if isinstance(model, bytes) else str(model),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=DISABLED_OPTIMIZERS,
    )


def run(sess: ort.InferenceSession, batch: Batch, output: str, where: str) -> np.ndarray:
    try:
        return sess.run([output], batch.feeds)[0]
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise VerifyError(
            f"{where}: onnxruntime failed to run the graph ({str(e).splitlines()[0]}). "
            "Check that model.output names the [batch, sequence, hidden] token states."
        ) from e


def reference(
    states: np.ndarray, mask: np.ndarray, recipe: Recipe, rotation: np.ndarray | None = None
) -> np.ndarray:
    """The recipe's steps in float64 numpy, the maths each splice module states."""
    return reference_steps(states, mask, recipe.steps, recipe.dimension, rotation)


def reference_steps(
    states: np.ndarray,
    mask: np.ndarray,
    steps: Sequence[Step],
    dimension: int,
    rotation: np.ndarray | None = None,
) -> np.ndarray:
    """`steps` in float64 numpy over token states [b, s, h] and their mask [b, s]."""
    if states.ndim != 3:
        raise VerifyError(
            f"the token-state output has shape {list(states.shape)}, not [batch, sequence, hidden]. "
            "Set model.output in the recipe to the token states."
        )
    if [s.op for s in steps] == ["splade"]:  # kind: sparse; float64 row by row (V is large)
        return splade.reference(states, mask, steps[0].pooling)  # type: ignore[union-attr]
    x = states.astype(np.float64)
    m = mask.astype(np.float64)
    for step in steps:
        match step.op:
            case "pooling" if step.mode == "mean":
                x = (x * m[..., None]).sum(1) / np.maximum(m.sum(1, keepdims=True), 1e-9)
            case "pooling" if step.mode == "cls":
                x = x[:, 0]
            case "pooling":
                last = m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)
                x = x[np.arange(len(x)), last]
            case "layer_norm":
                centred = x - x.mean(-1, keepdims=True)
                x = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + step.eps)
            case "rotate" if rotation is not None:
                x = x @ rotation.astype(np.float64)
            case "truncate":
                x = x[:, :dimension]
            case "normalize":
                x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x


def check(
    spliced: np.ndarray,
    expected: np.ndarray,
    inputs: Sequence[str] | Sequence[tuple[str, str]],
    kind: str = "texts",
) -> Golden:
    """Fail the build unless the spliced graph equals the reference within BUILD_TOLERANCE;
    its vectors become the golden ones `verify` recomputes on the user's machine."""
    if spliced.shape != expected.shape:
        raise VerifyError(
            f"the spliced graph returned shape {list(spliced.shape)}, the reference "
            f"{list(expected.shape)}. This is a bug in encoderfile; please report it."
        )
    diff = float(np.abs(spliced - expected).max())
    if not diff <= BUILD_TOLERANCE:
        raise VerifyError(
            f"the spliced graph differs from the numpy reference by {diff:.3g} "
            f"(tolerance {BUILD_TOLERANCE}). Check the model's precision (fp16 graphs need fp32 "
            "token states) or report the recipe."
        )
    return Golden(
        tolerance=GOLDEN_TOLERANCE,
        inputs=tuple(inputs),
        vectors=tuple(tuple(float(v) for v in row) for row in spliced),
        kind=kind,
    )
