"""Layer norm over the hidden axis, no affine: y = (x - mean(x)) / sqrt(var(x) + eps)."""

from __future__ import annotations

import numpy as np

from encoderfile.splice.editor import GraphEditor


def add(g: GraphEditor, x: str, eps: float) -> str:
    g.step("layer_norm")
    centred = g.op("Sub", x, g.reduce("ReduceMean", x, [-1], True))
    variance = g.reduce("ReduceMean", g.op("Mul", centred, centred), [-1], True)
    return g.op("Div", centred, g.op("Sqrt", g.op("Add", variance, g.const(eps, np.float32))))
