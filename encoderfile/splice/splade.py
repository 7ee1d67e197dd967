"""SPLADE pooling: masked-LM logits [b, s, V] + attention mask [b, s] -> one sparse vector [b, V].

max (default):  y_v = log(1 + max_t relu(x_tv) * m_t)
sum:            y_v = sum_t log(1 + relu(x_tv) * m_t)       (in sequence order, as mean pooling)

As sentence-transformers' SpladePooling (relu, then log1p, over every attended token, special
tokens included); most y_v are 0, and the runtime keeps the others. log1p is monotone, so max
mode takes the maximum first and the logarithm of [b, V] values only: over [b, s, V] the graph
adds one Mul and one ReduceMax. log1p(u) is computed as u * log(1 + u) / ((1 + u) - 1) (exact
for tiny u, where log(1 + u) rounds to 0), so y_v > 0 exactly where some relu(x_tv) > 0.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from encoderfile.splice.editor import GraphEditor


def add(g: GraphEditor, logits: str, mask: str, pooling: str) -> str:
    g.step("splade")
    m = g.op("Unsqueeze", g.op("Cast", mask, to=TensorProto.FLOAT), g.const([-1]))  # [b, s, 1]
    if pooling == "max":  # padding gives 0, which relu would give anyway
        return _log1p(g, g.op("Relu", g.reduce("ReduceMax", g.op("Mul", logits, m), [1], False)))
    weights = _log1p(g, g.op("Mul", g.op("Relu", logits), m))
    return g.op("Gather", g.op("CumSum", weights, g.const(1)), g.const(-1), axis=1)


def _log1p(g: GraphEditor, x: str) -> str:
    """log(1 + x) for x >= 0, exact near 0: x when 1 + x rounds to 1, else x * log(u) / (u - 1)."""
    u = g.op("Add", x, g.const(1.0, np.float32))
    step = g.op("Sub", u, g.const(1.0, np.float32))
    ratio = g.op("Div", g.op("Mul", x, g.op("Log", u)), step)
    return g.op("Where", g.op("Equal", step, g.const(0.0, np.float32)), x, ratio)


def reference(logits: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """The same maths in float64 numpy, one row at a time (logits are [s, V] per text)."""
    rows = []
    for x, m in zip(logits, mask, strict=True):
        weights = np.log1p(np.maximum(x.astype(np.float64), 0) * m[:, None])
        rows.append(weights.max(0) if pooling == "max" else weights.sum(0))
    return np.stack(rows)
