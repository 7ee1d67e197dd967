"""A sparse artifact's embed command (in process, on the real SPLADE bundle): JSONL terms, a
scipy-readable CSR .npz, shards with --resume, and the formats that do not apply."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from encoderfile.runtime import cli, sparse
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.embedder import Embedder

TEXTS = ["The cat sleeps on the sofa.", "a", "Where can I buy cheap flights to Lisbon?", "dogs"]


@pytest.fixture(scope="module")
def dense(splade_bundle: Path) -> np.ndarray:
    return Embedder(open_bundle(splade_bundle)).embed(TEXTS).vectors


def embed(bundle: Path, *args: str) -> int:
    return cli.main(["--bundle", str(bundle), "embed", *args])


def test_jsonl_lists_each_texts_active_terms(
    splade_bundle: Path, dense: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    assert embed(splade_bundle, *TEXTS) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(TEXTS)
    for row, vector in zip(rows, dense, strict=True):
        assert row["indices"] == np.flatnonzero(vector).tolist()
        np.testing.assert_array_equal(np.float32(row["values"]), vector[vector > 0])
        assert row["tokens"] > 0 and "embedding" not in row


def test_npz_is_a_scipy_csr_matrix(splade_bundle: Path, dense: np.ndarray, tmp_path: Path) -> None:
    out = tmp_path / "v.npz"
    assert embed(splade_bundle, *TEXTS, "--format", "npz", "--output", str(out)) == 0
    matrix = scipy.sparse.load_npz(out)
    assert matrix.format == "csr" and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix.toarray(), dense)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "npy"], "--format npy does not apply to splade-tiny, a sparse artifact"),
        (
            ["--dimensions", "100"],
            "dimensions=100 is not offered by splade-tiny. Use one of: 30522",
        ),
    ],
)
def test_dense_options_are_refused(
    splade_bundle: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert embed(splade_bundle, "x", *args, "--output", "/dev/null") == 2
    assert message in capsys.readouterr().err


def test_npz_does_not_apply_to_an_embedder(
    tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert embed(tiny_bundle, "hello", "--format", "npz", "--output", "/dev/null") == 2
    assert "Use --format jsonl or json or npy" in capsys.readouterr().err


def test_shards_are_csr_and_resume(splade_bundle: Path, dense: np.ndarray, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "out"
    args = ["--input", str(source), "--output-dir", str(out), "--shard-size", "3"]
    assert embed(splade_bundle, *args, "--id-field", "id") == 0
    parts = sorted(out.glob("part-*.npz"))
    assert [p.name for p in parts] == ["part-00000.npz", "part-00001.npz"]
    stacked = scipy.sparse.vstack([scipy.sparse.load_npz(p) for p in parts]).toarray()
    np.testing.assert_array_equal(stacked, dense)
    complete = parts[1].read_bytes()

    journal = out / "journal.jsonl"  # as if the run died before its last shard
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:2]))
    parts[1].unlink()
    assert embed(splade_bundle, *args, "--id-field", "id", "--resume") == 0
    assert parts[1].read_bytes() == complete
    assert json.loads(journal.read_text().splitlines()[-1])["done"] is True


def test_csr_npz_of_no_rows_loads() -> None:
    import io

    matrix = scipy.sparse.load_npz(io.BytesIO(sparse.csr_npz([], [], [], 7)))
    assert matrix.shape == (0, 7) and matrix.nnz == 0
