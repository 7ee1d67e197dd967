"""The README's headline figures come from one measured source, docs/benchmarks.md: each cell is
the figure there, rounded to the README's decimals."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

ROOT = Path(__file__).parents[1]
BENCHMARKS = (ROOT / "docs/benchmarks.md").read_text()
MODELS = ("all-MiniLM-L6-v2", "NomicBERT full size, random weights")
WORKLOADS = ("short", "scifact", "mixed")


def section(text: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n") + len(heading)
    stop = re.search(rf"^#{{1,{len(level)}}} ", text[start:], re.M)
    return text[start : start + stop.start()] if stop else text[start:]


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def row(text: str, first: str) -> list[str]:
    return next(cells(line) for line in text.splitlines() if line.startswith(f"| {first} |"))


def first_number(text: str) -> str:
    return re.findall(r"\d+(?:\.\d+)?", text)[0]


def same(quoted: str, measured: list[str]) -> bool:
    """Each quoted figure is the measured one, rounded to the quoted number of decimals."""
    figures = re.findall(r"\d+(?:\.\d+)?", quoted)
    return len(figures) == len(measured) and all(
        Decimal(m).quantize(Decimal(q), ROUND_HALF_UP) == Decimal(q)
        for q, m in zip(figures, measured, strict=True)
    )


def bulk(model: str, column: int) -> list[str]:
    rerun = section(BENCHMARKS, "## Bulk again, after model calls went from 64 to 16 texts")
    table = section(rerun, f"### {model}")
    return [first_number(row(table, w)[column]) for w in WORKLOADS]


def serving(model: str, view: str, clients: int, column: int) -> list[str]:
    """The Serving speed section has one table per model, MiniLM's first."""
    tables = re.split(r"\n(?=\| view \|)", section(BENCHMARKS, "## Serving speed"))[1:]
    return [first_number(row(tables[MODELS.index(model)], f"{view} | {clients}")[column])]


def one_client_rounds(model: str) -> list[str]:
    """MiniLM only: the latest full run of interleaved one-client rounds (serve / batch-1, median
    of the rounds), the section's first table with a row per client."""
    if model != MODELS[0]:
        return []
    table = section(BENCHMARKS, "## Speed at both ends: rounds (issue 31)")
    clients = ("wrk", "hey", "http.client", "grpc.aio (Embed)", "grpc blocking stub (Embed)")
    return [first_number(row(table, f"{client} | 1")[10]) for client in clients]


def bulk_rounds(model: str) -> list[str]:
    """MiniLM only: the latest bulk rounds' worst ratio per workload, the section's first table
    with a row per workload."""
    if model != MODELS[0]:
        return []
    table = section(BENCHMARKS, "## Speed at both ends: rounds (issue 31)")
    return [first_number(row(table, workload)[4]) for workload in ("short", "SciFact", "mixed")]


def startup(model: str) -> list[str]:
    table = section(
        BENCHMARKS,
        "## Start-up and size (2-core x86_64, Python 3.11; ratios from one run each, figures ±15%)",
    )
    name = "NomicBERT, full size, random weights" if model != MODELS[0] else model
    return [first_number(row(table, name)[5])]


def parity(model: str) -> list[str]:
    table = section(
        BENCHMARKS,
        "## Parity with the reference implementations (measured by `tests/test_parity.py`)",
    )
    return [first_number(row(table, "all-MiniLM-L6-v2, 384 dims")[2])] if model == MODELS[0] else []


SOURCES = {
    "bulk `embed` texts/s: short, SciFact, mixed": lambda m: bulk(m, 3),
    "bulk `embed` / plain onnxruntime loop at its best batch": lambda m: bulk(m, 8),
    "bulk `embed` / sentence-transformers on torch": lambda m: bulk(m, 9),
    "`serve`, 64 clients (wrk) / bulk `embed`": lambda m: serving(m, "wrk", 64, 8),
    "`serve`, 1 client (hey) / a batch-1 server": lambda m: serving(m, "hey", 1, 7),
    "`serve`, 1 client / a batch-1 server, medians of 5 interleaved rounds (AVX-512 VNNI): wrk, "
    "hey, http.client, gRPC (grpc.aio), gRPC (blocking stubs)": one_client_rounds,
    "bulk `embed` and `stream` / plain onnxruntime loop, worst of 5 interleaved rounds "
    "(AVX-512 VNNI): short, SciFact, mixed": bulk_rounds,
    "`embed hello` start-up / a minimal onnxruntime script": startup,
    "vectors against sentence-transformers (min cosine)": parity,
}


def test_readme_headline_table_is_docs_benchmarks() -> None:
    table = section((ROOT / "README.md").read_text(), "## Headline figures")
    rows = [cells(line) for line in table.splitlines() if line.startswith("| ")][1:]
    assert [r[0] for r in rows] == list(SOURCES), "the headline rows and their sources differ"
    for headline, *quoted in rows:
        for model, cell in zip(MODELS, quoted, strict=True):
            assert same(cell, SOURCES[headline](model)), (headline, model, cell)
