"""kind: sparse — the recipe's rules, the compiled SPLADE bundle, and parity with
sentence-transformers' SparseEncoder (MLMTransformer + SpladePooling) on the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from encoderfile import recipe
from encoderfile.errors import RecipeError
from encoderfile.runtime import golden
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.embedder import Embedder
from tests.fixtures.models import manifest, recipe_dict, write_recipe

PARITY_TEXTS = [
    "The cat sleeps on the sofa.",
    "a",
    "What is the capital of France?",
    "BRCA1 mutations raise the lifetime risk of breast and ovarian cancer.",
    "naïve café – 東京 – 😀",
    # past max_length (512 tokens): both sides cut it the same way
    " ".join(["Sparse lexical vectors expand a passage into related vocabulary terms."] * 60),
]


def sparse_dict(tmp_path: Path, **overrides: object) -> dict:
    data = recipe_dict(tmp_path)
    data.update(kind="sparse", steps=[{"op": "splade"}], dimension=24)
    data.update(overrides)
    return data


def test_a_sparse_recipe_takes_one_splade_step(tmp_path: Path) -> None:
    spec = recipe.load(write_recipe(tmp_path / "r.yaml", sparse_dict(tmp_path)))
    assert spec.kind == "sparse" and spec.steps[0].op == "splade"
    assert spec.steps[0].pooling == "max"  # as SpladePooling's default


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": [{"op": "pooling", "mode": "mean"}]}, "exactly one step, '- op: splade'"),
        ({"steps": [{"op": "splade", "pooling": "mean"}]}, "steps.0.splade.pooling"),
        ({"dimensions": [24, 12]}, "dimensions belong to an embedder, not kind: sparse"),
    ],
)
def test_sparse_recipe_rules(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        recipe.load(write_recipe(tmp_path / "r.yaml", sparse_dict(tmp_path, **overrides)))


def test_an_embedder_refuses_the_splade_step(tmp_path: Path) -> None:
    data = recipe_dict(tmp_path)
    data["steps"] = [{"op": "pooling", "mode": "mean"}, {"op": "splade"}]
    with pytest.raises(RecipeError, match="the splade step belongs to kind: sparse"):
        recipe.load(write_recipe(tmp_path / "r.yaml", data))


def test_the_sparse_bundle_names_its_kind_and_verifies(splade_bundle: Path) -> None:
    m = manifest(splade_bundle)
    assert m["kind"] == "sparse" and m["dimension"] == 30522 and m["normalized"] is False
    assert m["graph"]["token_states"] == "logits"
    assert all(name.startswith("splade/") for name in m["graph"]["added_nodes"])
    assert m["steps"] == [{"op": "splade", "pooling": "max"}]
    (result,) = golden.check(open_bundle(splade_bundle))
    assert result.ok and result.count == len(m["golden"]["texts"])
    vectors = np.asarray(m["golden"]["vectors"])
    assert (vectors >= 0).all() and 0 < (vectors > 0).sum(1).max() < 1000  # sparse


@pytest.fixture(scope="module")
def reference(splade_dir: Path) -> np.ndarray:
    from sentence_transformers import SparseEncoder

    from tools.models import splade_source

    model = SparseEncoder(str(splade_source()), device="cpu")
    assert model.max_seq_length == 512  # as the recipe's tokenizer.max_length
    return model.encode(PARITY_TEXTS, convert_to_tensor=True).to_dense().numpy()


def test_parity_with_sentence_transformers_sparse_encoder(
    splade_bundle: Path, reference: np.ndarray
) -> None:
    embedder = Embedder(open_bundle(splade_bundle))
    got = embedder.embed(PARITY_TEXTS)
    assert got.truncated == [False] * 5 + [True]
    np.testing.assert_array_equal(got.vectors > 0, reference > 0)  # the same active terms
    assert np.abs(got.vectors - reference).max() < 1e-5
    alone = np.stack([embedder.embed([t]).vectors[0] for t in PARITY_TEXTS])
    np.testing.assert_array_equal(alone, got.vectors)  # batch-invariant
