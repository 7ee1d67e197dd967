"""Retrieval evaluation with BEIR's conventions: its data files, nDCG@k and recall@k.

nDCG@k   = DCG@k / IDCG@k, DCG@k = sum_{r=1..k} rel(doc_r) / log2(r + 1) with graded (linear)
           gains; IDCG@k is the DCG of the query's judged documents sorted by relevance.
recall@k = |relevant in the top k| / |relevant|, a document being relevant when rel > 0.
Both are averaged over the queries that have judgements (as pytrec_eval does for BEIR).
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from encoderfile.errors import EvaluationError

Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True)
class Collection:
    """Texts with their ids: BEIR queries or corpus documents."""

    ids: list[str]
    texts: list[str]


def ndcg(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    dcg = sum(judged.get(doc, 0) / math.log2(r + 2) for r, doc in enumerate(ranked[:k]))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    relevant = {doc for doc, g in judged.items() if g > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def evaluate(
    run: Mapping[str, Sequence[str]], qrels: Qrels, ndcg_k: int = 10, recall_k: int = 100
) -> dict[str, float]:
    """Mean nDCG@ndcg_k and recall@recall_k of ranked doc ids per query id."""
    judged = [q for q in run if q in qrels]
    if not judged:
        raise EvaluationError(
            "no query has relevance judgements. Check that the qrels' query ids match the queries."
        )
    return {
        f"ndcg@{ndcg_k}": sum(ndcg(run[q], qrels[q], ndcg_k) for q in judged) / len(judged),
        f"recall@{recall_k}": sum(recall(run[q], qrels[q], recall_k) for q in judged) / len(judged),
    }


def load_qrels(path: Path) -> Qrels:
    """A BEIR qrels TSV: a header line, then query-id, corpus-id, score."""
    qrels: Qrels = {}
    with _open(path) as fh:
        lines = iter(fh)
        if next(lines, None) is None:
            raise EvaluationError(f"{path} is empty. Pass a BEIR qrels TSV (header line first).")
        for n, line in enumerate(lines, 2):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            try:
                query, doc, score = fields
                qrels.setdefault(query, {})[doc] = int(score)
            except ValueError:
                raise EvaluationError(
                    f"{path} line {n} is not 'query-id<TAB>corpus-id<TAB>integer score'. "
                    "Fix the line (BEIR qrels format)."
                ) from None
    if not qrels:
        raise EvaluationError(f"{path} has no judgements. Pass a BEIR qrels TSV.")
    return qrels


def load_collection(path: Path, only: set[str] | None = None) -> Collection:
    """A BEIR JSONL file (optionally .gz) of {"_id", "text"[, "title"]}; a document's text is
    its title and text joined by a space, as BEIR embeds it. `only`: keep these ids."""
    ids, texts = [], []
    for where, obj in _jsonl(path):
        doc_id, text = obj.get("_id"), obj.get("text")
        if not isinstance(doc_id, str | int) or not isinstance(text, str):
            raise EvaluationError(
                f"{where} needs a string '_id' and 'text' (keys: {', '.join(obj) or 'none'}). "
                "Pass a BEIR queries or corpus JSONL file."
            )
        if only is not None and str(doc_id) not in only:
            continue
        joined = f"{obj.get('title') or ''} {text}".strip()
        if not joined:
            raise EvaluationError(f"{where} has no text. Remove the line.")
        ids.append(str(doc_id))
        texts.append(joined)
    if not ids:
        raise EvaluationError(f"{path} has no usable entries. Pass a BEIR JSONL file.")
    return Collection(ids, texts)


def _jsonl(path: Path) -> Iterator[tuple[str, dict[str, object]]]:
    with _open(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise EvaluationError(f"{path} line {n} is not valid JSON ({e}). Fix it.") from None
            if not isinstance(obj, dict):
                raise EvaluationError(f"{path} line {n} is not a JSON object. Fix it.")
            yield f"{path} line {n}", obj


def _open(path: Path) -> IO[str]:
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rt", encoding="utf-8")
        return path.open(encoding="utf-8")
    except OSError as e:
        raise EvaluationError(f"cannot read {path}: {e.strerror}. Check the path.") from None
