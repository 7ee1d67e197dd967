"""Dynamic batching against a real server: many concurrent HTTP and gRPC clients with long and
short texts get exactly the vectors each text gets alone; a client that hangs up leaves the queue."""

from __future__ import annotations

import json
import random
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from encoderfile.proto import embed_pb2, embed_pb2_grpc
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.embedder import Embedder
from tests.runtime.serve.conftest import HOST, Server, serving

pytestmark = pytest.mark.slow  # integration: a MiniLM server under load

WORDS = [
    "the",
    "patient",
    "cohort",
    "showed",
    "reduced",
    "inflammation",
    "after",
    "treatment",
    "with",
    "a",
    "novel",
]


def mixed_texts(n: int, seed: int = 0) -> list[str]:
    """Short queries and long paragraphs (some past max_length), interleaved at random."""
    rng = random.Random(seed)
    lengths = [rng.choice([2, 5, 9, 40, 120, 300]) for _ in range(n)]
    return [" ".join(rng.choice(WORDS) for _ in range(k)) + f" {i}" for i, k in enumerate(lengths)]


def metrics(server: Server) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=10).text


def metric(server: Server, name: str) -> float:
    """The sum of a metric over all its label sets."""
    return sum(
        float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", metrics(server), re.M)
    )


@pytest.fixture(scope="module")
def minilm_server(
    minilm_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from serving(minilm_bundle, tmp_path_factory)


def test_concurrent_clients_get_the_vectors_computed_alone(
    minilm_server: Server, minilm_bundle: Path
) -> None:
    texts = mixed_texts(96)
    requests = [texts[i : i + 3] for i in range(0, len(texts), 3)]  # 1-3 texts per request
    requests = [r[: 1 + i % 3] for i, r in enumerate(requests)]
    calls_before = metric(minilm_server, "encoderfile_batch_inputs_count")

    def over_http(inputs: list[str]) -> np.ndarray:
        r = httpx.post(f"{minilm_server.url}/embed/batch", json={"inputs": inputs}, timeout=60)
        assert r.status_code == 200, r.text
        return np.array(r.json()["embeddings"], np.float32)

    channel = grpc.insecure_channel(minilm_server.grpc_target)
    stub = embed_pb2_grpc.EmbedderStub(channel)

    def over_grpc(inputs: list[str]) -> np.ndarray:
        reply = stub.Embed(embed_pb2.EmbedRequest(inputs=inputs), timeout=60)
        return np.array([list(e.values) for e in reply.embeddings], np.float32)

    with ThreadPoolExecutor(24) as pool:
        futures = [
            pool.submit(over_grpc if i % 3 == 0 else over_http, inputs)
            for i, inputs in enumerate(requests)
        ]
        answers = [f.result(120) for f in futures]
    channel.close()

    alone = Embedder(open_bundle(minilm_bundle), threads=1)
    worst = 0.0
    for inputs, vectors in zip(requests, answers, strict=True):
        assert vectors.shape == (len(inputs), 384)
        for text, vector in zip(inputs, vectors, strict=True):  # each request's rows in order
            worst = max(worst, float(np.abs(alone.embed([text]).vectors[0] - vector).max()))
    # exact: lone requests run on the all-CPU session, piled-up ones on the single-threaded lane
    assert worst == 0.0, worst

    calls = metric(minilm_server, "encoderfile_batch_inputs_count") - calls_before
    assert calls < len(requests), "concurrent requests were never merged into one model call"


def test_client_that_hangs_up_leaves_the_queue(minilm_server: Server) -> None:
    cancelled_before = metric(minilm_server, "encoderfile_cancelled_inputs_total")
    long_texts = [f"{i} " + " ".join(WORDS * 25) for i in range(160)]  # each cut at max_length
    with ThreadPoolExecutor(4) as pool:  # 4 x 40 long texts keep the model busy for seconds
        busy = [
            pool.submit(
                httpx.post,
                f"{minilm_server.url}/embed/batch",
                json={"inputs": long_texts[i : i + 40]},
                timeout=120,
            )
            for i in range(0, 160, 40)
        ]
        deadline = time.monotonic() + 30
        while metric(minilm_server, "encoderfile_inflight_inputs") < 160:
            assert time.monotonic() < deadline, "the busy requests never queued together"
            time.sleep(0.01)
        body = json.dumps({"inputs": ["hang up", "before the answer"]}).encode()
        with socket.create_connection((HOST, minilm_server.port), timeout=10) as sock:
            sock.sendall(
                b"POST /embed/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            while metric(minilm_server, "encoderfile_inflight_inputs") < 162:
                time.sleep(0.01)
        # The socket is closed while the model is still busy with the first requests; a gRPC
        # client gives up (deadline) the same way.
        with (
            grpc.insecure_channel(minilm_server.grpc_target) as channel,
            pytest.raises(grpc.RpcError) as gave_up,
        ):
            embed_pb2_grpc.EmbedderStub(channel).Embed(
                embed_pb2.EmbedRequest(inputs=["give up"]), timeout=0.5
            )
        assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        while metric(minilm_server, "encoderfile_cancelled_inputs_total") < cancelled_before + 3:
            assert not busy[-1].done(), "the hung-up request was not dropped while it queued"
            time.sleep(0.01)
        assert [f.result(120).status_code for f in busy] == [200] * 4
    assert metric(minilm_server, "encoderfile_inflight_inputs") == 0
    deadline = time.monotonic() + 10
    for status in ("499", "CANCELLED"):  # HTTP hung up, gRPC gave up
        counted = rf'^encoderfile_requests_total{{[^}}]*status="{status}"'
        while not re.search(counted, metrics(minilm_server), re.M):
            assert time.monotonic() < deadline, f"the request given up is not counted as {status}"
            time.sleep(0.05)
