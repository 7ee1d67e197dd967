"""BEIR-style metrics: known answers, and agreement with pytrec_eval (trec_eval's own code)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from encoderfile import retrieval
from encoderfile.errors import EvaluationError


def test_ndcg_known_answer_with_graded_relevance() -> None:
    judged = {"a": 2, "b": 1, "z": 0}
    # ranks: x (0), a (2), b (1) -> DCG = 2/log2(3) + 1/log2(4); ideal: 2/log2(2) + 1/log2(3)
    expected = (2 / math.log2(3) + 1 / 2) / (2 + 1 / math.log2(3))
    assert retrieval.ndcg(["x", "a", "b"], judged, 10) == pytest.approx(expected)
    assert retrieval.ndcg(["a", "b"], judged, 10) == pytest.approx(1.0)
    assert retrieval.ndcg(["x", "y", "a"], judged, 2) == 0.0


def test_recall_counts_only_positive_judgements() -> None:
    judged = {"a": 1, "b": 3, "c": 0}
    assert retrieval.recall(["a", "c", "x"], judged, 100) == 0.5
    assert retrieval.recall(["x", "a", "b"], judged, 2) == 0.5
    assert retrieval.recall(["x", "a", "b"], judged, 3) == 1.0


def test_evaluate_agrees_with_pytrec_eval_on_random_runs() -> None:
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(300)]
    qrels = {
        f"q{q}": {
            str(d): int(rng.integers(1, 3))
            for d in rng.choice(docs, rng.integers(1, 6), replace=False)
        }
        for q in range(40)
    }
    run = {q: list(rng.permutation(docs)[:150]) for q in qrels}
    for q in list(qrels)[:10]:  # some queries find their documents near the top
        run[q] = list(qrels[q]) + [d for d in run[q] if d not in qrels[q]]
    ours = retrieval.evaluate(run, qrels, 10, 100)
    scored = {
        q: {d: float(len(ranked) - r) for r, d in enumerate(ranked)} for q, ranked in run.items()
    }
    theirs = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(scored)
    assert ours["ndcg@10"] == pytest.approx(
        np.mean([v["ndcg_cut_10"] for v in theirs.values()]), abs=1e-9
    )
    assert ours["recall@100"] == pytest.approx(
        np.mean([v["recall_100"] for v in theirs.values()]), abs=1e-9
    )
    assert 0.2 < ours["ndcg@10"] < 0.5  # neither trivially 0 nor 1


def test_load_beir_files(tmp_path: Path) -> None:
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\n")
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "d1", "title": "Title", "text": "body"}\n{"_id": "d2", "title": "", "text": "only"}\n'
    )
    assert retrieval.load_qrels(tmp_path / "qrels.tsv") == {"q1": {"d1": 1, "d2": 2}}
    corpus = retrieval.load_collection(tmp_path / "corpus.jsonl")
    assert corpus.ids == ["d1", "d2"] and corpus.texts == ["Title body", "only"]
    assert retrieval.load_collection(tmp_path / "corpus.jsonl", only={"d2"}).ids == ["d2"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("header\nq1 d1 1\n", "line 2 is not 'query-id<TAB>corpus-id<TAB>integer score'"),
        ("header\nq1\td1\thigh\n", "line 2 is not"),
        ("header\n", "has no judgements"),
    ],
)
def test_bad_qrels_say_which_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "q.tsv").write_text(content)
    with pytest.raises(EvaluationError, match=message):
        retrieval.load_qrels(tmp_path / "q.tsv")


def test_bad_collection_lines(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text('{"_id": "d1", "body": "x"}\n')
    with pytest.raises(
        EvaluationError, match=r"line 1 needs a string '_id' and 'text' \(keys: _id, body\)"
    ):
        retrieval.load_collection(tmp_path / "c.jsonl")
    with pytest.raises(EvaluationError, match="cannot read"):
        retrieval.load_collection(tmp_path / "missing.jsonl")
