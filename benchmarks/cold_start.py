"""Start-up of frozen artifacts vs a minimal script and the venv, interleaved in one run.

    python benchmarks/cold_start.py --artifact dist/all-minilm-l6-v2 --bundle build/all-minilm-l6-v2 \
        [--before OLD-ARTIFACT] [--artifact dist/nomic… --bundle build/nomic… [--before …]] \
        [--runs 7] [--first-runs 3]

Times `<command> embed hello` end to end (process start to exit, the first vector written) and
reads each process's peak RSS (wait4), interleaving the variants so machine drift hits them alike:
  minimal      python: import onnxruntime + tokenizers, create the session from the bundle's
               model.onnx, tokenize, one run, print the vector: the bare work, nothing checked
  venv         python -m encoderfile.runtime --bundle DIR embed hello (the venv's interpreter)
  artifact     the artifact, its runtime extracted and its optimised model cached (every later run)
  first run    the artifact with an empty cache: extracts the runtime, optimises and caches the model
  before       (with --before) the same model frozen by an earlier encoderfile, cache warm
Also reports what checking the cached copy costs: sha256 of its files, timed on this CPU.
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

from machine import isa_line

from encoderfile.runtime.model_cache import piece_sha256s

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = """
import sys
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer
bundle, text = sys.argv[1:3]
session = ort.InferenceSession(bundle + "/model.onnx", providers=["CPUExecutionProvider"])
encoding = Tokenizer.from_file(bundle + "/tokenizer.json").encode(text)
rows = {"input_ids": encoding.ids, "attention_mask": encoding.attention_mask,
        "token_type_ids": encoding.type_ids}
feed = {i.name: np.array([rows[i.name]], np.int64) for i in session.get_inputs()}
print(session.run(None, feed)[0][0].tolist())
"""
TEXT = "hello"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, action="append", required=True)
    parser.add_argument("--bundle", type=Path, action="append", required=True)
    parser.add_argument(
        "--before", type=Path, action="append", default=[], help="earlier build, per --artifact"
    )
    parser.add_argument("--runs", type=int, default=7, help="later runs per variant")
    parser.add_argument("--first-runs", type=int, default=3, help="runs with an empty cache")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/cold_start.md")
    args = parser.parse_args()
    if len(args.artifact) != len(args.bundle):
        parser.error("pass one --bundle per --artifact")
    if args.before and len(args.before) != len(args.artifact):
        parser.error("pass one --before per --artifact, or none")

    load = os.getloadavg()
    sections = [
        _model(artifact.resolve(), bundle.resolve(), before, args.runs, args.first_runs)
        for artifact, bundle, before in zip(
            args.artifact, args.bundle, args.before or [None] * len(args.artifact), strict=True
        )
    ]
    load_after = os.getloadavg()
    header = [
        "# Start-up: `embed hello`, first vector",
        "",
        f"`<command> embed {TEXT}`, process start to exit; {args.runs} interleaved runs per "
        f"variant ({args.first_runs} for the first run), medians; peak RSS from wait4. "
        f"{isa_line()}; Python {platform.python_version()}; "
        f"load average {load[0]:.1f} at the start, {load_after[0]:.1f} at the end (a machine "
        "shared with other jobs: compare the ratios, taken side by side).",
        "",
    ]
    report = "\n".join(header + [line for section in sections for line in section]) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")
    print(report)
    return 0


def _model(
    artifact: Path, bundle: Path, before: Path | None, runs: int, first_runs: int
) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        warm = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "warm")}
        variants = {
            "minimal": ([sys.executable, "-c", MINIMAL, str(bundle), TEXT], dict(os.environ)),
            "venv": (
                [sys.executable, "-m", "encoderfile.runtime", "--bundle", str(bundle)]
                + ["embed", TEXT],
                {**os.environ, "PYTHONPATH": str(ROOT)},
            ),
            "artifact": ([str(artifact), "embed", TEXT], warm),
        }
        if before is not None:
            old_cache = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "before")}
            variants["before"] = ([str(before.resolve()), "embed", TEXT], old_cache)
        for command, env in variants.values():  # page cache, extraction and model caches
            _run(command, env)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        samples["first run"] = []
        for i in range(runs):
            for name, (command, env) in variants.items():
                samples[name].append(_run(command, env))
            if i < first_runs:
                cold = Path(tmp) / f"cold{i}"
                env = {**os.environ, "XDG_CACHE_HOME": str(cold)}
                samples["first run"].append(_run([str(artifact), "embed", TEXT], env))
                shutil.rmtree(cold)
        cached = sorted((Path(tmp) / "warm" / "encoderfile" / "models").glob("*/*"))
        copy_bytes = sum(p.stat().st_size for p in cached if p.name != "digest.json")
        hash_seconds = _hash_cpu_seconds([p for p in cached if p.name != "digest.json"])

    wall = {name: statistics.median(s[0] for s in values) for name, values in samples.items()}
    rss = {name: statistics.median(s[1] for s in values) for name, values in samples.items()}
    model = (bundle / "model.onnx").stat().st_size
    size = artifact.stat().st_size
    lines = [
        f"## `{artifact.name}`",
        "",
        "| variant | wall median ms | wall min ms | peak RSS MB | wall / minimal | RSS / minimal |",
        "|---|---|---|---|---|---|",
    ]
    for name, values in samples.items():
        low = min(s[0] for s in values)
        lines.append(
            f"| {name} | {wall[name] * 1e3:.0f} | {low * 1e3:.0f} | {rss[name] / 1e6:.0f} "
            f"| {wall[name] / wall['minimal']:.2f}x | {rss[name] / rss['minimal']:.2f}x |"
        )
    lines += [
        "",
        f"Sizes: model.onnx {model / 1e6:.1f} MB, artifact {size / 1e6:.1f} MB (artifact − model "
        f"{(size - model) / 1e6:.1f} MB), cached optimised copy {copy_bytes / 1e6:.1f} MB. "
        f"Checking the copy at every start (sha256, on two threads while the session opens) costs "
        f"{hash_seconds * 1e3:.0f} ms of CPU here ({copy_bytes / 1e6 / max(hash_seconds, 1e-9):.0f}"
        " MB/s).",
        "",
    ]
    return lines


def _run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS bytes) of one run of `command`."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0 or out.tell() == 0:
            err.seek(0)
            raise SystemExit(f"{command[0]} failed: {err.read().decode(errors='replace')}")
    return elapsed, usage.ru_maxrss * 1024


def _hash_cpu_seconds(files: list[Path]) -> float:
    start = time.process_time()
    for path in files:
        piece_sha256s(path)
    return time.process_time() - start


if __name__ == "__main__":
    raise SystemExit(main())
