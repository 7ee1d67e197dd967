"""TEI's HTTP API (tei.py): requests and answers checked against TEI's own published OpenAPI
document (tei_openapi.json, an excerpt of TEI 1.9.3's docs/openapi.json), vectors against the
embedder's, errors in TEI's envelope and status codes; nomic-serve's /embed stays as it was."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from starlette.testclient import TestClient

from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.embedder import Embedder
from encoderfile.runtime.serve.http_app import create_app
from encoderfile.runtime.serve.service import Limits, Service
from tests.fixtures.tiny_bundle import make_tiny_bundle

TEI = json.loads((Path(__file__).with_name("tei_openapi.json")).read_text())
LIMITS = Limits(max_body_bytes=4096, max_inputs=4, max_chars=200, max_inflight=8)
LONG = "hello world " * 10  # over the tiny model's 16 tokens


def _openapi_30_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` as JSON Schema's null type; refs into the document."""
    if isinstance(node, list):
        return [_openapi_30_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_30_to_json_schema(v) for k, v in node.items() if k != "example"}
    if out.pop("nullable", False):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


SCHEMAS = _openapi_30_to_json_schema(TEI["components"]["schemas"])


def check(name: str, value: Any) -> None:
    """`value` is valid under TEI's schema `name`."""
    schema = {"$ref": f"#/definitions/{name}", "definitions": SCHEMAS}
    text = json.dumps(schema).replace("#/components/schemas/", "#/definitions/")
    jsonschema.validate(value, json.loads(text))


def documented(path: str, status: int) -> None:
    """TEI's document lists `status` for `path`."""
    assert str(status) in TEI["paths"][path]["post"]["responses"], (path, status)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("tei") / "b", default_prompt="query")


@pytest.fixture(scope="module")
def client(bundle: Path) -> Iterator[TestClient]:
    service = Service(open_bundle(bundle), LIMITS)
    service.load(threads=1)
    with TestClient(create_app(service)) as client:
        yield client
    service.close(10)


@pytest.fixture(scope="module")
def embedder(bundle: Path) -> Embedder:
    return Embedder(open_bundle(bundle), threads=1)


def embed(client: TestClient, body: dict[str, Any], path: str = "/embed") -> np.ndarray:
    check("EmbedRequest", body)
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    check("EmbedResponse", r.json())
    return np.float32(r.json())


@pytest.mark.parametrize("path", ["/", "/embed"])
def test_embed_string_and_list_answer_bare_vectors(
    client: TestClient, embedder: Embedder, path: str
) -> None:
    one = embed(client, {"inputs": "hello world"}, path)
    assert one.shape == (1, 8)
    assert np.array_equal(one[0], embedder.embed(["hello world"]).vectors[0])
    texts = ["hello world", "the quick brown fox"]
    many = embed(client, {"inputs": texts, "normalize": True, "truncate": True}, path)
    assert np.array_equal(many, embedder.embed(texts).vectors)


def test_embed_options(client: TestClient, embedder: Embedder) -> None:
    assert np.array_equal(
        embed(client, {"inputs": ["a b"], "prompt_name": "document", "dimensions": 4}),
        embedder.embed(["a b"], prompt="document", dimensions=4).vectors,
    )
    right = embed(client, {"inputs": LONG, "truncation_direction": "Right"})
    left = embed(client, {"inputs": LONG + "fox", "truncation_direction": "Left"})
    assert np.array_equal(right[0], embedder.embed([LONG]).vectors[0])
    assert not np.allclose(left, right)  # the left cut keeps "fox"
    # token ids of this model's vocabulary, as TEI reads them (from /tokenize)
    ids = [t["id"] for t in client.post("/tokenize", json={"inputs": "hello"}).json()[0]]
    assert np.array_equal(
        embed(client, {"inputs": [ids, "hello"]}),
        embedder.embed(["hello", "hello"]).vectors,
    )


def test_nomic_serve_embed_is_unchanged_and_told_apart_by_input(client: TestClient) -> None:
    native = client.post("/embed", json={"input": "hello"})
    assert set(native.json()) == {"embedding", "tokens", "time_ms"}
    both = client.post("/embed", json={"input": "hello", "inputs": "hello"})
    assert both.status_code == 422 and "Send one of them" in both.json()["error"]["message"]


TEI_ERRORS = [
    ("/embed", {"inputs": []}, 400, "Empty", "cannot be empty"),
    ("/", {"inputs": ["a"] * 5}, 413, "Validation", "maximum allowed batch size 4"),
    ("/embed", {"inputs": "a", "normalize": False}, 422, "Validation", "L2 normalisation"),
    ("/embed", {"inputs": LONG, "truncate": False}, 422, "Validation", "max_length=16"),
    ("/embed", {"inputs": "a", "dimensions": 3}, 422, "Validation", "Use one of: 8, 4"),
    ("/embed", {"inputs": "a", "prompt_name": "x"}, 422, "Validation", "prompt 'x' is unknown"),
    ("/embed", {"inputs": "a", "wat": 1}, 422, "Validation", "has no field(s) wat"),
    ("/embed", {"inputs": "  "}, 422, "Validation", "empty or blank"),
    ("/embed", {"inputs": [[10**6]]}, 422, "Validation", "outside this model's vocabulary"),
    ("/embed", {"inputs": "a", "truncation_direction": "up"}, 422, "Validation", "'Left'"),
    ("/embed_all", {"inputs": "a"}, 424, "Backend", "pooled 'sentence_embedding'"),
    ("/rerank", {"query": "a", "texts": ["b"]}, 424, "Backend", "serves reranker artifacts"),
    ("/predict", {"inputs": "a"}, 424, "Backend", "needs a sequence classifier"),
    ("/embed_sparse", {"inputs": "a"}, 424, "Backend", "serves sparse artifacts"),
    ("/tokenize", {"inputs": []}, 400, "Empty", "cannot be empty"),
    ("/decode", {"ids": [[]]}, 422, "Validation", "'ids' must be"),
    ("/decode", {"ids": []}, 400, "Empty", "cannot be empty"),
]


@pytest.mark.parametrize(("path", "body", "status", "kind", "words"), TEI_ERRORS)
def test_errors_in_teis_envelope(
    client: TestClient, path: str, body: dict, status: int, kind: str, words: str
) -> None:
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    check("ErrorResponse", r.json())
    assert r.json()["error_type"] == kind and words in r.json()["error"], r.text
    documented("/embed" if path == "/" else path, status)


def test_body_errors_on_tei_only_routes_are_tei_shaped(client: TestClient) -> None:
    r = client.post("/", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error_type"] == "Validation"
    big = client.post("/", json={"inputs": "a" * 5000})
    assert big.status_code == 413 and big.json()["error_type"] == "Validation"


def test_tokenize_and_decode_in_teis_shapes(client: TestClient) -> None:
    body = {"inputs": ["hello world", "a"], "add_special_tokens": True}
    check("TokenizeRequest", body)
    tokens = client.post("/tokenize", json=body).json()
    check("TokenizeResponse", tokens)
    # the default prompt "search query " comes first, as on every route
    assert [t["text"] for t in tokens[0]] == ["[CLS]", "search", "query", "hello", "world", "[SEP]"]
    hello = tokens[0][3]
    assert hello["special"] is False and (hello["start"], hello["stop"]) == (13, 18)
    assert tokens[0][0]["special"] is True and tokens[0][0]["start"] is None
    bare = client.post("/tokenize", json={"inputs": "hello", "add_special_tokens": False}).json()
    assert [t["text"] for t in bare[0]] == ["search", "query", "hello"]
    # the native /tokenize keeps its shape
    assert "data" in client.post("/tokenize", json={"input": "hello"}).json()
    ids = [t["id"] for t in tokens[0]]
    for request, answer in [
        ({"ids": ids}, ["search query hello world"]),
        ({"ids": [ids, ids[:2]], "skip_special_tokens": False}, ["search query hello", "search"]),
    ]:
        check("DecodeRequest", request)
        decoded = client.post("/decode", json=request).json()
        check("DecodeResponse", decoded)
        assert len(decoded) == len(answer)
        assert all(a in d for d, a in zip(decoded, answer, strict=True)), decoded


def test_info_has_teis_fields_and_no_build_path(client: TestClient, bundle: Path) -> None:
    info = client.get("/info").json()
    check("Info", info)
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 16 and info["max_client_batch_size"] == 4
    assert info["model_id"] == info["served_model_name"] == "tiny"
    assert info["txt_model"] == "tiny:model.onnx"
    shown = json.dumps(info)
    assert str(bundle) not in shown and str(bundle.parent) not in shown
    assert client.get("/").status_code == 200  # TEI's GET / is its health check


def test_openapi_documents_the_tei_routes(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for path in ("/", "/embed_all", "/decode", "/rerank", "/predict", "/embed_sparse"):
        assert path in doc["paths"], path
    body = doc["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/TeiEmbedRequest"} in body["oneOf"]
    assert doc["paths"]["/"]["post"]["responses"]["424"]
