"""HTTP routes in process (Starlette TestClient): shapes, aliases, limits, auth, error table."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.embedder import Embedder
from encoderfile.runtime.serve.http_app import create_app
from encoderfile.runtime.serve.service import Limits, Service
from tests.fixtures.models import TINY_VOCAB

LIMITS = Limits(max_body_bytes=2048, max_inputs=4, max_chars=200, max_inflight=8)


@pytest.fixture(scope="module")
def service(shared_tiny_bundle: Path) -> Iterator[Service]:
    service = Service(open_bundle(shared_tiny_bundle), LIMITS)
    service.load(threads=1)
    yield service
    service.close(10)


@pytest.fixture(scope="module")
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(create_app(service, cors_origins=["http://app.example"])) as client:
        yield client


@pytest.fixture(scope="module")
def embedder(shared_tiny_bundle: Path) -> Embedder:
    return Embedder(open_bundle(shared_tiny_bundle), threads=1)


def test_health_ready_info(client: TestClient, service: Service) -> None:
    assert client.get("/health").json() == {
        "status": "OK",
        "text_model": True,
        "vision_model": False,
        "gpu_enabled": False,
    }
    assert client.get("/ready").status_code == 200
    info = client.get("/info").json()
    assert info["name"] == "tiny" and info["dimension"] == 8 and info["dimensions"] == [8, 4]
    assert info["sha256"] == service.manifest.files["model.onnx"]
    assert info["prompts"] == {"document": "document ", "query": "search query "}
    assert info["limits"] == {
        "max_body_bytes": 2048,
        "max_inputs": 4,
        "max_chars": 200,
        "max_inflight": 8,
    }
    assert info["max_length"] == 16 and info["encoderfile_version"]


def test_ready_is_503_until_loaded_and_while_draining(shared_tiny_bundle: Path) -> None:
    service = Service(open_bundle(shared_tiny_bundle), LIMITS)
    with TestClient(create_app(service)) as client:
        r = client.get("/ready")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert client.post("/embed", json={"input": "hello"}).status_code == 503
        assert client.get("/health").status_code == 200
        service.load(threads=1)
        assert client.get("/ready").status_code == 200
        service.drain()
        assert client.get("/ready").status_code == 503
        # Requests already accepted while draining still complete.
        assert client.post("/embed", json={"input": "hello"}).status_code == 200
        service.close(10)
        assert client.post("/embed", json={"input": "hello"}).status_code == 503


@pytest.mark.parametrize("path", ["/embed", "/txt/embed"])
def test_embed(client: TestClient, embedder: Embedder, path: str) -> None:
    r = client.post(path, json={"input": "hello world", "prompt": "query"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"embedding", "tokens", "time_ms"}
    expected = embedder.embed(["hello world"], prompt="query")
    assert np.array_equal(np.float32(body["embedding"]), expected.vectors[0])
    assert body["tokens"] == expected.tokens[0] == 6
    assert r.headers["x-request-id"]


@pytest.mark.parametrize("path", ["/embed/batch", "/batch", "/txt/batch"])
def test_embed_batch_with_dim(client: TestClient, embedder: Embedder, path: str) -> None:
    texts = ["hello world", "the quick brown fox"]
    body = client.post(path, json={"inputs": texts, "dim": 4}).json()
    expected = embedder.embed(texts, dimensions=4)
    assert np.array_equal(np.float32(body["embeddings"]), expected.vectors)
    assert body["tokens"] == expected.tokens
    assert np.allclose(np.linalg.norm(body["embeddings"], axis=1), 1, atol=1e-6)


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings"])
def test_openai_float_and_base64(client: TestClient, embedder: Embedder, path: str) -> None:
    texts = ["hello world", "a b c"]
    expected = embedder.embed(texts, dimensions=4)
    floats = client.post(
        path, json={"model": "tiny", "input": texts, "dimensions": 4, "user": "u1"}
    ).json()
    assert floats["object"] == "list" and floats["model"] == "tiny"
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert {d["object"] for d in floats["data"]} == {"embedding"}
    assert np.array_equal(np.float32([d["embedding"] for d in floats["data"]]), expected.vectors)
    total = sum(expected.tokens)
    assert floats["usage"] == {"prompt_tokens": total, "total_tokens": total}
    b64 = client.post(
        path, json={"model": "tiny", "input": texts, "dimensions": 4, "encoding_format": "base64"}
    ).json()
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in b64["data"]]
    assert np.array_equal(np.stack(decoded), expected.vectors)


# tiktoken's cl100k_base ids of "hello world" and "a" (tiktoken.get_encoding("cl100k_base")).
CL100K = {"hello world": [15339, 1917], "a": [64]}


def test_openai_token_ids_are_cl100k_base(client: TestClient, embedder: Embedder) -> None:
    """OpenAI's token arrays are cl100k_base ids (what LangChain sends): decoded to the text."""
    one = client.post("/v1/embeddings", json={"model": "tiny", "input": [15339, 1917]}).json()
    many = client.post(
        "/v1/embeddings", json={"model": "tiny", "input": list(CL100K.values()), "prompt": "query"}
    ).json()
    assert np.array_equal(
        np.float32(one["data"][0]["embedding"]), embedder.embed(["hello world"]).vectors[0]
    )
    expected = embedder.embed(list(CL100K), prompt="query").vectors
    assert np.array_equal(np.float32([d["embedding"] for d in many["data"]]), expected)
    assert many["usage"]["prompt_tokens"] == 6 + 5


def test_model_vocabulary_ids_go_to_tei_embed(client: TestClient, embedder: Embedder) -> None:
    ids = client.post("/tokenize", json={"input": ["hello world", "a"]}).json()["data"]
    assert ids[0]["tokens"] == ["[CLS]", "hello", "world", "[SEP]"]
    one = client.post("/embed", json={"inputs": ids[0]["ids"]}).json()
    many = client.post("/embed", json={"inputs": [d["ids"] for d in ids]}).json()
    expected = embedder.embed(["hello world", "a"]).vectors
    assert np.array_equal(np.float32(one[0]), expected[0])
    assert np.array_equal(np.float32(many), expected)


def test_tokenize_single_string(client: TestClient) -> None:
    data = client.post("/tokenize", json={"input": "hello", "prompt": "document"}).json()["data"]
    assert data == [
        {
            "ids": [TINY_VOCAB.index(t) for t in ("[CLS]", "document", "hello", "[SEP]")],
            "tokens": ["[CLS]", "document", "hello", "[SEP]"],
            "truncated": False,
        }
    ]


NATIVE_ERRORS = [
    # (route, body, status, words the message must contain)
    ("/embed", b"{not json", 400, "not valid JSON"),
    ("/embed", b"", 400, "not valid JSON"),
    ("/embed", b'{"input": "caf\xe9"}', 400, "not UTF-8"),
    ("/embed", b"[1, 2]", 400, "not an object"),
    ("/embed", b"[" * 2000, 400, "nested too deeply"),
    ("/embed", {"input": 3}, 422, "'input' must be a string"),
    ("/embed", {"input": ["a"]}, 422, "POST /embed/batch"),
    ("/embed", {"input": ""}, 422, "empty"),
    ("/embed", {"input": "   "}, 422, "blank"),
    ("/embed", {"input": "a", "dim": 5}, 422, "Use one of: 8, 4"),
    ("/embed", {"input": "a", "dim": "8"}, 422, "'dim' must be an integer"),
    ("/embed", {"input": "a", "dim": True}, 422, "'dim' must be an integer"),
    ("/embed", {"input": "a", "prompt": "nope"}, 422, "Use one of: document, query"),
    ("/embed", {"input": "a", "prompt": 1}, 422, "'prompt' must be a string"),
    ("/embed", {"input": "a", "truncate": "no"}, 422, "true or false"),
    ("/embed", {"input": "hello " * 20, "truncate": False}, 422, "max_length=16"),
    ("/embed", {"input": "a" * 201}, 422, "--max-chars"),
    ("/embed", {"input": "a", "dims": 4}, 422, "no field(s) dims"),
    ("/embed/batch", {"inputs": []}, 422, "'inputs' is empty"),
    ("/embed/batch", {"inputs": "a"}, 422, "list of strings"),
    ("/embed/batch", {"inputs": ["a", 1]}, 422, "list of strings"),
    ("/embed/batch", {"inputs": ["a", ""]}, 422, "'inputs[1]' is empty"),
    ("/embed/batch", {"inputs": ["a"] * 5}, 422, "--max-inputs"),
    ("/tokenize", {"input": None}, 422, "list of strings"),
    ("/embed", {"input": "a" * 3000}, 413, "--max-body-bytes"),
]


@pytest.mark.parametrize(("path", "body", "status", "words"), NATIVE_ERRORS)
def test_native_errors(client: TestClient, path: str, body: object, status: int, words: str):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post(path, content=content)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type"}
    assert words in error["message"]


# OpenAI answers 400 for every invalid request (its SDK raises BadRequestError).
OPENAI_ERRORS = [
    ({"input": "a"}, 400, "model", "'model' is required"),
    ({"model": "gpt-4", "input": "a"}, 404, "model", "Use 'tiny'"),
    ({"model": "tiny"}, 400, "input", "'input' must be"),
    ({"model": "tiny", "input": []}, 400, "input", "'input' must be"),
    ({"model": "tiny", "input": [[]]}, 400, "input", "no token ids"),
    ({"model": "tiny", "input": [1, "a"]}, 400, "input", "'input' must be"),
    ({"model": "tiny", "input": [10**6]}, 400, "input", "check_embedding_ctx_length=False"),
    ({"model": "tiny", "input": [-1]}, 400, "input", "not a cl100k_base token"),
    ({"model": "tiny", "input": [[1], [100256]]}, 400, "input", "'input[1]' has token id 100256"),
    ({"model": "tiny", "input": "a", "dimensions": 3}, 400, "dimensions", "Use one of: 8, 4"),
    ({"model": "tiny", "input": "a", "encoding_format": "int8"}, 400, "encoding_format", "base64"),
    ({"model": "tiny", "input": ["a"] * 5}, 400, "input", "--max-inputs"),
]


@pytest.mark.parametrize(("body", "status", "param", "words"), OPENAI_ERRORS)
def test_openai_errors(client: TestClient, body: dict, status: int, param: str, words: str):
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and words in error["message"]
    if status == 404:
        assert error["code"] == "model_not_found"


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.get("/embed")
    assert r.status_code == 405 and "not allowed" in r.json()["error"]["message"]


def test_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    chunks = (b'{"input": "' + b"a" * 1000,) * 3  # no Content-Length: counted while read
    r = client.post("/embed", content=iter(chunks))
    assert r.status_code == 413


def test_overload_is_429_at_once(service: Service, client: TestClient) -> None:
    assert service.batcher is not None
    held = service.batcher._inflight
    service.batcher._inflight = LIMITS.max_inflight - 1  # as if 7 inputs were in flight
    try:
        r = client.post("/embed/batch", json={"inputs": ["a", "b"]})
    finally:
        service.batcher._inflight = held
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert "--max-inflight" in r.json()["error"]["message"]


def test_api_key(shared_tiny_bundle: Path) -> None:
    service = Service(open_bundle(shared_tiny_bundle), LIMITS, api_keys=["s3cret", "other"])
    service.load(threads=1)
    try:
        with TestClient(create_app(service)) as client:
            for path in ("/health", "/ready", "/docs", "/openapi.json"):
                assert client.get(path).status_code == 200, path
            r = client.post("/embed", json={"input": "a"})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in r.json()["error"]["message"]
            assert client.get("/info").status_code == 401
            assert (
                client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
            )
            r = client.post(
                "/v1/embeddings",
                json={"model": "tiny", "input": "a"},
                headers={"Authorization": "Bearer other"},
            )
            assert r.status_code == 200
    finally:
        service.close(10)


def test_cors(client: TestClient) -> None:
    r = client.options(
        "/embed", headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert r.headers["access-control-allow-origin"] == "http://app.example"
    r = client.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_metrics_and_request_id(client: TestClient) -> None:
    client.post("/embed", json={"input": "hello world"}, headers={"X-Request-Id": "abc-123"})
    client.post("/embed", json={"input": ""})
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    for line in (
        'encoderfile_requests_total{route="/embed",status="200",transport="http"}',
        'encoderfile_errors_total{kind="invalid_request_error",route="/embed",transport="http"}',
        'encoderfile_request_seconds_bucket{route="/embed",transport="http",le="+Inf"}',
        "encoderfile_inputs_total ",
        "encoderfile_tokens_total ",
        'encoderfile_queue_seconds_bucket{le="+Inf"}',
        "encoderfile_inference_seconds_count ",
        "encoderfile_batch_inputs_sum ",
        "encoderfile_inflight_inputs 0",
        "encoderfile_ready 1",
    ):
        assert line in text, line
    r = client.get("/health", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"


def test_openapi_lists_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {
        "/health",
        "/ready",
        "/info",
        "/metrics",
        "/embed",
        "/txt/embed",
        "/embed/batch",
        "/batch",
        "/txt/batch",
        "/v1/embeddings",
        "/embeddings",
        "/tokenize",
        "/img/stats",
        "/query",
        "/txt/query",
        "/v1/models",
        "/v1/models/{model}",
        "/docs/openapi.json",
        # TEI's (tests/runtime/serve/test_tei.py)
        "/",
        "/decode",
        "/embed_all",
        "/rerank",
        "/predict",
        "/embed_sparse",
    }
    assert spec["components"]["schemas"]["OpenAIRequest"]["properties"]["model"]["enum"] == ["tiny"]
    page = client.get("/docs").text
    assert "/docs/assets/swagger-ui-bundle.js" in page and "/openapi.json" in page
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
