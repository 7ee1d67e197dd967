"""The rotate step: the PCA fit (known answers, determinism), its refusals, and a built bundle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from encoderfile import recipe
from encoderfile.compiler import compile_bundle
from encoderfile.errors import RecipeError, ResolveError, SpliceError
from encoderfile.splice import rotate
from encoderfile.verify import encode
from tests.fixtures.models import TINY_VOCAB, recipe_dict, write_recipe, write_tiny_model

WORDS = TINY_VOCAB[4:]


def test_fit_recovers_known_axes_with_a_fixed_sign() -> None:
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    spread = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    vectors = (rng.standard_normal((4000, 6)) * spread) @ basis.T + 7.0  # offset: fit centres
    matrix, variance = rotate.fit(vectors)
    overlap = np.abs(matrix.T @ basis)  # |cos| between fitted and true axes
    assert np.allclose(np.diag(overlap), 1.0, atol=1e-3)
    expected = spread**2 / (spread**2).sum()
    assert np.allclose(variance, expected, atol=0.02)
    biggest = np.abs(matrix).argmax(axis=0)
    assert (matrix[biggest, np.arange(6)] > 0).all()
    assert matrix.dtype == np.float32


def test_fit_is_deterministic_and_orthogonal() -> None:
    vectors = np.random.default_rng(1).standard_normal((300, 32)).astype(np.float32)
    first, _ = rotate.fit(vectors)
    again, _ = rotate.fit(vectors.copy())
    assert first.tobytes() == again.tobytes()
    assert np.abs(first.astype(np.float64) @ first.T - np.eye(32)).max() < 1e-6
    flipped, _ = rotate.fit(-vectors)  # same axes, opposite data: signs still fixed the same way
    assert flipped.tobytes() == first.tobytes()


def test_fit_needs_two_texts() -> None:
    with pytest.raises(SpliceError, match="at least 2 fit texts"):
        rotate.fit(np.ones((1, 4)))


def _fit_file(directory: Path, n: int = 60) -> tuple[Path, str]:
    rng = np.random.default_rng(3)
    lines = [" ".join(rng.choice(WORDS, size=rng.integers(1, 6))) for _ in range(n)]
    path = directory / "fit.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _rotated_recipe(tmp_path: Path, **overrides: Any) -> Path:
    model = write_tiny_model(tmp_path / "model", positions=False)
    fit, digest = _fit_file(tmp_path)
    steps = [
        {"op": "pooling", "mode": "mean"},
        {"op": "rotate", "fit": {"texts": fit.name, "sha256": digest}},
        {"op": "truncate"},
        {"op": "normalize"},
    ]
    spec = recipe_dict(model, steps=steps, dimension=8, dimensions=[8, 4, 2])
    spec.update(overrides)
    return write_recipe(tmp_path / "recipe.yaml", spec)


def _embed(bundle: Path, texts: list[str]) -> np.ndarray:
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    batch = encode(tokenizer, texts, [i.name for i in session.get_inputs()])
    return session.run(["sentence_embedding"], batch.feeds)[0]


def test_rotated_bundle_keeps_full_width_similarities(tmp_path: Path) -> None:
    rotated = compile_bundle(_rotated_recipe(tmp_path / "a"), tmp_path / "build-rotated")
    plain_model = write_tiny_model(tmp_path / "plain", positions=False)
    plain = compile_bundle(
        write_recipe(tmp_path / "plain.yaml", recipe_dict(plain_model, dimension=8)),
        tmp_path / "build-plain",
    )
    texts = ["hello world", "the quick brown fox", "lazy dog", "a b c", "search query document"]
    r, p = _embed(rotated, texts), _embed(plain, texts)
    assert np.abs(r @ r.T - p @ p.T).max() <= 1e-5
    assert np.abs(r - p).max() > 0.1  # the vectors themselves did move
    manifest = json.loads((rotated / "manifest.json").read_text())
    step = next(s for s in manifest["steps"] if s["op"] == "rotate")
    assert step["fit_texts"] == 60 and step["fit"]["texts"] == "fit.txt"
    kept = step["variance_kept"]
    assert kept["8"] == pytest.approx(1.0) and kept["2"] < kept["4"] < 1.0
    assert any(name.startswith("rotate/MatMul") for name in manifest["graph"]["added_nodes"])


def test_rotated_build_is_byte_identical(tmp_path: Path) -> None:
    first = compile_bundle(_rotated_recipe(tmp_path / "a"), tmp_path / "one")
    second = compile_bundle(_rotated_recipe(tmp_path / "b"), tmp_path / "two")
    assert (first / "model.onnx").read_bytes() == (second / "model.onnx").read_bytes()


def test_fit_texts_are_pinned(tmp_path: Path) -> None:
    path = _rotated_recipe(tmp_path)
    (tmp_path / "fit.txt").write_text("hello world\nlazy dog\n", encoding="utf-8")
    with pytest.raises(
        ResolveError, match=r"fit texts fit.txt sha256 is [0-9a-f]{64}, the recipe pins"
    ):
        compile_bundle(path, tmp_path / "build")
    assert not (tmp_path / "build" / "tiny").exists()


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        (["pooling", "normalize", "rotate"], "rotate after normalize cannot help"),
        (["pooling", "truncate", "rotate", "normalize"], "rotate after truncate cannot help"),
        (["pooling", "rotate", "layer_norm", "truncate"], "layer_norm after rotate would undo it"),
        (["pooling", "rotate", "rotate", "truncate"], "'rotate' appears more than once"),
    ],
)
def test_misplaced_rotate_is_refused(tmp_path: Path, ops: list[str], message: str) -> None:
    fit = {"texts": "fit.txt", "sha256": "0" * 64}
    steps = [
        {
            "op": op,
            **({"mode": "mean"} if op == "pooling" else {"fit": fit} if op == "rotate" else {}),
        }
        for op in ops
    ]
    path = write_recipe(tmp_path / "r.yaml", recipe_dict(tmp_path, steps=steps, dimension=8))
    with pytest.raises(RecipeError, match=message):
        recipe.load(path)


def test_rotate_without_truncation_is_refused(tmp_path: Path) -> None:
    fit = {"texts": "fit.txt", "sha256": "0" * 64}
    steps = [{"op": "pooling", "mode": "mean"}, {"op": "rotate", "fit": fit}, {"op": "normalize"}]
    path = write_recipe(tmp_path / "r.yaml", recipe_dict(tmp_path, steps=steps, dimension=8))
    with pytest.raises(RecipeError, match="rotate only helps when vectors are truncated"):
        recipe.load(path)


def test_rotate_at_full_width_is_refused_before_fitting(tmp_path: Path) -> None:
    path = _rotated_recipe(tmp_path, dimensions=None)  # truncate to 8 of 8: nothing is cut
    (tmp_path / "fit.txt").unlink()  # the refusal comes before the fit texts are read
    with pytest.raises(
        SpliceError, match="rotate cannot help: dimension=8 is the full hidden size"
    ):
        compile_bundle(path, tmp_path / "build")
