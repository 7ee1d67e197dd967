"""Where a lone client's request goes, stage by stage: `serve` beside the batch-1 server.

    python benchmarks/serve_profile.py [--transport http|grpc] [--bundle build/all-minilm-l6-v2]
        [--requests 2000] [--out benchmarks/results/serve_profile.md]

Both servers run as child processes of this script with timers wrapped around their stages
(time.perf_counter_ns, about 1 µs a wrapper; nothing of the project is changed). One client per
server sends single-text requests of SciFact queries, one at a time, the two servers alternating
in blocks of 100 requests (a connection per block): POST /embed over http.client, or gRPC
`Embed` over a blocking grpc channel against the batch-1 gRPC server. A row is the median µs per
request of one stage; "outside the app" is the client's round trip minus the app's time (the
server's protocol stack, asyncio, the kernel's loopback and the client itself). Medians do not
add up exactly. The CPU rows are means from /proc: the event loop's thread (all of the server's
Python, what runs after the reply included) and the whole process (onnxruntime's worker, which
spins while the loop works, included).
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


def child(kind: str, transport: str, bundle: str, port: int, out: str) -> None:
    """Run one server with its stages timed; write the spans to `out` when it stops."""
    atexit.register(lambda: Path(out).write_text(json.dumps(SPANS)))
    if transport == "grpc":
        grpc_child(kind, bundle, port)
        return
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


def grpc_child(kind: str, bundle: str, port: int) -> None:
    from throughput import OrtLoop, baseline_grpc_server

    from encoderfile.proto import embed_pb2_grpc

    if kind == "batch-1":
        register = embed_pb2_grpc.add_EmbedderServicer_to_server

        def timed_register(servicer: Any, server: Any) -> None:
            _wrap(servicer, "Embed", "app")
            register(servicer, server)

        embed_pb2_grpc.add_EmbedderServicer_to_server = timed_register
        _wrap(OrtLoop, "embed", "model")
        baseline_grpc_server(Path(bundle), port, len(os.sched_getaffinity(0)))
        return
    from encoderfile.runtime.embedder import Embedder
    from encoderfile.runtime.serve import grpc_service
    from encoderfile.runtime.serve.batcher import Batcher
    from encoderfile.runtime.serve.service import Service

    servicer = grpc_service.EmbedderServicer
    _wrap(servicer, "Embed", "app")
    _wrap(servicer, "_embed_one", "work")
    _wrap(servicer, "_checked", "tokenize")
    _wrap(servicer, "_record", "log")
    _wrap(Service, "embed_tokenized", "embed")
    _wrap(Batcher, "embed_now", "inline")
    _wrap(Batcher, "_observe", "observe")
    _wrap(Embedder, "_run", "model")
    _wrap(grpc_service, "_reply", "response")
    from encoderfile.runtime.cli import main

    sys.argv = ["encoderfile", "--bundle", bundle, "serve", "--grpc-port", str(port)]
    sys.argv += ["--port", str(free_port())]  # HTTP stays on, as users serve
    main()


def _medians(spans: dict[str, list[int]]) -> dict[str, float]:
    return {name: statistics.median(ns) / 1000 for name, ns in spans.items() if ns}


def _cpu_ticks(pid: int) -> tuple[int, int]:
    """(the main thread's, the whole process's) user + system CPU ticks so far."""

    def ticks(stat: str) -> int:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    return ticks(f"/proc/{pid}/task/{pid}/stat"), ticks(f"/proc/{pid}/stat")


class HttpClient:
    def __init__(self, port: int, queries: list[str]):
        self.bodies = [json.dumps({"input": q}).encode() for q in queries]
        self.connection = http.client.HTTPConnection("127.0.0.1", port)

    def send(self, i: int) -> None:
        self.connection.request(
            "POST",
            "/embed",
            self.bodies[i % len(self.bodies)],
            {"Content-Type": "application/json"},
        )
        answer = self.connection.getresponse()
        answer.read()
        assert answer.status == 200, answer.status

    def close(self) -> None:
        self.connection.close()


class GrpcClient:
    def __init__(self, port: int, queries: list[str]):
        import grpc

        from encoderfile.proto import embed_pb2, embed_pb2_grpc

        self.requests = [embed_pb2.EmbedRequest(inputs=[q]) for q in queries]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = embed_pb2_grpc.EmbedderStub(self.channel)

    def send(self, i: int) -> None:
        self.stub.Embed(self.requests[i % len(self.requests)], timeout=60)

    def close(self) -> None:
        self.channel.close()


def wait_grpc_serving(port: int, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Until one Embed succeeds (serve takes gRPC connections before its model is loaded)."""
    import grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode} before it was ready")
        client = GrpcClient(port, ["ready?"])
        try:
            client.send(0)
            return
        except grpc.RpcError:
            time.sleep(0.1)
        finally:
            client.close()
    raise SystemExit(f"gRPC server on port {port} did not answer in {timeout:.0f} s")


Row = tuple[str, float, float | None]


def stage_rows(
    transport: str, ours: dict[str, float], base: dict[str, float], trip: dict[str, float]
) -> list[Row]:
    """The table's rows: what both transports time, around what each times of its own."""
    app, stack = (
        ("handler", "gRPC core and aio, loopback, client")
        if transport == "grpc"
        else ("app", "uvicorn, httptools, asyncio, loopback, client")
    )
    head: list[Row] = [
        ("client round trip", trip["serve"], trip["batch-1"]),
        (
            f"outside the {app} ({stack})",
            trip["serve"] - ours["app"],
            trip["batch-1"] - base["app"],
        ),
        (f"the {app}, all of it", ours["app"], base["app"]),
    ]
    call: list[Row] = [
        (
            "yield to the loop, decide inline (embed_tokenized − inline)",
            ours["embed"] - ours["inline"],
            None,
        ),
        ("batcher bookkeeping (inline − model)", ours["inline"] - ours["model"], None),
        ("model call: pad + onnxruntime (batch-1: + tokenize)", ours["model"], base["model"]),
    ]
    if transport == "grpc":
        before: list[Row] = [
            (
                "metadata, request id, API key, message check (handler − work)",
                ours["app"] - ours["work"],
                None,
            ),
            ("kind, dimensions, input checks + tokenize", ours["tokenize"], None),
        ]
        after: list[Row] = [
            (
                "protobuf reply (batch-1: handler − model)",
                ours["response"],
                base["app"] - base["model"],
            ),
            ("after the reply: request log line + metrics", ours["log"], None),
            ("after the reply: model call metrics", ours["observe"], None),
        ]
    else:
        before = [
            ("read the body", ours["read"], None),
            ("parse the fields (aliases)", ours["parse"], None),
            ("validate (msgspec)", ours["validate"], None),
            ("tokenize + input checks", ours["tokenize"], None),
        ]
        after = [
            ("JSON response", ours["response"], base["response"]),
            ("request log line + metrics", ours["log"], None),
        ]
    return head + before + call + after


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=("http", "grpc"), default="http")
    parser.add_argument("--bundle", type=Path, default=ROOT / "build" / "all-minilm-l6-v2")
    parser.add_argument("--requests", type=int, default=2000, help="per server")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serve_profile.md")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, transport, bundle, port, out = args.child
        child(kind, transport, bundle, int(port), out)
        return 0

    queries = texts(2000)
    load_average = os.getloadavg()[0]
    servers = ("serve", "batch-1")
    grpc = args.transport == "grpc"
    client = GrpcClient if grpc else HttpClient
    with tempfile.TemporaryDirectory() as tmp:
        ports = {name: free_port() for name in servers}
        outs = {name: f"{tmp}/{name}.json" for name in servers}
        processes = {}
        for name in servers:
            command = [sys.executable, __file__, "--child", name, args.transport, str(args.bundle)]
            processes[name] = subprocess.Popen(
                [*command, str(ports[name]), outs[name]], stderr=subprocess.DEVNULL
            )
            if grpc:
                wait_grpc_serving(ports[name], processes[name])
            else:
                wait_ready(f"http://127.0.0.1:{ports[name]}", processes[name])
        trips: dict[str, list[float]] = {name: [] for name in servers}
        ticks = {name: [0, 0] for name in servers}
        for block in range(0, args.requests, BLOCK):
            for name in servers if block // BLOCK % 2 == 0 else servers[::-1]:
                # A connection per block: an idle one outlives no keep-alive timeout.
                connection = client(ports[name], queries)
                connection.send(block)  # connects
                before = _cpu_ticks(processes[name].pid)
                for i in range(block + 1, min(block + BLOCK, args.requests)):
                    sent = time.perf_counter()
                    connection.send(i)
                    trips[name].append((time.perf_counter() - sent) * 1e6)
                after = _cpu_ticks(processes[name].pid)
                ticks[name] = [
                    t + b - a for t, a, b in zip(ticks[name], before, after, strict=True)
                ]
                connection.close()
        for name in servers:
            stop = signal.SIGTERM if name == "serve" else signal.SIGINT
            processes[name].send_signal(stop)
            processes[name].wait(60)
        spans = {name: _medians(json.loads(Path(outs[name]).read_text())) for name in servers}
    trip = {name: statistics.median(trips[name]) for name in servers}
    cpu = {
        name: [t / os.sysconf("SC_CLK_TCK") / len(trips[name]) * 1e6 for t in ticks[name]]
        for name in servers
    }
    rows = stage_rows(args.transport, spans["serve"], spans["batch-1"], trip)
    rows += [
        ("CPU: the event loop's thread (mean)", cpu["serve"][0], cpu["batch-1"][0]),
        ("CPU: the process, all threads (mean)", cpu["serve"][1], cpu["batch-1"][1]),
    ]
    what = "gRPC Embed over a blocking grpc channel" if grpc else "POST /embed over http.client"
    lines = [
        f"# Where a lone {args.transport.upper() if grpc else 'HTTP'} request's time goes "
        "(benchmarks/serve_profile.py)",
        "",
        f"`{' '.join(sys.argv)}` — {isa_line()}; load average before the run "
        f"{load_average:.1f}. {args.requests} single-text requests per server, {what}, "
        f"alternating blocks of {BLOCK} (a connection per block). Median µs per request; CPU "
        "rows: mean µs per request.",
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
