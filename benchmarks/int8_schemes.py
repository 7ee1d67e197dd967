"""Why int8 weights are 7-bit: quality, speed and cross-CPU agreement of the int8 candidates.

    .venv/bin/python benchmarks/int8_schemes.py [--rounds 5] [--output benchmarks/results/int8_schemes.md]

Each candidate is all-MiniLM-L6-v2 through the real builder (gate thresholds opened so every
figure is recorded), with and without the FFN down-projections quantized:

  u8s8   uint8 activations x full 8-bit int8 weights (onnxruntime's default; the scheme before)
  u8s7   uint8 activations x 7-bit weights, |w| <= 64 (`reduce_range`; what the builder ships)
  u8u8   uint8 activations x uint8 weights (asymmetric; other kernels, exact on every ISA)

The builder itself only makes u8s7: this script passes the other schemes' options through to
onnxruntime's quantize_static and lifts the saturation check to measure them.

Per candidate: the gate's held-out cosine to fp32 (mean / min); speed on short texts as a ratio
to fp32 (SciFact queries, batch 32, one onnxruntime thread, timed in CPU seconds of that thread
so that other work on a shared machine does not enter the ratio; the median of per-round ratios
from interleaved rounds);
and the largest |difference| between the vectors computed here and on two emulated CPUs
(QEMU user mode: Haswell = AVX2 without AVX-512 or VNNI, Nehalem = SSE4.2), which is what a
bundle's golden vectors must survive on another machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime.quantization as ort_quantization
import yaml
from machine import isa_line
from onnxruntime.quantization import QuantType
from precision import ROOT, Encoder

from encoderfile import quantize
from encoderfile.compiler import compile_bundle

MODEL_DIR = ROOT / "models/all-minilm-l6-v2"
SCHEMES: dict[str, dict[str, Any]] = {
    "u8s8": {},
    "u8s7": {"reduce_range": True},
    "u8u8": {"weight_type": QuantType.QUInt8},
}
FFN = {"ffn_down": True, "smooth_alpha": 0.65}  # the shipped recipe's int8 section
NO_FFN = {"ffn_down": False}  # the library default (smooth_alpha 0.5)
EMULATED = ("Haswell-noTSX", "Nehalem")
CROSS_TEXTS = [
    "Hello!",
    "東京は日本の首都です。",
    "search_query: how do vaccines train the immune system?",
]


def build(tmp: Path, name: str, precision: str, int8: dict[str, Any] | None) -> Path:
    spec = yaml.safe_load((ROOT / "recipes/all-minilm-l6-v2.yaml").read_text())
    spec["model"]["local"]["path"] = str(MODEL_DIR)
    spec["name"] = name
    if precision == "int8":
        spec |= {
            "precision": "int8",
            "int8": int8,
            "gate": {"mean_cosine": 0.0, "min_cosine": -1.0, "batch_max_abs_diff": 1.0},
        }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return compile_bundle(path, tmp / "build")


def with_scheme(options: dict[str, Any]) -> None:
    """Route the builder's quantize_static call through these extra options."""
    original = getattr(with_scheme, "original", ort_quantization.quantize_static)
    with_scheme.original = original  # type: ignore[attr-defined]

    def call(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **{**kwargs, "reduce_range": False, **options})

    ort_quantization.quantize_static = call
    quantize.saturating_weights = lambda model: []  # measure u8s8 too


def vectors(prefix: list[str], bundle: Path, out: Path) -> np.ndarray:
    command = [*prefix, sys.executable, "-m", "encoderfile.runtime", "--bundle", str(bundle)]
    command += ["--threads", "1", "embed", *CROSS_TEXTS, "--format", "npy", "-o", str(out)]
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True)
    return np.load(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scifact", type=Path, default=ROOT.parent / "shared/data/scifact")
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/int8_schemes.md")
    args = parser.parse_args()
    queries = [json.loads(line)["text"] for line in (args.scifact / "queries.jsonl").open()]
    queries = queries[: args.texts]
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="int8-schemes-") as tmp_dir:
        tmp = Path(tmp_dir)
        bundles = {"fp32": build(tmp, "fp32", "fp32", None)}
        for scheme, options in SCHEMES.items():
            with_scheme(options)
            for suffix, int8 in (("", FFN), (" no-ffn", NO_FFN)):
                name = scheme + suffix
                start = time.perf_counter()
                bundles[name] = build(tmp, name.replace(" ", "-"), "int8", int8)
                gate = json.loads((bundles[name] / "manifest.json").read_text())["precision"]
                rows[name] = {"gate": gate["gate"], "build_s": time.perf_counter() - start}
                print(f"built {name}: {rows[name]['gate']['mean_cosine']:.4f}", flush=True)
        encoders = {
            n: Encoder(b / "model.onnx", b / "tokenizer.json", threads=1)
            for n, b in bundles.items()
        }
        ratios: dict[str, list[float]] = {n: [] for n in rows}
        for _ in range(args.rounds):
            seconds = {}
            for name, enc in encoders.items():
                start = time.thread_time()
                enc.bulk(queries)
                seconds[name] = time.thread_time() - start
            for name in rows:
                ratios[name].append(seconds["fp32"] / seconds[name])
        rows["fp32"] = {}
        for name, bundle in bundles.items():
            native = vectors([], bundle, tmp / "native.npy")
            for cpu_model in EMULATED:
                emulated = vectors(["qemu-x86_64", "-cpu", cpu_model], bundle, tmp / "emu.npy")
                rows[name][cpu_model] = float(np.abs(native - emulated).max())
            print(f"cross-CPU {name}: {[rows[name][c] for c in EMULATED]}", flush=True)
    lines = [
        "# int8 schemes: quality, speed, cross-CPU agreement (all-MiniLM-L6-v2)",
        "",
        f"`{' '.join(sys.argv)}`",
        "",
        isa_line() + f"; {args.texts} SciFact queries, batch 32, 1 thread, CPU seconds, median of "
        f"{args.rounds} interleaved per-round ratios; load average at the end "
        f"{os.getloadavg()[0]:.1f}.",
        "",
        "| scheme | gate: held-out cos mean / min | passes 0.99 / 0.98 | short texts/CPU-s × fp32 "
        "(rounds) | max abs diff vs Haswell (AVX2) | vs Nehalem (SSE4.2) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if name == "fp32":
            quality, passes, speed = "—", "—", "1.00"
        else:
            g = r["gate"]
            quality = f"{g['mean_cosine']:.4f} / {g['min_cosine']:.4f}"
            passes = "yes" if g["mean_cosine"] >= 0.99 and g["min_cosine"] >= 0.98 else "**no**"
            each = ", ".join(f"{x:.2f}" for x in ratios[name])
            speed = f"{statistics.median(ratios[name]):.2f} ({each})"
        cross = [f"{r[c]:.2g}" for c in EMULATED]
        lines.append(f"| {name} | {quality} | {passes} | {speed} | {cross[0]} | {cross[1]} |")
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
