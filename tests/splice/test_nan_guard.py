"""splice/nan_guard.py: torch's Where(IsNaN(p), 0, p) after a softmax is dropped, nothing else."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from encoderfile import verify
from encoderfile.splice import nan_guard


def _attention(zero: float = 0.0, else_is_p: bool = True, isnan_elsewhere: bool = False):
    """out = Where(IsNaN(Softmax(x)), zero, p or x) @ w, the shape of torch's export."""
    nodes = [
        helper.make_node("Softmax", ["x"], ["p"], name="softmax", axis=-1),
        helper.make_node("IsNaN", ["p"], ["nan"], name="isnan"),
        helper.make_node("Where", ["nan", "zero", "p" if else_is_p else "x"], ["g"], name="guard"),
        helper.make_node("MatMul", ["g", "w"], ["out"], name="matmul"),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", 3])]
    if isnan_elsewhere:
        outputs.append(helper.make_tensor_value_info("nan", TensorProto.BOOL, ["b", 4]))
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        outputs,
        [
            numpy_helper.from_array(np.array(zero, np.float32), "zero"),
            numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return verify.session(model.SerializeToString()).run(["out"], {"x": x})[0]


def test_the_guard_goes_and_the_outputs_are_bitwise_the_same() -> None:
    model = _attention()
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    x[1, 2] = -np.inf  # a masked key: the row still has real ones, so no NaN
    before = _run(model, x)
    removed = nan_guard.drop(model)
    assert removed == ["nan_guard/guard", "nan_guard/isnan"]
    assert [n.op_type for n in model.graph.node] == ["Softmax", "MatMul"]
    assert np.array_equal(_run(model, x), before)


def test_anything_else_is_left_alone() -> None:
    for model in (
        _attention(zero=1.0),  # not a zero fill
        _attention(else_is_p=False),  # the else branch is not the tested tensor
    ):
        nodes = [n.name for n in model.graph.node]
        assert nan_guard.drop(model) == []
        assert [n.name for n in model.graph.node] == nodes
    model = _attention(isnan_elsewhere=True)  # IsNaN's output is used by something else
    assert nan_guard.drop(model) == ["nan_guard/guard"]
    assert [n.op_type for n in model.graph.node] == ["Softmax", "IsNaN", "MatMul"]
