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
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    lines = _lines(path)
    if next(lines, None) is None:
        raise EvaluationError(f"{path} is empty. Pass a BEIR qrels TSV (header line first).")
    for n, line in lines:
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


def load_collection(
    path: Path, only: set[str] | None = None, only_from: Path | None = None
) -> Collection:
    """A BEIR JSONL file (optionally .gz) of {"_id", "text"[, "title"]}; a document's text is
    its title and text joined by a space, as BEIR embeds it. `only`: keep these ids (the query
    ids of the qrels file `only_from`, named when none of them is in `path`)."""
    ids, texts, skipped = [], [], []
    for where, obj in _jsonl(path):
        doc_id, text = obj.get("_id"), obj.get("text")
        if not isinstance(doc_id, str | int) or not isinstance(text, str):
            raise EvaluationError(
                f"{where} needs a string '_id' and 'text' (keys: {', '.join(obj) or 'none'}). "
                "Pass a BEIR queries or corpus JSONL file."
            )
        if only is not None and str(doc_id) not in only:
            skipped.append(str(doc_id))
            continue
        joined = f"{obj.get('title') or ''} {text}".strip()
        if not joined:
            raise EvaluationError(f"{where} has no text. Remove the line.")
        ids.append(str(doc_id))
        texts.append(joined)
    if not ids and skipped and only:
        qrels = only_from or "the qrels"
        raise EvaluationError(
            f"none of the {len(skipped)} ids in {path} ({_some(skipped)}) is a query id in "
            f"{qrels} ({_some(sorted(only))}). Pass the qrels that judge these queries (its "
            "first column holds query ids)."
        )
    if not ids:
        raise EvaluationError(f"{path} has no usable entries. Pass a BEIR JSONL file.")
    return Collection(ids, texts)


def _some(ids: Sequence[str]) -> str:
    return ", ".join(repr(i) for i in ids[:3]) + (", …" if len(ids) > 3 else "")


def _jsonl(path: Path) -> Iterator[tuple[str, dict[str, object]]]:
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise EvaluationError(f"{path} line {n} is not valid JSON ({e}). Fix it.") from None
        except RecursionError:
            raise EvaluationError(f"{path} line {n} is nested too deeply. Fix it.") from None
        if not isinstance(obj, dict):
            raise EvaluationError(f"{path} line {n} is not a JSON object. Fix it.")
        yield f"{path} line {n}", obj


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered UTF-8 lines of `path` (gunzipped when it ends in .gz); any read, gzip or
    decoding failure is an EvaluationError naming the file (and the line)."""
    n = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as fh:
            for n, raw in enumerate(fh, 1):
                yield n, raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EvaluationError(
            f"{path} line {n} is not UTF-8 (byte {e.start + 1}). Save the file as UTF-8."
        ) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise EvaluationError(
            f"{path} is not a complete gzip file ({str(e).rstrip('.')}). Pass the file "
            "uncompressed, or gzip it again."
        ) from None
    except OSError as e:
        raise EvaluationError(f"cannot read {path}: {e.strerror or e}. Check the path.") from None
