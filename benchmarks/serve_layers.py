"""What each layer of `serve`'s gRPC `Embed` adds to a lone request, layer by layer, in one process.

    python benchmarks/serve_layers.py [--bundle build/all-minilm-l6-v2] [--queries 2000]
        [--out benchmarks/results/serve_layers.md]

Eight handlers answer the same single-text EmbedRequest: the first is a bare onnxruntime call
on serve's own session (tokenizers' encode, the feed, session.run, a reply of the values alone);
each next one goes one layer further into serve's code, the last is `Embed` as shipped (auth,
request id, log line, metrics, the reply's token counts). A ninth, batch-1's handler, is the
body of the batch-1 gRPC server that serve_speed.py measures against, on the same session. For every query each
handler runs once, in a shuffled order, on uvloop (as `serve` runs), from the request's bytes to
the reply's bytes; the model call between two handlers leaves each of them as cold as in a
server. A row's "+ µs" columns are medians of the paired per-query differences, so the
machine's drift from one query to the next cancels out. No transport: what the gRPC stack and the
client add is serve_profile.py's "outside the app" row.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]

from machine import isa_line  # noqa: E402
from serve_load import texts  # noqa: E402
from throughput import OrtLoop  # noqa: E402

from encoderfile.proto import embed_pb2  # noqa: E402
from encoderfile.runtime.artifact import open_bundle  # noqa: E402
from encoderfile.runtime.serve.grpc_service import EmbedderServicer  # noqa: E402
from encoderfile.runtime.serve.service import Service  # noqa: E402

Handler = Callable[[embed_pb2.EmbedRequest], Awaitable[embed_pb2.EmbedResponse]]


class _Context:
    """The little of grpc.aio.ServicerContext that Embed reads: no metadata."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"{code}: {details}")


def _values(vectors: np.ndarray) -> embed_pb2.EmbedResponse:
    return embed_pb2.EmbedResponse(
        embeddings=[embed_pb2.Embedding(values=v) for v in vectors.tolist()]
    )


def layers(service: Service, batch1: OrtLoop) -> dict[str, Handler]:
    """The handlers, in order: each one layer further into serve's Embed than the one before."""
    embedder, batcher = service.embedder, service.batcher
    assert embedder is not None and batcher is not None
    servicer, context = EmbedderServicer(service), _Context()

    def encoding(request: embed_pb2.EmbedRequest) -> Any:
        return embedder._tokenizer.encode(request.inputs[0])

    async def session_run(request: embed_pb2.EmbedRequest) -> embed_pb2.EmbedResponse:
        e = encoding(request)
        columns = {"input_ids": e.ids, "attention_mask": e.attention_mask}
        columns["token_type_ids"] = e.type_ids
        feed = {name: np.array([columns[name]], np.int64) for name in embedder._inputs}
        (vectors,) = embedder._session.run(list(embedder.OUTPUTS), feed)
        return _values(vectors)

    async def run(request: embed_pb2.EmbedRequest) -> embed_pb2.EmbedResponse:
        return _values(embedder._run([encoding(request)]))

    async def embed_encodings(request: embed_pb2.EmbedRequest) -> embed_pb2.EmbedResponse:
        return _values(embedder.embed_encodings([encoding(request)]).vectors)

    async def call(request: embed_pb2.EmbedRequest) -> embed_pb2.EmbedResponse:
        answer = batcher._call([encoding(request)], None, embedder, service.backlog.add)
        assert not isinstance(answer, Exception)
        return _values(answer.vectors)

    async def embed_now(request: embed_pb2.EmbedRequest) -> embed_pb2.EmbedResponse:
        answer = batcher.embed_now([encoding(request)], later=service.backlog.add)
        assert answer is not None
        return _values(answer.vectors)

    async def tokenize(request: embed_pb2.EmbedRequest) -> embed_pb2.EmbedResponse:
        encodings = service.tokenize(list(request.inputs), param="inputs")
        answer = batcher.embed_now(encodings, later=service.backlog.add)
        assert answer is not None
        return _values(answer.vectors)

    async def embed_tokenized(request: embed_pb2.EmbedRequest) -> embed_pb2.EmbedResponse:
        encodings = service.tokenize(list(request.inputs), param="inputs")
        return _values((await service.embed_tokenized(encodings)).vectors)

    async def shipped(request: embed_pb2.EmbedRequest) -> embed_pb2.EmbedResponse:
        return await servicer.Embed(request, context)  # type: ignore[arg-type]

    async def batch1_handler(request: embed_pb2.EmbedRequest) -> embed_pb2.EmbedResponse:
        return _values(batch1.embed(list(request.inputs), 1))

    return {
        "onnxruntime call (encode, feed, session.run)": session_run,
        "+ Embedder._run (feed, call grouping, NaN check)": run,
        "+ Embedder.embed_encodings (width, token counts)": embed_encodings,
        "+ Batcher._call (call timer, its metrics to the backlog)": call,
        "+ Batcher.embed_now (idle check, in-flight count)": embed_now,
        "+ Service.tokenize (limits, prompt, encode_batch)": tokenize,
        "+ Service.embed_tokenized (kind check, a turn of the loop)": embed_tokenized,
        "+ Embed's own work: Embed as shipped": shipped,
        "batch-1 server's handler (for reference)": batch1_handler,
    }


async def measure(handlers: dict[str, Handler], queries: list[str]) -> dict[str, list[float]]:
    """µs per handler per query, request bytes to reply bytes, handlers shuffled per query."""
    spent: dict[str, list[float]] = {name: [] for name in handlers}
    order, shuffle = list(handlers), random.Random(0).shuffle
    for query in queries:
        raw = embed_pb2.EmbedRequest(inputs=[query]).SerializeToString()
        shuffle(order)
        for name in order:
            started = time.perf_counter()
            reply = await handlers[name](embed_pb2.EmbedRequest.FromString(raw))
            reply.SerializeToString()
            spent[name].append((time.perf_counter() - started) * 1e6)
            await asyncio.sleep(0)  # due timers (the backlog's flush) run between requests
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "build" / "all-minilm-l6-v2")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serve_layers.md")
    args = parser.parse_args()
    import uvloop

    load_average = os.getloadavg()[0]
    threads = len(os.sched_getaffinity(0))
    service = Service(open_bundle(args.bundle))
    service.load(threads)
    batch1 = OrtLoop(args.bundle, threads)
    # One session in the process: a second one's pool thread would spin while the first runs.
    batch1.session = service.embedder._session  # type: ignore[union-attr]
    handlers = layers(service, batch1)
    queries = texts(args.queries)
    uvloop.run(measure(handlers, queries[:50]))  # warm-up
    spent = uvloop.run(measure(handlers, queries))
    names = list(spent)
    first = spent[names[0]]

    def paired(a: list[float], b: list[float]) -> float:
        return statistics.median(x - y for x, y in zip(a, b, strict=True))

    lines = [
        "# What each layer of serve's gRPC Embed adds to a lone request "
        "(benchmarks/serve_layers.py)",
        "",
        f"`{' '.join(sys.argv)}` — {isa_line()}; load average before the run "
        f"{load_average:.1f}. {len(queries)} SciFact queries, each through every handler once "
        "(shuffled), in one process on uvloop, request bytes to reply bytes. Medians; the "
        '"+ µs" columns are medians of per-query paired differences.',
        "",
        "| handler | µs a request | + µs over the row above | + µs over the onnxruntime call |",
        "|---|---|---|---|",
    ]
    for i, name in enumerate(names):
        layer = 0 < i < len(names) - 1
        above = f"{paired(spent[name], spent[names[i - 1]]):+.0f}" if layer else "–"
        lines.append(
            f"| {name} | {statistics.median(spent[name]):.0f} | {above} "
            f"| {paired(spent[name], first):+.0f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
