"""Hostile and careless HTTP / gRPC clients: each answers 4xx or INVALID_ARGUMENT (never 5xx or
a traceback), slow clients are cut off, and nothing a client sends can forge a log line."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from starlette.testclient import TestClient

from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.serve.http_app import create_app
from encoderfile.runtime.serve.service import Limits, Service
from tests.runtime.serve.conftest import HOST, Server, runtime_command

LIMITS = Limits(max_body_bytes=64 * 1024, max_inputs=4, max_chars=200, max_inflight=8)


@pytest.fixture(scope="module")
def service(shared_tiny_bundle: Path) -> Iterator[Service]:
    service = Service(open_bundle(shared_tiny_bundle), LIMITS, api_keys=["sesame"])
    service.load(threads=1)
    yield service
    service.close(10)


@pytest.fixture(scope="module")
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = "Bearer sesame"
        yield client


def post_raw(client: TestClient, path: str, body: str) -> tuple[int, dict]:
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    return response.status_code, response.json()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/embed", '{"input": "\\ud800"}'),
        ("/embed/batch", '{"inputs": ["ok", "a\\udfffb"]}'),
        ("/v1/embeddings", '{"model": "tiny", "input": ["\\ud800"]}'),
        ("/tokenize", '{"input": "x\\ud83d"}'),
        ("/embed", '{"input": "a", "\\ud800": 1}'),  # in an unknown key's name
    ],
)
def test_lone_surrogate_is_400(client: TestClient, path: str, body: str) -> None:
    status, answer = post_raw(client, path, body)
    assert status == 400, answer
    assert "surrogate" in answer["error"]["message"]


def test_valid_surrogate_pair_is_text(client: TestClient) -> None:
    status, answer = post_raw(client, "/tokenize", '{"input": "smile \\ud83d\\ude00"}')
    assert status == 200, answer


@pytest.mark.parametrize("path", ["/embed", "/v1/embeddings", "/img/stats"])
def test_integer_over_the_digit_limit_is_400(client: TestClient, path: str) -> None:
    status, answer = post_raw(client, path, '{"input": "a", "dim": ' + "9" * 5000 + "}")
    assert status == 400, answer
    assert "4300 digits" in answer["error"]["message"]


def test_body_of_the_wrong_json_type_says_which(client: TestClient) -> None:
    status, answer = post_raw(client, "/embed", '[1, "a"]')
    assert status == 400
    assert answer["error"]["message"] == (
        "The body is a JSON array, not an object. Send a JSON object."
    )


def test_405_names_the_allowed_methods(client: TestClient) -> None:
    for path, allowed in (("/embed", {"POST"}), ("/health", {"GET", "HEAD"})):
        response = client.request("PUT", path)
        assert response.status_code == 405
        assert set(response.headers["allow"].split(", ")) == allowed


def test_log_line_escapes_the_path(
    client: TestClient, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "/x%0a2026-01-01 00:00:00 INFO GET /admin 200 inputs=0"
    service.backlog.flush()  # the lines of the requests before
    with caplog.at_level(logging.INFO, logger="encoderfile.serve"):
        client.get(forged)
        client.get(forged, headers={"Authorization": "Bearer wrong"})  # a 401 answer
        service.backlog.flush()  # request lines are written in batches
    lines = [r.getMessage() for r in caplog.records if r.name == "encoderfile.serve"]
    assert len(lines) == 2
    for line in lines:
        assert "\n" not in line and "\\n2026-01-01" in line


def test_image_routes_of_a_text_only_artifact_answer_404_before_the_body(
    tiny_server: Server,
) -> None:
    for path in ("/img/embed", "/img/batch"):
        with socket.create_connection((HOST, tiny_server.port), timeout=10) as sock:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {60 * 1024 * 1024}\r\n\r\n"
            )
            sock.sendall(head.encode() + b'{"content": "')  # and nothing more
            answer = read_response(sock)
        assert answer.startswith("HTTP/1.1 404"), answer
        assert "has no image model" in answer


def read_response(sock: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return (head + b"\r\n\r\n" + body).decode()


@pytest.mark.slow  # starts a server, waits on its timeout
def test_read_timeout_closes_slow_heads_and_stalled_bodies(
    shared_tiny_bundle: Path, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    server = Server(runtime_command(shared_tiny_bundle), log, "--no-grpc", "--read-timeout", "1")
    server.wait_ready()
    try:
        slow_head = [b"POST /embed HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n"]
        body = b'{"input": "hello"}'
        stalled_body = [
            b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body),
            body[:5],
        ]
        for pieces, pause in (([], 0.0), (slow_head, 0.4), (stalled_body, 0.0)):
            with socket.create_connection((HOST, server.port), timeout=10) as sock:
                started = time.monotonic()
                for piece in pieces:  # a slowloris drips its head: each piece is in time
                    sock.sendall(piece)
                    time.sleep(pause)
                assert sock.recv(65536) == b""  # closed by the server, no answer
                assert time.monotonic() - started < 5
        # a prompt client is unaffected, also on a kept-alive connection after a pause
        with socket.create_connection((HOST, server.port), timeout=10) as sock:
            request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
            for _ in range(2):
                sock.sendall(request)
                assert read_response(sock).startswith("HTTP/1.1 200")
                time.sleep(0.5)
    finally:
        assert server.stop() == 0, server.log()


@pytest.mark.slow  # runs the runtime in a process
def test_read_timeout_must_be_positive(shared_tiny_bundle: Path) -> None:
    result = subprocess.run(
        [*runtime_command(shared_tiny_bundle), "serve", "--read-timeout", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "expected a positive number" in result.stderr


@pytest.mark.parametrize(
    ("method", "payload"),
    [
        ("Embed", b"\xff\xff\xff"),
        ("Embed", b"\x0a\x05ab"),  # a string field that claims 5 bytes and has 2
        ("Info", b"\x08"),
        ("ImageStats", b"\x0a\x80"),
    ],
)
def test_grpc_malformed_message_is_invalid_argument(
    tiny_server: Server, method: str, payload: bytes
) -> None:
    with grpc.insecure_channel(tiny_server.grpc_target) as channel:
        call = channel.unary_unary(
            f"/encoderfile.v1.Embedder/{method}",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        with pytest.raises(grpc.RpcError) as e:
            call(payload, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "not a valid protobuf message" in (e.value.details() or "")
    assert "Traceback" not in tiny_server.wait_for_log(f"GRPC {method} INVALID_ARGUMENT")


@pytest.mark.slow  # runs the runtime in a process
def test_serve_help_lists_what_stays_open_with_an_api_key(shared_tiny_bundle: Path) -> None:
    result = subprocess.run(
        [*runtime_command(shared_tiny_bundle), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    text = " ".join(result.stdout.split())
    for open_route in (
        "/health",
        "/ready",
        "/docs",
        "/openapi.json",
        "grpc.health.v1.Health",
        "reflection",
    ):
        assert open_route in text
    assert "--read-timeout" in text


def test_open_routes_answer_without_a_key_and_the_rest_do_not(service: Service) -> None:
    from encoderfile.runtime.serve.server import open_routes

    listed = open_routes()
    with TestClient(create_app(service)) as anonymous:
        for path in ("/health", "/ready", "/docs", "/openapi.json"):
            assert path in listed
            assert anonymous.get(path).status_code == 200, path
        for path in ("/info", "/metrics"):
            assert path not in listed
            assert anonymous.get(path).status_code == 401, path
        assert json.loads(anonymous.post("/embed", json={"input": "a"}).text)["error"]


STATS_PEAK = """
import io, resource
from PIL import Image
from encoderfile.runtime import image as pictures
buffer = io.BytesIO()
Image.new("RGB", (6000, 6000), (200, 120, 40)).save(buffer, "PNG", compress_level=1)
image = pictures.decode(buffer.getvalue(), "content")  # 36 megapixels: 144 MB decoded
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stats = pictures.stats(image, "arithmetic")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert stats["color_data"]["avg_color"]["hex"] == "#c87828", stats
print((after - before) // 1024)
"""


@pytest.mark.slow  # runs a process
def test_image_stats_keep_one_full_size_image() -> None:
    """Stats shrink the decoded image in place to the 512 px thumbnail: no second full-size copy
    (a 36-megapixel PNG took another 144 MB on top of its decoded pixels)."""
    result = subprocess.run(
        [sys.executable, "-c", STATS_PEAK], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 36, f"stats raised peak RSS by {result.stdout.strip()} MB"
