"""Serving speed, three views side by side: `serve` vs a batch-1 server vs bulk `embed`.

    python benchmarks/serve_speed.py [--bundle build/all-minilm-l6-v2] [--seconds 5] [--rounds 3]
        [--clients 1,8,64] [--tools wrk,hey,python,httpx,grpc,grpcstub] [--out benchmarks/results/serve_speed.md]

Single-text POST /embed of SciFact queries. Each server is started as users start it
(`python -m encoderfile.runtime --bundle B serve`, and throughput.py's batch-1 baseline: one ORT
call per request, serialised); both stay up and are loaded in turn by wrk (compiled, a Lua script
rotating the queries), hey (compiled, one body), a plain Python client (http.client, one kept-alive
connection per client, one request at a time: what a script writer uses) and the httpx harness of
serve_load.py (Python: it shares the cores with the server). gRPC `Embed` gets the same
single-text load from a grpc.aio client and from blocking stubs (one channel per client thread,
one call at a time: what a script writer uses), against `serve`'s gRPC port and against
throughput.py's batch-1 gRPC server. Bulk `embed` of the same texts and one plain onnxruntime call (tokenize +
batch-1 run) are the ceilings.

Each load runs in `--rounds` rounds, the two servers alternating (A B, B A, ...); a figure is the
median over rounds and a ratio the median of the rounds' paired ratios. Before each measured load
both servers must be idle, then one client warms the machine up for WARM_SECONDS, unmeasured.
At one client a round interleaves the servers and plain onnxruntime calls in this process in 1 s
slices (A B C D D C B A ..., `--seconds` slices each, a different one first each round): this VM's
speed drifts by 10-50% within a minute, and what is compared must see the same drift. Each slice
starts SETTLE_SECONDS after the last one ended, once the last one's onnxruntime threads stopped
spinning. A second batch-1 server joins those rounds as an A/A control: its ratio to the first is
this machine's noise floor. A third batch-1 server that answers without a model call (`--echo`: the
same stack, one answer computed at start) gives the transport floor: the client and the HTTP or
gRPC stack alone, which any server's p50 pays on top of a plain call.
At one client, serve's /metrics also splits its time per request: in the model call (the
inference histogram) and its own (the request histogram less the model call), as means.
CPU per request is read from /proc (the server process, and at one client each of its threads)
and from rusage (the client: wrk and hey as children, the Python clients as this process). Figures
from one run are comparable with each other; this machine has 2 cores, shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import isa_line  # noqa: E402
from serve_load import free_port, metric_values, run_mode, texts  # noqa: E402
from throughput import OrtLoop, started  # noqa: E402

# A server under more load than it can take (batch-1 at 64 clients) keeps computing requests whose
# clients are gone after the load stops (NomicBERT: seconds); the next load must not share the
# cores with that backlog. So a load starts once both servers have been idle for IDLE_SECONDS.
IDLE_SECONDS, IDLE_CPU = 0.5, 0.05  # idle: under 5% of one CPU
# This VM runs a model call up to 50x slower after a second of idle (3.6 ms back to back, 170 ms
# after 1 s asleep: caches and the host's scheduling), and at 64 clients a load's first requests
# all pay that together. So each measured load follows WARM_SECONDS of one client, unmeasured
# (one client leaves no backlog behind).
WARM_SECONDS = 1
SLICE_SECONDS = 1  # wrk takes whole seconds
# onnxruntime's pool threads spin on for ~60 ms after a call returns (measured: 61 ms of CPU while
# the caller slept 100 ms), on the cores the next slice's server needs. Back to back, the server in
# the middle of A B C C B A followed another in every slice, the others in half of theirs.
SETTLE_SECONDS = 0.1

P50_MARGIN_MS = 0.5  # the goal: serve's p50 at one client <= a plain call's + this
PLAIN = "plain calls"  # onnxruntime in this process: tokenize + batch-1 run, back to back

CONTROL = "batch-1 again"  # the A/A control at one client: batch-1's twin
ECHO = "echo"  # at one client: batch-1 answering without a model call (the transport floor)
TOOLS = ("wrk", "hey", "python", "httpx", "grpc", "grpcstub")
GRPC_TOOLS = ("grpc", "grpcstub")
TOOL_NAMES = {
    "wrk": "wrk",
    "hey": "hey",
    "python": "http.client",
    "httpx": "httpx",
    "grpc": "grpc.aio (Embed)",
    "grpcstub": "grpc blocking stub (Embed)",
}

Load = Callable[[int, float], dict[str, float]]  # (clients, seconds) -> rate, p50, p99, requests

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


def wrk(url: str, clients: int, seconds: float, bodies: Path) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % bodies)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "60s", "--latency"]
        + ["-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or "Socket errors" in out:  # wrk leaves timed-out requests out of its latencies
        raise SystemExit(f"wrk saw errors or timeouts from {url}:\n{out}")

    def ms(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"rate": rate, "p50": ms("50"), "p99": ms("99"), "requests": requests}


def hey(url: str, clients: int, seconds: float, body: Path) -> dict[str, float]:
    out = subprocess.run(
        ["hey", "-z", f"{seconds:g}s", "-c", str(clients), "-m", "POST"]
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

    requests = int(re.search(r"\[200\]\s+(\d+) responses", out).group(1))  # type: ignore[union-attr]
    return {"rate": rate, "p50": ms("50"), "p99": ms("99"), "requests": requests}


def in_threads(
    clients: int, seconds: float, client: Callable[[int, float, list[float]], None]
) -> dict[str, float]:
    """`client(i, stop, latencies)` on `clients` threads until time.perf_counter() passes `stop`,
    each appending its requests' latencies in ms: texts/s, p50, p99 and requests."""
    import threading

    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    threads = [threading.Thread(target=client, args=(i, stop, latencies)) for i in range(clients)]
    started_at = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"rate": len(latencies) / (time.perf_counter() - started_at), **percentiles(latencies)}


def plain_client(url: str, clients: int, seconds: float, bodies: list[bytes]) -> dict[str, float]:
    """`clients` threads, each with one kept-alive http.client connection sending one request at
    a time for `seconds`, rotating the bodies."""
    import http.client

    host, port = url.removeprefix("http://").rsplit(":", 1)

    def client(i: int, stop: float, latencies: list[float]) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        n = i * 7919
        while time.perf_counter() < stop:
            n += 1
            sent = time.perf_counter()
            connection.request(
                "POST", "/embed", bodies[n % len(bodies)], {"Content-Type": "application/json"}
            )
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise SystemExit(f"{url} answered {answer.status}")
            latencies.append((time.perf_counter() - sent) * 1000)
        connection.close()

    return in_threads(clients, seconds, client)


def grpc_stub_load(
    target: str, clients: int, seconds: float, queries: list[str]
) -> dict[str, float]:
    """`clients` threads, each with a blocking Embedder stub on its own channel making one
    single-text Embed call at a time for `seconds`, rotating the queries."""
    import grpc

    from encoderfile.proto import embed_pb2, embed_pb2_grpc

    def client(i: int, stop: float, latencies: list[float]) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = embed_pb2_grpc.EmbedderStub(channel)
            n = i * 7919
            while time.perf_counter() < stop:
                n += 1
                sent = time.perf_counter()
                stub.Embed(embed_pb2.EmbedRequest(inputs=[queries[n % len(queries)]]), timeout=60)
                latencies.append((time.perf_counter() - sent) * 1000)

    return in_threads(clients, seconds, client)


def harness(url: str, clients: int, n: int) -> dict[str, float]:
    rate, latencies = asyncio.run(run_mode(url, texts(n), clients))
    return {"rate": rate, **percentiles(latencies)}


def percentiles(latencies: list[float]) -> dict[str, float]:
    latencies = sorted(latencies)
    return {
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99)],
        "requests": len(latencies),
    }


def grpc_load(target: str, clients: int, seconds: float, queries: list[str]) -> dict[str, float]:
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
    return {"rate": len(latencies) / elapsed, **percentiles(latencies)}


def serve_seconds(url: str, tool: str) -> list[float]:
    """(seconds in single-text embed requests, their count, seconds in model calls, their count)
    so far, from serve's /metrics at `url`: gRPC's Embed for the gRPC tools, else POST /embed."""
    transport, route = ("grpc", "Embed") if tool in GRPC_TOOLS else ("http", "/embed")
    labels = f'{{route="{route}",transport="{transport}"}}'
    series = [f"encoderfile_request_seconds_{k}{labels}" for k in ("sum", "count")]
    series += [f"encoderfile_inference_seconds_{k}" for k in ("sum", "count")]
    return metric_values(url, series, default=0.0)  # 0 before the first request


def wait_grpc(target: str, timeout: float = 120) -> None:
    import grpc

    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far, from /proc."""
    return _stat_seconds(Path(f"/proc/{pid}/stat").read_text())


def _stat_seconds(stat: str) -> float:
    """User + system CPU in a /proc stat line (of a process or of one of its threads)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU so far of a process's live threads, summed by thread name (the first
    thread is "main"; onnxruntime's pool threads inherit the process's name)."""
    seconds: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended
        name = "main" if tid == str(pid) else stat[stat.index("(") + 1 : stat.rindex(")")]
        seconds[name] = seconds.get(name, 0.0) + _stat_seconds(stat)
    return seconds


def client_cpu_seconds() -> float:
    """CPU of this process (the Python clients) and its finished children (wrk, hey)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def wait_idle(pids: list[int], limit: float = 120) -> None:
    """Until the processes together used under IDLE_CPU of a CPU over the last IDLE_SECONDS."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = sum(map(cpu_seconds, pids))
        time.sleep(IDLE_SECONDS)
        if sum(map(cpu_seconds, pids)) - before < IDLE_CPU * IDLE_SECONDS:
            return
    raise SystemExit(f"the servers were still busy after {limit:.0f} s")


def measured(
    load: Load, clients: int, seconds: float, server: int, pids: list[int]
) -> dict[str, float]:
    """One load once the servers are idle, after a one-client warm-up, with the server's and the
    client's CPU ms per request."""
    wait_idle(pids)
    load(1, WARM_SECONDS)
    server_before, client_before = cpu_seconds(server), client_cpu_seconds()
    result = load(clients, seconds)
    n = result["requests"]
    result["server_cpu"] = (cpu_seconds(server) - server_before) / n * 1000
    result["client_cpu"] = (client_cpu_seconds() - client_before) / n * 1000
    return result


def interleaved(
    loads: dict[str, Load], slices: int, servers: dict[str, int], pids: list[int], first: str
) -> dict[str, dict[str, float]]:
    """One round at one client: the loads take turns in 1 s slices (A B C, C B A, ...; A is
    `first`), SETTLE_SECONDS apart, once all servers are idle and A is warm; per load the
    requests and CPU of its slices together, its texts/s their requests over their time, p50 and
    p99 the slices' medians, and its server's CPU ms a request by thread name ("thread:NAME")."""
    names = [first, *(n for n in loads if n != first)]
    wait_idle(pids)
    loads[first](1, WARM_SECONDS)
    parts: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for k in range(slices):
        for name in names if k % 2 == 0 else names[::-1]:
            time.sleep(SETTLE_SECONDS)
            server_before, client_before = cpu_seconds(servers[name]), client_cpu_seconds()
            threads_before = thread_cpu_seconds(servers[name])
            part = loads[name](1, SLICE_SECONDS)
            part["server_cpu"] = cpu_seconds(servers[name]) - server_before
            part["client_cpu"] = client_cpu_seconds() - client_before
            for thread, spent in thread_cpu_seconds(servers[name]).items():
                part[f"thread:{thread}"] = spent - threads_before.get(thread, 0.0)
            parts[name].append(part)
    merged = {}
    for name, results in parts.items():
        n = sum(r["requests"] for r in results)
        merged[name] = {
            "rate": n / sum(r["requests"] / r["rate"] for r in results),
            "p50": statistics.median(r["p50"] for r in results),
            "p99": statistics.median(r["p99"] for r in results),
            "requests": n,
            "server_cpu": sum(r["server_cpu"] for r in results) / n * 1000,
            "client_cpu": sum(r["client_cpu"] for r in results) / n * 1000,
        }
        for thread in {k for r in results for k in r if k.startswith("thread:")}:
            merged[name][thread] = sum(r.get(thread, 0.0) for r in results) / n * 1000
    return merged


def plain_calls(
    loop: OrtLoop, queries: list[str], clients: int, seconds: float
) -> dict[str, float]:
    """Plain onnxruntime calls (tokenize + batch-1 run) back to back for `seconds`, rotating the
    queries: what a request costs without a server (a Load; `clients` is always 1)."""
    latencies: list[float] = []
    started_at = time.perf_counter()
    while time.perf_counter() - started_at < seconds:
        sent = time.perf_counter()
        loop.embed([queries[len(latencies) % len(queries)]], 1)
        latencies.append((time.perf_counter() - sent) * 1000)
    return {"rate": len(latencies) / (time.perf_counter() - started_at), **percentiles(latencies)}


def floor_verdict(floor_ms: float) -> str:
    """Whether a server that costs nothing could meet p50 <= plain call + P50_MARGIN_MS."""
    if floor_ms < P50_MARGIN_MS:
        return ""
    return f", itself over the {P50_MARGIN_MS} ms margin: no server meets it with this client"


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds (a thread missing from a round spent nothing)."""
    keys = {k: None for r in rounds for k in r}  # in order
    return {k: statistics.median(r.get(k, 0.0) for r in rounds) for k in keys}


def by_thread(row: dict[str, float]) -> str:
    """A server's CPU ms a request by thread, the busiest first."""
    threads = sorted(
        ((k.removeprefix("thread:"), v) for k, v in row.items() if k.startswith("thread:")),
        key=lambda item: -item[1],
    )
    return ", ".join(f"{name} {ms:.2f}" for name, ms in threads if ms >= 0.01)


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
    parser.add_argument("--seconds", type=float, default=5, help="per measured load")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--harness-requests", type=int, default=400)
    parser.add_argument("--tools", default=",".join(TOOLS), help="which clients load the servers")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_speed.md"
    )
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    tools = args.tools.split(",")
    if unknown := set(tools) - set(TOOLS):
        parser.error(f"unknown --tools {', '.join(sorted(unknown))}: pick from {', '.join(TOOLS)}")
    for tool in {"wrk", "hey"} & set(tools):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install {tool}")
    queries = texts(2000)
    load_average = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        bodies = Path(tmp) / "bodies.jsonl"
        bodies.write_text("".join(json.dumps({"input": q}) + "\n" for q in queries))
        raw_bodies = [json.dumps({"input": q}).encode() for q in queries]
        one = Path(tmp) / "one.json"
        one.write_text(json.dumps({"input": queries[0]}))
        twins = {CONTROL: [], ECHO: ["--echo"]}  # batch-1's, with these flags
        grpc_targets = {name: f"127.0.0.1:{free_port()}" for name in ("serve", "batch-1", *twins)}
        servers = {
            "serve": [
                sys.executable,
                "-m",
                "encoderfile.runtime",
                "--bundle",
                str(args.bundle),
                "serve",
                "--grpc-port",
                grpc_targets["serve"].rsplit(":", 1)[1],
            ],
            "batch-1": [
                sys.executable,
                str(ROOT / "benchmarks" / "throughput.py"),
                "--baseline-server",
                str(args.bundle),
            ],
        }
        servers.update({name: [*servers["batch-1"], *flags] for name, flags in twins.items()})
        urls = {name: f"http://127.0.0.1:{free_port()}" for name in servers}

        def load(tool: str, url: str) -> Load:
            if tool == "wrk":
                return lambda c, seconds: wrk(url, c, seconds, bodies)
            if tool == "hey":
                return lambda c, seconds: hey(url, c, seconds, one)
            if tool == "python":
                return lambda c, seconds: plain_client(url, c, seconds, raw_bodies)
            if tool == "httpx":  # a number of requests: harness-requests per --seconds
                per_second = args.harness_requests / args.seconds
                return lambda c, seconds: harness(url, c, max(20, round(per_second * seconds)))
            target = grpc_targets[next(k for k, v in urls.items() if v == url)]
            if tool == "grpcstub":
                return lambda c, seconds: grpc_stub_load(target, c, seconds, queries)
            return lambda c, seconds: grpc_load(target, c, seconds, queries)

        rounds: dict[tuple[str, str, int], list[dict[str, float]]] = {}
        with contextlib.ExitStack() as running:  # all up; loaded in turn, never together
            pids = {}
            for name, argv in servers.items():
                port = urls[name].rsplit(":", 1)[1]
                process = running.enter_context(started([*argv, "--port", port], urls[name]))
                pids[name] = process.pid
            grpc_pids = {"serve": pids["serve"]}
            for name in ("batch-1", *twins):
                grpc_baseline = subprocess.Popen(
                    [*servers[name][:2], "--baseline-grpc-server", str(args.bundle)]
                    + [*twins.get(name, []), "--port", grpc_targets[name].rsplit(":", 1)[1]]
                )
                running.callback(grpc_baseline.kill)
                wait_grpc(grpc_targets[name])
                grpc_pids[name] = grpc_baseline.pid
            every = [*pids.values(), *grpc_pids.values()]
            plain_loop = OrtLoop(args.bundle, len(os.sched_getaffinity(0)))
            for c in clients:
                for tool in tools:
                    names = list(servers) if c == 1 else ["serve", "batch-1"]
                    server_pids = grpc_pids if tool in GRPC_TOOLS else pids
                    loads = {name: load(tool, urls[name]) for name in names}
                    if c == 1:  # hey sends one query; the others rotate them
                        loads[PLAIN] = functools.partial(
                            plain_calls, plain_loop, queries[:1] if tool == "hey" else queries
                        )
                        names = [*names, PLAIN]
                        server_pids = {**server_pids, PLAIN: os.getpid()}
                    for r in range(args.rounds):
                        if c == 1:
                            first = names[r % len(names)]
                            slices = max(1, round(args.seconds / SLICE_SECONDS))
                            before = serve_seconds(urls["serve"], tool)
                            results = interleaved(loads, slices, server_pids, every, first)
                            after = serve_seconds(urls["serve"], tool)
                            in_requests, requests, in_model, calls = (
                                b - a for a, b in zip(before, after, strict=True)
                            )
                            results["serve"]["own_ms"] = (in_requests - in_model) / requests * 1000
                            results["serve"]["model_ms"] = in_model / calls * 1000
                            for name, result in results.items():
                                rounds.setdefault((tool, name, c), []).append(result)
                            continue
                        for name in names if r % 2 == 0 else names[::-1]:
                            result = measured(
                                loads[name], c, args.seconds, server_pids[name], every
                            )
                            rounds.setdefault((tool, name, c), []).append(result)
        bulk = bulk_rate(args.bundle, queries)
    rows = {key: median_of(values) for key, values in rounds.items()}

    def per_round(tool: str, c: int, server: str = "serve", base: str = "batch-1") -> list[float]:
        """`server`'s texts/s over `base`'s, round by round."""
        pairs = zip(rounds[(tool, server, c)], rounds[(tool, base, c)], strict=True)
        return [ours["rate"] / base["rate"] for ours, base in pairs]

    lines = [
        "# Serving speed (benchmarks/serve_speed.py)",
        "",
        f"`{' '.join(sys.argv)}` — {isa_line()}; load average before the run "
        f"{load_average:.1f}. Single-text POST /embed of SciFact queries; texts/s = requests/s. "
        f"Medians of {args.rounds} rounds of {args.seconds:g} s per load (the httpx harness: "
        f"{args.harness_requests} requests), servers alternating, each load once both are "
        f"idle and after a {WARM_SECONDS} s one-client warm-up; at one client a round interleaves "
        f"the servers and plain onnxruntime calls (tokenize + batch-1 run, in this process) in "
        f"{SLICE_SECONDS} s slices {SETTLE_SECONDS:g} s apart (A B C D D C B A ...; p50 and p99: "
        "the slices' medians).",
        f"Bulk `embed` of the same {len(queries)} texts: **{bulk:.0f} texts/s**.",
        "CPU columns: ms of CPU per request, in the server process and in the load client.",
        "",
        "| client | clients | serve texts/s | p50 ms | p99 ms | server CPU | batch-1 texts/s "
        "| p50 ms | p99 ms | server CPU | serve / batch-1 (median) | serve / batch-1 per round "
        "| serve / bulk | p99 / p50 | client CPU | A/A: batch-1 again / batch-1 per round |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    goals = []
    for tool in tools:
        for c in clients:
            ours, base = rows[(tool, "serve", c)], rows[(tool, "batch-1", c)]
            ratios = per_round(tool, c)
            control = per_round(tool, c, CONTROL) if c == 1 else []
            lines.append(
                f"| {TOOL_NAMES[tool]} | {c} | {ours['rate']:.0f} | {ours['p50']:.2f} "
                f"| {ours['p99']:.1f} | {ours['server_cpu']:.2f} | {base['rate']:.0f} "
                f"| {base['p50']:.2f} | {base['p99']:.1f} | {base['server_cpu']:.2f} "
                f"| {statistics.median(ratios):.2f}x | {', '.join(f'{x:.2f}' for x in ratios)} "
                f"| {ours['rate'] / bulk:.2f}x | {ours['p99'] / ours['p50']:.1f} "
                f"| {ours['client_cpu']:.2f} | {', '.join(f'{x:.2f}' for x in control) or '–'} |"
            )
            if c == 1:
                plain, echo = rows[(tool, PLAIN, c)], rows[(tool, ECHO, c)]
                floor = min(min(control), 1 / max(control))  # twins differ both ways alike
                goals.append(
                    f"- {TOOL_NAMES[tool]}, 1 client: serve / batch-1 ≥ 0.97x in every round "
                    f"(worst {min(ratios):.2f}x) {'PASS' if min(ratios) >= 0.97 else 'MISS'}; "
                    f"p50 {ours['p50']:.2f} ms ≤ plain call {plain['p50']:.2f} + {P50_MARGIN_MS} ms "
                    f"{'PASS' if ours['p50'] <= plain['p50'] + P50_MARGIN_MS else 'MISS'} "
                    f"(batch-1's p50 "
                    f"{base['p50']:.2f} ms; the transport floor, batch-1 answering without a "
                    f"model call, {echo['p50']:.2f} ms{floor_verdict(echo['p50'])}); p50 over "
                    f"plain call + floor: serve {ours['p50'] - plain['p50'] - echo['p50']:+.2f} "
                    f"ms, batch-1 {base['p50'] - plain['p50'] - echo['p50']:+.2f} ms; "
                    f"A/A control worst {min(control):.2f}x, best "
                    f"{max(control):.2f}x, so one round's noise reaches down to {floor:.2f}x "
                    f"(serve's worst round is {'within' if min(ratios) >= floor else 'below'} "
                    "it); serve / plain calls "
                    f"{statistics.median(per_round(tool, c, 'serve', PLAIN)):.2f}x, batch-1 / "
                    f"plain calls {statistics.median(per_round(tool, c, 'batch-1', PLAIN)):.2f}x; "
                    f"serve's own time per request {ours['own_ms']:.2f} ms and its model call "
                    f"{ours['model_ms']:.2f} ms (means, from its /metrics); server CPU ms a "
                    f"request by thread, serve: {by_thread(ours)}; batch-1: {by_thread(base)}"
                )
    lines += [
        "",
        "Goals (hey sends one query: its plain calls embed that query; the others "
        "rotate the queries):",
        "",
        *goals,
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
