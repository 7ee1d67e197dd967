"""Exact and funnel search: known answers on synthetic vectors, and `<artifact> search`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from encoderfile.errors import RequestError
from encoderfile.runtime import search
from tests.fixtures.artifacts import make_tiny_bundle, run_artifact
from tests.runtime.test_boundary import (
    BUILDER_LIBRARIES,
    SERVING,
    build_side,
    loaded_modules,
    matching,
)
from tests.runtime.test_cli import Run, reference
from tests.runtime.test_cli import run as run  # noqa: PLC0414 - the `run` fixture


def brute_force(index: np.ndarray, queries: np.ndarray, dim: int, k: int) -> np.ndarray:
    scores = search.unit(queries[:, :dim]) @ search.unit(index[:, :dim]).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.fixture
def vectors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((1000, 32)).astype(np.float32), rng.standard_normal((7, 32)).astype(
        np.float32
    )


def test_scan_equals_brute_force_across_chunks(
    vectors: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    index, queries = vectors
    monkeypatch.setattr(search, "SCORES_PER_CHUNK", 7 * 128)  # 8 chunks of 128 rows
    for dim in (32, 8):
        rows, scores = search.scan(index, queries, dim, 10)
        assert (rows == brute_force(index, queries, dim, 10)).all()
        assert np.all(np.diff(scores, axis=1) <= 0)


def test_top_k_breaks_ties_by_lower_row() -> None:
    rows, scores = search.top_k(np.array([[0.5, 0.9, 0.5, 0.9, 0.1]], np.float32), 3)
    assert rows.tolist() == [[1, 3, 0]] and scores[0].tolist() == pytest.approx([0.9, 0.9, 0.5])


def test_funnel_reranks_the_shortlist_at_full_width() -> None:
    # Row 0 wins on the first 2 dims but loses at full width; rows 1 and 2 tie on the prefix.
    index = np.array(
        [[1.0, 0.0, -1.0, 0.0], [0.9, 0.1, 1.0, 0.0], [0.9, 0.1, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]],
        np.float32,
    )
    query = np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)
    rows, scores = search.funnel(index, query, shortlist_dim=2, shortlist=3, k=2)
    assert rows.tolist() == [[1, 2]]
    assert scores[0, 0] == pytest.approx(float(search.unit(index[1:2])[0] @ search.unit(query)[0]))
    narrow, _ = search.funnel(index, query, shortlist_dim=2, shortlist=1, k=1)
    assert narrow.tolist() == [[0]]  # a shortlist of 1 keeps the prefix's winner only


def test_funnel_with_the_whole_index_shortlisted_is_exhaustive(
    vectors: tuple[np.ndarray, np.ndarray],
) -> None:
    index, queries = vectors
    rows, _ = search.funnel(index, queries, 4, len(index), 10)
    assert (rows == brute_force(index, queries, 32, 10)).all()


def test_scan_cost() -> None:
    assert search.scan_cost(1000, 384, 64, 100) == pytest.approx(
        (1000 * 64 + 100 * 384) / (1000 * 384)
    )
    assert search.scan_cost(1000, 384, 384, 100) == 1.0


def test_index_is_memory_mapped_and_checked(tmp_path: Path) -> None:
    np.save(tmp_path / "ok.npy", np.ones((3, 4), np.float32))
    assert isinstance(search.open_index(tmp_path / "ok.npy"), np.memmap)
    np.save(tmp_path / "f64.npy", np.ones((3, 4)))
    with pytest.raises(RequestError, match=r"holds float64 \[3, 4\]; search needs float32"):
        search.open_index(tmp_path / "f64.npy")
    (tmp_path / "bad.npy").write_text("not numpy")
    with pytest.raises(RequestError, match="is not a .npy file"):
        search.open_index(tmp_path / "bad.npy")


# --------------------------------------------------------------------------- the artifact's CLI


def index_of(run: Run, tmp_path: Path, texts: list[str], *args: str) -> Path:
    path = tmp_path / "index.npy"
    assert run("embed", "--format", "npy", "--output", str(path), *args, *texts).rc == 0
    return path


TEXTS = ["hello world", "the quick brown fox", "lazy dog", "a b c", "jumps over", "search query"]


def test_search_finds_each_text_first(run: Run, tmp_path: Path, tiny_bundle: Path) -> None:
    index = index_of(run, tmp_path, TEXTS)
    ids = tmp_path / "ids.jsonl"
    ids.write_text("".join(json.dumps({"id": f"doc-{i}"}) + "\n" for i in range(len(TEXTS))))
    result = run("search", "--index", str(index), "--ids", str(ids), "-k", "3", *TEXTS[:3])
    assert result.rc == 0, result.err
    lines = result.jsonl()
    assert [line["query"] for line in lines] == TEXTS[:3]
    assert [line["hits"][0]["id"] for line in lines] == ["doc-0", "doc-1", "doc-2"]
    assert all(len(line["hits"]) == 3 for line in lines)
    assert lines[0]["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    # scores are the cosines of the artifact's own vectors
    vectors = reference(tiny_bundle, TEXTS)
    expected = vectors @ vectors[1]
    assert [h["score"] for h in lines[1]["hits"]] == pytest.approx(
        sorted(expected, reverse=True)[:3], abs=1e-5
    )


def test_funnel_search_from_stdin_and_row_numbers(run: Run, tmp_path: Path) -> None:
    index = index_of(run, tmp_path, TEXTS)
    stdin = "\n".join(TEXTS).encode() + b"\n"
    exhaustive = run("search", "--index", str(index), "-k", "6", stdin=stdin).jsonl()
    funnel = run(
        "search",
        "--index",
        str(index),
        "--shortlist-dim",
        "4",
        "--shortlist",
        "6",
        "-k",
        "6",
        stdin=stdin,
    ).jsonl()
    assert funnel == exhaustive  # K = every row: the funnel is exact
    assert [line["hits"][0]["id"] for line in funnel] == list(range(len(TEXTS)))


def test_search_an_index_of_a_smaller_width(run: Run, tmp_path: Path) -> None:
    index = index_of(run, tmp_path, TEXTS, "--dimensions", "4")
    lines = run("search", "--index", str(index), "lazy dog").jsonl()
    assert lines[0]["hits"][0]["id"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shortlist-dim", "4"], "--shortlist-dim and --shortlist go together"),
        (
            ["--shortlist-dim", "8", "--shortlist", "5"],
            "--shortlist-dim 8 is not below the index width 8",
        ),
        (
            ["--shortlist-dim", "4", "--shortlist", "5", "-k", "6"],
            "--shortlist 5 is smaller than -k 6",
        ),
        (["--prompt", "nope"], "unknown prompt 'nope'"),
    ],
)
def test_bad_search_arguments(run: Run, tmp_path: Path, args: list[str], message: str) -> None:
    index = index_of(run, tmp_path, TEXTS)
    assert message in run("search", "--index", str(index), *args, "hello").one_error_line()


def test_index_width_and_ids_must_match(run: Run, tmp_path: Path) -> None:
    np.save(tmp_path / "wide.npy", np.ones((2, 5), np.float32))
    err = run("search", "--index", str(tmp_path / "wide.npy"), "hello").one_error_line()
    assert "has width 5, which this model does not give" in err and "Use one of: 8, 4" in err
    index = index_of(run, tmp_path, TEXTS)
    (tmp_path / "ids.jsonl").write_text('"a"\n"b"\n')
    err = run(
        "search", "--index", str(index), "--ids", str(tmp_path / "ids.jsonl"), "x"
    ).one_error_line()
    assert "has 2 lines but the index has 6 rows" in err


@pytest.mark.slow  # runs the runtime in a process
def test_search_imports_no_builder_and_no_server(
    run: Run,
    tiny_bundle: Path,
    tmp_path: Path,
) -> None:
    index = index_of(run, tmp_path, TEXTS)
    args = ("--bundle", str(tiny_bundle), "search", "--index", str(index), "hello")
    modules = loaded_modules(tmp_path, *args)
    assert "encoderfile.runtime.search" in modules
    assert build_side(modules) == []
    assert matching(modules, BUILDER_LIBRARIES + SERVING) == []


@pytest.mark.slow
def test_frozen_artifact_indexes_and_searches(
    tiny_artifact: Path, artifact_env: dict[str, str], tmp_path: Path
) -> None:
    index = tmp_path / "index.npy"
    texts = "\n".join(TEXTS).encode() + b"\n"
    embedded = run_artifact(
        tiny_artifact, "embed", "--format", "npy", "-o", str(index), env=artifact_env, input=texts
    )
    assert embedded.returncode == 0, embedded.stderr
    found = run_artifact(
        tiny_artifact,
        *("search", "--index", str(index), "--shortlist-dim", "4", "--shortlist", "10"),
        *("-k", "2", "lazy dog", "jumps over"),
        env=artifact_env,
    )
    assert found.returncode == 0, found.stderr
    lines = [json.loads(line) for line in found.stdout.decode().splitlines()]
    assert [line["hits"][0]["id"] for line in lines] == [2, 4]
    assert all(len(line["hits"]) == 2 for line in lines)


# ------------------------------------------------------------------- hostile files (issue 30)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'"a"\n"b\xff"\n', "line 2 is not UTF-8 (byte 3)"),
        (b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}\n", "is a .npy file, not ids"),
        (b'"a"\n' + b"[" * 100_000 + b"\n", "line 2 is not JSON"),
    ],
)
def test_bad_ids_file_is_one_error_line(
    run: Run, tmp_path: Path, content: bytes, message: str
) -> None:
    index = index_of(run, tmp_path, TEXTS[:2])
    (tmp_path / "ids.jsonl").write_bytes(content)
    err = run(
        "search", "--index", str(index), "--ids", str(tmp_path / "ids.jsonl"), "x"
    ).one_error_line()
    assert message in err


def test_ids_pointing_at_the_index_is_one_error_line(run: Run, tmp_path: Path) -> None:
    index = index_of(run, tmp_path, TEXTS)
    err = run("search", "--index", str(index), "--ids", str(index), "x").one_error_line()
    assert "is a .npy file, not ids" in err


def test_text_file_as_index_is_one_clean_line(run: Run, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not numpy\n")
    err = run("search", "--index", str(tmp_path / "notes.txt"), "x").one_error_line()
    assert "is not a .npy file" in err and "pickle" not in err
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    err = run("search", "--index", str(tmp_path / "objects.npy"), "x").one_error_line()
    assert "holds Python objects" in err and "allow_pickle" not in err


@pytest.mark.filterwarnings("error")  # no RuntimeWarning from numpy either
def test_inf_or_nan_row_is_one_error_line(run: Run, tmp_path: Path) -> None:
    index = np.ones((4, 8), np.float32)
    index[2, 3] = np.inf
    np.save(tmp_path / "inf.npy", index)
    for funnel in ([], ["--shortlist-dim", "4", "--shortlist", "4", "-k", "2"]):
        err = run("search", "--index", str(tmp_path / "inf.npy"), *funnel, "x").one_error_line()
        assert "--index row 2 holds inf or NaN" in err
    index[2, 3] = 3e38  # huge but finite: no overflow in the norm
    np.save(tmp_path / "huge.npy", index)
    assert run("search", "--index", str(tmp_path / "huge.npy"), "x").rc == 0


def test_index_of_another_models_width_is_refused(run: Run, tmp_path: Path) -> None:
    """An unrestricted artifact gives every width from 1 up, so the width alone would accept any
    narrower model's index: search takes the built and listed widths, others by --dimensions."""
    bundle = make_tiny_bundle(tmp_path / "open", restrict_dimensions=False)
    np.save(tmp_path / "other.npy", np.ones((2, 5), np.float32))
    other = str(tmp_path / "other.npy")
    err = run("search", "--index", other, "x", bundle=bundle).one_error_line()
    assert "has width 5, which is none of tiny's widths (8, 4)" in err
    assert "pass --dimensions 5" in err
    ok = run("search", "--index", other, "--dimensions", "5", "x", bundle=bundle)
    assert ok.rc == 0, ok.err
    err = run("search", "--index", other, "--dimensions", "4", "x", bundle=bundle).one_error_line()
    assert "has width 5, not --dimensions 4" in err
    assert (
        run(
            "search",
            "--index",
            str(index_of(run, tmp_path, TEXTS, "--dimensions", "4")),
            "x",
            bundle=bundle,
        ).rc
        == 0
    )
