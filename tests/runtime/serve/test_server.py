"""Servers started as a user starts them, driven by the official openai client, gRPC stubs,
grpc_health and reflection, plain httpx and headless Chromium; SIGTERM with work in flight."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from encoderfile.proto import embed_pb2, embed_pb2_grpc
from tests.runtime.serve.conftest import HOST, Server, runtime_command

pytestmark = pytest.mark.slow  # integration: servers started as a user starts them

ROOT = Path(__file__).parents[3]
TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "a"]


def test_openai_client_float_and_default_base64(tiny_server: Server) -> None:
    client = openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key="unused", max_retries=0)
    floats = client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float")
    default = client.embeddings.create(model="tiny", input=TEXTS)  # the client asks for base64
    shorter = client.embeddings.create(model="tiny", input="hello world", dimensions=4)
    a = np.float32([d.embedding for d in floats.data])
    b = np.float32([d.embedding for d in default.data])
    assert a.shape == (3, 8) and np.array_equal(a, b)
    assert len(shorter.data[0].embedding) == 4
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="text-embedding-3-small", input="a")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="Use one of: 8, 4"):
        client.embeddings.create(model="tiny", input="a", dimensions=5)


def test_grpc_embed_stream_info_and_errors(tiny_server: Server) -> None:
    with grpc.insecure_channel(tiny_server.grpc_target) as channel:
        api = embed_pb2_grpc.EmbedderStub(channel)
        response = api.Embed(embed_pb2.EmbedRequest(inputs=TEXTS, dimensions=4), timeout=10)
        assert response.dimensions == 4 and len(response.embeddings) == 3
        assert response.total_tokens == sum(e.tokens for e in response.embeddings)
        stream = api.EmbedStream(
            iter([embed_pb2.EmbedRequest(inputs=[t], prompt="query") for t in TEXTS]), timeout=10
        )
        streamed = [r.embeddings[0].values for r in stream]
        alone = [
            api.Embed(embed_pb2.EmbedRequest(inputs=[t], prompt="query"), timeout=10)
            .embeddings[0]
            .values
            for t in TEXTS
        ]
        assert streamed == alone
        info = api.Info(embed_pb2.InfoRequest(), timeout=10)
        assert (info.name, info.dimension, list(info.dimensions)) == ("tiny", 8, [8, 4])
        assert info.limits.max_inputs == 256 and info.model_sha256
        cases = [
            (embed_pb2.EmbedRequest(), "'inputs' is empty"),
            (embed_pb2.EmbedRequest(inputs=[""]), "'inputs[0]' is empty"),
            (embed_pb2.EmbedRequest(inputs=["a"], dimensions=3), "Use one of: 8, 4"),
            (embed_pb2.EmbedRequest(inputs=["a"], prompt="nope"), "Use one of: document, query"),
        ]
        for request, words in cases:
            with pytest.raises(grpc.RpcError) as e:
                api.Embed(request, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in e.value.details()

        checker = health_pb2_grpc.HealthStub(channel)
        for service in ("", "encoderfile.v1.Embedder"):
            reply = checker.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        [reply] = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for s in reply.list_services_response.service}
        assert {"encoderfile.v1.Embedder", "grpc.health.v1.Health"} <= names


def test_cli_http_grpc_give_the_same_vector(tiny_server: Server, shared_tiny_bundle: Path):
    text = "the quick brown fox"
    cli = subprocess.run(
        [*runtime_command(shared_tiny_bundle), "embed", "--prompt", "query", text],
        capture_output=True,
        check=True,
        timeout=60,
    )
    from_cli = np.float32(json.loads(cli.stdout)["embedding"])
    body = httpx.post(f"{tiny_server.url}/embed", json={"input": text, "prompt": "query"}).json()
    with grpc.insecure_channel(tiny_server.grpc_target) as channel:
        reply = embed_pb2_grpc.EmbedderStub(channel).Embed(
            embed_pb2.EmbedRequest(inputs=[text], prompt="query"), timeout=10
        )
    from_grpc = np.float32(reply.embeddings[0].values)
    assert np.array_equal(from_cli, np.float32(body["embedding"]))
    assert np.array_equal(from_cli, from_grpc)


def test_metrics_count_both_transports(tiny_server: Server) -> None:
    text = httpx.get(f"{tiny_server.url}/metrics").text
    assert 'transport="grpc"' in text and 'transport="http"' in text
    assert 'route="Embed",status="OK"' in text


@pytest.mark.skipif(not shutil.which("chromium"), reason="apt-get install -y chromium")
def test_docs_render_in_headless_chromium(tiny_server: Server) -> None:
    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    chromium = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--no-first-run",
        "--virtual-time-budget=10000", "--window-size=1280,1600",
    ]  # fmt: skip
    url = f"{tiny_server.url}/docs"
    dom = subprocess.run(
        [*chromium, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    assert "opblock" in dom, "Swagger UI rendered no operations"
    for path in ("/v1/embeddings", "/embed/batch", "/tokenize"):
        assert path in dom
    shot = out / "serve-docs.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [*chromium, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True
    )
    assert shot.stat().st_size > 10_000


def test_api_key_on_both_transports(shared_tiny_bundle: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# one per line\ns3cret\n")
    server = Server(
        runtime_command(shared_tiny_bundle), tmp_path / "log", "--api-key-file", str(keys)
    ).wait_ready()
    try:
        assert httpx.post(f"{server.url}/embed", json={"input": "a"}).status_code == 401
        ok = httpx.post(
            f"{server.url}/embed", json={"input": "a"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
        with grpc.insecure_channel(server.grpc_target) as channel:
            api = embed_pb2_grpc.EmbedderStub(channel)
            request = embed_pb2.EmbedRequest(inputs=["a"])
            with pytest.raises(grpc.RpcError) as e:
                api.Embed(request, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = api.Embed(request, metadata=[("authorization", "Bearer s3cret")], timeout=10)
            assert len(reply.embeddings[0].values) == 8
    finally:
        assert server.stop() == 0


def test_sigterm_finishes_work_in_flight_then_exits_0(shared_tiny_bundle: Path, tmp_path: Path):
    server = Server(runtime_command(shared_tiny_bundle), tmp_path / "log").wait_ready()
    body = json.dumps({"inputs": TEXTS}).encode()
    head = (
        f"POST /embed/batch HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    # An HTTP request whose body is still arriving, and a gRPC stream with one message sent.
    sock = socket.create_connection((HOST, server.port), timeout=10)
    sock.sendall(head + body[:10])
    release = threading.Event()

    def messages():
        yield embed_pb2.EmbedRequest(inputs=["hello"])
        release.wait(10)
        yield embed_pb2.EmbedRequest(inputs=["world"])

    channel = grpc.insecure_channel(server.grpc_target)
    replies = embed_pb2_grpc.EmbedderStub(channel).EmbedStream(messages(), timeout=30)
    first = next(replies)
    time.sleep(0.3)  # the server has read the HTTP head and waits for the body

    server.proc.send_signal(15)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # not ready: 503, then connections refused
        try:
            if httpx.get(f"{server.url}/ready", timeout=2).status_code == 503:
                break
        except httpx.TransportError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"still ready 10 s after SIGTERM:\n{server.log()}")
    assert "draining" in server.log()

    sock.sendall(body[10:])
    chunks = []
    while chunk := sock.recv(65536):  # the server closes the connection after answering
        chunks.append(chunk)
    sock.close()
    response = b"".join(chunks).decode()
    assert response.startswith("HTTP/1.1 200"), response
    assert '"embeddings"' in response
    release.set()
    rest = list(replies)
    channel.close()
    assert len(first.embeddings) == len(rest[0].embeddings) == 1
    assert server.stop() == 0, server.log()
    assert "stopped" in server.log()


def test_startup_line_and_request_log(tiny_server: Server) -> None:
    httpx.post(f"{tiny_server.url}/embed", json={"input": "hello"}, headers={"X-Request-Id": "r-1"})
    log = tiny_server.wait_for_log("id=r-1")
    assert "serving tiny dimension=8 dimensions=8,4" in log and "cold_start_ms=" in log
    assert "POST /embed 200 inputs=1 tokens=3 ms=" in log and "id=r-1" in log


def test_port_in_use_is_a_clear_error(shared_tiny_bundle: Path, tiny_server: Server) -> None:
    result = subprocess.run(
        [*runtime_command(shared_tiny_bundle), "serve", "--port", str(tiny_server.port),
         "--no-grpc"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"cannot bind HTTP to {HOST}:{tiny_server.port}" in result.stderr


@pytest.mark.slow  # starts the runtime in a process
@pytest.mark.parametrize("busy", ["http", "grpc", "same"])
def test_busy_port_with_both_transports_is_one_line(shared_tiny_bundle: Path, busy: str) -> None:
    """HTTP busy with gRPC on left a started gRPC server behind ('Event loop is closed' and
    9 lines); gRPC busy added a line from gRPC's C core."""
    held = socket.socket()
    held.bind((HOST, 0))
    held.listen()
    taken = held.getsockname()[1]
    with socket.socket() as spare:
        spare.bind((HOST, 0))
        free = spare.getsockname()[1]
    http, grpc_port = {"http": (taken, free), "grpc": (free, taken), "same": (free, free)}[busy]
    try:
        result = subprocess.run(
            [*runtime_command(shared_tiny_bundle), "serve", "--port", str(http),
             "--grpc-port", str(grpc_port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        held.close()
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    expected = {
        "http": f"cannot bind HTTP to {HOST}:{taken} (Address already in use)",
        "grpc": f"cannot bind gRPC to {HOST}:{taken} (Address already in use)",
        "same": f"--port and --grpc-port are both {free}",
    }[busy]
    assert result.stderr.startswith("encoderfile: ") and expected in result.stderr


def test_frozen_artifact_serves(
    minilm_artifact: Path, artifact_env: dict, tiktoken_offline: Path, tmp_path: Path
) -> None:
    server = Server([str(minilm_artifact), "--threads", "1"], tmp_path / "log",
                    env=artifact_env).wait_ready(timeout=180)  # fmt: skip
    try:
        text = "Embeddings map text to vectors."
        cli = subprocess.run(
            [str(minilm_artifact), "embed", text], capture_output=True, check=True,
            env=artifact_env, timeout=120,
        )  # fmt: skip
        from_cli = np.float32(json.loads(cli.stdout)["embedding"])
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
        name = httpx.get(f"{server.url}/info").json()["name"]
        from_openai = client.embeddings.create(model=name, input=text).data[0].embedding
        with grpc.insecure_channel(server.grpc_target) as channel:
            reply = embed_pb2_grpc.EmbedderStub(channel).Embed(
                embed_pb2.EmbedRequest(inputs=[text]), timeout=30
            )
            checker = health_pb2_grpc.HealthStub(channel)
            status = checker.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert from_cli.shape == (384,)
        assert np.array_equal(from_cli, np.float32(from_openai))
        assert np.array_equal(from_cli, np.float32(reply.embeddings[0].values))
        info = httpx.get(f"{server.url}/info").json()
        assert info["dimensions"] == [384, 256, 128]
        deadline = time.monotonic() + 30
        while info["artifact_sha256"] is None and time.monotonic() < deadline:
            time.sleep(0.2)
            info = httpx.get(f"{server.url}/info").json()
        assert info["artifact_sha256"] == hashlib.sha256(minilm_artifact.read_bytes()).hexdigest()
        assert httpx.get(f"{server.url}/docs/assets/swagger-ui.css").status_code == 200
        frozen = (minilm_artifact, artifact_env, server, name)
        assert_frozen_reads_openai_token_ids(*frozen, {text: from_cli})
    finally:
        assert server.stop() == 0, server.log()


def assert_frozen_reads_openai_token_ids(
    artifact: Path, env: dict, server: Server, name: str, embedded: dict[str, np.ndarray]
) -> None:
    """/v1/embeddings token arrays are cl100k_base ids, decoded with the table frozen into the
    artifact (templates/runtime.spec): LangChain's default [[15339]] is "hello"."""
    import tiktoken  # cl100k_base from the tiktoken_offline cache

    cli = subprocess.run(
        [str(artifact), "embed", "hello"], capture_output=True, check=True, env=env, timeout=120
    )
    expected = {"hello": np.float32(json.loads(cli.stdout)["embedding"]), **embedded}
    cl100k = tiktoken.get_encoding("cl100k_base")
    assert cl100k.encode("hello") == [15339]
    for text, want in expected.items():  # "hello": LangChain's {"input": [[15339]]}
        body = {"input": [cl100k.encode(text)], "model": name}
        answer = httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        got = np.float32(answer.json()["data"][0]["embedding"])
        cosine = got @ want / (np.linalg.norm(got) * np.linalg.norm(want))
        print(f"frozen artifact, cl100k ids of {text!r} vs embed: cosine {cosine:.7f}")
        assert cosine >= 0.99999, (text, cosine)
    for bad in ([[100256]], [[10**6]], [[-1]], [[15339, 100261]]):
        refused = httpx.post(f"{server.url}/v1/embeddings", json={"input": bad, "model": name})
        assert refused.status_code == 400, (bad, refused.text)
        assert "check_embedding_ctx_length=False" in refused.json()["error"]["message"], bad
