"""Figures quoted in the README come from one measured source each: the benchmark tables in
docs/benchmarks.md (bulk rerun, serving run) and the int8 gate of the shipped recipe's build."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

ROOT = Path(__file__).parents[1]
MODELS = {"MiniLM": "all-MiniLM-L6-v2", "NomicBERT": "NomicBERT full size, random weights"}


def section(text: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n") + len(heading)
    stop = re.search(rf"^#{{1,{len(level)}}} ", text[start:], re.M)
    return text[start : start + stop.start()] if stop else text[start:]


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def numbers(text: str) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)?", text)


def same(quoted: list[str], measured: list[str]) -> bool:
    """Each quoted figure is the measured one, rounded to the quoted number of decimals."""
    if len(quoted) != len(measured):
        return False
    return all(
        Decimal(m).quantize(Decimal(q), ROUND_HALF_UP) == Decimal(q)
        for q, m in zip(quoted, measured, strict=True)
    )


def readme_rows(first_cell: str) -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    return [cells(line) for line in readme.splitlines() if re.match(first_cell, line)]


def test_readme_bulk_table_is_the_benchmarks_bulk_rerun() -> None:
    rerun = section(
        (ROOT / "docs/benchmarks.md").read_text(),
        "## Bulk again, after model calls went from 64 to 16 texts",
    )
    rows = readme_rows(r"\| (MiniLM|NomicBERT), (short|SciFact|mixed) \(")
    assert len(rows) == 6
    for row in rows:
        model, workload = re.match(r"(\w+), (\w+)", row[0]).groups()  # type: ignore[union-attr]
        table = section(rerun, f"### {MODELS[model]}")
        source = next(
            cells(line) for line in table.splitlines() if line.startswith(f"| {workload.lower()} |")
        )
        # README: embed (minus start-up), ORT, torch, fastembed, embed/ORT, embed/torch; the
        # table has them in that order, ORT with its best batch size in brackets.
        measured = [*source[3:5], source[5].split(" (")[0], *source[6:10]]
        quoted = [*row[1:5], row[5].split(" (")[0], row[6]]
        assert same(numbers(" ".join(quoted)), numbers(" ".join(measured))), row


def test_readme_serving_table_is_the_benchmarks_serving_run() -> None:
    benchmarks = (ROOT / "docs/benchmarks.md").read_text()
    rows = readme_rows(r"\| (MiniLM|NomicBERT) \| \d+ \|")
    assert len(rows) == 5
    for row in rows:
        table = section(benchmarks, f"## {MODELS[row[0]]}")
        source = next(
            cells(line) for line in table.splitlines() if line.startswith(f"| {row[1]} |")
        )
        assert same(numbers(" ".join(row[2:])), numbers(" ".join(source[1:]))), row
