"""The runtime's `rerank` command: in process (progress on a terminal), then on the one frozen
reranker artifact of the session: JSONL out best first or in input order, --top-n, scores equal
to the Reranker's, and `embed` / `verify` / `info` on a reranker."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from encoderfile.runtime import cli, records
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.reranker import Reranker
from tests.fixtures.artifacts import run_artifact
from tests.runtime.test_cli import Run
from tests.runtime.test_cli import run as run  # noqa: PLC0414 - the `run` fixture
from tests.runtime.test_search import index_of

QUERY = "what does a cross-encoder do?"
DOCS = [
    {"id": "banana", "text": "Bananas are rich in potassium."},
    {"id": "ce", "text": "A cross-encoder reads the query and the document together."},
    {"id": "long", "text": " ".join(f"sentence {i} of a long document" for i in range(20))},
    {"id": "hi", "text": "hi"},
]
JSONL = "".join(json.dumps(d) + "\n" for d in DOCS).encode()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal(reranker_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "CHUNK", 2)
    clock = iter(range(100))
    monkeypatch.setattr(records.time, "monotonic", lambda: float(next(clock)))
    terminal = _Terminal()
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(JSONL)))
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, write_through=True))
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(["--bundle", str(reranker_bundle), "rerank", QUERY]) == 0
    assert "\r2 documents scored" in terminal.getvalue()
    assert "\r4 documents scored" in terminal.getvalue()
    assert len(out.getvalue().splitlines()) == len(DOCS)


@pytest.fixture(scope="module")
def expected(reranker_bundle: Path) -> np.ndarray:
    reranker = Reranker(open_bundle(reranker_bundle), threads=1)
    return reranker.rerank(QUERY, [d["text"] for d in DOCS]).scores


def test_frozen_rerank(
    reranker_artifact: Path, artifact_env: dict[str, str], expected: np.ndarray
) -> None:
    done = run_artifact(
        reranker_artifact, "rerank", QUERY, "--id-field", "id", input=JSONL, env=artifact_env
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    best = list(np.argsort(-expected, kind="stable"))
    assert [r["index"] for r in rows] == best
    assert [r["id"] for r in rows] == [DOCS[i]["id"] for i in best]
    np.testing.assert_allclose([r["score"] for r in rows], expected[best], atol=1e-6)
    assert "truncated 1 input(s) longer than 48 tokens (stdin line 3)" in done.stderr.decode()

    top = run_artifact(
        reranker_artifact,
        "rerank",
        QUERY,
        "--top-n",
        "2",
        "--input-order",
        "--return-text",
        input=JSONL,
        env=artifact_env,
    )
    rows = [json.loads(line) for line in top.stdout.splitlines()]
    assert [r["index"] for r in rows] == sorted(best[:2])
    assert [r["text"] for r in rows] == [DOCS[i]["text"] for i in sorted(best[:2])]

    refused = run_artifact(
        reranker_artifact, "rerank", QUERY, "--no-truncate", input=JSONL, env=artifact_env
    )
    assert refused.returncode == 2 and b"stdin line 3 with the query is longer" in refused.stderr


def test_frozen_reranker_other_commands(
    reranker_artifact: Path, artifact_env: dict[str, str]
) -> None:
    embed = run_artifact(reranker_artifact, "embed", "hello", env=artifact_env)
    assert embed.returncode == 2
    assert (
        b"tiny-reranker is a reranker artifact" in embed.stderr and b"rerank QUERY" in embed.stderr
    )
    assert len(embed.stderr.splitlines()) == 1
    verify = run_artifact(reranker_artifact, "verify", env=artifact_env)
    assert verify.returncode == 0 and b"golden pairs" in verify.stdout, verify.stderr
    info = json.loads(run_artifact(reranker_artifact, "info", "--json", env=artifact_env).stdout)
    assert info["kind"] == "reranker" and info["score"]["activation"] == "sigmoid"
    bom = json.loads(run_artifact(reranker_artifact, "sbom", env=artifact_env).stdout)
    model = next(c for c in bom["components"] if c["bom-ref"] == "model")
    props = {p["name"]: p["value"] for p in model["properties"]}
    assert props["encoderfile:kind"] == "reranker" and "sigmoid" in props["encoderfile:score"]


def test_rerank_on_an_embedder_names_its_kind(run: Run) -> None:
    line = run("rerank", "q", stdin=JSONL).one_error_line()
    assert "tiny is an embedder artifact, and this command needs a reranker" in line


def test_frozen_reranker_runs_air_gapped(
    reranker_artifact: Path, artifact_env: dict[str, str], tmp_path: Path
) -> None:
    """No network namespace, an empty environment and HOME: rerank and verify still work."""
    from tests.test_freeze import air_gapped

    bare, _ = air_gapped(tmp_path)
    expected = run_artifact(reranker_artifact, "rerank", QUERY, input=JSONL, env=artifact_env)
    offline = run_artifact(reranker_artifact, "rerank", QUERY, input=JSONL, env={}, prefix=bare)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == expected.stdout
    assert run_artifact(reranker_artifact, "verify", env={}, prefix=bare).returncode == 0


def test_search_reranks_the_dense_shortlist(
    run: Run, tmp_path: Path, reranker_bundle: Path
) -> None:
    """search --rerank: the embedder's hits re-scored by the cross-encoder, best first."""
    texts = ["hello world", "the quick brown fox", "lazy dog", "a b c", "jumps over"]
    index = index_of(run, tmp_path, texts)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    query = "the quick fox"
    args = ["search", "--index", str(index), "-k", "2", "--rerank", str(reranker_bundle)]
    done = run(*args, "--corpus", str(corpus), "--rerank-shortlist", "4", query)
    assert done.rc == 0, done.err
    (line,) = done.jsonl()
    dense = run("search", "--index", str(index), "-k", "4", query).jsonl()[0]["hits"]
    shortlist = [h["id"] for h in dense]
    scores = (
        Reranker(open_bundle(reranker_bundle), threads=1)
        .rerank(query, [texts[i] for i in shortlist])
        .scores
    )
    best = [shortlist[i] for i in np.argsort(-scores, kind="stable")[:2]]
    assert [h["id"] for h in line["hits"]] == best
    assert [h["dense_score"] for h in line["hits"]] == [
        next(d["score"] for d in dense if d["id"] == i) for i in best
    ]
    missing = run(*args, query)
    assert missing.rc == 2 and "--rerank needs --corpus" in missing.err
