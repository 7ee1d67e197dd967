"""Docs/s of the SPLADE artifact's runtime against sentence-transformers' SparseEncoder on torch
CPU: the same SciFact documents ("title text"), the same weights, one run each, best of --rounds.

    .venv/bin/python benchmarks/sparse_speed.py [--scifact ../shared/data/scifact] [--docs 400]
        [--output benchmarks/results/sparse_speed.md]

The artifact side is encoderfile's runtime as bulk `embed` runs it (length-sorted batches; eight
calls or more side by side, a thread per CPU) over the bundle of recipes/splade-tiny.yaml;
SparseEncoder encodes with its default batch size 32 and torch's default threads. Both keep every attended token (max_length 512); the sparse
vectors agree (same active indices, max |diff| printed).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import isa_line  # noqa: E402

from encoderfile.compiler import compile_bundle  # noqa: E402
from encoderfile.runtime.artifact import open_bundle  # noqa: E402
from encoderfile.runtime.embedder import for_bulk  # noqa: E402
from tools import models  # noqa: E402


def documents(scifact: Path, n: int) -> list[str]:
    texts = []
    with gzip.open(scifact / "corpus.jsonl.gz", "rt") as fh:
        for line in fh:
            doc = json.loads(line)
            texts.append(f"{doc.get('title') or ''} {doc['text']}".strip())
            if len(texts) == n:
                break
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact", type=Path, default=ROOT.parent / "shared/data/scifact")
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    from sentence_transformers import SparseEncoder

    models.splade_tiny()
    texts = documents(args.scifact, args.docs)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = compile_bundle(ROOT / "recipes/splade-tiny.yaml", Path(tmp))
        embedder = for_bulk(open_bundle(bundle), None)  # what `embed` runs
        reference = SparseEncoder(str(models.splade_source()), device="cpu")
        times: dict[str, list[float]] = {"encoderfile": [], "SparseEncoder": []}
        for _ in range(args.rounds):
            started = time.perf_counter()
            ours = embedder.embed(texts).vectors
            times["encoderfile"].append(time.perf_counter() - started)
            started = time.perf_counter()
            theirs = reference.encode(texts, convert_to_tensor=True).to_dense().numpy()
            times["SparseEncoder"].append(time.perf_counter() - started)
    same = bool(((ours > 0) == (theirs > 0)).all())
    rate = {name: len(texts) / min(t) for name, t in times.items()}
    tokens = np.mean([min(len(t.split()) * 1.3, 512) for t in texts])
    lines = [
        f"# SPLADE (splade-tiny) documents per second, {len(texts)} SciFact documents",
        "",
        isa_line(),
        "",
        "| system | docs/s | × |",
        "|---|---|---|",
        *(f"| {name} | {r:.1f} | {r / rate['SparseEncoder']:.2f}× |" for name, r in rate.items()),
        "",
        f"Best of {args.rounds} rounds; about {tokens:.0f} tokens a document; same active "
        f"indices: {same}; max |diff| {np.abs(ours - theirs).max():.2g}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
