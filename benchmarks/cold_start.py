"""Cold start and size of a frozen artifact vs the same bundle run from the venv, in one run.

    python benchmarks/cold_start.py --artifact dist/all-minilm-l6-v2 \
        --bundle build/all-minilm-l6-v2 [--runs 10] [--output benchmarks/results/cold_start.md]

Times `echo hello | <command> embed` end to end (process start to exit), interleaving the
variants so that machine drift hits them alike:
  venv         python -m encoderfile.runtime --bundle DIR embed (the venv's interpreter)
  artifact     the artifact with its extraction cache already populated (every later run)
  first run    the artifact with an empty cache (extracts the runtime first)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--first-runs", type=int, default=3, help="runs with an empty cache")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="ARTIFACT",
        help="another build of the same bundle timed alongside, warm cache (e.g. an older stub)",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/cold_start.md")
    args = parser.parse_args()

    artifact, bundle = args.artifact.resolve(), args.bundle.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        warm_env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "warm")}
        venv_env = {**os.environ, "PYTHONPATH": str(ROOT)}
        variants = {
            "venv": (
                [sys.executable, "-m", "encoderfile.runtime", "--bundle", str(bundle)],
                venv_env,
            ),
            "artifact": ([str(artifact)], warm_env),
        }
        if args.compare:
            compare_env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "compare")}
            variants[f"compare: {args.compare}"] = ([str(args.compare.resolve())], compare_env)
        for command, env in variants.values():  # warm the page cache and the extraction cache
            _run(command, env)
        times: dict[str, list[float]] = {name: [] for name in variants}
        times["first run"] = []
        for i in range(args.runs):
            for name, (command, env) in variants.items():
                times[name].append(_run(command, env))
            if i < args.first_runs:
                cold = Path(tmp) / f"cold{i}"
                times["first run"].append(
                    _run([str(artifact)], {**os.environ, "XDG_CACHE_HOME": str(cold)})
                )
                shutil.rmtree(cold)

    model = (bundle / "model.onnx").stat().st_size
    size = artifact.stat().st_size
    venv_min, venv_median = min(times["venv"]), statistics.median(times["venv"])
    lines = [
        f"# Cold start: `{artifact.name}`",
        "",
        f"`echo hello | <command> embed`, end to end; {args.runs} interleaved runs "
        f"({args.first_runs} for the first run); {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}. Figures vary ±15% run to run: compare ratios.",
        "",
        "| variant | min ms | median ms | min / venv min | median / venv median |",
        "|---|---|---|---|---|",
    ]
    for name, values in times.items():
        low, mid = min(values), statistics.median(values)
        lines.append(
            f"| {name} | {low * 1e3:.0f} | {mid * 1e3:.0f} | {low / venv_min:.2f}x "
            f"| {mid / venv_median:.2f}x |"
        )
    lines += [
        "",
        "| size | MB |",
        "|---|---|",
        f"| model.onnx | {model / 1e6:.1f} |",
        f"| artifact | {size / 1e6:.1f} |",
        f"| artifact − model | {(size - model) / 1e6:.1f} |",
        "",
        f"Goals: artifact (warm cache) median within 1.2x of venv: "
        f"{'met' if statistics.median(times['artifact']) <= 1.2 * venv_median else 'NOT met'}; "
        f"size ≤ model + 60 MB: {'met' if size - model <= 60e6 else 'NOT met'}.",
    ]
    report = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")
    print(report)
    return 0


def _run(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [*command, "embed"], input=b"hello\n", env=env, cwd=ROOT, capture_output=True
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed: {result.stderr.decode(errors='replace')}")
    return elapsed


if __name__ == "__main__":
    raise SystemExit(main())
