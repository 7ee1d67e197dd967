"""Measurements behind the runtime's defaults: model-call size, threads, load-time vs stored graph
optimisation, and warm-up.

    python benchmarks/runtime_settings.py [--bundle build/all-minilm-l6-v2] [--rounds 3]

Runs every variant on the same inputs, interleaved round by round so machine noise hits all
alike, and writes benchmarks/results/runtime_settings_<bundle>.md. Compare ratios within a run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import onnxruntime as ort

from encoderfile.runtime import embedder as embedder_module
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.embedder import Embedder
from encoderfile.runtime.session import available_cpus

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"


def workloads(short: int, long: int) -> dict[str, list[str]]:
    queries = [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").open()]
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt") as fh:
        docs = [f"{d['title']} {d['text']}" for d in map(json.loads, fh)]
    return {
        f"{short} short (SciFact claims)": [queries[i % len(queries)] for i in range(short)],
        f"{long} abstracts (SciFact, max_length 256)": docs[:long],
    }


def session(model: str, level: ort.GraphOptimizationLevel, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def best_of(rounds: int, variants: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Each variant's result per round, variants interleaved within every round."""
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            results[name].append(run())
    return results


def throughput(embedder: Embedder, texts: Sequence[str], size: int, tokens: int) -> float:
    embedder_module.BATCH_SIZE, embedder_module.BATCH_TOKENS = size, tokens
    encodings = embedder.tokenize(texts)
    start = time.perf_counter()
    embedder.embed_encodings(encodings)
    return len(texts) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "build" / "all-minilm-l6-v2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--short", type=int, default=2000)
    parser.add_argument("--long", type=int, default=300)
    args = parser.parse_args()
    bundle = open_bundle(args.bundle)
    embedder = Embedder(bundle)
    defaults = (embedder_module.BATCH_SIZE, embedder_module.BATCH_TOKENS)
    cpus = available_cpus()
    lines = [
        f"# Runtime settings: `{args.bundle.name}`",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"({cpus} available to this process), onnxruntime {ort.__version__}; best of "
        f"{args.rounds} interleaved rounds. Defaults: BATCH_SIZE={defaults[0]}, "
        f"BATCH_TOKENS={defaults[1]}, threads={cpus}.",
    ]

    # 1. Model-call size: inputs per call and padded-token budget, inputs sorted by length.
    sizes = [(16, 4096), (32, 4096), (64, 4096), (128, 4096), (64, 2048), (64, 8192), (64, 16384)]
    for workload, texts in workloads(args.short, args.long).items():
        runs = best_of(
            args.rounds,
            {
                f"{s} / {t}": (lambda s=s, t=t, x=texts: throughput(embedder, x, s, t))
                for s, t in sizes
            },
        )
        lines += ["", f"## Call size, {workload}", "", "| inputs / padded tokens | texts/s |"]
        lines += ["|---|---|"] + [f"| {k} | {max(v):.0f} |" for k, v in runs.items()]
    embedder_module.BATCH_SIZE, embedder_module.BATCH_TOKENS = defaults

    # 2. Threads.
    texts = workloads(args.short, 0)[f"{args.short} short (SciFact claims)"]
    by_threads = {n: Embedder(bundle, threads=n) for n in range(1, cpus + 1)}
    runs = best_of(
        args.rounds,
        {f"{n}": (lambda e=e: throughput(e, texts, *defaults)) for n, e in by_threads.items()},
    )
    lines += ["", "## intra-op threads, short texts", "", "| threads | texts/s |", "|---|---|"]
    lines += [f"| {k} | {max(v):.0f} |" for k, v in runs.items()]

    # 3. Graph optimisation at load time vs an ORT-optimised graph stored at build time.
    with tempfile.TemporaryDirectory() as tmp:
        model = str(args.bundle / "model.onnx")
        levels = ort.GraphOptimizationLevel
        stored = {
            level: str(Path(tmp) / f"{level.name}.onnx")
            for level in (levels.ORT_ENABLE_EXTENDED, levels.ORT_ENABLE_ALL)
        }
        for level, path in stored.items():
            options = ort.SessionOptions()
            options.graph_optimization_level = level
            options.optimized_model_filepath = path
            options.log_severity_level = 3
            ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

        def load(path: str, level: ort.GraphOptimizationLevel) -> float:
            start = time.perf_counter()
            session(path, level, cpus)
            return (time.perf_counter() - start) * 1000

        runs = best_of(
            args.rounds * 2,
            {
                "model.onnx, all optimisations at load (the runtime's choice)": lambda: load(
                    model, levels.ORT_ENABLE_ALL
                ),
                "stored at EXTENDED (portable), the rest at load": lambda: load(
                    stored[levels.ORT_ENABLE_EXTENDED], levels.ORT_ENABLE_ALL
                ),
                "stored at ALL (CPU-specific), none at load": lambda: load(
                    stored[levels.ORT_ENABLE_ALL], levels.ORT_DISABLE_ALL
                ),
            },
        )
        lines += ["", "## Session creation", "", "| graph | median ms |", "|---|---|"]
        lines += [f"| {k} | {statistics.median(v):.0f} |" for k, v in runs.items()]
        lines += [
            "",
            "onnxruntime warns that a graph stored at ALL 'may contain hardware specific "
            "optimizations, and should only be used in the same environment': an artifact is "
            "built once and run on other machines.",
        ]

    # 4. Warm-up: the first call on a fresh session vs later calls.
    first, later = [], []
    for _ in range(args.rounds * 2):
        fresh = Embedder(bundle)
        for sink in (first, later, later, later):
            start = time.perf_counter()
            fresh.embed(["What causes muscle fatigue?"])
            sink.append((time.perf_counter() - start) * 1000)
    lines += [
        "",
        "## Warm-up",
        "",
        f"One short text on a fresh session: first call median {statistics.median(first):.1f} ms, "
        f"later calls median {statistics.median(later):.1f} ms.",
    ]

    report = "\n".join(lines) + "\n"
    out = ROOT / "benchmarks" / "results" / f"runtime_settings_{args.bundle.name}.md"
    out.write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
