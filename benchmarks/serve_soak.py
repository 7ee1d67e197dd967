"""Soak `serve`: does its RSS keep growing with requests (a leak) or level off (allocator settling)?

    python benchmarks/serve_soak.py [--bundle build/all-minilm-l6-v2] [--requests 60000]
        [--concurrency 8] [--threads 1] [--env MALLOC_ARENA_MAX=2]

Starts the server as a user would (python -m encoderfile.runtime --bundle DIR serve), sends
single-text /embed requests (SciFact queries when ../shared/data/scifact is there: varied
lengths, so the onnxruntime arena meets many shapes) at --concurrency, and reads the server's
RSS (VmRSS, and RssAnon: the heap) every --sample-every requests. The verdict compares growth
per 10k requests over the soak's quarters, after the first 10% (warm-up):
    leak      the last quarter still grows at >= half the second quarter's rate and over
              --leak-mb-per-10k: bytes per request that never come back;
    settling  growth decays to under that: arenas and caches reaching their working size.
Writes benchmarks/results/serve_soak.md (the table of samples and the verdict). Client and
server share the machine; the figures are RSS, not speed, so a busy machine only stretches time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from machine import isa_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ROOT.parent / "shared" / "data" / "scifact" / "queries.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def texts() -> list[str]:
    if QUERIES.is_file():
        lines = QUERIES.read_text().splitlines()
        return [json.loads(line)["text"] for line in lines if line.strip()]
    return [f"sentence {i} " + "about embedding models and vectors " * (i % 9) for i in range(997)]


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, RssAnon) of `pid` in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["RssAnon"]


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
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


async def soak(
    url: str, pid: int, pool: list[str], requests: int, concurrency: int, every: int
) -> list[tuple[int, float, float, float]]:
    """(requests done, seconds, VmRSS MB, RssAnon MB) every `every` requests."""
    samples = [(0, 0.0, *memory_mb(pid))]
    done = 0
    next_text = 0
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal done, next_text
            while next_text < requests:
                text = pool[next_text % len(pool)]
                next_text += 1
                response = await client.post("/embed", json={"input": text})
                response.raise_for_status()
                done += 1
                if done % every == 0:
                    samples.append((done, time.perf_counter() - started, *memory_mb(pid)))
                    print(f"{done:>8} requests  RSS {samples[-1][2]:8.1f} MB", file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


def per_10k(samples: list[tuple[int, float, float, float]], start: int, end: int) -> float:
    """RSS growth in MB per 10k requests between the samples nearest `start` and `end`."""
    first = min(samples, key=lambda s: abs(s[0] - start))
    last = min(samples, key=lambda s: abs(s[0] - end))
    return (last[2] - first[2]) / max(last[0] - first[0], 1) * 10_000


def verdict(
    samples: list[tuple[int, float, float, float]], requests: int, leak_mb: float
) -> tuple[str, list[float]]:
    warm = requests // 10
    quarter = (requests - warm) / 4
    rates = [per_10k(samples, int(warm + q * quarter), int(warm + (q + 1) * quarter)) for q in range(4)]  # fmt: skip
    leaking = rates[3] >= leak_mb and rates[3] >= 0.5 * max(rates[1], 1e-9)
    if leaking:
        per_request = rates[3] * 2**20 / 10_000
        return (
            f"leak: still +{rates[3]:.2f} MB per 10k requests ({per_request:.0f} B/request)",
            rates,
        )
    return (
        f"settling: growth decays to {rates[3]:+.2f} MB per 10k requests in the last quarter "
        f"(under {leak_mb} MB)",
        rates,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / "build" / "all-minilm-l6-v2"))
    parser.add_argument("--requests", type=int, default=60_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    parser.add_argument("--sample-every", type=int, default=2_000)
    parser.add_argument("--leak-mb-per-10k", type=float, default=0.5)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_soak.md"))
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "encoderfile.runtime", "--threads", str(args.threads)]
    argv += ["--bundle", args.bundle, "serve", "--port", str(port), "--no-grpc"]
    extra = dict(item.split("=", 1) for item in args.env)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    server = subprocess.Popen(argv, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_ready(url, server)
        name = httpx.get(f"{url}/info").json()["name"]
        samples = asyncio.run(
            soak(url, server.pid, texts(), args.requests, args.concurrency, args.sample_every)
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)

    said, rates = verdict(samples, args.requests, args.leak_mb_per_10k)
    lines = [
        f"# serve soak: {name}, {args.requests:,} requests",
        "",
        f"{isa_line()}; Python {platform.python_version()}; "
        f"server --threads {args.threads}, {args.concurrency} connections, one text a request"
        + (f"; env {' '.join(args.env)}" if args.env else ""),
        "",
        f"**Verdict: {said}.** Growth per 10k requests by quarter after the first 10%: "
        + ", ".join(f"{r:+.2f}" for r in rates)
        + " MB.",
        "",
        "| requests | seconds | RSS MB | anon MB | vs 10% |",
        "|---|---|---|---|---|",
    ]
    base = min(samples, key=lambda s: abs(s[0] - args.requests // 10))[2]
    for done, seconds, rss, anon in samples:
        lines.append(f"| {done:,} | {seconds:.0f} | {rss:.1f} | {anon:.1f} | {rss - base:+.1f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"{said}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
