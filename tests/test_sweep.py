"""`encoderfile sweep`: known answers on a tiny bundle, the CLI, and SciFact with MiniLM."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encoderfile import retrieval, sweep
from encoderfile.compiler import compile_bundle
from encoderfile.errors import EvaluationError
from encoderfile.runtime import search
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.embedder import Embedder
from tests.fixtures.models import real_recipe
from tests.test_cli import cli

TEXTS = ["hello world", "the quick brown fox", "lazy dog", "a b c", "jumps over", "search query"]
SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def write_beir(directory: Path, docs: list[str], queries: list[str], qrels: list[tuple]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(docs)
        )
    )
    (directory / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(queries))
    )
    (directory / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels)
    )
    return directory


def test_each_text_retrieves_itself(tiny_bundle: Path) -> None:
    """Queries equal to documents: exact full-width search ranks each one's own document first."""
    ids = [f"d{i}" for i in range(len(TEXTS))]
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(len(TEXTS))}
    result = sweep.run(
        Embedder(open_bundle(tiny_bundle)),
        retrieval.Collection([f"q{i}" for i in range(len(TEXTS))], TEXTS),
        retrieval.Collection(ids, TEXTS),
        qrels,
        funnels=[(4, len(TEXTS) * 2)],
    )
    rows = {(r["precision"], r["dims"]): r for r in result["rows"]}
    assert set(rows) == {(p, d) for p in sweep.PRECISIONS for d in (8, 4)}
    for precision in sweep.PRECISIONS:  # quantized rows re-rank at full width: exact again
        assert rows[precision, 8]["ndcg"] == pytest.approx(1.0)
        assert rows[precision, 8]["recall"] == pytest.approx(1.0)
    assert rows["float32", 8]["bytes_per_vector"] == 32
    assert rows["int8", 4]["bytes_per_vector"] == 4 and rows["binary", 4]["bytes_per_vector"] == 1
    assert result["funnel"][0]["ndcg"] == pytest.approx(1.0)  # K covers every document
    assert result["funnel"][0]["scan_cost"] == pytest.approx(0.5 + 1.0)  # D/W + K/N, K capped at N


def test_quality_at_a_width_is_exact_search_on_the_prefix(tiny_bundle: Path) -> None:
    """The float32 row at 4 dims equals brute-force cosine search on the first 4 values."""
    embedder = Embedder(open_bundle(tiny_bundle))
    queries = ["hello", "fox dog", "a", "query"]
    qrels = {"q0": {"d0": 1}, "q1": {"d1": 2, "d2": 1}, "q2": {"d3": 1}, "q3": {"d5": 1}}
    result = sweep.run(
        embedder,
        retrieval.Collection(["q0", "q1", "q2", "q3"], queries),
        retrieval.Collection([f"d{i}" for i in range(len(TEXTS))], TEXTS),
        qrels,
        dims=[4],
    )
    d = embedder.embed(TEXTS, dimensions=4).vectors
    q = embedder.embed(queries, dimensions=4).vectors
    order = np.argsort(-(q @ d.T), axis=1, kind="stable")
    run = {f"q{i}": [f"d{j}" for j in order[i]] for i in range(len(queries))}
    expected = retrieval.evaluate(run, qrels)
    row = next(r for r in result["rows"] if r["precision"] == "float32")
    assert row["ndcg"] == pytest.approx(expected["ndcg@10"]) and row["ndcg"] < 1.0


def test_int8_and_binary_scores() -> None:
    x = search.unit(np.random.default_rng(0).standard_normal((50, 16)))
    q = search.unit(np.random.default_rng(1).standard_normal((3, 16)))
    int8, size = sweep._scorer("int8", x, q)
    assert size == 16 and np.abs(int8(0) - x @ q[0]).max() < 0.05  # close to float scores
    binary, size = sweep._scorer("binary", x, q)
    expected = ((x > 0) == (q[1] > 0)).sum(axis=1) * 2 - 16  # agreements - disagreements
    assert size == 2 and (binary(1) == expected).all()


def test_funnel_spec() -> None:
    assert sweep.parse_funnels("64:100,128:50") == [(64, 100), (128, 50)]
    with pytest.raises(EvaluationError, match="is not D:K"):
        sweep.parse_funnels("64-100")
    with pytest.raises(EvaluationError, match="K at least 10"):
        sweep.parse_funnels("64:5")


@pytest.mark.slow  # runs the CLI in a process
def test_cli_table_json_and_plot(tiny_bundle: Path, tmp_path: Path) -> None:
    data = write_beir(
        tmp_path / "data", TEXTS, TEXTS[:3], [("q0", "d0", 1), ("q1", "d1", 1), ("q2", "d2", 2)]
    )
    args = [
        "--queries",
        data / "queries.jsonl",
        "--corpus",
        data / "corpus.jsonl",
        "--qrels",
        data / "qrels.tsv",
    ]
    table = cli("sweep", tiny_bundle, *args, "--funnel", "4:10", "--plot", tmp_path / "q.png")
    assert table.returncode == 0, table.stderr
    assert "| float32 | 8 | 1.0000 | +0.0000 |" in table.stdout
    assert "| 4:10 |" in table.stdout
    assert (tmp_path / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    as_json = cli("sweep", tiny_bundle, *args, "--json", "--dims", "8,2")
    result = json.loads(as_json.stdout)
    assert result["queries"] == 3 and result["documents"] == 6 and result["rescore_depth"] == 100
    assert sorted({r["dims"] for r in result["rows"]}) == [2, 8]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dims", "8,x"], "--dims '8,x' is not a list of integers"),
        (["--dims", "9"], "--dims 9 is outside 1..8"),
        (["--funnel", "4"], "--funnel '4' is not D:K"),
    ],
)
@pytest.mark.slow  # runs the CLI in a process
def test_cli_errors_are_one_line(
    tiny_bundle: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    data = write_beir(tmp_path / "data", TEXTS, TEXTS[:1], [("q0", "d0", 1)])
    result = cli(
        "sweep",
        tiny_bundle,
        "--queries",
        data / "queries.jsonl",
        "--corpus",
        data / "corpus.jsonl",
        "--qrels",
        data / "qrels.tsv",
        *extra,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("encoderfile: ") and message in result.stderr


def scifact_subset(directory: Path, queries: int, extra_docs: int) -> Path:
    """The first `queries` judged SciFact test queries, their documents and `extra_docs` others."""
    qrels = [line.split("\t") for line in (SCIFACT / "qrels/test.tsv").read_text().splitlines()[1:]]
    keep = sorted({q for q, _, _ in qrels})[:queries]
    judged = [(q, d, s) for q, d, s in qrels if q in keep]
    relevant = {d for _, d, _ in judged}
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt") as fh:
        corpus = [json.loads(line) for line in fh]
    docs = [d for d in corpus if d["_id"] in relevant]
    docs += [d for d in corpus if d["_id"] not in relevant][:extra_docs]
    directory.mkdir(parents=True)
    (directory / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    lines = (SCIFACT / "queries.jsonl").read_text().splitlines()
    (directory / "queries.jsonl").write_text(
        "".join(line + "\n" for line in lines if json.loads(line)["_id"] in keep)
    )
    (directory / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in judged)
    )
    return directory


@pytest.mark.slow
@pytest.mark.skipif(not SCIFACT.is_dir(), reason=f"SciFact is not at {SCIFACT}")
def test_scifact_subset_agrees_with_sentence_transformers_and_trec_eval(
    tmp_path: Path, minilm_dir: Path, minilm_bundle: Path
) -> None:
    """MiniLM on 20 SciFact queries / ~90 documents: the sweep's nDCG@10 at every width equals
    sentence-transformers' encode scored by pytrec_eval (to 0.003), and a rotated build keeps
    full-width similarities (1e-5) while changing truncated ones."""
    import pytrec_eval
    from sentence_transformers import SentenceTransformer

    from tools.models import minilm_source

    data = scifact_subset(tmp_path / "scifact", queries=20, extra_docs=60)
    qrels = retrieval.load_qrels(data / "qrels.tsv")
    queries = retrieval.load_collection(data / "queries.jsonl")
    corpus = retrieval.load_collection(data / "corpus.jsonl")
    dims = [384, 256, 128, 64, 32]
    result = sweep.run(Embedder(open_bundle(minilm_bundle)), queries, corpus, qrels, dims=dims)

    reference = SentenceTransformer(str(minilm_source()), device="cpu")
    q_full = reference.encode(queries.texts, normalize_embeddings=True)
    d_full = reference.encode(corpus.texts, normalize_embeddings=True)
    for row in (r for r in result["rows"] if r["precision"] == "float32"):
        q, d = search.unit(q_full[:, : row["dims"]]), search.unit(d_full[:, : row["dims"]])
        scores = q @ d.T
        run = {
            qid: {corpus.ids[j]: float(scores[i, j]) for j in range(len(corpus.ids))}
            for i, qid in enumerate(queries.ids)
        }
        trec = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
        independent = float(np.mean([v["ndcg_cut_10"] for v in trec.values()]))
        assert row["ndcg"] == pytest.approx(independent, abs=0.003), row["dims"]
    assert result["rows"][0]["ndcg"] > 0.6  # MiniLM does retrieve on SciFact

    fit = data / "corpus.jsonl"
    rotated_recipe = real_recipe(
        tmp_path,
        "all-minilm-l6-v2.yaml",
        minilm_dir,
        name="minilm-rotated",
        steps=[
            {"op": "pooling", "mode": "mean"},
            {
                "op": "rotate",
                "fit": {"texts": str(fit), "sha256": hashlib.sha256(fit.read_bytes()).hexdigest()},
            },
            {"op": "normalize"},
        ],
        dimensions=[384, 64],
    )
    rotated = Embedder(open_bundle(compile_bundle(rotated_recipe, tmp_path / "build")))
    plain = Embedder(open_bundle(minilm_bundle))
    texts = queries.texts[:4] + corpus.texts[:4]
    r, p = rotated.embed(texts).vectors, plain.embed(texts).vectors
    assert np.abs(r @ r.T - p @ p.T).max() <= 1e-5
    r64 = rotated.embed(texts, dimensions=64).vectors
    p64 = search.unit(p[:, :64])
    assert np.abs(r64 @ r64.T - p64 @ p64.T).max() > 0.01


def test_vectors_are_cached_by_bundle_prompt_and_texts(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder = Embedder(open_bundle(tiny_bundle))
    first = sweep.embed(embedder, TEXTS, None, "corpus", tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("embedded again")

    monkeypatch.setattr(embedder, "embed", refuse)
    assert (sweep.embed(embedder, TEXTS, None, "corpus", tmp_path) == first).all()
    with pytest.raises(AssertionError, match="embedded again"):  # another prompt: another key
        sweep.embed(embedder, TEXTS, "query", "corpus", tmp_path)


# ------------------------------------------------------------------- hostile files (issue 30)


def sweep_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str | Path
) -> str:
    """`encoderfile sweep ARGS` run in this process: its one stderr line (exit 2 checked)."""
    from encoderfile import cli as builder_cli

    monkeypatch.setattr(sys, "argv", ["encoderfile", "sweep", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        builder_cli.main()
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    err = "".join(line for line in err.splitlines(True) if not line.startswith("embedding "))
    assert err.startswith("encoderfile: ") and err.count("\n") == 1, err  # after the progress
    return err


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: (d / "qrels.tsv").write_bytes(b"h\nq0\td0\t1\nq\xff\td0\t1\n"),
            "line 3 is not UTF-8",
        ),
        (
            lambda d: (d / "queries.jsonl").write_bytes(b'{"_id": "q0", "text": "caf\xe9"}\n'),
            "line 1 is not UTF-8",
        ),
        (
            lambda d: (d / "corpus.jsonl.gz").write_bytes(b"not gzip at all\n"),
            "is not a complete gzip file",
        ),
        (
            lambda d: (d / "corpus.jsonl.gz").write_bytes(
                gzip.compress((d / "corpus.jsonl").read_bytes())[:-12]
            ),
            "is not a complete gzip file",
        ),
        (lambda d: (d / "compare.json").write_bytes(b"\xff\xfe"), "--compare"),
        (lambda d: (d / "compare.json").write_text('{"rows": 1}'), "is not a sweep result"),
        (lambda d: (d / "compare.json").write_text("[" * 100_000), "is not JSON"),
    ],
)
def test_bad_sweep_files_are_one_error_line(
    tiny_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    damage: Any,
    message: str,
) -> None:
    data = write_beir(tmp_path / "data", TEXTS, TEXTS[:1], [("q0", "d0", 1)])
    damage(data)
    corpus = (
        data / "corpus.jsonl.gz" if (data / "corpus.jsonl.gz").exists() else data / "corpus.jsonl"
    )
    compare = ["--compare", data / "compare.json"] if (data / "compare.json").exists() else []
    err = sweep_in_process(
        monkeypatch,
        capsys,
        tiny_bundle,
        *("--queries", data / "queries.jsonl", "--corpus", corpus, "--qrels", data / "qrels.tsv"),
        *compare,
    )
    assert message in err and "Traceback" not in err


def test_qrels_that_match_no_query_are_named(
    tiny_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = write_beir(tmp_path / "data", TEXTS, TEXTS[:2], [("Q-0", "d0", 1), ("Q-1", "d1", 1)])
    err = sweep_in_process(
        monkeypatch,
        capsys,
        tiny_bundle,
        *("--queries", data / "queries.jsonl", "--corpus", data / "corpus.jsonl"),
        *("--qrels", data / "qrels.tsv"),
    )
    assert "none of the 2 ids in" in err and "('q0', 'q1') is a query id in" in err
    assert "('Q-0', 'Q-1')" in err and "no usable entries" not in err


def test_missing_argument_has_one_period(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from encoderfile import cli as builder_cli

    monkeypatch.setattr(sys, "argv", ["encoderfile", "build"])
    with pytest.raises(SystemExit):
        builder_cli.main()
    err = capsys.readouterr().err
    assert "Missing argument" in err and ".." not in err and err.count("\n") == 1, err


def test_unwritable_plot_is_one_error_line(
    tiny_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = write_beir(tmp_path / "data", TEXTS, TEXTS[:1], [("q0", "d0", 1)])
    (tmp_path / "file").write_text("")
    err = sweep_in_process(
        monkeypatch,
        capsys,
        tiny_bundle,
        *("--queries", data / "queries.jsonl", "--corpus", data / "corpus.jsonl"),
        *("--qrels", data / "qrels.tsv", "--out", tmp_path / "build"),
        *("--plot", tmp_path / "file" / "plot.png"),
    )
    assert "cannot write --plot" in err and "Choose a writable path" in err
    assert (tmp_path / "file").is_file() and not list(tmp_path.rglob("*.partial-*"))


@pytest.mark.slow  # runs the CLI in a process
def test_closed_or_full_stdout_is_one_error_line(tiny_bundle: Path, tmp_path: Path) -> None:
    data = write_beir(tmp_path / "data", TEXTS, TEXTS[:1], [("q0", "d0", 1)])
    argv = [sys.executable, "-m", "encoderfile.cli", "sweep", str(tiny_bundle)]
    argv += ["--queries", str(data / "queries.jsonl"), "--corpus", str(data / "corpus.jsonl")]
    argv += ["--qrels", str(data / "qrels.tsv"), "--out", str(tmp_path / "build")]
    closed = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *argv], capture_output=True, text=True)  # fmt: skip
    with open("/dev/full", "wb") as full:
        filled = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True)
    for result, words in ((closed, "stdout is closed"), (filled, "No space left on device")):
        last = result.stderr.splitlines()[-1]  # after the progress labels
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert last.startswith("encoderfile: ") and words in last
