"""L2 normalisation: y = x / max(||x||_2, 1e-12), so a zero vector stays zero (never NaN)."""

from __future__ import annotations

import numpy as np

from encoderfile.splice.editor import GraphEditor

EPS = 1e-12


def add(g: GraphEditor, x: str) -> str:
    g.step("normalize")
    norm = g.op("Sqrt", g.reduce("ReduceSum", g.op("Mul", x, x), [-1], True))
    return g.op("Div", x, g.op("Max", norm, g.const(EPS, np.float32)))
