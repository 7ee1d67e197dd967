"""Throughput of `serve`: single-text requests sent one at a time vs concurrently (dynamic batching).

    python benchmarks/serve_load.py [--bundle build/all-minilm-l6-v2] [--requests 400]

Starts the server as a user would (python -m encoderfile.runtime --bundle DIR serve) on free
loopback ports, runs both modes against the same server, alternating, and writes
benchmarks/results/serve.md. Client and server share the machine: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ROOT.parent / "shared" / "data" / "scifact" / "queries.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def texts(n: int) -> list[str]:
    if QUERIES.is_file():
        lines = QUERIES.read_text().splitlines()
        pool = [json.loads(line)["text"] for line in lines if line.strip()]
    else:
        pool = [f"sentence number {i} about embedding models and vectors" for i in range(300)]
    return [pool[i % len(pool)] for i in range(n)]


async def run_mode(url: str, items: list[str], concurrency: int) -> tuple[float, list[float]]:
    """(texts per second, per-request latencies in ms) with `concurrency` requests in flight."""
    latencies: list[float] = []
    queue = list(reversed(items))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            while queue:
                text = queue.pop()
                started = time.perf_counter()
                r = await client.post("/embed", json={"input": text})
                r.raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return len(items) / elapsed, latencies


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Wait until GET /ready answers 200; fail early if the server process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server at {url} did not become ready in {timeout:.0f} s")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank on sorted values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def metric_values(url: str, series: list[str], default: float | None = None) -> list[float]:
    """Each series' value (its name and labels as /metrics writes them) from our server at `url`;
    one not written yet reads as `default`, or raises LookupError when there is none."""
    text = httpx.get(f"{url}/metrics").text
    values = []
    for name in series:
        found = re.search(rf"^{re.escape(name)} (\S+)", text, re.M)
        if found is None and default is None:
            raise LookupError(f"{url}/metrics has no {name}")
        values.append(float(found.group(1)) if found else default)
    return values  # type: ignore[return-value]  # a default or a found value, never None


def batch_stats(url: str) -> tuple[float, float]:
    """(model calls, texts) so far, from /metrics."""
    count, total = metric_values(
        url, ["encoderfile_batch_inputs_count", "encoderfile_batch_inputs_sum"]
    )
    return count, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / "build" / "all-minilm-l6-v2"))
    parser.add_argument("--requests", type=int, default=400, help="per mode and round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.md"))
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "encoderfile.runtime", "--threads", str(args.threads)]
    argv += ["--bundle", args.bundle, "serve", "--port", str(port), "--no-grpc"]
    server = subprocess.Popen(
        argv, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    try:
        wait_ready(url, server)
        name = httpx.get(f"{url}/info").json()["name"]
        items = texts(args.requests)
        asyncio.run(run_mode(url, items[:50], 4))  # warm-up
        results: dict[str, list[tuple[float, list[float], float]]] = {
            "sequential": [],
            "concurrent": [],
        }
        for _ in range(args.rounds):
            for mode, concurrency in (("sequential", 1), ("concurrent", args.concurrency)):
                calls0, texts0 = batch_stats(url)
                rate, latencies = asyncio.run(run_mode(url, items, concurrency))
                calls1, texts1 = batch_stats(url)
                results[mode].append((rate, latencies, (texts1 - texts0) / (calls1 - calls0)))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)

    rows = []
    for mode, runs in results.items():
        rates = [r for r, _, _ in runs]
        latencies = sorted(ms for _, lat, _ in runs for ms in lat)
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        mean_batch = statistics.mean(b for _, _, b in runs)
        concurrency = 1 if mode == "sequential" else args.concurrency
        rows.append(
            f"| {mode} | {concurrency} | {max(rates):.0f} / {statistics.median(rates):.0f} | "
            f"{statistics.median(latencies):.1f} / {p95:.1f} | {mean_batch:.1f} |"
        )
    seq = statistics.median(r for r, _, _ in results["sequential"])
    con = statistics.median(r for r, _, _ in results["concurrent"])
    report = f"""# serve: sequential vs concurrent single-text requests

`python benchmarks/serve_load.py` — {name}, POST /embed with one SciFact query per request,
{args.requests} requests per mode and round, {args.rounds} rounds alternating, onnxruntime
threads {args.threads}, client and server on the same machine ({os.cpu_count()} CPUs,
{platform.machine()}, Python {platform.python_version()}).

| mode | requests in flight | texts/s (best / median) | latency ms (median / p95) | texts per model call |
|---|---|---|---|---|
{chr(10).join(rows)}

Concurrent clients get {con / seq:.2f}× the throughput of one client sending requests one at a
time: the batcher merges the requests that arrive while the model is busy into one call.
"""
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
