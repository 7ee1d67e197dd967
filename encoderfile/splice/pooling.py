"""Pooling: token states [b, s, h] + attention mask [b, s] -> one vector per text [b, h].

mean:       sum_t(m_t * x_t) / max(sum_t m_t, 1e-9)         (padding ignored)
            The sum runs in sequence order (CumSum, last position), so a text's vector is
            bitwise the same whatever its padding or batch neighbours; ReduceSum's blocking
            depends on the padded length and changes the last bit.
cls:        x_0
last_token: x_k with k = the last t where m_t = 1           (left or right padding)
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from encoderfile.splice.editor import GraphEditor


def add(g: GraphEditor, states: str, mask: str, mode: str) -> str:
    g.step("pooling")
    if mode == "cls":
        return g.op("Gather", states, g.const(0), axis=1)
    m = g.op("Cast", mask, to=TensorProto.FLOAT)
    if mode == "mean":
        weighted = g.op("Mul", states, g.op("Unsqueeze", m, g.const([-1])))
        summed = g.op("Gather", g.op("CumSum", weighted, g.const(1)), g.const(-1), axis=1)
        count = g.op("Max", g.reduce("ReduceSum", m, [1], True), g.const(1e-9, np.float32))
        return g.op("Div", summed, count)
    # last_token: weight position t by (t + 1) * m_t; the argmax is the last real token.
    length = g.op("Gather", g.op("Shape", mask), g.const(1), axis=0)
    ones_to_length = g.op("Range", g.const(1), g.op("Add", length, g.const(1)), g.const(1))
    positions = g.op("Cast", ones_to_length, to=TensorProto.FLOAT)
    last = g.op("ArgMax", g.op("Mul", m, positions), axis=1, keepdims=1)  # [b, 1]
    hidden = g.op("Slice", g.op("Shape", states), g.const([2]), g.const([3]))
    index = g.op(
        "Expand",
        g.op("Unsqueeze", last, g.const([-1])),
        g.op("Concat", g.const([1, 1]), hidden, axis=0),
    )  # [b, 1, h]
    return g.op("Squeeze", g.op("GatherElements", states, index, axis=1), g.const([1]))
