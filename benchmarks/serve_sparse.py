"""Latency at low traffic: `serve` and the batch-1 server, one request every --gaps ms.

    python benchmarks/serve_sparse.py [--bundle build/all-minilm-l6-v2] [--gaps 20,100,300]
        [--turns 6] [--requests 20] [--out benchmarks/results/serve_sparse.md]

A server at low traffic gets a request now and then, each after its CPUs went quiet, which
benchmarks/serve_speed.py's back-to-back clients never show (onnxruntime's threads spin ~50 ms
after a call: stopping that spin won a back-to-back client 2-8% and lost 5 ms of p50 here).
Single-text POST /embed of SciFact queries from http.client, a new kept-alive connection a turn,
--requests a turn with the gap between them; the two servers take turns (A B, B A, ...) so that
both see the same moments of this VM. p50 and p90 over all of a server's requests at that gap;
CPU: the server process's ms a request, from /proc.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import isa_line  # noqa: E402
from serve_load import free_port, texts  # noqa: E402
from serve_speed import cpu_seconds  # noqa: E402
from throughput import started  # noqa: E402

PAUSE_S = 0.5  # between turns, so that a turn starts on quiet CPUs as the gap's requests do


def turn(port: int, bodies: list[str], gap: float) -> list[float]:
    """ms per request, one request every `gap` seconds on one connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.connect()
    latencies = []
    for body in bodies:
        sent = time.perf_counter()
        connection.request("POST", "/embed", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"127.0.0.1:{port} answered {response.status}")
        latencies.append((time.perf_counter() - sent) * 1000)
        time.sleep(gap)
    connection.close()
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "build" / "all-minilm-l6-v2")
    parser.add_argument("--gaps", default="20,100,300", help="ms between requests")
    parser.add_argument("--turns", type=int, default=6, help="turns per server and gap")
    parser.add_argument("--requests", type=int, default=20, help="requests a turn")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_sparse.md"
    )
    args = parser.parse_args()
    gaps = [int(g) for g in args.gaps.split(",")]
    bodies = [json.dumps({"input": q}) for q in texts(args.turns * args.requests)]
    load_average = os.getloadavg()[0]
    servers = {
        "serve": [sys.executable, "-m", "encoderfile.runtime", "--bundle", str(args.bundle)]
        + ["serve", "--no-grpc"],
        "batch-1": [sys.executable, str(ROOT / "benchmarks" / "throughput.py")]
        + ["--baseline-server", str(args.bundle)],
    }
    ports = {name: free_port() for name in servers}
    results: dict[tuple[str, int], dict[str, list[float]]] = {}
    with contextlib.ExitStack() as running:  # both up; loaded in turn, never together
        pids = {
            name: running.enter_context(
                started([*argv, "--port", str(ports[name])], f"http://127.0.0.1:{ports[name]}")
            ).pid
            for name, argv in servers.items()
        }
        for gap in gaps:
            for t in range(args.turns):
                for name in list(servers) if t % 2 == 0 else list(servers)[::-1]:
                    time.sleep(PAUSE_S)
                    before = cpu_seconds(pids[name])
                    latencies = turn(
                        ports[name], bodies[t * args.requests : (t + 1) * args.requests], gap / 1000
                    )
                    got = results.setdefault((name, gap), {"ms": [], "cpu": []})
                    got["ms"] += latencies
                    got["cpu"].append(cpu_seconds(pids[name]) - before)
    lines = [
        "# Latency at low traffic (benchmarks/serve_sparse.py)",
        "",
        f"`{' '.join(sys.argv)}` — {isa_line()}; load average before the run "
        f"{load_average:.1f}. One single-text POST /embed every gap, {args.requests} a turn, "
        f"{args.turns} turns a server and gap, the servers taking turns.",
        "",
        "| gap ms | serve p50 ms | p90 ms | CPU ms a request | batch-1 p50 ms | p90 ms "
        "| CPU ms a request | serve / batch-1 p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for gap in gaps:
        row = []
        for name in servers:
            ms = sorted(results[(name, gap)]["ms"])
            cpu = sum(results[(name, gap)]["cpu"]) / len(ms) * 1000
            row.append((statistics.median(ms), ms[int(len(ms) * 0.9)], cpu))
        (p50, p90, cpu), (base50, base90, base_cpu) = row
        lines.append(
            f"| {gap} | {p50:.2f} | {p90:.2f} | {cpu:.1f} | {base50:.2f} | {base90:.2f} "
            f"| {base_cpu:.1f} | {p50 / base50:.2f}x |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
