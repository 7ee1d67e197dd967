"""Embedder: tokenize, batch by length, run the graph; prompts, Matryoshka dims, truncation."""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from encoderfile.errors import ArtifactError, RequestError
from encoderfile.runtime import embedder as embedder_module
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.embedder import BATCH_SIZE, BATCH_TOKENS, Embedder
from encoderfile.runtime.session import all_finite, available_cpus
from tests.fixtures.tiny_bundle import WORDS, make_tiny_bundle


def embedder(tmp_path: Path, **overrides: object) -> Embedder:
    return Embedder(open_bundle(make_tiny_bundle(tmp_path / "b", **overrides)), threads=1)


COLUMN = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def texts(n: int) -> list[str]:
    rng = np.random.default_rng(1)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 12))) for _ in range(n)]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"token_type_ids": True}, {"padding_side": "left"}, {"normalized": False}],
    ids=["plain", "token-type-ids", "left-padding", "not-normalized"],
)
def test_golden_vectors_reproduce(tmp_path: Path, overrides: dict) -> None:
    e = embedder(tmp_path, **overrides)
    golden = e.manifest.golden
    assert golden is not None
    got = e.embed_raw(list(golden.inputs))
    np.testing.assert_allclose(got, np.array(golden.vectors), atol=1e-6)


def test_rows_keep_input_order_and_ignore_batch_neighbours(tmp_path: Path) -> None:
    e = embedder(tmp_path, padding_side="left")
    inputs = texts(3 * BATCH_SIZE + 5)
    together = e.embed(inputs)
    alone = np.stack([e.embed([t]).vectors[0] for t in inputs])
    np.testing.assert_allclose(together.vectors, alone, atol=1e-6)
    assert together.vectors.dtype == np.float32 and together.vectors.shape == (len(inputs), 8)
    assert together.tokens == [len(t.split()) + 2 for t in inputs]  # [CLS] … [SEP]


def test_inputs_of_one_length_are_fed_as_they_are_and_shorter_ones_padded(tmp_path: Path) -> None:
    e = embedder(tmp_path, token_type_ids=True, padding_side="left")
    two, other_two, one = e.tokenize(["fox dog", "dog fox", "fox"])
    same = e._feed([two, other_two])
    padded = e._feed([two, one])
    assert set(same) == set(padded) == {"input_ids", "attention_mask", "token_type_ids"}
    for name, array in same.items():
        assert array.dtype == padded[name].dtype == np.int64
        assert array.tolist() == [getattr(two, COLUMN[name]), getattr(other_two, COLUMN[name])]
        assert padded[name][0].tolist() == array[0].tolist()
    assert padded["attention_mask"][1].tolist() == [0, 1, 1, 1]  # left padding
    assert padded["input_ids"][1, 1:].tolist() == one.ids


def test_prompt_is_a_prefix(tmp_path: Path) -> None:
    e = embedder(tmp_path)
    got = e.embed(["fox"], prompt="query").vectors
    np.testing.assert_array_equal(got, e.embed_raw(["search query fox"]))
    assert e.embed(["fox"], prompt="query").tokens == [5]


def test_default_prompt_applies_when_none_is_named(tmp_path: Path) -> None:
    e = embedder(tmp_path, default_prompt="document")
    np.testing.assert_array_equal(e.embed(["fox"]).vectors, e.embed_raw(["document fox"]))
    np.testing.assert_array_equal(
        e.embed(["fox"], prompt="query").vectors, e.embed_raw(["search query fox"])
    )


def test_unknown_prompt_lists_the_names(tmp_path: Path) -> None:
    with pytest.raises(RequestError, match="unknown prompt 'nope'. Use one of: document, query"):
        embedder(tmp_path).embed(["fox"], prompt="nope")


def test_matryoshka_prefix_is_renormalised(tmp_path: Path) -> None:
    e = embedder(tmp_path)
    full = e.embed(["the quick fox"]).vectors
    half = e.embed(["the quick fox"], dimensions=4).vectors
    expected = full[:, :4] / np.linalg.norm(full[:, :4], axis=1, keepdims=True)
    np.testing.assert_allclose(half, expected, atol=1e-6)
    assert e.embed(["fox"], dimensions=8).vectors.shape == (1, 8)


def test_matryoshka_prefix_without_normalisation(tmp_path: Path) -> None:
    e = embedder(tmp_path, normalized=False)
    full = e.embed(["the quick fox"]).vectors
    np.testing.assert_array_equal(e.embed(["the quick fox"], dimensions=4).vectors, full[:, :4])


def test_dimension_not_offered_lists_the_allowed(tmp_path: Path) -> None:
    with pytest.raises(RequestError, match="dimensions=3 is not offered by tiny. Use one of: 8, 4"):
        embedder(tmp_path).embed(["fox"], dimensions=3)


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_text_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(RequestError, match="input 1 is empty"):
        embedder(tmp_path).embed(["fox", text])


def test_long_text_is_truncated_or_refused(tmp_path: Path) -> None:
    e = embedder(tmp_path, max_length=6)
    result = e.embed(["fox", "a b c a b c a b c"])
    assert result.truncated == [False, True]
    assert result.tokens == [3, 6]
    with pytest.raises(RequestError, match="input 1 is longer than max_length=6"):
        e.embed(["fox", "a b c a b c a b c"], truncate=False)
    assert e.embed(["a b c a"], truncate=False).truncated == [False]  # exactly 6 tokens


def test_model_batches_sort_by_length_within_size_and_padded_token_budget() -> None:
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.choice([5, 20, 256, 512], size=500)]
    batches = list(embedder_module._batches(lengths))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= BATCH_SIZE
        assert len(batch) * longest <= BATCH_TOKENS or len(batch) == 1
    padded = [lengths[i] for b in batches for i in b]
    assert padded == sorted(padded), "inputs of similar length share a call"
    assert max(len(b) for b in batches) == BATCH_SIZE  # short texts fill whole batches
    assert max(len(b) for b in batches if lengths[b[0]] == 512) == BATCH_TOKENS // 512


def _least_cost(lengths: list[int], size: int, tokens: int) -> int:
    """Brute force: the least total call_cost over every cut of the sorted lengths."""
    ascending = sorted(lengths)
    best = None
    for cuts in itertools.product([False, True], repeat=len(ascending) - 1):
        groups, start = [], 0
        for i, cut in enumerate([*cuts, True]):
            if cut:
                groups.append(ascending[start : i + 1])
                start = i + 1
        if all(len(g) <= size and (len(g) == 1 or len(g) * g[-1] <= tokens) for g in groups):
            cost = sum(embedder_module.call_cost(len(g), g[-1]) for g in groups)
            best = cost if best is None else min(best, cost)
    assert best is not None
    return best


def test_cheapest_batches_are_the_least_cost_cut() -> None:
    rng = np.random.default_rng(1)
    for _ in range(40):
        lengths = [int(n) for n in rng.integers(3, 120, size=int(rng.integers(1, 11)))]
        size, tokens = int(rng.integers(2, 6)), int(rng.integers(100, 400))
        groups = list(embedder_module.cheapest_batches(lengths, size, tokens))
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        ordered = [lengths[i] for g in groups for i in g]
        assert ordered == sorted(ordered)
        cost = sum(embedder_module.call_cost(len(g), max(lengths[i] for i in g)) for g in groups)
        assert cost == _least_cost(lengths, size, tokens)
        for g in groups:
            assert len(g) <= size and (len(g) == 1 or len(g) * max(lengths[i] for i in g) <= tokens)
    # a spread costs a call where it pads: 3 short and 3 long rows go in two calls, not one
    assert [len(g) for g in embedder_module.cheapest_batches([5, 6, 5, 90, 91, 90])] == [3, 3]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, None),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 2),
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ],
    ids=["no-cgroup", "v2-unlimited", "v2-1.5-cpus", "v2-half-cpu", "v1-1-cpu", "v1-unlimited"],
)
def test_default_threads_follow_affinity_and_cgroup_quota(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    cpus = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == (cpus if expected is None else min(cpus, expected))


def test_threads_set_intra_op_threads(tmp_path: Path) -> None:
    e = Embedder(open_bundle(make_tiny_bundle(tmp_path / "b")), threads=2)
    assert e._session.get_session_options().intra_op_num_threads == 2


def test_empty_request_gives_an_empty_matrix(tmp_path: Path) -> None:
    result = embedder(tmp_path).embed([])
    assert result.vectors.shape == (0, 8) and result.tokens == []


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_graph_answering_nan_or_infinity_is_an_artifact_error(tmp_path: Path, bad: float) -> None:
    e = embedder(tmp_path, normalized=False)
    session = e._session

    class Broken:  # the bundle's graph, with one value of its answer spoiled
        def run(self, *args: object) -> list[np.ndarray]:
            (out,) = session.run(*args)
            out[-1, 3] = bad
            return [out]

    e._session = Broken()  # type: ignore[assignment]
    with pytest.raises(ArtifactError, match="NaN or infinite values. Rebuild the bundle"):
        e.embed(["one text", "another text"])


def test_huge_finite_values_are_finite() -> None:
    values = np.full((2, 8), 1e30, np.float32)  # the quick sum of squares overflows here
    assert all_finite(values)
    values[1, 5] = np.inf
    assert not all_finite(values)


def test_bulk_lanes_run_side_by_side_and_give_the_same_bits(tmp_path: Path) -> None:
    bundle = open_bundle(make_tiny_bundle(tmp_path / "b"))
    one = Embedder(bundle, threads=1)
    bulk = embedder_module.for_bulk(bundle, threads=2)
    threads_seen: set[str] = set()
    opened: list[object] = []

    def open_lane() -> object:  # the lanes' session, saying which thread runs each call
        session = embedder_module.ModelCache(bundle).open(1)

        class Watched:
            def run(self, *args: object) -> object:
                threads_seen.add(threading.current_thread().name)
                time.sleep(0.002)  # the tiny model is quick: let both lanes take batches
                return session.run(*args)

        opened.append(Watched())
        return opened[-1]

    bulk.spread(open_lane, 2)
    few = texts(BATCH_SIZE * (embedder_module.LANES_FROM - 1))  # too few calls for lanes
    np.testing.assert_array_equal(bulk.embed(few).vectors, one.embed(few).vectors)
    assert not threads_seen and not opened
    many = texts(BATCH_SIZE * embedder_module.LANES_FROM * 3 + 5)
    for _ in range(2):
        np.testing.assert_array_equal(bulk.embed(many).vectors, one.embed(many).vectors)
    assert len(threads_seen) == 2 and all(t.startswith("encoderfile-lane") for t in threads_seen)
    assert len(opened) == 1, "the lanes share one session, opened once"


def test_an_error_in_one_lane_fails_the_call_and_stops_the_others(tmp_path: Path) -> None:
    bundle = open_bundle(make_tiny_bundle(tmp_path / "b"))
    bulk = embedder_module.for_bulk(bundle, threads=2)
    calls: list[str] = []

    class FailsOnce:
        session = embedder_module.ModelCache(bundle).open(1)

        def run(self, *args: object) -> object:
            calls.append(threading.current_thread().name)
            if len(calls) == 1:
                raise RuntimeError("lane failed")
            time.sleep(0.02)
            return self.session.run(*args)

    bulk.spread(FailsOnce, 2)
    many = texts(BATCH_SIZE * embedder_module.LANES_FROM * 4)  # 64+ lane calls: over 1 s
    with pytest.raises(RuntimeError, match="lane failed"):
        bulk.embed(many)
    time.sleep(0.3)
    assert len(calls) <= 3, "the other lane stops once one has failed"
