"""`encoderfile sweep` on a sparse (SPLADE) artifact: retrieval quality and cost beside BM25, a
dense artifact and their hybrid, in one run over BEIR-format data.

    sparse   score = q . d over the vocabulary (dot product of the two sparse vectors), exact,
             over a CSR index of the corpus (scipy.sparse: the postings of an inverted index).
    bm25     bm25s (Lucene's BM25, k1 1.5, b 0.75) on its own tokenizer with English
             stop words and no stemming, the lexical baseline.
    dense    cosine over a dense artifact's full-width float32 vectors (with --dense).
    hybrid   reciprocal rank fusion of the sparse and dense top RECALL_K lists:
             score(d) = sum over the two lists of 1 / (RRF_K + rank(d)), rank from 1.
Index bytes: CSR (float32 value + int32 index per posting, int32 row pointers) for sparse and
BM25, 4 x width per document for dense. Search time: every query scored against the whole index
and its top RECALL_K picked, per query, on this machine (one process, numpy/scipy threads).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from encoderfile import retrieval
from encoderfile.errors import EvaluationError
from encoderfile.runtime import search
from encoderfile.runtime.embedder import Embedder
from encoderfile.sweep import EMBED_CHUNK, NDCG_K, RECALL_K
from encoderfile.sweep import embed as embed_dense

RRF_K = 60  # as Cormack et al. (2009) and Elasticsearch / OpenSearch / Qdrant's default


@dataclass(frozen=True)
class SparseRow:
    method: str  # sparse | bm25 | dense | hybrid
    ndcg: float
    recall: float
    query_terms: float | None  # mean active terms of a query (sparse, bm25)
    doc_terms: float | None  # mean active terms of a document
    index_bytes: int | None
    ms_per_query: float | None


def _scipy() -> Any:
    try:
        import scipy.sparse
    except ImportError:
        raise EvaluationError(
            "sweep on a sparse artifact needs scipy. Install it: pip install scipy."
        ) from None
    return scipy.sparse


def encode(embedder: Embedder, texts: Sequence[str], label: str) -> Any:
    """The texts' sparse vectors as a float32 CSR matrix [n, vocabulary], a chunk at a time."""
    import typer

    csr = _scipy().csr_matrix
    parts = []
    with typer.progressbar(length=len(texts), label=label, file=sys.stderr) as bar:
        for start in range(0, len(texts), EMBED_CHUNK):
            chunk = texts[start : start + EMBED_CHUNK]
            parts.append(csr(embedder.embed(chunk).vectors))
            bar.update(len(chunk))
    return _scipy().vstack(parts, format="csr")


def csr_bytes(matrix: Any) -> int:
    return int(matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes)


def _top(scores: Callable[[int], np.ndarray], queries: int) -> tuple[np.ndarray, float]:
    """Each query's RECALL_K best documents, and the milliseconds a query took."""
    started = time.perf_counter()
    ranked = []
    for i in range(queries):
        s = scores(i)
        k = min(RECALL_K, len(s))
        top = np.argpartition(-s, k - 1)[:k]
        ranked.append(top[np.argsort(-s[top], kind="stable")])
    ms = (time.perf_counter() - started) * 1000 / max(queries, 1)
    return np.array(ranked), ms


def rrf(lists: Sequence[np.ndarray], depth: int = RECALL_K) -> list[list[int]]:
    """Reciprocal rank fusion of ranked lists of document rows, per query."""
    fused = []
    for rows in zip(*lists, strict=True):
        score: dict[int, float] = {}
        for ranked in rows:
            for rank, doc in enumerate(ranked.tolist(), start=1):
                score[doc] = score.get(doc, 0.0) + 1.0 / (RRF_K + rank)
        fused.append(sorted(score, key=lambda d: (-score[d], d))[:depth])
    return fused


def run(
    embedder: Embedder,
    queries: retrieval.Collection,
    corpus: retrieval.Collection,
    qrels: retrieval.Qrels,
    *,
    dense: Embedder | None = None,
    bm25: bool = True,
    cache: Any = None,
) -> dict[str, Any]:
    """Embed once, then evaluate sparse, BM25, dense and hybrid retrieval."""
    started = time.perf_counter()
    docs = encode(embedder, corpus.texts, "embedding corpus ")
    qs = encode(embedder, queries.texts, "embedding queries")
    embed_seconds = time.perf_counter() - started
    docs_t = docs.T.tocsr()

    def judge(ranked: Any) -> tuple[float, float]:
        found = {
            q: [corpus.ids[r] for r in rows] for q, rows in zip(queries.ids, ranked, strict=True)
        }
        scores = retrieval.evaluate(found, qrels, NDCG_K, RECALL_K)
        return scores[f"ndcg@{NDCG_K}"], scores[f"recall@{RECALL_K}"]

    def terms(m: Any) -> float:
        return round(float(np.diff(m.indptr).mean()), 1)

    ranked_sparse, ms = _top(lambda i: (qs[i] @ docs_t).toarray().ravel(), qs.shape[0])
    rows = [SparseRow("sparse", *judge(ranked_sparse), terms(qs), terms(docs), csr_bytes(docs), ms)]
    if bm25:
        rows.append(_bm25(queries, corpus, judge))
    if dense is not None:
        d = search.unit(embed_dense(dense, corpus.texts, None, "dense corpus     ", cache))
        q = search.unit(embed_dense(dense, queries.texts, None, "dense queries    ", cache))
        ranked_dense, ms = _top(lambda i: d @ q[i], len(q))
        rows.append(SparseRow("dense", *judge(ranked_dense), None, None, int(d.nbytes), ms))
        rows.append(
            SparseRow("hybrid", *judge(rrf([ranked_sparse, ranked_dense])), None, None, None, None)
        )
    return {
        "model": embedder.manifest.name,
        "kind": "sparse",
        "dense_model": dense.manifest.name if dense else None,
        "queries": len(queries.ids),
        "documents": len(corpus.ids),
        "ndcg_k": NDCG_K,
        "recall_k": RECALL_K,
        "rrf_k": RRF_K,
        "embed_seconds": round(embed_seconds, 1),
        "rows": [asdict(r) for r in rows],
    }


def _bm25(
    queries: retrieval.Collection,
    corpus: retrieval.Collection,
    judge: Callable[[Any], tuple[float, float]],
) -> SparseRow:
    try:
        import bm25s
    except ImportError:
        raise EvaluationError(
            "the BM25 baseline needs bm25s. Install it (pip install bm25s), or pass --no-bm25."
        ) from None
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(list(corpus.texts), stopwords="en", show_progress=False), show_progress=False
    )
    tokens = bm25s.tokenize(
        list(queries.texts), stopwords="en", show_progress=False, return_ids=False
    )  # strings: retrieve maps them onto the corpus' vocabulary
    started = time.perf_counter()
    found, _ = retriever.retrieve(
        tokens, k=min(RECALL_K, len(corpus.ids)), show_progress=False, n_threads=1
    )
    ms = (time.perf_counter() - started) * 1000 / max(len(queries.ids), 1)
    matrix = retriever.scores
    postings = int(matrix["data"].nbytes + matrix["indices"].nbytes + matrix["indptr"].nbytes)
    query_terms = float(np.mean([len(set(words)) for words in tokens]))
    doc_terms = float(len(matrix["data"]) / len(corpus.ids))
    return SparseRow(
        "bm25", *judge(found), round(query_terms, 1), round(doc_terms, 1), postings, ms
    )


def table(result: dict[str, Any]) -> str:
    """The rows as a Markdown table."""
    lines = [
        f"{result['model']} (sparse) on {result['queries']} queries, {result['documents']} "
        f"documents; hybrid = reciprocal rank fusion (k={result['rrf_k']}) of sparse and "
        f"{result['dense_model'] or 'dense'}",
        "",
        f"| method | nDCG@{result['ndcg_k']} | recall@{result['recall_k']} | query terms | doc terms | index MB | ms/query |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        name = r["method"] + (f" ({result['dense_model']})" if r["method"] == "dense" else "")
        lines.append(
            f"| {name} | {r['ndcg']:.4f} | {r['recall']:.4f} | {_or(r['query_terms'])} "
            f"| {_or(r['doc_terms'])} | {_or(r['index_bytes'] and r['index_bytes'] / 1e6, '.2f')} "
            f"| {_or(r['ms_per_query'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def _or(value: Any, fmt: str = "") -> str:
    return "–" if value is None else format(value, fmt)
