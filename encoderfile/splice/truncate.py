"""Matryoshka truncation: keep the first `dimension` values, y = x[:, :dimension]."""

from __future__ import annotations

from encoderfile.splice.editor import GraphEditor


def add(g: GraphEditor, x: str, dimension: int) -> str:
    g.step("truncate")
    return g.op("Slice", x, g.const([0]), g.const([dimension]), g.const([1]))
