"""Serving speed, three views side by side: `serve` vs a batch-1 server vs bulk `embed`.

    python benchmarks/serve_speed.py [--bundle build/all-minilm-l6-v2] [--seconds 10]
        [--clients 1,8,64] [--out benchmarks/results/serve_speed.md]

Single-text POST /embed of SciFact queries. Each server is started as users start it
(`python -m encoderfile.runtime --bundle B serve`, and throughput.py's batch-1 baseline: one ORT
call per request, serialised); both stay up and are loaded in turn, back to back per client count
and tool, by wrk (compiled, a Lua script rotating the queries), hey (compiled, one body) and the
httpx harness of serve_load.py (Python: it shares the cores with the server). gRPC `Embed` gets
the same single-text load from a grpc.aio client (Python too; there is no batch-1 gRPC server to
compare with, so its rows are read against bulk). Bulk `embed` of the same texts and one plain
onnxruntime call (tokenize + batch-1 run) are the ceilings. Figures from one run are comparable
with each other; this machine has 2 cores, shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_load import free_port, run_mode, texts  # noqa: E402
from throughput import OrtLoop, started  # noqa: E402

# A server under more load than it can take (batch-1 at 64 clients) keeps computing requests whose
# clients are gone for a second or more after the load stops; the next load must not share the
# cores with that backlog (it showed as a p99 5x the p50 of the next server measured).
SETTLE_SECONDS = 3

WRK_SCRIPT = """
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, "/embed", nil, bodies[i])
end
"""


def wrk(url: str, clients: int, seconds: int, bodies: Path) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % bodies)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} error answers from {url}")

    def ms(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return {"rate": rate, "p50": ms("50"), "p99": ms("99")}


def hey(url: str, clients: int, seconds: int, body: Path) -> dict[str, float]:
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", str(clients), "-m", "POST"]
        + ["-T", "application/json", "-D", str(body), f"{url}/embed"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if re.search(r"\[(?!200)\d{3}\]\s+\d+ responses", out):
        raise SystemExit(f"hey saw error answers from {url}:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def ms(p: str) -> float:  # hey leaves out a percentile it has too few samples for
        found = re.search(rf"{p}% in ([\d.]+) secs", out)
        return float(found.group(1)) * 1000 if found else float("nan")

    return {"rate": rate, "p50": ms("50"), "p99": ms("99")}


def harness(url: str, clients: int, n: int) -> dict[str, float]:
    rate, latencies = asyncio.run(run_mode(url, texts(n), clients))
    latencies.sort()
    return {
        "rate": rate,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99)],
    }


def grpc_load(target: str, clients: int, seconds: int, queries: list[str]) -> dict[str, float]:
    """`clients` concurrent single-text Embed calls for `seconds`, each waiting for its answer."""
    import grpc

    from encoderfile.proto import embed_pb2, embed_pb2_grpc

    async def run() -> tuple[float, list[float]]:
        latencies: list[float] = []
        async with grpc.aio.insecure_channel(target) as channel:
            stub = embed_pb2_grpc.EmbedderStub(channel)
            stop = time.perf_counter() + seconds

            async def client(i: int) -> None:
                while time.perf_counter() < stop:
                    text = queries[(i * 7919 + len(latencies)) % len(queries)]
                    sent = time.perf_counter()
                    await stub.Embed(embed_pb2.EmbedRequest(inputs=[text]), timeout=60)
                    latencies.append((time.perf_counter() - sent) * 1000)

            started_at = time.perf_counter()
            await asyncio.gather(*(client(i) for i in range(clients)))
            return time.perf_counter() - started_at, latencies

    elapsed, latencies = asyncio.run(run())
    latencies.sort()
    return {
        "rate": len(latencies) / elapsed,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99)],
    }


def bulk_rate(bundle: Path, items: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.txt"
        source.write_text("\n".join(items) + "\n")
        command = [sys.executable, "-m", "encoderfile.runtime", "--bundle", str(bundle), "embed"]
        started_at = time.perf_counter()
        with open(source, "rb") as fh:
            subprocess.run(
                [*command, "--format", "npy", "-o", str(Path(tmp) / "v.npy")], stdin=fh, check=True
            )
        return len(items) / (time.perf_counter() - started_at)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "build" / "all-minilm-l6-v2")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--harness-requests", type=int, default=600)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_speed.md"
    )
    args = parser.parse_args()
    for tool in ("wrk", "hey"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install {tool}")
    clients = [int(c) for c in args.clients.split(",")]
    queries = texts(2000)
    with tempfile.TemporaryDirectory() as tmp:
        bodies = Path(tmp) / "bodies.jsonl"
        bodies.write_text("".join(json.dumps({"input": q}) + "\n" for q in queries))
        one = Path(tmp) / "one.json"
        one.write_text(json.dumps({"input": queries[0]}))
        servers = {
            "serve": [
                sys.executable,
                "-m",
                "encoderfile.runtime",
                "--bundle",
                str(args.bundle),
                "serve",
                "--grpc-port",
                str(grpc_port := free_port()),
            ],
            "batch-1": [
                sys.executable,
                str(ROOT / "benchmarks" / "throughput.py"),
                "--baseline-server",
                str(args.bundle),
            ],
        }
        rows: dict[tuple[str, str, int], dict[str, float]] = {}
        urls = {name: f"http://127.0.0.1:{free_port()}" for name in servers}
        with contextlib.ExitStack() as running:  # both up; loaded in turn, never together
            for name, argv in servers.items():
                port = urls[name].rsplit(":", 1)[1]
                running.enter_context(started([*argv, "--port", port], urls[name]))
                harness(urls[name], 8, 200)  # warm up
            for c in clients:
                for tool in ("wrk", "hey", "httpx"):
                    for name, url in urls.items():
                        time.sleep(SETTLE_SECONDS)
                        if tool == "wrk":
                            rows[(tool, name, c)] = wrk(url, c, args.seconds, bodies)
                        elif tool == "hey":
                            rows[(tool, name, c)] = hey(url, c, args.seconds, one)
                        else:
                            rows[(tool, name, c)] = harness(url, c, args.harness_requests)
                time.sleep(SETTLE_SECONDS)
                grpc_target = f"127.0.0.1:{grpc_port}"
                rows[("grpc", "serve", c)] = grpc_load(grpc_target, c, args.seconds, queries)
        bulk = bulk_rate(args.bundle, queries)
        single = OrtLoop(args.bundle, len(os.sched_getaffinity(0))).single_latency_ms(
            queries[0], 200
        )
    lines = [
        "# Serving speed (benchmarks/serve_speed.py)",
        "",
        f"`{' '.join(sys.argv)}` — {os.cpu_count()} CPUs, load average before the run "
        f"{os.getloadavg()[0]:.1f}. Single-text POST /embed of SciFact queries; texts/s = requests/s.",
        f"Bulk `embed` of the same {len(queries)} texts: **{bulk:.0f} texts/s**. "
        f"One plain onnxruntime call (tokenize + batch-1 run): **{single:.2f} ms**.",
        "",
        "| client | clients | serve texts/s | p50 ms | p99 ms | batch-1 texts/s | p50 ms | p99 ms "
        "| serve / batch-1 | serve / bulk | p99 / p50 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tool in ("wrk", "hey", "httpx"):
        for c in clients:
            ours, base = rows[(tool, "serve", c)], rows[(tool, "batch-1", c)]
            lines.append(
                f"| {tool} | {c} | {ours['rate']:.0f} | {ours['p50']:.1f} | {ours['p99']:.1f} "
                f"| {base['rate']:.0f} | {base['p50']:.1f} | {base['p99']:.1f} "
                f"| {ours['rate'] / base['rate']:.2f}x | {ours['rate'] / bulk:.2f}x "
                f"| {ours['p99'] / ours['p50']:.1f} |"
            )
    for c in clients:
        ours = rows[("grpc", "serve", c)]
        lines.append(
            f"| grpc.aio (Embed) | {c} | {ours['rate']:.0f} | {ours['p50']:.1f} "
            f"| {ours['p99']:.1f} | – | – | – | – | {ours['rate'] / bulk:.2f}x "
            f"| {ours['p99'] / ours['p50']:.1f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
