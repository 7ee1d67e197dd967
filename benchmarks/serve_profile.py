"""Where a lone client's request goes, stage by stage: `serve` beside the batch-1 server.

    python benchmarks/serve_profile.py [--bundle build/all-minilm-l6-v2] [--requests 2000]
        [--out benchmarks/results/serve_profile.md]

Both servers run as child processes of this script with timers wrapped around their stages
(time.perf_counter_ns, about 1 µs a wrapper; nothing of the project is changed). One http.client
connection per server sends single-text POST /embed of SciFact queries, one at a time, the two
servers alternating in blocks of 100 requests (a connection per block). A row is the median µs per request of one stage;
"outside the app" is the client's round trip minus the ASGI app's time (uvicorn, httptools,
asyncio, the kernel's loopback and the client itself). Medians do not add up exactly.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]

from machine import isa_line  # noqa: E402
from serve_load import free_port, texts, wait_ready  # noqa: E402

SPANS: dict[str, list[int]] = defaultdict(list)  # stage -> ns per call (in the child)
BLOCK = 100


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    import inspect

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter_ns()
            try:
                return await fn(*args, **kwargs)
            finally:
                SPANS[name].append(time.perf_counter_ns() - started)

        return wrapped_async

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            SPANS[name].append(time.perf_counter_ns() - started)

    return wrapped


def _wrap(owner: Any, attribute: str, name: str) -> None:
    setattr(owner, attribute, _timed(name, getattr(owner, attribute)))


def child(kind: str, bundle: str, port: int, out: str) -> None:
    """Run one server with its stages timed; write the spans to `out` when it stops."""
    atexit.register(lambda: Path(out).write_text(json.dumps(SPANS)))
    if kind == "batch-1":
        from starlette.responses import JSONResponse
        from starlette.routing import Router
        from throughput import OrtLoop, baseline_server

        _wrap(Router, "__call__", "app")  # not Starlette's: uvicorn would take it for a factory
        _wrap(OrtLoop, "embed", "model")
        _wrap(JSONResponse, "render", "response")
        baseline_server(Path(bundle), port, len(os.sched_getaffinity(0)))
        return
    from encoderfile.runtime.embedder import Embedder
    from encoderfile.runtime.serve import compat, http_app, wire
    from encoderfile.runtime.serve.batcher import Batcher
    from encoderfile.runtime.serve.service import Service

    _wrap(http_app._Frame, "__call__", "app")
    _wrap(http_app._Frame, "_record", "log")
    _wrap(http_app, "_read_object", "read")
    _wrap(compat, "native_fields", "parse")
    _wrap(wire, "parse", "validate")
    _wrap(Service, "tokenize", "tokenize")
    _wrap(Service, "embed_tokenized", "embed")
    _wrap(Batcher, "embed_now", "inline")
    _wrap(Embedder, "_run", "model")
    _wrap(http_app.Json, "render", "response")
    from encoderfile.runtime.cli import main

    sys.argv = ["encoderfile", "--bundle", bundle, "serve", "--no-grpc", "--port", str(port)]
    main()


def _medians(spans: dict[str, list[int]]) -> dict[str, float]:
    return {name: statistics.median(ns) / 1000 for name, ns in spans.items() if ns}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "build" / "all-minilm-l6-v2")
    parser.add_argument("--requests", type=int, default=2000, help="per server")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serve_profile.md")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, bundle, port, out = args.child
        child(kind, bundle, int(port), out)
        return 0

    bodies = [json.dumps({"input": q}).encode() for q in texts(2000)]
    load_average = os.getloadavg()[0]
    servers = ("serve", "batch-1")
    with tempfile.TemporaryDirectory() as tmp:
        ports = {name: free_port() for name in servers}
        outs = {name: f"{tmp}/{name}.json" for name in servers}
        processes = {}
        for name in servers:
            command = [sys.executable, __file__, "--child", name, str(args.bundle)]
            processes[name] = subprocess.Popen(
                [*command, str(ports[name]), outs[name]], stderr=subprocess.DEVNULL
            )
            wait_ready(f"http://127.0.0.1:{ports[name]}", processes[name])
        trips: dict[str, list[float]] = {name: [] for name in servers}
        for block in range(0, args.requests, BLOCK):
            for name in servers if block // BLOCK % 2 == 0 else servers[::-1]:
                # A connection per block: an idle one outlives no keep-alive timeout.
                connection = http.client.HTTPConnection("127.0.0.1", ports[name])
                for i in range(block, min(block + BLOCK, args.requests)):
                    sent = time.perf_counter()
                    connection.request(
                        "POST",
                        "/embed",
                        bodies[i % len(bodies)],
                        {"Content-Type": "application/json"},
                    )
                    answer = connection.getresponse()
                    answer.read()
                    assert answer.status == 200, answer.status
                    if i > block:  # the first request also connected
                        trips[name].append((time.perf_counter() - sent) * 1e6)
                connection.close()
        for name in servers:
            processes[name].send_signal(signal.SIGTERM if name == "serve" else signal.SIGINT)
            processes[name].wait(60)
        spans = {name: _medians(json.loads(Path(outs[name]).read_text())) for name in servers}
    trip = {name: statistics.median(trips[name]) for name in servers}
    ours, base = spans["serve"], spans["batch-1"]
    inside = ours["inline"] - ours["model"]
    rows = [
        ("client round trip", trip["serve"], trip["batch-1"]),
        (
            "outside the app (uvicorn, httptools, asyncio, loopback, client)",
            trip["serve"] - ours["app"],
            trip["batch-1"] - base["app"],
        ),
        ("the app, all of it", ours["app"], base["app"]),
        ("read the body", ours["read"], None),
        ("parse the fields (aliases)", ours["parse"], None),
        ("validate (msgspec)", ours["validate"], None),
        ("tokenize + input checks", ours["tokenize"], None),
        (
            "yield to the loop, decide inline (embed_tokenized − inline)",
            ours["embed"] - ours["inline"],
            None,
        ),
        ("batcher bookkeeping (inline − model)", inside, None),
        ("model call: pad + onnxruntime (batch-1: + tokenize)", ours["model"], base["model"]),
        ("JSON response", ours["response"], base["response"]),
        ("request log line + metrics", ours["log"], None),
    ]
    lines = [
        "# Where a lone request's time goes (benchmarks/serve_profile.py)",
        "",
        f"`{' '.join(sys.argv)}` — {isa_line()}; load average before the run "
        f"{load_average:.1f}. {args.requests} single-text POST /embed per server over "
        f"http.client, alternating blocks of {BLOCK} (a connection per block). Median µs per request.",
        "",
        "| stage | serve µs | batch-1 µs |",
        "|---|---|---|",
    ]
    for label, a, b in rows:
        lines.append(f"| {label} | {a:.0f} | {'–' if b is None else f'{b:.0f}'} |")
    lines += [
        "",
        f"serve / batch-1 round trip: {trip['batch-1'] / trip['serve']:.3f}x the requests a "
        "second.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
