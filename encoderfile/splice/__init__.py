"""Splice the recipe's post-processing steps into the graph after the token-state output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from encoderfile.errors import SpliceError
from encoderfile.recipe import Recipe, Step
from encoderfile.runtime.manifest import ATTENTION_MASK
from encoderfile.splice import (
    contract,
    layer_norm,
    nan_guard,
    normalize,
    pooling,
    rotate,
    splade,
    truncate,
)
from encoderfile.splice.editor import MIN_OPSET, GraphEditor


@dataclass(frozen=True)
class Spliced:
    model: onnx.ModelProto
    inputs: list[str]
    token_states: str
    hidden_size: int
    added_nodes: list[str]
    removed_nodes: list[str] = field(default_factory=list)  # nan_guard's


def opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def apply(
    model: onnx.ModelProto,
    recipe: Recipe,
    hidden: int | None,
    where: str,
    rotation: np.ndarray | None = None,
) -> Spliced:
    """Return a copy of `model` whose only output is the recipe's sentence_embedding.

    `hidden` is the token-state width measured by running the graph, used when the graph's
    declared output shape leaves it symbolic; `rotation` is the fitted matrix of a rotate step.
    """
    version = check_opset(model, where)
    contract.check_inputs(model, where)
    if recipe.model is None:
        raise SpliceError(f"{where}: the recipe has no text model. Add 'model'.")
    states = contract.token_states(model, recipe.model.output, where)
    hidden = contract.hidden_size(model, states) or hidden
    hidden = check_dimension(recipe.dimension, hidden, recipe.steps, states, where)
    check_rotate(recipe, hidden)

    spliced = onnx.ModelProto()
    spliced.CopyFrom(model)
    removed = nan_guard.drop(spliced)
    g = GraphEditor(spliced.graph, version)
    x = add_steps(g, states, recipe.steps, recipe.dimension, ATTENTION_MASK, rotation)
    inputs = contract.finish(spliced, x, recipe.dimension)
    return Spliced(spliced, inputs, states, hidden, g.added, removed)


def check_opset(model: onnx.ModelProto, where: str) -> int:
    version = opset(model)
    if version < MIN_OPSET:
        raise SpliceError(
            f"{where} uses ONNX opset {version}; splicing needs opset {MIN_OPSET} or newer. "
            "Re-export the model with a newer opset (e.g. opset_version=17)."
        )
    return version


def check_dimension(
    dimension: int, hidden: int | None, steps: Sequence[Step], states: str, where: str
) -> int:
    """The hidden size, once checked against the recipe's dimension and truncate step."""
    if hidden is None:
        raise SpliceError(f"{where}: the width of {states!r} is unknown. Set a static hidden size.")
    if not 1 <= dimension <= hidden:
        problem = "exceeds" if dimension > hidden else "must be at least 1 and at most"
        raise SpliceError(
            f"dimension={dimension} {problem} the model's hidden size {hidden}. "
            f"Use a value from 1 to {hidden}."
        )
    if "truncate" not in [s.op for s in steps] and dimension != hidden:
        raise SpliceError(
            f"dimension={dimension} differs from the hidden size {hidden} but the recipe "
            "has no truncate step. Add '- op: truncate' or set dimension to the hidden size."
        )
    return hidden


def check_rotate(recipe: Recipe, hidden: int) -> None:
    """Refuse a rotate step whose vectors are never truncated (it could not change a result)."""
    if any(s.op == "rotate" for s in recipe.steps) and recipe.allowed_dimensions == [hidden]:
        raise SpliceError(
            f"rotate cannot help: dimension={hidden} is the full hidden size and no smaller "
            "request-time dimensions are offered. Lower dimension or add dimensions, or remove rotate."
        )


def add_steps(
    g: GraphEditor,
    states: str,
    steps: Sequence[Step],
    dimension: int,
    mask: str,
    rotation: np.ndarray | None = None,
) -> str:
    """Append the recipe's post-processing steps after `states`; return the last tensor."""
    x = states
    for step in steps:
        match step.op:
            case "pooling":
                x = pooling.add(g, x, mask, step.mode)
            case "layer_norm":
                x = layer_norm.add(g, x, step.eps)
            case "rotate":
                if rotation is None or rotation.shape[0] != rotation.shape[1]:
                    raise SpliceError("rotate has no fitted matrix. This is a bug in encoderfile.")
                x = rotate.add(g, x, rotation)
            case "truncate":
                x = truncate.add(g, x, dimension)
            case "normalize":
                x = normalize.add(g, x)
            case "splade":
                x = splade.add(g, x, mask, step.pooling)
    return x
