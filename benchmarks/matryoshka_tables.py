"""Markdown tables for docs/matryoshka.md from two `encoderfile sweep --json` results.

    .venv/bin/python benchmarks/matryoshka_tables.py \
        benchmarks/results/matryoshka_scifact_plain.json \
        benchmarks/results/matryoshka_scifact_rotated.json > benchmarks/results/matryoshka_scifact.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from encoderfile.sweep import table  # noqa: E402


def side_by_side(plain: dict, rotated: dict) -> str:
    def by(result: dict, precision: str) -> dict[int, dict]:
        return {r["dims"]: r for r in result["rows"] if r["precision"] == precision}

    lines = [
        "| dims | bytes (float32) | nDCG@10 truncated | nDCG@10 rotated | Δ rotation "
        "| recall@100 truncated | recall@100 rotated |",
        "|---|---|---|---|---|---|---|",
    ]
    p, r = by(plain, "float32"), by(rotated, "float32")
    for dims in sorted(p, reverse=True):
        lines.append(
            f"| {dims} | {p[dims]['bytes_per_vector']} | {p[dims]['ndcg']:.4f} | {r[dims]['ndcg']:.4f} "
            f"| {r[dims]['ndcg'] - p[dims]['ndcg']:+.4f} | {p[dims]['recall']:.4f} "
            f"| {r[dims]['recall']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    plain, rotated = (json.loads(Path(p).read_text()) for p in sys.argv[1:3])
    print("## Truncated vs rotated (float32, exact search)\n")
    print(side_by_side(plain, rotated))
    print("## Truncated (plain all-MiniLM-L6-v2)\n")
    print(table(plain))
    print("## Rotated (PCA fitted on the SciFact corpus)\n")
    print(table(rotated))


if __name__ == "__main__":
    main()
