"""fp32 vs fp16 vs int8 bundles: size, throughput, SciFact nDCG@10, gate figures, batch invariance.

    .venv/bin/python benchmarks/precision.py [--scifact ../shared/data/scifact]
        [--models minilm,nomic] [--output benchmarks/results/precision.md]

For each model the three precisions are compiled through the real builder (recipe -> bundle) with
the gate's thresholds relaxed, so that the figures are recorded even where a default gate would
stop the build (the table says whether the default gate passes). Onnxruntime's dynamic int8
quantization is measured beside them for comparison only; the builder refuses it.

Throughput: SciFact queries (short) and documents (long, MiniLM only), sorted by length, batch 32,
2 onnxruntime threads; the precisions run interleaved, best of --rounds, so machine drift hits
them alike. Batch invariance: each of 300 texts alone vs inside a shuffled padded batch of 32.
nDCG@10 (MiniLM only; the NomicBERT weights are random): "title text" documents, max_length 256,
cosine, at full width and at the first 128 dims re-normalised, over all 300 test queries and a
corpus of every judged document plus random others (--corpus, default 1000 of 5183, to fit the
2-core machine; --corpus 0 for all). fp16 computes in fp32 from fp16-rounded weights; its vectors
agree with fp32 to cosine 0.99999+, so it is not ranked again.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import yaml
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import isa_line  # noqa: E402

from encoderfile import recipe as recipe_mod  # noqa: E402
from encoderfile import splice  # noqa: E402
from encoderfile.compiler import compile_bundle, load_graph  # noqa: E402
from encoderfile.runtime.session import open_session  # noqa: E402

MODELS = {
    "minilm": ("all-minilm-l6-v2.yaml", ROOT / "models/all-minilm-l6-v2", "all-MiniLM-L6-v2"),
    "nomic": (
        "nomic-embed-text-v1.5.yaml",
        ROOT / "models/nomic-random-full",
        "NomicBERT full size, random weights",
    ),
}
PRECISIONS = ("fp32", "fp16", "int8", "int8-ffn")
# int8-ffn: precision int8 with the shipped int8 recipe's section: the FFN down-projections
# too (faster, lower cosine); MiniLM only.
VARIANTS = {"int8-ffn": ("int8", {"ffn_down": True, "smooth_alpha": 0.65})}
OPEN_GATE = {"mean_cosine": 0.0, "min_cosine": -1.0, "batch_max_abs_diff": 1.0}
DEFAULT_GATE = recipe_mod.Gate()
MAX_LENGTH = 256
BATCH = 32


def recipe_for(tmp: Path, shipped: str, model_dir: Path, precision: str) -> Path:
    spec = yaml.safe_load((ROOT / "recipes" / shipped).read_text())
    files = spec["model"].get("local", spec["model"].get("hub"))["files"]
    spec["model"] = {
        "local": {
            "path": str(model_dir),
            "files": {Path(f).name: None for f in files if (model_dir / Path(f).name).is_file()},
        },
        "graph": "model.onnx",
        "tokenizer": "tokenizer.json",
    }
    spec["name"] = f"{spec['name']}-{precision}"
    spec["tokenizer"] = {**spec.get("tokenizer", {}), "max_length": MAX_LENGTH}
    if precision != "fp32":
        spec["precision"], options = VARIANTS.get(precision, (precision, None))
        if options:
            spec["int8"] = options
        spec["gate"] = OPEN_GATE
    path = tmp / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class Encoder:
    def __init__(self, model: Path | bytes, tokenizer: Path, threads: int = 2) -> None:
        self.sess = open_session(model, threads, "benchmark")  # the runtime's session options
        self.inputs = [i.name for i in self.sess.get_inputs()]
        self.tok = Tokenizer.from_file(str(tokenizer))

    def __call__(self, texts: list[str]) -> np.ndarray:
        enc = self.tok.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
        }
        return self.sess.run(None, {n: feeds[n] for n in self.inputs})[0]

    def bulk(self, texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(self.tok.encode(texts[i])))
        out = np.zeros((len(texts), self.sess.get_outputs()[0].shape[1]), np.float32)
        for start in range(0, len(order), BATCH):
            chunk = order[start : start + BATCH]
            out[chunk] = self([texts[i] for i in chunk])
        return out


def dynamic_int8(shipped: str, model_dir: Path, tmp: Path, hidden: int) -> bytes:
    """onnxruntime's quantize_dynamic on the base encoder, then the recipe's splice (comparison)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    spec = recipe_mod.load(recipe_for(tmp, shipped, model_dir, "fp32"))
    target = tmp / "dynamic.onnx"
    quantize_dynamic(str(model_dir / "model.onnx"), str(target), weight_type=QuantType.QInt8)
    model = load_graph(target, "dynamic.onnx")
    return splice.apply(model, spec, hidden, "dynamic.onnx").model.SerializeToString()


def invariance(enc: Encoder, texts: list[str]) -> float:
    alone = np.concatenate([enc([t]) for t in texts])
    shuffled = list(range(len(texts)))
    random.Random(0).shuffle(shuffled)
    batched = np.zeros_like(alone)
    for start in range(0, len(shuffled), BATCH):
        chunk = shuffled[start : start + BATCH]
        batched[chunk] = enc([texts[i] for i in chunk])
    return float(np.abs(alone - batched).max())


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def throughput(encoders: dict[str, Encoder], texts: list[str], rounds: int) -> dict[str, float]:
    best = dict.fromkeys(encoders, 0.0)
    for _ in range(rounds):
        for name, enc in encoders.items():
            start = time.perf_counter()
            enc.bulk(texts)
            best[name] = max(best[name], len(texts) / (time.perf_counter() - start))
    return best


def corpus_subset(
    d_ids: list[str], docs: list[str], qrels: dict, size: int
) -> tuple[list[str], list[str]]:
    """Every judged document plus random others up to `size` (seed 0); all of it if size <= 0."""
    if size <= 0 or size >= len(docs):
        return d_ids, docs
    judged = {d for rel in qrels.values() for d in rel}
    keep = {i for i, d in enumerate(d_ids) if d in judged}
    others = [i for i in range(len(d_ids)) if i not in keep]
    random.Random(0).shuffle(others)
    chosen = sorted(keep | set(others[: max(0, size - len(keep))]))
    return [d_ids[i] for i in chosen], [docs[i] for i in chosen]


def interleaved_bulk(
    encoders: dict[str, Encoder], texts: list[str], chunk: int = 128
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Embed `texts` with every encoder, chunk by chunk in turn, timing each encoder."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in encoders}
    seconds = dict.fromkeys(encoders, 0.0)
    for start in range(0, len(texts), chunk):
        for name, enc in encoders.items():
            t0 = time.perf_counter()
            parts[name].append(enc.bulk(texts[start : start + chunk]))
            seconds[name] += time.perf_counter() - t0
    return {n: np.concatenate(p) for n, p in parts.items()}, seconds


def load_scifact(root: Path) -> tuple[list[str], list[str], list[str], list[str], dict]:
    with gzip.open(root / "corpus.jsonl.gz", "rt") as f:
        corpus = [json.loads(line) for line in f]
    queries = [json.loads(line) for line in (root / "queries.jsonl").open()]
    qrels: dict[str, dict[str, int]] = {}
    for line in (root / "qrels/test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    queries = [q for q in queries if q["_id"] in qrels]
    return (
        [d["_id"] for d in corpus],
        [(d.get("title", "") + " " + d["text"]).strip() for d in corpus],
        [q["_id"] for q in queries],
        [q["text"] for q in queries],
        qrels,
    )


def ndcg10(
    q_vec: np.ndarray, d_vec: np.ndarray, q_ids: list[str], d_ids: list[str], qrels: dict
) -> float:
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    scores = unit(q_vec) @ unit(d_vec).T
    total = 0.0
    for i, q in enumerate(q_ids):
        top = np.argsort(-scores[i])[:10]
        dcg = sum(qrels[q].get(d_ids[j], 0) / math.log2(r + 2) for r, j in enumerate(top))
        ideal = sorted(qrels[q].values(), reverse=True)[:10]
        idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
        total += dcg / idcg if idcg else 0.0
    return total / len(q_ids)


def run_model(key: str, args: argparse.Namespace, tmp: Path, data: Any) -> dict[str, Any]:
    shipped, model_dir, title = MODELS[key]
    tmp.mkdir(parents=True, exist_ok=True)
    d_ids, docs, q_ids, queries, qrels = data
    rows: dict[str, dict[str, Any]] = {}
    encoders: dict[str, Encoder] = {}
    for precision in PRECISIONS:
        if precision in VARIANTS and key != "minilm":
            continue
        start = time.perf_counter()
        out = compile_bundle(recipe_for(tmp, shipped, model_dir, precision), tmp / "build")
        build_s = time.perf_counter() - start
        manifest = json.loads((out / "manifest.json").read_text())
        gate = manifest["precision"].get("gate", {})
        rows[precision] = {
            "size_mb": (out / "model.onnx").stat().st_size / 1e6,
            "build_s": build_s,
            "gate": gate,
            "changes": manifest["precision"].get("changes", {}),
        }
        encoders[precision] = Encoder(out / "model.onnx", out / "tokenizer.json")
        print(f"[{key}] built {precision} in {build_s:.0f}s", flush=True)
    encoders["int8-dynamic"] = Encoder(
        dynamic_int8(shipped, model_dir, tmp, manifest["graph"]["hidden_size"]),
        out / "tokenizer.json",
    )
    rows["int8-dynamic"] = {"size_mb": None, "build_s": None, "gate": {}, "changes": {}}

    small = key != "minilm"  # full-size NomicBERT is ~20x slower: fewer texts
    n_texts = args.texts // 3 if small else args.texts
    sample = queries[: (args.invariance_texts // 5 if small else args.invariance_texts)]
    reference = encoders["fp32"].bulk(queries[:n_texts])
    for name, enc in encoders.items():
        rows[name]["batch_max_abs_diff"] = invariance(enc, sample)
        cos = cosines(enc.bulk(queries[:n_texts]), reference)
        rows[name]["cos_queries"] = (float(cos.mean()), float(cos.min()))
        print(f"[{key}] {name}: invariance {rows[name]['batch_max_abs_diff']:.3g}", flush=True)

    short = throughput(encoders, queries[:n_texts], 2 if small else args.rounds)
    for name in encoders:
        rows[name]["short_per_s"] = short[name]
    if not small and not args.skip_ndcg:
        ranked = {n: e for n, e in encoders.items() if n != "fp16"}  # fp16 = fp32 maths
        d_sub, docs_sub = corpus_subset(d_ids, docs, qrels, args.corpus)
        d_vecs, seconds = interleaved_bulk(ranked, docs_sub)
        for name in ranked:
            q_vec = ranked[name].bulk(queries)
            rows[name]["long_per_s"] = len(docs_sub) / seconds[name]
            rows[name]["ndcg"] = {
                dim: ndcg10(q_vec[:, :dim], d_vecs[name][:, :dim], q_ids, d_sub, qrels)
                for dim in (384, 128)
            }
            print(f"[{key}] {name}: nDCG@10 {rows[name]['ndcg']}", flush=True)
    return {"title": title, "rows": rows}


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# Precision: fp32 vs fp16 vs int8",
        "",
        f"Measured by `benchmarks/precision.py`; {isa_line()}; load average at the end "
        f"{os.getloadavg()[0]:.1f} (the ratios come from interleaved runs), onnxruntime {ort.__version__}, "
        f"2 threads, batch {BATCH}, length-sorted, best of {args.rounds}.",
        "`int8-dynamic` is onnxruntime's `quantize_dynamic` spliced the same way: shown for "
        "comparison, the builder refuses it.",
        "",
    ]
    for res in results.values():
        rows = res["rows"]
        fp32 = rows["fp32"]
        lines += [f"## {res['title']}", ""]
        header = "| precision | model.onnx MB | short texts/s (× fp32) |"
        sep = "|---|---|---|"
        if "long_per_s" in fp32:
            header += " SciFact docs/s (× fp32) |"
            sep += "---|"
        header += (
            " gate: held-out cos mean / min | gate passes by default | "
            "cos to fp32 (SciFact queries) mean / min | batch invariance max abs diff |"
        )
        sep += "---|---|---|---|"
        if "ndcg" in fp32:
            header += " nDCG@10 384 (Δ) | nDCG@10 128 (Δ) |"
            sep += "---|---|"
        lines += [header, sep]
        for name, r in rows.items():
            size = f"{r['size_mb']:.1f}" if r["size_mb"] else "—"
            cells = [
                name,
                size,
                f"{r['short_per_s']:.0f} ({r['short_per_s'] / fp32['short_per_s']:.2f}×)",
            ]
            if "long_per_s" in fp32:
                cells.append(
                    f"{r['long_per_s']:.1f} ({r['long_per_s'] / fp32['long_per_s']:.2f}×)"
                    if "long_per_s" in r
                    else "= fp32 maths"
                )
            g = r["gate"]
            if g:
                passes = (
                    g["mean_cosine"] >= DEFAULT_GATE.mean_cosine
                    and g["min_cosine"] >= DEFAULT_GATE.min_cosine
                    and g["batch_max_abs_diff"] <= DEFAULT_GATE.batch_max_abs_diff
                )
                cells += [
                    f"{g['mean_cosine']:.4f} / {g['min_cosine']:.4f}",
                    "yes" if passes else "**no**",
                ]
            else:
                cells += ["—", "refused" if name == "int8-dynamic" else "—"]
            mean, low = r["cos_queries"]
            cells += [f"{mean:.4f} / {low:.4f}", f"{r['batch_max_abs_diff']:.3g}"]
            if "ndcg" in fp32:
                for dim in (384, 128):
                    if "ndcg" in r:
                        v, base = r["ndcg"][dim], fp32["ndcg"][dim]
                        cells.append(f"{v:.4f} ({v - base:+.4f})")
                    else:
                        cells.append("= fp32 maths")
            lines.append("| " + " | ".join(cells) + " |")
        int8 = rows["int8"]["changes"]
        if int8:
            lines += [
                "",
                f"int8 build: {rows['int8']['build_s']:.0f} s (fp32 {fp32['build_s']:.0f} s); "
                f"MatMuls quantized {int8['quantized']['MatMul']}, kept fp32: "
                f"{len(int8['kept_fp32']['weight MatMuls after GELU/SwiGLU'])} FFN-down + "
                f"{int8['kept_fp32']['activation MatMuls (attention)']} attention; "
                f"{int8['smoothed_inputs']} inputs smoothed.",
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scifact", type=Path, default=ROOT.parent / "shared/data/scifact")
    parser.add_argument("--models", default="minilm,nomic")
    parser.add_argument("--texts", type=int, default=300, help="short texts for throughput")
    parser.add_argument(
        "--corpus",
        type=int,
        default=1000,
        help="SciFact documents for nDCG and long-text throughput: all judged ones plus random "
        "others up to this many (0 = the whole 5183)",
    )
    parser.add_argument("--invariance-texts", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-ndcg", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/precision.md")
    args = parser.parse_args()
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    data = load_scifact(args.scifact)
    results = {}
    with tempfile.TemporaryDirectory(prefix="encoderfile-precision-") as tmp:
        for key in args.models.split(","):
            results[key] = run_model(key, args, Path(tmp) / key, data)
            args.output.write_text(render(results, args))
    text = render(results, args)
    args.output.write_text(text)
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
