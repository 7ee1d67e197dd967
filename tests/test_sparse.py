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


# -- sweep on a sparse artifact -------------------------------------------------------------

SWEEP_DOCS = [
    "Cats sleep most of the day on sofas and beds.",
    "The stock market fell sharply after the interest rate rise.",
    "Vaccines train the immune system with a harmless antigen.",
    "A recipe for sourdough bread needs flour, water and salt.",
    "Volcanoes erupt when magma rises through the crust.",
]
SWEEP_QUERIES = ["where do cats sleep", "how do vaccines work", "why do volcanoes erupt"]


def test_rrf_fuses_rank_lists() -> None:
    from encoderfile.sparse_sweep import rrf

    fused = rrf([np.array([[0, 1, 2]]), np.array([[1, 3, 0]])], depth=4)
    assert fused == [[1, 0, 3, 2]]  # 1/61 + 1/62 > 1/61 + 1/63 > 1/62 > 1/63


def test_sweep_on_a_sparse_artifact_reports_every_method(
    splade_bundle: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from encoderfile.cli import app
    from tests.test_sweep import write_beir

    qrels = [("q0", "d0", 1), ("q1", "d2", 1), ("q2", "d4", 1)]
    beir = write_beir(tmp_path / "beir", SWEEP_DOCS, SWEEP_QUERIES, qrels)
    args = ["sweep", str(splade_bundle), "--queries", str(beir / "queries.jsonl")]
    args += ["--corpus", str(beir / "corpus.jsonl"), "--qrels", str(beir / "qrels.tsv")]
    args += ["--dense", str(tiny_bundle), "--out", str(tmp_path / "out"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in json.loads(result.stdout)["rows"]}
    assert list(rows) == ["sparse", "bm25", "dense", "hybrid"]
    assert rows["sparse"]["ndcg"] == 1.0  # SPLADE finds each topic's one document first
    assert rows["sparse"]["doc_terms"] > rows["sparse"]["query_terms"] > 0
    assert rows["sparse"]["index_bytes"] > 0 and rows["sparse"]["ms_per_query"] > 0
    assert all(0 <= r["ndcg"] <= 1 and 0 <= r["recall"] <= 1 for r in rows.values())


def test_sparse_builds_are_reproducible(
    splade_bundle: Path, splade_dir: Path, tmp_path: Path
) -> None:
    from encoderfile.compiler import compile_bundle
    from tests.fixtures.models import real_recipe

    again = compile_bundle(real_recipe(tmp_path, "splade-tiny.yaml", splade_dir), tmp_path / "o")
    for name in ("model.onnx", "tokenizer.json", "manifest.json"):
        assert (again / name).read_bytes() == (splade_bundle / name).read_bytes(), name


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_quantized_sparse_builds_pass_the_gate_and_keep_the_terms(
    splade_bundle: Path, splade_dir: Path, tmp_path: Path, precision: str
) -> None:
    """fp16 and int8 go through the same gate as embedders (cosine to fp32 on held-out texts,
    batch invariance); the gate's report is in the manifest, and the terms mostly survive."""
    from encoderfile.compiler import compile_bundle
    from tests.fixtures.models import real_recipe

    recipe_path = real_recipe(tmp_path, "splade-tiny.yaml", splade_dir, precision=precision)
    built = compile_bundle(recipe_path, tmp_path / "o")
    m = manifest(built)
    assert m["kind"] == "sparse" and m["precision"]["mode"] == precision
    gate = m["precision"]["gate"]
    assert gate["mean_cosine"] >= 0.99 and gate["min_cosine"] >= 0.98, gate
    (result,) = golden.check(open_bundle(built))
    assert result.ok
    ours = Embedder(open_bundle(built), threads=1).embed(PARITY_TEXTS).vectors > 0
    full = Embedder(open_bundle(splade_bundle), threads=1).embed(PARITY_TEXTS).vectors > 0
    overlap = (ours & full).sum(1) / (ours | full).sum(1)
    assert overlap.min() >= (0.99 if precision == "fp16" else 0.8), overlap
