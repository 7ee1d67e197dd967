"""Score (kind reranker): a sequence-classification graph's logits [b, labels] -> two [b] outputs.

logit:  logits[:, label]                                  (what raw_scores asks for)
score:  sigmoid(logit) | logit | softmax(logits)[:, label] (the recipe's activation)

Both stay in the graph, so every transport and any ONNX consumer read the same numbers; the raw
logit is a second output rather than the score inverted at run time, which sigmoid's float32
saturation (1.0 above logit ~17) would make impossible.
"""

from __future__ import annotations

import numpy as np
import onnx

from encoderfile.errors import SpliceError
from encoderfile.runtime.manifest import LOGIT_OUTPUT, SCORE_OUTPUT
from encoderfile.splice import Spliced, check_opset, contract, nan_guard
from encoderfile.splice.editor import GraphEditor


def add(g: GraphEditor, logits: str, activation: str, label: int) -> tuple[str, str]:
    """Return (score, logit) tensors of shape [b]."""
    g.step("score")
    logit = g.op("Gather", logits, g.const(label), axis=1)
    if activation == "sigmoid":
        return g.op("Sigmoid", logit), logit
    if activation == "softmax":
        return g.op("Gather", g.op("Softmax", logits, axis=1), g.const(label), axis=1), logit
    return g.op("Identity", logit), logit


def apply(
    model: onnx.ModelProto, logits: str, labels: int, activation: str, label: int, where: str
) -> Spliced:
    """A copy of a sequence-classification `model` whose outputs are `score` and `logit`."""
    version = check_opset(model, where)
    contract.check_inputs(model, where)
    if not 0 <= label < labels:
        raise SpliceError(
            f"{where}: score.label={label} is not a label of this model, which gives {labels} "
            f"logit{'s' if labels > 1 else ''}. Use a label from 0 to {labels - 1}."
        )
    spliced = onnx.ModelProto()
    spliced.CopyFrom(model)
    removed = nan_guard.drop(spliced)
    g = GraphEditor(spliced.graph, version)
    scores, logit = add(g, logits, activation, label)
    inputs = contract.finish_outputs(
        spliced, {SCORE_OUTPUT: (scores, ["batch"]), LOGIT_OUTPUT: (logit, ["batch"])}
    )
    return Spliced(spliced, inputs, logits, labels, g.added, removed)


def reference(logits: np.ndarray, activation: str, label: int) -> np.ndarray:
    """[score, logit] rows in float64 numpy, the maths this module states."""
    x = logits.astype(np.float64)
    logit = x[:, label]
    if activation == "sigmoid":
        scores = 1 / (1 + np.exp(-logit))
    elif activation == "softmax":
        e = np.exp(x - x.max(1, keepdims=True))
        scores = (e / e.sum(1, keepdims=True))[:, label]
    else:
        scores = logit
    return np.stack([scores, logit], axis=1)
