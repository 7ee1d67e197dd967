"""A small helper that appends prefixed nodes to an ONNX graph, hiding opset differences."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

MIN_OPSET = 13


class GraphEditor:
    """Adds nodes named '<step>/<op>_<n>' and their constants to `graph`."""

    def __init__(self, graph: onnx.GraphProto, opset: int):
        self.graph = graph
        self.opset = opset
        self.added: list[str] = []
        self._prefix = ""
        self._count = 0

    def step(self, prefix: str) -> GraphEditor:
        self._prefix, self._count = prefix, 0
        return self

    def _name(self, op: str) -> str:
        self._count += 1
        return f"{self._prefix}/{op}_{self._count}"

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        name = self._name(op_type)
        self.graph.node.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        self.added.append(name)
        return name

    def const(self, value: Any, dtype: type = np.int64) -> str:
        name = self._name("const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: bool) -> str:
        """ReduceSum takes axes as an input from opset 13, the other reductions from opset 18."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, x, self.const(axes), keepdims=int(keepdims))
        return self.op(op_type, x, axes=axes, keepdims=int(keepdims))
