"""Splice an image model: uint8 RGB pixels [b, size, size, 3] in, image_embedding [b, dim] out.

In front of the model (the runtime decodes, resizes and crops; everything after is here):
    x = (float(pixels) / 255 - mean) / std, transposed NHWC -> NCHW
After it, the recipe's image steps (cls pooling, layer_norm, truncate, normalize) as for text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from encoderfile.errors import SpliceError
from encoderfile.recipe import ImageSpec
from encoderfile.runtime.manifest import IMAGE_INPUT as PIXELS
from encoderfile.runtime.manifest import IMAGE_OUTPUT as OUTPUT
from encoderfile.splice import Spliced, add_steps, check_dimension, check_opset, contract
from encoderfile.splice.editor import GraphEditor


def pixel_input(model: onnx.ModelProto, where: str) -> str:
    """The graph's one data input, [batch, 3, H, W] float pixels."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    dims = inputs[0].type.tensor_type.shape.dim if len(inputs) == 1 else []
    if len(inputs) != 1 or len(dims) != 4 or dims[1].dim_value not in (0, 3):
        names = ", ".join(i.name for i in inputs) or "none"
        raise SpliceError(
            f"{where} has inputs {names}; an image model needs exactly one, "
            "pixel_values [batch, 3, height, width]. Re-export the vision graph that way."
        )
    return inputs[0].name


def normalized_pixels(
    pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """The same maths in numpy float32: uint8 [b, h, w, 3] -> float32 [b, 3, h, w]."""
    scaled = pixels.astype(np.float32) / np.float32(255)
    x: np.ndarray = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def apply(
    model: onnx.ModelProto, spec: ImageSpec, dimension: int, hidden: int | None, where: str
) -> Spliced:
    """A copy of `model` that takes uint8 pixels and outputs the image steps' embedding."""
    version = check_opset(model, where)
    original = pixel_input(model, where)
    states = contract.token_states(model, spec.model.output, where)
    hidden = check_dimension(
        dimension, contract.hidden_size(model, states) or hidden, spec.steps, states, where
    )
    spliced = onnx.ModelProto()
    spliced.CopyFrom(model)
    graph = spliced.graph
    normalized = "image/normalized"
    for node in graph.node:  # the model now reads the normalised pixels
        node.input[:] = [normalized if name == original else name for name in node.input]
    model_nodes = list(graph.node)
    del graph.node[:]
    g = GraphEditor(graph, version).step("image")
    scaled = g.op("Div", g.op("Cast", PIXELS, to=TensorProto.FLOAT), g.const(255.0, np.float32))
    centred = g.op("Sub", scaled, g.const(spec.mean, np.float32))
    x = g.op("Transpose", g.op("Div", centred, g.const(spec.std, np.float32)), perm=[0, 3, 1, 2])
    graph.node.append(helper.make_node("Identity", [x], [normalized], name=normalized))
    graph.node.extend(model_nodes)
    for i, value in enumerate(graph.input):
        if value.name == original:
            graph.input[i].CopyFrom(
                helper.make_tensor_value_info(
                    PIXELS, TensorProto.UINT8, ["batch", spec.size, spec.size, 3]
                )
            )
    embedding = add_steps(g, states, spec.steps, dimension, "")
    inputs = contract.finish(spliced, embedding, dimension, OUTPUT)
    return Spliced(spliced, inputs, states, hidden, [*g.added, normalized])
