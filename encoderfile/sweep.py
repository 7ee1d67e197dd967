"""`encoderfile sweep`: retrieval quality against vector width and precision, from one embedding pass.

Corpus and queries are embedded once at the bundle's full width; a width d is the first d values,
re-normalised (what the runtime's `dimensions` returns). Every score is a cosine similarity.
    float32  exact search over the d-wide vectors.
    int8     per-dimension symmetric scale s_j = max_i |x_ij| / 127 over the corpus,
             code = round(x / s); queries stay float, score = sum_j q_j s_j code_j.
    binary   sign bits packed 8 a byte; score = d - 2 * hamming(sign q, sign x).
    Quantized rows shortlist `rescore` documents (default 100), re-ranked by full-width float32
    cosine, so they cost the quantized scan plus `rescore` full-width dot products a query.
    funnel   D:K: float32 cosine on the first D values over the corpus, the K best re-ranked at
             full width (encoderfile.runtime.search, what `<artifact> search` runs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from encoderfile import retrieval
from encoderfile.errors import EvaluationError
from encoderfile.runtime import search
from encoderfile.runtime.embedder import Embedder

NDCG_K = 10
RECALL_K = 100
RESCORE_DEPTH = 100
EMBED_CHUNK = 256
PRECISIONS = ("float32", "int8", "binary")
TIMING_PASSES = 3


@dataclass(frozen=True)
class Row:
    precision: str  # float32 | int8 | binary
    dims: int
    ndcg: float
    recall: float
    bytes_per_vector: int
    ms_per_query: float


@dataclass(frozen=True)
class FunnelRow:
    shortlist_dim: int
    shortlist: int
    ndcg: float
    recall: float
    scan_cost: float  # multiply-adds relative to exhaustive full-width search


def parse_funnels(spec: str | None) -> list[tuple[int, int]]:
    """'64:100,128:50' -> [(64, 100), (128, 50)]."""
    if not spec:
        return []
    funnels = []
    for part in spec.split(","):
        try:
            d, k = (int(x) for x in part.split(":"))
        except ValueError:
            raise EvaluationError(
                f"--funnel {part!r} is not D:K. Write e.g. --funnel 64:100,128:50."
            ) from None
        if d < 1 or k < NDCG_K:
            raise EvaluationError(
                f"--funnel {part!r}: D must be at least 1 and K at least {NDCG_K}. Fix the values."
            )
        funnels.append((d, k))
    return funnels


def check_dims(dims: Sequence[int], width: int) -> list[int]:
    bad = [d for d in dims if not 1 <= d <= width]
    if bad:
        raise EvaluationError(
            f"--dims {bad[0]} is outside 1..{width}, the model's width. Use widths up to {width}."
        )
    return sorted(set(dims), reverse=True)


def embed(
    embedder: Embedder,
    texts: Sequence[str],
    prompt: str | None,
    label: str,
    cache: Path | None = None,
) -> np.ndarray:
    """Full-width float32 vectors, with a progress bar on stderr; kept in `cache` keyed by the
    bundle's file hashes, the prompt and the texts, so a rerun on the same data embeds nothing."""
    import typer

    key = json.dumps([embedder.manifest.files, prompt, list(texts)], sort_keys=True)
    cached = cache / f"{hashlib.sha256(key.encode()).hexdigest()}.npy" if cache else None
    if cached is not None and cached.is_file():
        return np.load(cached)
    out = np.empty((len(texts), embedder.manifest.dimension), np.float32)
    with typer.progressbar(length=len(texts), label=label, file=sys.stderr) as bar:
        for start in range(0, len(texts), EMBED_CHUNK):
            chunk = texts[start : start + EMBED_CHUNK]
            out[start : start + len(chunk)] = embedder.embed(chunk, prompt=prompt).vectors
            bar.update(len(chunk))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".partial-{os.getpid()}.npy")
        np.save(partial, out)
        partial.replace(cached)
    return out


def run(
    embedder: Embedder,
    queries: retrieval.Collection,
    corpus: retrieval.Collection,
    qrels: retrieval.Qrels,
    *,
    dims: Sequence[int] | None = None,
    funnels: Sequence[tuple[int, int]] = (),
    rescore: int = RESCORE_DEPTH,
    query_prompt: str | None = None,
    doc_prompt: str | None = None,
    cache: Path | None = None,
    reranker: Any = None,
    rerank_depth: int = RESCORE_DEPTH,
) -> dict[str, Any]:
    """Embed once, then evaluate every width x precision, and every funnel; with a `reranker`
    (runtime.reranker.Reranker), the full-width top `rerank_depth` re-scored by it."""
    width = embedder.manifest.dimension
    widths = check_dims(dims or embedder.manifest.dimensions, width)
    for d, _ in funnels:
        check_dims([d], width)
    started = time.perf_counter()
    docs = search.unit(embed(embedder, corpus.texts, doc_prompt, "embedding corpus ", cache))
    q_full = search.unit(embed(embedder, queries.texts, query_prompt, "embedding queries", cache))
    embed_seconds = time.perf_counter() - started

    def judge(ranked_rows: np.ndarray) -> tuple[float, float]:
        run = {
            q: [corpus.ids[r] for r in rows]
            for q, rows in zip(queries.ids, ranked_rows, strict=True)
        }
        scores = retrieval.evaluate(run, qrels, NDCG_K, RECALL_K)
        return scores[f"ndcg@{NDCG_K}"], scores[f"recall@{RECALL_K}"]

    rows: list[Row] = []
    for d in widths:
        x, q = search.unit(docs[:, :d]), search.unit(q_full[:, :d])
        for precision in PRECISIONS:
            score, bytes_per_vector = _scorer(precision, x, q)
            depth = RECALL_K if precision == "float32" else max(rescore, RECALL_K)
            ranked, ms = _timed_search(score, len(q), depth)
            if precision != "float32":
                ranked = _rescore(docs, q_full, ranked, RECALL_K)
            rows.append(Row(precision, d, *judge(ranked), bytes_per_vector, ms))

    funnel_rows = []
    for d, k in funnels:
        found, _ = search.funnel(docs, q_full, d, k, min(k, RECALL_K))
        cost = search.scan_cost(len(docs), width, d, k)
        funnel_rows.append(FunnelRow(d, k, *judge(found), cost))
    reranked = None
    if reranker is not None:
        shortlist, _ = search.scan(docs, q_full, width, min(rerank_depth, len(docs)))
        started = time.perf_counter()
        rescored: list[np.ndarray] = []
        for text, rows_of_query in zip(queries.texts, shortlist, strict=True):
            found_scores = reranker.rerank(text, [corpus.texts[r] for r in rows_of_query]).scores
            rescored.append(rows_of_query[np.argsort(-found_scores, kind="stable")])
        seconds = time.perf_counter() - started
        ndcg, recall = judge(np.stack(rescored))
        reranked = {
            "model": reranker.manifest.name,
            "depth": min(rerank_depth, len(docs)),
            "ndcg": ndcg,
            "recall": recall,
            "ms_per_query": round(seconds * 1000 / max(len(rescored), 1), 3),
            "pairs_per_second": round(len(rescored) * shortlist.shape[1] / max(seconds, 1e-9), 1),
        }
    return {
        "model": embedder.manifest.name,
        "width": width,
        "queries": len(queries.ids),
        "documents": len(corpus.ids),
        "ndcg_k": NDCG_K,
        "recall_k": RECALL_K,
        "rescore_depth": rescore,
        "embed_seconds": round(embed_seconds, 1),
        "rows": [asdict(r) for r in rows],
        "funnel": [asdict(r) for r in funnel_rows],
        **({"rerank": reranked} if reranked else {}),
    }


def _scorer(
    precision: str, x: np.ndarray, q: np.ndarray
) -> tuple[Callable[[int], np.ndarray], int]:
    """A function from query number to its scores over the corpus, and the bytes per vector."""
    d = x.shape[1]
    if precision == "float32":
        return (lambda i: x @ q[i]), 4 * d
    if precision == "int8":
        scale = np.maximum(np.abs(x).max(axis=0), np.float32(1e-12)) / np.float32(127)
        codes = np.round(x / scale).astype(np.int8)
        scaled_q = q * scale
        return (lambda i: codes @ scaled_q[i]), d
    bits = np.packbits(x > 0, axis=1)
    q_bits = np.packbits(q > 0, axis=1)
    return (lambda i: d - 2 * np.bitwise_count(bits ^ q_bits[i]).sum(axis=1, dtype=np.int32)), (
        bits.shape[1]
    )


def _timed_search(
    score: Callable[[int], np.ndarray], queries: int, depth: int
) -> tuple[np.ndarray, float]:
    """The `depth` best rows per query, one query at a time, and the mean ms per query (the
    fastest of TIMING_PASSES passes: other processes only ever add time)."""
    search.top_k(np.asarray(score(0), np.float32)[None, :], depth)  # warm-up, not timed
    best = float("inf")
    for _ in range(TIMING_PASSES):
        ranked = []
        started = time.perf_counter()
        for i in range(queries):
            rows, _ = search.top_k(np.asarray(score(i), np.float32)[None, :], depth)
            ranked.append(rows[0])
        best = min(best, time.perf_counter() - started)
    return np.stack(ranked), best * 1000 / queries


def _rescore(docs: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    rows, _ = search.rerank(docs, queries, candidates, k)
    return rows


# ----------------------------------------------------------------------------------------- output

RESULT_KEYS = ("model", "width", "queries", "documents", "rescore_depth", "rows")
ROW_KEYS = ("precision", "dims", "ndcg", "bytes_per_vector")


def load_result(path: Path) -> dict[str, Any]:
    """Another sweep's --json output (for --compare), checked for what plot() reads."""
    fix = "Pass the output of 'encoderfile sweep --json'."
    try:
        result = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise EvaluationError(
            f"cannot read --compare {path}: {e.strerror}. Check the path."
        ) from None
    except UnicodeDecodeError as e:
        raise EvaluationError(
            f"--compare {path} is not UTF-8 (byte {e.start + 1}). {fix}"
        ) from None
    except (ValueError, RecursionError):
        raise EvaluationError(f"--compare {path} is not JSON. {fix}") from None
    rows = result.get("rows") if isinstance(result, dict) else None
    if (
        not isinstance(result, dict)
        or not isinstance(rows, list)
        or any(key not in result for key in RESULT_KEYS)
        or not all(isinstance(r, dict) and all(k in r for k in ROW_KEYS) for r in rows)
        or not all(r["precision"] in PRECISIONS for r in rows)
        or not all(
            isinstance(r[k], int | float) and not isinstance(r[k], bool)
            for r in rows
            for k in ("dims", "ndcg", "bytes_per_vector")
        )
    ):
        raise EvaluationError(f"--compare {path} is not a sweep result. {fix}")
    return result


def table(result: dict[str, Any]) -> str:
    """The rows as a Markdown table, each relative to full-width float32."""
    rows = result["rows"]
    base = next(r for r in rows if r["precision"] == "float32" and r["dims"] == result["width"])
    lines = [
        f"{result['model']}: {result['queries']} queries, {result['documents']} documents; "
        f"int8/binary rows re-rank their top {result['rescore_depth']} at full-width float32",
        "",
        "| precision | dims | nDCG@10 | Δ | recall@100 | Δ | bytes/vector | MB per 1M docs | ms/query | × time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['precision']} | {r['dims']} | {r['ndcg']:.4f} | {r['ndcg'] - base['ndcg']:+.4f} "
            f"| {r['recall']:.4f} | {r['recall'] - base['recall']:+.4f} | {r['bytes_per_vector']} "
            f"({r['bytes_per_vector'] / base['bytes_per_vector']:.3f}×) "
            f"| {r['bytes_per_vector']:,} | {r['ms_per_query']:.3f} "
            f"| {r['ms_per_query'] / base['ms_per_query']:.2f}× |"
        )
    if result["funnel"]:
        lines += [
            "",
            f"Funnel: cosine on the first D dims over all documents, the K best re-ranked at "
            f"{result['width']} dims (exhaustive {result['width']}: nDCG@10 {base['ndcg']:.4f})",
            "",
            "| D:K | nDCG@10 | Δ vs exhaustive | recall@100 | scan cost | less scan |",
            "|---|---|---|---|---|---|",
        ]
        for f in result["funnel"]:
            lines.append(
                f"| {f['shortlist_dim']}:{f['shortlist']} | {f['ndcg']:.4f} "
                f"| {f['ndcg'] - base['ndcg']:+.4f} | {f['recall']:.4f} | {f['scan_cost']:.3f} "
                f"| {1 / f['scan_cost']:.1f}× |"
            )
    if rr := result.get("rerank"):
        lines += [
            "",
            f"Rerank: the {rr['depth']} best full-width float32 hits of each query re-scored by "
            f"the cross-encoder {rr['model']}",
            "",
            "| stage | nDCG@10 | Δ vs dense | recall@100 | ms/query | pairs/s |",
            "|---|---|---|---|---|---|",
            f"| dense {result['width']} + rerank {rr['depth']} | {rr['ndcg']:.4f} "
            f"| {rr['ndcg'] - base['ndcg']:+.4f} | {rr['recall']:.4f} "
            f"| {base['ms_per_query'] + rr['ms_per_query']:.1f} | {rr['pairs_per_second']:.0f} |",
        ]
    return "\n".join(lines) + "\n"


def plot(results: Sequence[tuple[str, dict[str, Any]]], path: Path) -> None:
    """nDCG@10 against bytes per vector, one line per precision (and per labelled result)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    styles = {"float32": "o-", "int8": "s--", "binary": "^:"}
    for n, (label, result) in enumerate(results):
        for precision in PRECISIONS:
            rows = [r for r in result["rows"] if r["precision"] == precision]
            if not rows:
                continue
            xs = [r["bytes_per_vector"] for r in rows]
            ys = [r["ndcg"] for r in rows]
            name = f"{label}, {precision}" if label else precision
            (line,) = ax.plot(xs, ys, styles[precision], color=f"C{n}", label=name, alpha=0.9)
            for r in rows:
                ax.annotate(
                    str(r["dims"]),
                    (r["bytes_per_vector"], r["ndcg"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, -9),
                    color=line.get_color(),
                )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes per vector (log scale; labels: dimensions)")
    ax.set_ylabel("nDCG@10")
    first = results[0][1]
    ax.set_title(
        f"{first['model']}: {first['queries']} queries, {first['documents']} documents "
        f"(int8/binary re-rank top {first['rescore_depth']} at full width)",
        fontsize=9,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}.png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(partial, format="png")
        partial.replace(path)  # nothing half-written at `path`
    except OSError as e:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise EvaluationError(
            f"cannot write --plot {path}: {e.strerror or e}. Choose a writable path."
        ) from None
    finally:
        plt.close(fig)
