"""Each splice op alone, in a graph of its own, against the maths its module states."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from encoderfile.splice import layer_norm, normalize, pooling, truncate
from encoderfile.splice.editor import GraphEditor

RNG = np.random.default_rng(0)


def run_op(
    add, inputs: dict[str, np.ndarray], opset: int = 17, **kwargs
) -> tuple[np.ndarray, list[str]]:
    graph = helper.make_graph(
        [],
        "op",
        [
            helper.make_tensor_value_info(
                name,
                TensorProto.INT64 if v.dtype == np.int64 else TensorProto.FLOAT,
                [None] * v.ndim,
            )
            for name, v in inputs.items()
        ],
        [],
    )
    g = GraphEditor(graph, opset)
    out = add(g, *inputs, **kwargs)
    graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [None, None]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)[0], g.added


def states_and_mask(padding: str) -> tuple[np.ndarray, np.ndarray]:
    states = RNG.standard_normal((3, 5, 4)).astype(np.float32)
    lengths = [5, 3, 1]
    mask = np.zeros((3, 5), np.int64)
    for row, n in enumerate(lengths):
        if padding == "right":
            mask[row, :n] = 1
        else:
            mask[row, 5 - n :] = 1
    return states, mask


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_mean_pooling_ignores_padding(opset: int, padding: str) -> None:
    states, mask = states_and_mask(padding)
    got, added = run_op(pooling.add, {"s": states, "m": mask}, opset, mode="mean")
    for row in range(3):
        real = states[row][mask[row] == 1]
        np.testing.assert_allclose(got[row], real.mean(0), atol=1e-6)
    assert added and all(name.startswith("pooling/") for name in added)


def test_mean_pooling_of_all_padding_is_zero_not_nan() -> None:
    states = RNG.standard_normal((1, 3, 4)).astype(np.float32)
    got, _ = run_op(pooling.add, {"s": states, "m": np.zeros((1, 3), np.int64)}, mode="mean")
    assert np.all(got == 0)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_cls_takes_position_zero(padding: str) -> None:
    states, mask = states_and_mask(padding)
    got, _ = run_op(pooling.add, {"s": states, "m": mask}, mode="cls")
    np.testing.assert_array_equal(got, states[:, 0])


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_last_token_takes_last_real_position(opset: int, padding: str) -> None:
    states, mask = states_and_mask(padding)
    got, _ = run_op(pooling.add, {"s": states, "m": mask}, opset, mode="last_token")
    for row in range(3):
        last = np.flatnonzero(mask[row])[-1]
        np.testing.assert_array_equal(got[row], states[row, last])


@pytest.mark.parametrize("opset", [13, 18])
def test_layer_norm_without_affine(opset: int) -> None:
    x = (RNG.standard_normal((4, 16)) * 3 + 1).astype(np.float32)
    got, added = run_op(layer_norm.add, {"x": x}, opset, eps=1e-5)
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert all(name.startswith("layer_norm/") for name in added)


def test_truncate_keeps_the_prefix() -> None:
    x = RNG.standard_normal((2, 16)).astype(np.float32)
    got, _ = run_op(truncate.add, {"x": x}, dimension=5)
    np.testing.assert_array_equal(got, x[:, :5])


def test_l2_normalizes_and_maps_zero_to_zero() -> None:
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    x[1] = 0
    got, _ = run_op(normalize.add, {"x": x})
    np.testing.assert_allclose(np.linalg.norm(got[[0, 2]], axis=1), 1, atol=1e-6)
    assert np.all(got[1] == 0) and not np.isnan(got).any()
