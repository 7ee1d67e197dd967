"""Bulk throughput of bundles of one model at different precisions, as `embed` runs them.

    python benchmarks/bulk_precision.py build/all-minilm-l6-v2 build/all-minilm-l6-v2-int8 \
        [--texts 3000] [--rounds 5] [--out benchmarks/results/bulk_precision.md]

Each bundle is embedded by the runtime's bulk path (`for_bulk`: length-sorted model calls, eight
or more side by side, a thread per CPU), in process, on the short-text workload of
benchmarks/throughput.py (SciFact queries, titles and sentences). The bundles take turns, in
alternating order, for --rounds rounds after one unmeasured warm-up each; a ratio is paired within
a round against the first bundle.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]

from machine import isa_line  # noqa: E402
from throughput import _short_pool  # noqa: E402

from encoderfile.runtime.artifact import open_bundle  # noqa: E402
from encoderfile.runtime.embedder import for_bulk  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", type=Path, nargs="+", help="the first is the baseline")
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bulk_precision.md")
    args = parser.parse_args()
    texts = _short_pool()[: args.texts]
    embedders = {b.name: for_bulk(open_bundle(b), None) for b in args.bundles}
    names = list(embedders)
    for embedder in embedders.values():
        embedder.embed(texts[:512])  # opens the lanes' session
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            started = time.perf_counter()
            embedders[name].embed(texts)
            rates[name].append(len(texts) / (time.perf_counter() - started))
        print(", ".join(f"{n} {rates[n][-1]:.0f}/s" for n in names), flush=True)
    base = names[0]
    lines = [
        "# Bulk throughput by precision (benchmarks/bulk_precision.py)",
        "",
        f"`{' '.join(sys.argv)}` — {isa_line()}. {len(texts)} short texts, the runtime's bulk "
        f"path, {args.rounds} rounds in alternating order.",
        "",
        f"| bundle | texts/s per round | × {base} per round |",
        "|---|---|---|",
    ]
    for name in names:
        ratios = [x / y for x, y in zip(rates[name], rates[base], strict=True)]
        lines.append(
            f"| {name} | {', '.join(f'{x:.0f}' for x in rates[name])} "
            f"| {', '.join(f'{x:.2f}' for x in ratios)} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
