"""What operators rely on, against running servers: gRPC streams share model calls, JSON logs,
the shutdown drain delay, per-route latency histograms and one set of error kinds."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from encoderfile import errors
from encoderfile.proto import embed_pb2, embed_pb2_grpc
from encoderfile.runtime.serve import http_app, metrics
from tests.runtime.serve.conftest import Server, runtime_command, serving

pytestmark = pytest.mark.slow  # integration: running servers


@pytest.fixture(scope="module")
def minilm_server(
    minilm_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from serving(minilm_bundle, tmp_path_factory)


def scrape(server: Server) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=10).text


def model_calls(server: Server) -> int:
    found = re.search(r"^encoderfile_batch_inputs_count (\d+)$", scrape(server), re.M)
    return int(found.group(1)) if found else 0


def test_embed_stream_goes_through_the_batcher(minilm_server: Server) -> None:
    """200 streamed messages share model calls; each reply is its own text's vector."""
    texts = [f"message {i}: " + "the quick brown fox " * (i % 7 + 1) for i in range(200)]
    with grpc.insecure_channel(minilm_server.grpc_target) as channel:
        api = embed_pb2_grpc.EmbedderStub(channel)
        alone = np.float32(
            [
                api.Embed(embed_pb2.EmbedRequest(inputs=[t]), timeout=30).embeddings[0].values
                for t in texts
            ]  # fmt: skip
        )
        before = model_calls(minilm_server)
        messages = (embed_pb2.EmbedRequest(inputs=[t]) for t in texts)
        replies = list(api.EmbedStream(messages, timeout=60))
        calls = model_calls(minilm_server) - before
    streamed = np.float32([r.embeddings[0].values for r in replies])
    assert streamed.shape == (200, 384)
    np.testing.assert_allclose(streamed, alone, atol=1e-5)  # same vectors, same order
    assert calls <= 40, f"200 streamed messages took {calls} model calls"
    print(f"200 streamed messages: {calls} model calls")


def test_a_bad_stream_message_ends_the_stream_after_earlier_replies(
    tiny_server: Server,
) -> None:
    messages = [embed_pb2.EmbedRequest(inputs=[t]) for t in ("fox", "dog", "", "a")]
    with grpc.insecure_channel(tiny_server.grpc_target) as channel:
        stream = embed_pb2_grpc.EmbedderStub(channel).EmbedStream(iter(messages), timeout=10)
        got = []
        with pytest.raises(grpc.RpcError) as e:
            for reply in stream:
                got.append(reply)
    assert len(got) == 2 and e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'inputs[0]' is empty" in e.value.details()


def test_error_kinds_are_the_same_on_both_transports(tiny_server: Server) -> None:
    for cls in (
        errors.InvalidFieldError,
        errors.MalformedRequestError,
        errors.UnauthorizedError,
        errors.NotFoundError,
        errors.PayloadTooLargeError,
        errors.OverloadedError,
        errors.NotReadyError,
        errors.EncoderfileError,
    ):
        assert metrics.error_kind(cls("x")) == http_app.status_of(cls("x"))[1], cls
    httpx.post(f"{tiny_server.url}/embed", json={"input": ""}, timeout=10)
    with grpc.insecure_channel(tiny_server.grpc_target) as channel, pytest.raises(grpc.RpcError):
        embed_pb2_grpc.EmbedderStub(channel).Embed(embed_pb2.EmbedRequest(), timeout=10)
    text = scrape(tiny_server)
    for transport, route in (("http", "/embed"), ("grpc", "Embed")):
        labels = f'kind="invalid_request_error",route="{route}",transport="{transport}"'
        assert f"encoderfile_errors_total{{{labels}}}" in text
        bucket = f'encoderfile_request_seconds_bucket{{route="{route}",transport="{transport}"'
        assert bucket in text, bucket


def test_json_logs_one_object_per_line(shared_tiny_bundle: Path, tmp_path: Path) -> None:
    command = runtime_command(shared_tiny_bundle)
    server = Server(command, tmp_path / "log", "--log-format", "json").wait_ready()
    try:
        headers = {"X-Request-Id": "req-42"}
        httpx.post(f"{server.url}/embed", json={"input": "the fox"}, headers=headers)
        with grpc.insecure_channel(server.grpc_target) as channel:
            api = embed_pb2_grpc.EmbedderStub(channel)
            api.Embed(embed_pb2.EmbedRequest(inputs=["a", "b"]), timeout=10)
    finally:
        assert server.stop() == 0
    records = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert all({"time", "level", "message"} <= set(r) for r in records)
    http = next(r for r in records if r.get("route") == "/embed")
    assert http["status"] == 200 and http["request_id"] == "req-42" and http["inputs"] == 1
    assert http["tokens"] == 4 and http["ms"] > 0 and http["transport"] == "http"
    rpc = next(r for r in records if r.get("route") == "Embed")
    assert rpc["transport"] == "grpc" and rpc["status"] == "OK" and rpc["inputs"] == 2
    assert any(r["message"] == "stopped" for r in records)


def test_shutdown_delay_answers_not_ready_while_still_serving(
    shared_tiny_bundle: Path, tmp_path: Path
) -> None:
    command = runtime_command(shared_tiny_bundle)
    server = Server(command, tmp_path / "log", "--shutdown-delay", "3").wait_ready()
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        seen = {"ready": 0, "embed": 0, "not_serving": 0}
        while time.monotonic() - signalled < 2:
            if httpx.get(f"{server.url}/ready", timeout=2).status_code == 503:
                seen["ready"] += 1
            response = httpx.post(f"{server.url}/embed", json={"input": "fox"}, timeout=2)
            seen["embed"] += response.status_code == 200
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            seen["not_serving"] += status == health_pb2.HealthCheckResponse.NOT_SERVING
            time.sleep(0.1)
    assert seen["ready"] > 0 and seen["embed"] > 0 and seen["not_serving"] > 0, seen
    assert server.proc.wait(30) == 0
    assert time.monotonic() - signalled >= 3
    assert "shutdown delay: /ready answers 503 for 3.0 s" in server.log()


def test_shutdown_delay_out_of_range_is_one_line(shared_tiny_bundle: Path, tmp_path: Path) -> None:
    server = Server(runtime_command(shared_tiny_bundle), tmp_path / "log", "--shutdown-delay", "-1")
    assert server.proc.wait(30) == 2
    assert server.log().strip().splitlines() == [
        "encoderfile: --shutdown-delay=-1.0 is out of range. Use 0 to 3600 seconds."
    ]
