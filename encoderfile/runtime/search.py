"""Exact and funnel (cascaded Matryoshka) search over a memory-mapped .npy index, numpy only.

Every score is a cosine similarity. With W the index width, N its rows, D < W and K >= k:
    funnel:     s_D(q, x) = cos(q[:D], x[:D]) over all N rows, keep the K best,
                then s(q, x) = cos(q, x) at full width over those K, keep the k best.
    scan cost:  N*D + K*W multiply-adds per query, against N*W for exhaustive search
                (prefix norms are computed once per batch of queries, not per query).
Ties rank the lower row first, so results are deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from encoderfile.errors import RequestError

SCORES_PER_CHUNK = 1 << 22  # query x row scores held at once (16 MiB of float32)
QUERIES_PER_BATCH = 64  # queries embedded and searched together (one pass over the index)
NPY_MAGIC = b"\x93NUMPY"  # how every .npy file begins


@dataclass(frozen=True)
class SearchOptions:
    """What `search` needs besides its queries."""

    index: str  # the .npy file written by 'embed --format npy'
    ids: str | None = None  # JSONL, one id per index row (default: the row number)
    k: int = 10  # hits per query
    shortlist_dim: int | None = None  # funnel: prefix width of the first pass
    shortlist: int | None = None  # funnel: rows re-ranked at full width
    dimensions: int | None = None  # the width the index was embedded at, if 'info' lists none
    prompt: str | None = None
    no_truncate: bool = False
    threads: int | None = None
    bundle: str | None = None
    rerank: str | None = None  # a reranker artifact (or bundle) re-scoring each query's hits
    corpus: str | None = None  # JSONL {id, text}: the texts of the index rows, for --rerank
    rerank_shortlist: int = 100  # hits per query the cross-encoder re-scores


def open_index(path: str | Path) -> np.ndarray:
    """The float32 [rows, width] matrix in `path` (written by `embed --format npy`), memory-mapped."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(NPY_MAGIC))
    except OSError as e:
        raise RequestError(f"cannot read --index {path}: {e.strerror}. Check the path.") from None
    if magic != NPY_MAGIC:
        raise RequestError(
            f"--index {path} is not a .npy file. Write it with 'embed --format npy'."
        )
    try:
        index: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        reason = (
            "it holds Python objects"
            if "ickle" in str(e) or "objects" in str(e)
            else str(e).rstrip(".")
        )
        raise RequestError(
            f"cannot read --index {path} as .npy ({reason}). Write it with 'embed --format npy'."
        ) from None
    if index.ndim != 2 or index.shape[0] == 0 or index.dtype != np.float32:
        raise RequestError(
            f"--index {path} holds {index.dtype} {list(index.shape)}; search needs float32 "
            "[rows, width] with at least one row. Write it with 'embed --format npy'."
        )
    return index


def read_ids(path: str | Path, rows: int) -> list[Any]:
    """One id per index row: a JSON value a line, or an object whose 'id' is used."""
    ids: list[Any] = []
    try:
        with open(path, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                if n == 1 and raw.startswith(NPY_MAGIC):
                    raise RequestError(
                        f"--ids {path} is a .npy file, not ids. Pass the vectors as --index and "
                        'a JSONL file of ids (one id, or {"id": …}, a line) as --ids.'
                    )
                try:
                    value = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise RequestError(
                        f"--ids {path} line {n} is not UTF-8 (byte {e.start + 1}). "
                        "Write the ids file as UTF-8 JSONL."
                    ) from None
                except (ValueError, RecursionError):
                    raise RequestError(
                        f'--ids {path} line {n} is not JSON. Write one id (or {{"id": …}}) a line.'
                    ) from None
                ids.append(value["id"] if isinstance(value, dict) and "id" in value else value)
    except OSError as e:
        raise RequestError(f"cannot read --ids {path}: {e.strerror}. Check the path.") from None
    if len(ids) != rows:
        raise RequestError(
            f"--ids {path} has {len(ids)} lines but the index has {rows} rows. "
            "Pass the ids of the embedded texts, one a line, in the same order."
        )
    return ids


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero), as float32; norms are summed in float64,
    so that rows of huge finite values do not overflow."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))[:, None]
    scaled: np.ndarray = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return scaled


def finite(block: np.ndarray, rows: np.ndarray | range) -> np.ndarray:
    """`block` (index rows `rows`), refused if any value is inf or NaN."""
    bad = ~np.isfinite(block).all(axis=1)
    if bad.any():
        row = rows[int(np.argmax(bad))]
        raise RequestError(
            f"--index row {row} holds inf or NaN. Re-embed that text, or drop the row and its id."
        )
    return block


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns of the k highest scores per row, best first (ties: lower column first)."""
    k = min(k, scores.shape[1])
    out = np.empty((len(scores), k), np.int64)
    for i, row in enumerate(scores):
        kth = row[np.argpartition(-row, k - 1)[k - 1]]  # the k-th highest score
        above = np.flatnonzero(row > kth)
        cols = np.concatenate([above, np.flatnonzero(row == kth)[: k - len(above)]])
        out[i] = cols[np.lexsort((cols, -row[cols]))]
    return out, np.take_along_axis(scores, out, axis=1)


def scan(index: np.ndarray, queries: np.ndarray, dim: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact search on the first `dim` columns: rows and cosines of the k best, per query."""
    q = unit(queries[:, :dim])
    step = max(1, SCORES_PER_CHUNK // max(len(q), 1))
    best_rows = np.empty((len(q), 0), np.int64)
    best_scores = np.empty((len(q), 0), np.float32)
    for start in range(0, index.shape[0], step):
        block = unit(finite(index[start : start + step, :dim], range(start, start + step)))
        rows, scores = top_k(q @ block.T, k)
        merged_rows = np.concatenate([best_rows, rows + start], axis=1)
        merged = np.concatenate([best_scores, scores], axis=1)
        cols, best_scores = top_k(merged, k)
        best_rows = np.take_along_axis(merged_rows, cols, axis=1)
    return best_rows, best_scores


def rerank(
    index: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each query's candidate rows by full-width cosine."""
    q = unit(queries)
    out_rows, out_scores = [], []
    for i in range(len(q)):
        rows = np.sort(candidates[i])  # ascending reads are kinder to a memory map
        scores = unit(finite(index[rows], rows)) @ q[i]
        cols, vals = top_k(scores[None, :], k)
        out_rows.append(rows[cols[0]])
        out_scores.append(vals[0])
    return np.stack(out_rows), np.stack(out_scores)


def funnel(
    index: np.ndarray, queries: np.ndarray, shortlist_dim: int, shortlist: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shortlist `shortlist` rows on the first `shortlist_dim` columns, re-rank them at full width."""
    if shortlist_dim >= index.shape[1]:
        return scan(index, queries, index.shape[1], k)
    candidates, _ = scan(index, queries, shortlist_dim, max(shortlist, k))
    return rerank(index, queries, candidates, k)


def scan_cost(rows: int, width: int, shortlist_dim: int, shortlist: int) -> float:
    """Multiply-adds of a funnel query relative to exhaustive full-width search."""
    if shortlist_dim >= width:
        return 1.0
    return (rows * shortlist_dim + min(shortlist, rows) * width) / (rows * width)


def hits(
    rows: np.ndarray, scores: np.ndarray, ids: list[Any] | None
) -> Iterator[list[dict[str, Any]]]:
    """Per query: [{"id", "score"}] best first; the id is the row number without an ids file."""
    for query_rows, query_scores in zip(rows.tolist(), scores.tolist(), strict=True):
        yield [
            {"id": row if ids is None else ids[row], "score": round(score, 6)}
            for row, score in zip(query_rows, query_scores, strict=True)
        ]


def check_funnel(width: int, shortlist_dim: int | None, shortlist: int | None, k: int) -> None:
    """Refuse a funnel that cannot run on an index of `width` columns."""
    if (shortlist_dim is None) != (shortlist is None):
        raise RequestError(
            "--shortlist-dim and --shortlist go together. Pass both (funnel search) or neither "
            "(exhaustive search)."
        )
    if shortlist_dim is not None and shortlist is not None:
        if shortlist_dim >= width:
            raise RequestError(
                f"--shortlist-dim {shortlist_dim} is not below the index width {width}. "
                f"Use a smaller prefix, e.g. {max(width // 4, 1)}."
            )
        if shortlist < k:
            raise RequestError(
                f"--shortlist {shortlist} is smaller than -k {k}. Shortlist at least k rows."
            )


def check_width(manifest: Any, path: str | Path, width: int, dimensions: int | None) -> None:
    """Refuse an index whose width cannot be this artifact's.

    The rule: the width must be one `embed` of this artifact gives, and, since an unrestricted
    Matryoshka model gives every width from 1 up (so any narrower model's index would pass),
    it must also be the built dimension or one the manifest lists, unless `--dimensions` names
    it (the width the index was embedded at with 'embed --dimensions N').
    """
    try:
        manifest.width(width)
    except RequestError as e:
        raise RequestError(
            f"--index {path} has width {width}, which this model does not give ({e}). "
            "Index texts embedded by this artifact with 'embed --format npy'."
        ) from None
    if dimensions is not None:
        if dimensions != width:
            raise RequestError(
                f"--index {path} has width {width}, not --dimensions {dimensions}. Pass the "
                "width the index was embedded at, or leave --dimensions out."
            )
        return
    listed = sorted({manifest.dimension, *manifest.dimensions}, reverse=True)
    if width not in listed:
        raise RequestError(
            f"--index {path} has width {width}, which is none of {manifest.name}'s widths "
            f"({', '.join(map(str, listed))}), so it may come from another model. If this "
            f"artifact wrote it with 'embed --dimensions {width}', pass --dimensions {width}."
        )


def command(options: SearchOptions, records: Iterable[Any]) -> int:
    """`<artifact> search`: embed each query, search the index, print one JSONL line a query."""
    from encoderfile.runtime.artifact import open_bundle
    from encoderfile.runtime.embedder import Embedder
    from encoderfile.runtime.records import output

    index = open_index(options.index)
    rows, width = index.shape
    check_funnel(width, options.shortlist_dim, options.shortlist, options.k)
    embedder = Embedder(open_bundle(options.bundle, read_model=False), options.threads)
    check_width(embedder.manifest, options.index, width, options.dimensions)
    embedder.prefix(options.prompt)  # an unknown prompt fails before any work
    ids = read_ids(options.ids, rows) if options.ids else None
    cross = _cross_encoder(options) if options.rerank else None
    with output(None, elsewhere="") as out:  # stdout closed or full: one error line
        _search(options, records, embedder, index, ids, out, cross)
    return 0


@dataclass(frozen=True)
class _CrossEncoder:
    """--rerank: the reranker and the corpus texts it reads, by id."""

    model: Any  # runtime.reranker.Reranker
    texts: dict[str, str]

    def rescore(self, query: str, found: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
        """The k best of a query's dense hits by the cross-encoder's score (`dense_score` kept)."""
        from encoderfile.runtime.reranker import order

        missing = next((h["id"] for h in found if str(h["id"]) not in self.texts), None)
        if missing is not None:
            raise RequestError(
                f"--corpus has no text for id {missing!r}, a hit of the index. Pass the JSONL "
                "the index was embedded from (its 'id' and 'text' fields)."
            )
        scores = self.model.rerank(query, [self.texts[str(h["id"])] for h in found]).scores
        return [
            {
                "id": found[i]["id"],
                "score": round(float(scores[i]), 6),
                "dense_score": found[i]["score"],
            }
            for i in order(scores, k)
        ]


def _cross_encoder(options: SearchOptions) -> _CrossEncoder:
    from encoderfile.runtime import records
    from encoderfile.runtime.artifact import open_bundle
    from encoderfile.runtime.reranker import Reranker

    if not options.corpus:
        raise RequestError(
            "--rerank needs --corpus FILE.jsonl, the texts of the index rows ({id, text} per line)."
        )
    model = Reranker(open_bundle(options.rerank), options.threads)
    read = records.ReadOptions(input=options.corpus, id_field="id")
    texts = {str(r.id): r.text for r in records.read_records(read, 1 << 30)}
    return _CrossEncoder(model, texts)


def _search(
    options: SearchOptions,
    records: Iterable[Any],
    embedder: Any,
    index: np.ndarray,
    ids: Any,
    out: Any,
    cross: _CrossEncoder | None = None,
) -> None:
    width = index.shape[1]
    k = max(options.k, options.rerank_shortlist) if cross else options.k
    for batch in _batched(records, QUERIES_PER_BATCH):
        queries = embedder.embed(
            [r.text for r in batch],
            prompt=options.prompt,
            dimensions=width,
            truncate=not options.no_truncate,
        ).vectors
        # check_funnel lets through both of shortlist_dim and shortlist, or neither
        if options.shortlist_dim is None or options.shortlist is None:
            found = scan(index, queries, width, min(k, len(index)))
        else:
            found = funnel(index, queries, options.shortlist_dim, options.shortlist, k)
        per_query = list(hits(*found, ids))
        if cross is not None:
            per_query = [
                cross.rescore(r.text, h, options.k) for r, h in zip(batch, per_query, strict=True)
            ]
        lines = [
            json.dumps({"query": record.text, "hits": record_hits}, ensure_ascii=False)
            for record, record_hits in zip(batch, per_query, strict=True)
        ]
        out.write(("\n".join(lines) + "\n").encode())
        out.flush()


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
