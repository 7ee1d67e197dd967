"""kind: reranker — the recipe, the spliced score, golden pairs, and parity with
sentence-transformers' CrossEncoder on the same (random) weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from encoderfile import gate, quantize, rerank, verify
from encoderfile.errors import RecipeError, SpliceError, VerifyError
from encoderfile.recipe import load
from encoderfile.runtime import golden
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.describe import describe, rows
from encoderfile.runtime.manifest import LOGIT_OUTPUT, SCORE_OUTPUT, ScoreGateFigures
from encoderfile.runtime.reranker import Reranker, order
from encoderfile.splice import score
from tests.fixtures.reranker import MAX_LENGTH, reranker_recipe

QUERY = "what does a cross-encoder do?"
DOCUMENTS = [
    "A cross-encoder reads the query and the document together.",
    "Bananas are rich in potassium.",
    "hi",
    " ".join(["A long document that goes past the maximum length of the model."] * 10),
    "The quick brown fox jumps over the lazy dog.",
]
LONG_QUERY = " ".join(["a query longer than max_length on its own"] * 10)


# -- recipe ----------------------------------------------------------------------------------


def _recipe(tmp_path: Path, **overrides: object) -> Path:
    return reranker_recipe(tmp_path, tmp_path / "r.yaml", **overrides)


def test_reranker_recipe_has_one_score_per_pair(tmp_path: Path) -> None:
    spec = load(_recipe(tmp_path))
    assert (spec.kind, spec.dimension, spec.steps, spec.score) == ("reranker", 1, [], None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": [{"op": "pooling", "mode": "cls"}]}, "steps belong to an embedder"),
        ({"score": {"activation": "softmax"}}, "softmax needs the positive label"),
        (
            {"kind": "embedder", "dimension": 8, "score": {"activation": "sigmoid"}},
            "'score' belongs",
        ),
    ],
)
def test_reranker_recipe_errors_name_the_fix(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(RecipeError, match=message):
        load(_recipe(tmp_path, **overrides))


# -- the splice op on a tiny graph (no torch) ------------------------------------------------


def _two_label_graph() -> onnx.ModelProto:
    """logits [b, 2] = float(input_ids[:, :2] + attention_mask[:, :2]) - 2."""
    nodes = [
        helper.make_node("Add", ["input_ids", "attention_mask"], ["sum"]),
        helper.make_node("Slice", ["sum", "zero", "two", "one"], ["first"]),
        helper.make_node("Cast", ["first"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["f", "shift"], ["logits"]),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.array([0], np.int64), "zero"),
        onnx.numpy_helper.from_array(np.array([2], np.int64), "two"),
        onnx.numpy_helper.from_array(np.array([1], np.int64), "one"),
        onnx.numpy_helper.from_array(np.array(2.0, np.float32), "shift"),
    ]
    ints = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"])
        for n in ("input_ids", "attention_mask")
    ]
    out = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 2])]
    graph = helper.make_graph(nodes, "two", ints, out, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("activation", ["sigmoid", "identity", "softmax"])
def test_score_op_matches_its_numpy_reference(activation: str) -> None:
    spliced = score.apply(_two_label_graph(), "logits", 2, activation, 1, "tiny")
    assert [o.name for o in spliced.model.graph.output] == [SCORE_OUTPUT, LOGIT_OUTPUT]
    assert all(n.startswith("score/") for n in spliced.added_nodes)
    ids = np.array([[1, 5, 3], [4, 0, 0]], np.int64)
    mask = np.array([[1, 1, 1], [1, 0, 0]], np.int64)
    sess = verify.session(spliced.model.SerializeToString())
    got = np.stack(sess.run(None, {"input_ids": ids, "attention_mask": mask}), axis=1)
    logits = (ids[:, :2] + mask[:, :2]).astype(np.float64) - 2
    np.testing.assert_allclose(got, score.reference(logits, activation, 1), atol=1e-6)


def test_score_label_out_of_range_is_refused() -> None:
    with pytest.raises(SpliceError, match="Use a label from 0 to 1"):
        score.apply(_two_label_graph(), "logits", 2, "sigmoid", 2, "tiny")


# -- the built bundle (random BertForSequenceClassification) ---------------------------------


def test_reranker_bundle_contract(reranker_bundle: Path) -> None:
    manifest = json.loads((reranker_bundle / "manifest.json").read_text())
    assert manifest["kind"] == "reranker"
    assert manifest["score"] == {"activation": "sigmoid", "label": 0, "labels": 1}
    assert manifest["graph"]["output"] == SCORE_OUTPUT
    assert len(manifest["golden"]["pairs"]) == len(rerank.SAMPLE_PAIRS)
    model = onnx.load(str(reranker_bundle / "model.onnx"))
    assert [o.name for o in model.graph.output] == [SCORE_OUTPUT, LOGIT_OUTPUT]
    # torch's NaN guards after the attention softmaxes (2 layers) are dropped, verified
    assert len(manifest["graph"]["removed_nodes"]) == 4
    assert not any(n.op_type == "IsNaN" for n in model.graph.node)
    bundle = open_bundle(reranker_bundle)
    (result,) = golden.check(bundle, threads=1)
    assert result.ok and result.kind == "pairs" and result.count == len(rerank.SAMPLE_PAIRS)
    d = describe(bundle.manifest)
    assert d["kind"] == "reranker" and d["score"]["activation"] == "sigmoid"
    assert dict(rows(d))["kind"].startswith("reranker (score: sigmoid of label 0 of 1")


def test_reranker_builds_are_reproducible(
    reranker_bundle: Path, cross_encoder_dir: Path, tmp_path: Path
) -> None:
    from encoderfile.compiler import compile_bundle

    again = compile_bundle(reranker_recipe(cross_encoder_dir, tmp_path / "r.yaml"), tmp_path / "o")
    for name in ("model.onnx", "tokenizer.json", "manifest.json"):
        assert (again / name).read_bytes() == (reranker_bundle / name).read_bytes(), name


def test_config_activation_is_the_default(tmp_path: Path, cross_encoder_dir: Path) -> None:
    """With no score.activation, config.json's sentence_transformers.activation_fn decides."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        (model_dir / name).symlink_to(cross_encoder_dir / name)
    config = json.loads((cross_encoder_dir / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    (model_dir / "config.json").write_text(json.dumps(config))
    from encoderfile.compiler import compile_bundle

    built = compile_bundle(reranker_recipe(model_dir, tmp_path / "r.yaml"), tmp_path / "out")
    assert json.loads((built / "manifest.json").read_text())["score"]["activation"] == "identity"


# -- fp16 / int8 and their gate (score and rank agreement) ---------------------------------


def test_spearman_is_the_rank_correlation() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 24)), rng.normal(size=(3, 24))
    got = gate.spearman(a, b)
    np.testing.assert_allclose(
        got, [spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)], atol=1e-12
    )
    assert gate.spearman(a, a)[0] == pytest.approx(1) and gate.spearman(a, -a)[0] == -1


def _lowered(model_dir: Path, tmp_path: Path, precision: str, **overrides: object) -> Path:
    from encoderfile.compiler import compile_bundle

    name = f"tiny-reranker-{precision}"
    recipe = reranker_recipe(
        model_dir, tmp_path / f"{name}.yaml", name=name, precision=precision, **overrides
    )
    return compile_bundle(recipe, tmp_path / "build")


def test_fp16_reranker_passes_the_default_gate(cross_encoder_dir: Path, tmp_path: Path) -> None:
    built = _lowered(cross_encoder_dir, tmp_path, "fp16")
    bundle = open_bundle(built)
    figures = bundle.manifest.precision.gate
    assert isinstance(figures, ScoreGateFigures) and figures.passed
    assert figures.held_out_pairs == len(gate.HELD_OUT_QUERIES) * len(gate.HELD_OUT_TEXTS)
    assert figures.score_rel_diff <= 0.05 and figures.spearman_min >= 0.95
    (result,) = golden.check(bundle, threads=1)
    assert result.ok and result.kind == "pairs"
    line = dict(rows(describe(bundle.manifest)))["precision"]
    assert line.startswith("fp16 (gate passed on 144 held-out pairs: score diff ")
    # the gate's figure is what the bundle computes: re-measure it against the fp32 bundle
    reference = Reranker(open_bundle(_lowered(cross_encoder_dir, tmp_path, "fp32")), 1)
    lowered = Reranker(bundle, 1)
    for query in gate.HELD_OUT_QUERIES[:2]:
        diff = np.abs(
            lowered.rerank(query, gate.HELD_OUT_TEXTS).scores
            - reference.rerank(query, gate.HELD_OUT_TEXTS).scores
        )
        assert diff.max() <= figures.score_max_abs_diff + 1e-6


def test_int8_reranker_gate_failure_names_the_pairs(
    cross_encoder_dir: Path, tmp_path: Path
) -> None:
    """The tiny random model loses 20% of its score range in int8: the default gate stops it."""
    with pytest.raises(VerifyError) as caught:
        _lowered(cross_encoder_dir, tmp_path, "int8")
    message = str(caught.value)
    assert "the int8 graph failed the quality gate on 144 held-out pairs (6 queries)" in message
    assert "of the scores' range > 5.0%" in message and "Largest score changes: " in message
    assert "int8.calibration_texts" in message
    assert not (tmp_path / "build" / "tiny-reranker-int8").exists()


def test_int8_reranker_within_its_gate_is_exact_and_batch_invariant(
    cross_encoder_dir: Path, tmp_path: Path
) -> None:
    relaxed = {"score_rel_diff": 0.5, "rank_min_spearman": 0.9}
    built = _lowered(cross_encoder_dir, tmp_path, "int8", gate=relaxed)
    (tmp_path / "again").mkdir()
    again = _lowered(cross_encoder_dir, tmp_path / "again", "int8", gate=relaxed)
    for name in ("model.onnx", "manifest.json"):  # calibration and gate are deterministic
        assert (again / name).read_bytes() == (built / name).read_bytes(), name
    model = onnx.load(str(built / "model.onnx"))
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    assert quantize.saturating_weights(model) == []  # 7-bit weights: no CPU saturates them
    bundle = open_bundle(built)
    figures = bundle.manifest.precision.gate
    assert isinstance(figures, ScoreGateFigures)
    assert figures.spearman_min >= 0.9 and figures.batch_max_abs_diff <= 1e-6  # any CPU
    changes = bundle.manifest.precision.changes
    assert changes is not None and changes["quantized"]["MatMul"] > 0
    (result,) = golden.check(bundle, threads=1)
    assert result.ok
    reranker = Reranker(bundle, 1)
    alone = [reranker.rerank(QUERY, [d]).scores[0] for d in DOCUMENTS]
    np.testing.assert_allclose(reranker.rerank(QUERY, DOCUMENTS).scores, alone, atol=1e-6)


@pytest.fixture(scope="module")
def cross_encoders(cross_encoder_dir: Path) -> dict[str, object]:
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(2)
    return {
        "sigmoid": CrossEncoder(str(cross_encoder_dir), max_length=MAX_LENGTH, device="cpu"),
        "identity": CrossEncoder(
            str(cross_encoder_dir),
            max_length=MAX_LENGTH,
            device="cpu",
            activation_fn=torch.nn.Identity(),
        ),
    }


@pytest.mark.parametrize("activation", ["sigmoid", "identity"])
def test_parity_with_cross_encoder_predict(
    activation: str,
    reranker_bundle: Path,
    identity_reranker_bundle: Path,
    cross_encoders: dict[str, object],
) -> None:
    """|Δscore| <= 1e-5 against CrossEncoder.predict, on pairs short and past max_length, a
    query past max_length on its own included."""
    built = reranker_bundle if activation == "sigmoid" else identity_reranker_bundle
    reranker = Reranker(open_bundle(built), threads=1)
    model = cross_encoders[activation]
    for query in (QUERY, LONG_QUERY):
        got = reranker.rerank(query, DOCUMENTS)
        expected = model.predict([(query, d) for d in DOCUMENTS])  # type: ignore[attr-defined]
        diff = float(np.abs(got.scores - expected).max())
        print(f"parity {activation} query of {len(query)} chars: max |diff| {diff:.3g}")
        assert diff <= 1e-5
        assert got.truncated == (
            [False, False, False, True, False] if query == QUERY else [True] * 5
        )
    assert float(np.std(reranker.rerank(QUERY, DOCUMENTS).scores)) > 1e-3  # not all equal


def test_pair_tokenization_is_cross_encoders(
    reranker_bundle: Path, cross_encoders: dict[str, object]
) -> None:
    """The pair template, token_type_ids and longest-first truncation of the HF tokenizer."""
    reranker = Reranker(open_bundle(reranker_bundle), threads=1)
    hf = cross_encoders["sigmoid"].tokenizer  # type: ignore[attr-defined]
    for query in (QUERY, LONG_QUERY):
        ours = reranker.tokenize_pairs(query, DOCUMENTS)
        theirs = hf([query] * len(DOCUMENTS), DOCUMENTS, truncation=True, max_length=MAX_LENGTH)
        assert [e.ids for e in ours] == theirs["input_ids"]
        assert [e.type_ids for e in ours] == theirs["token_type_ids"]
    long_query = reranker.tokenize_pairs(LONG_QUERY, ["short"])[0]
    assert len(long_query.ids) == MAX_LENGTH and 1 in long_query.type_ids  # the document stays


def test_scores_do_not_depend_on_batch_neighbours(reranker_bundle: Path) -> None:
    reranker = Reranker(open_bundle(reranker_bundle), threads=1)
    together = reranker.rerank(QUERY, DOCUMENTS).scores
    alone = np.array([reranker.rerank(QUERY, [d]).scores[0] for d in DOCUMENTS])
    reverse = reranker.rerank(QUERY, DOCUMENTS[::-1]).scores[::-1]
    diff = float(max(np.abs(together - alone).max(), np.abs(together - reverse).max()))
    assert diff <= 1e-6


def test_raw_scores_are_the_logit(reranker_bundle: Path) -> None:
    reranker = Reranker(open_bundle(reranker_bundle), threads=1)
    scores = reranker.rerank(QUERY, DOCUMENTS).scores
    logits = reranker.rerank(QUERY, DOCUMENTS, raw_scores=True).scores
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits.astype(np.float64))), atol=1e-6)
    assert order(scores) == sorted(range(len(scores)), key=lambda i: -scores[i])
    assert order(scores, 2, sort=False) == sorted(order(scores)[:2])


def test_truncate_false_refuses_a_long_pair(reranker_bundle: Path) -> None:
    from encoderfile.errors import RequestError

    reranker = Reranker(open_bundle(reranker_bundle), threads=1)
    with pytest.raises(RequestError, match="pair 3 .* longer than max_length=48"):
        reranker.rerank(QUERY, DOCUMENTS, truncate=False)


def test_sweep_reports_the_rerank_stage(
    tiny_bundle: Path, reranker_bundle: Path, tmp_path: Path
) -> None:
    """sweep --rerank: the dense top-K re-scored by the cross-encoder, judged like every row
    (random weights: the plumbing, not quality)."""
    from typer.testing import CliRunner

    from encoderfile import retrieval, sweep
    from encoderfile.cli import app
    from encoderfile.runtime.embedder import Embedder
    from tests.test_sweep import TEXTS, write_beir

    reranker = Reranker(open_bundle(reranker_bundle), threads=1)
    queries = retrieval.Collection(["q0", "q1"], ["the quick fox", "hello"])
    corpus = retrieval.Collection([f"d{i}" for i in range(len(TEXTS))], TEXTS)
    qrels = {"q0": {"d1": 1}, "q1": {"d0": 1}}
    result = sweep.run(
        Embedder(open_bundle(tiny_bundle)),
        queries,
        corpus,
        qrels,
        reranker=reranker,
        rerank_depth=4,
    )
    rr = result["rerank"]
    assert rr["model"] == "tiny-reranker" and rr["depth"] == 4 and rr["pairs_per_second"] > 0
    expected = {}
    for qid, text in zip(queries.ids, queries.texts, strict=True):
        vectors = Embedder(open_bundle(tiny_bundle)).embed([text, *TEXTS]).vectors
        dense = list(np.argsort(-(vectors[1:] @ vectors[0]), kind="stable")[:4])
        scores = reranker.rerank(text, [TEXTS[i] for i in dense]).scores
        expected[qid] = [f"d{dense[i]}" for i in np.argsort(-scores, kind="stable")]
    assert rr["ndcg"] == pytest.approx(retrieval.evaluate(expected, qrels, 10, 100)["ndcg@10"])

    data = write_beir(tmp_path / "beir", TEXTS, ["the quick fox"], [("q0", "d1", 1)])
    args = ["sweep", str(tiny_bundle), "--rerank", str(reranker_bundle), "--rerank-depth", "3"]
    files = ["--queries", str(data / "queries.jsonl"), "--corpus", str(data / "corpus.jsonl")]
    done = CliRunner().invoke(
        app, [*args, *files, "--qrels", str(data / "qrels.tsv"), "--out", str(tmp_path / "o")]
    )
    assert done.exit_code == 0, done.output
    assert "Rerank: the 3 best full-width float32 hits" in done.output
