"""The build pipeline on a tiny encoder built in code: contract, determinism, verification."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from encoderfile.compiler import compile_bundle
from encoderfile.errors import SpliceError
from tests.fixtures.models import manifest


def embed(bundle: Path, texts: list[str]) -> np.ndarray:
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    enc = tokenizer.encode_batch(texts)
    feeds = {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
    }
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: feeds[n] for n in names})[0]


@pytest.mark.parametrize("token_type_ids", [True, False])
def test_bundle_has_one_output_and_the_contract_inputs(
    tiny_recipe, tmp_path, token_type_ids
) -> None:
    bundle = compile_bundle(tiny_recipe({"token_type_ids": token_type_ids}), tmp_path / "build")
    model = onnx.load(str(bundle / "model.onnx"))
    assert [o.name for o in model.graph.output] == ["sentence_embedding"]
    out = model.graph.output[0].type.tensor_type
    assert out.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in out.shape.dim] == ["batch", 8]
    expected_inputs = ["input_ids", "attention_mask"] + (
        ["token_type_ids"] if token_type_ids else []
    )
    assert [i.name for i in model.graph.input] == expected_inputs
    info = manifest(bundle)
    assert info["graph"]["inputs"] == expected_inputs
    assert all(
        n.split("/")[0] in {"pooling", "normalize", "sentence_embedding"}
        for n in info["graph"]["added_nodes"]
    )
    assert (
        info["files"]["model.onnx"]
        == hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    )


def test_golden_vectors_match_a_fresh_run_and_padding_is_invisible(tiny_recipe, tmp_path) -> None:
    bundle = compile_bundle(tiny_recipe(), tmp_path / "build")
    golden = manifest(bundle)["golden"]
    batched = embed(bundle, golden["texts"])
    np.testing.assert_allclose(batched, np.array(golden["vectors"]), atol=1e-6)
    for i, text in enumerate(golden["texts"]):
        np.testing.assert_allclose(embed(bundle, [text])[0], batched[i], atol=1e-5)


def test_layer_norm_truncate_pipeline_matches_numpy(tiny_recipe, tmp_path) -> None:
    steps = [
        {"op": "pooling", "mode": "mean"},
        {"op": "layer_norm", "eps": 1e-5},
        {"op": "truncate"},
        {"op": "normalize"},
    ]
    bundle = compile_bundle(
        tiny_recipe(steps=steps, dimension=5, dimensions=[5, 3]), tmp_path / "b"
    )
    info = manifest(bundle)
    assert info["dimension"] == 5 and info["dimensions"] == [5, 3]
    assert info["steps"][2] == {"op": "truncate", "dimension": 5}
    vectors = embed(bundle, ["hello world", "the quick brown fox"])
    assert vectors.shape == (2, 5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)


def test_builds_are_byte_identical(tiny_recipe, tmp_path) -> None:
    recipe = tiny_recipe()
    first = compile_bundle(recipe, tmp_path / "one")
    second = compile_bundle(recipe, tmp_path / "two")
    for name in ("model.onnx", "tokenizer.json", "manifest.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_rebuild_replaces_the_bundle_atomically(tiny_recipe, tmp_path) -> None:
    out = tmp_path / "build"
    compile_bundle(tiny_recipe(), out)
    compile_bundle(tiny_recipe(), out)
    assert sorted(p.name for p in out.iterdir()) == ["tiny"]


def test_external_data_graph(tiny_recipe, tmp_path) -> None:
    recipe = tiny_recipe({"external_data": True})
    assert (tmp_path / "model" / "model.onnx.data").is_file()
    bundle = compile_bundle(recipe, tmp_path / "build")
    assert sorted(p.name for p in bundle.iterdir()) == [
        "manifest.json",
        "model.onnx",
        "tokenizer.json",
    ]
    assert embed(bundle, ["hello"]).shape == (1, 8)


def test_several_outputs_need_the_token_states_named(tiny_recipe, tmp_path) -> None:
    with pytest.raises(
        SpliceError, match="cannot tell which output.*states \\[batch, sequence, 8\\].*pooled"
    ):
        compile_bundle(tiny_recipe({"extra_outputs": True, "output": "states"}), tmp_path / "b")
    bundle = compile_bundle(
        tiny_recipe(
            {"extra_outputs": True, "output": "states"},
            model={**_model(tmp_path), "output": "states"},
        ),
        tmp_path / "b",
    )
    assert [o.name for o in onnx.load(str(bundle / "model.onnx")).graph.output] == [
        "sentence_embedding"
    ]


def test_auto_detects_a_known_output_among_several(tiny_recipe, tmp_path) -> None:
    bundle = compile_bundle(tiny_recipe({"extra_outputs": True}), tmp_path / "b")
    assert manifest(bundle)["graph"]["token_states"] == "last_hidden_state"


def test_opset_too_old_is_refused(tiny_recipe, tmp_path) -> None:
    with pytest.raises(SpliceError, match="opset 11; splicing needs opset 13"):
        compile_bundle(tiny_recipe({"opset": 11}), tmp_path / "b")


def _model(tmp_path: Path) -> dict:
    files = (
        sorted(p.name for p in (tmp_path / "model").iterdir())
        if (tmp_path / "model").exists()
        else []
    )
    return {
        "local": {
            "path": str(tmp_path / "model"),
            "files": {f: None for f in files or ["model.onnx", "tokenizer.json"]},
        },
        "graph": "model.onnx",
        "tokenizer": "tokenizer.json",
    }
