"""A reranker artifact served: TEI's POST /rerank and Cohere / Jina's POST /v1/rerank in process
(one Service, Starlette's TestClient), then one real server on loopback driven by real clients:
httpx, the `cohere` SDK, a generated gRPC stub (Rerank) and the MCP client (rank). Scores are
checked against the Reranker on the same bundle; routes of the other kind answer 4xx naming it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import jsonschema
import numpy as np
import pytest
from starlette.testclient import TestClient

from encoderfile.proto import embed_pb2, embed_pb2_grpc
from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.reranker import Reranker
from encoderfile.runtime.serve.http_app import create_app
from encoderfile.runtime.serve.service import Limits, Service
from tests.runtime.serve.conftest import Server
from tests.runtime.serve.test_tei import SCHEMAS

LIMITS = Limits(max_body_bytes=65536, max_inputs=4, max_chars=2000, max_inflight=8)
QUERY = "what does a cross-encoder do?"
DOCS = [
    "Bananas are rich in potassium.",
    "A cross-encoder reads the query and the document together.",
    " ".join(f"sentence {i} of a long document past max_length" for i in range(12)),
    "hi",
]


@pytest.fixture(scope="module")
def expected(reranker_bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    reranker = Reranker(open_bundle(reranker_bundle), threads=1)
    scores = reranker.rerank(QUERY, DOCS).scores
    logits = reranker.rerank(QUERY, DOCS, raw_scores=True).scores
    return scores, logits


def serving(bundle: Path) -> Iterator[TestClient]:
    service = Service(open_bundle(bundle), LIMITS)
    service.load(threads=1)
    with TestClient(create_app(service)) as client:
        yield client
    service.close(10)


@pytest.fixture(scope="module")
def client(reranker_bundle: Path) -> Iterator[TestClient]:
    yield from serving(reranker_bundle)


@pytest.fixture(scope="module")
def embedder_client(shared_tiny_bundle: Path) -> Iterator[TestClient]:
    yield from serving(shared_tiny_bundle)


def tei_schema(name: str, value: object) -> None:
    schema = {"$ref": f"#/definitions/{name}", "definitions": SCHEMAS}
    text = json.dumps(schema).replace("#/components/schemas/", "#/definitions/")
    jsonschema.validate(value, json.loads(text))


def test_tei_rerank(client: TestClient, expected: tuple[np.ndarray, np.ndarray]) -> None:
    scores, logits = expected
    body = {"query": QUERY, "texts": DOCS, "return_text": True}
    tei_schema("RerankRequest", body)
    answer = client.post("/rerank", json=body)
    assert answer.status_code == 200, answer.text
    ranks = answer.json()
    tei_schema("RerankResponse", ranks)
    assert [r["index"] for r in ranks] == list(np.argsort(-scores, kind="stable"))
    assert [r["score"] for r in ranks] == sorted((r["score"] for r in ranks), reverse=True)
    np.testing.assert_allclose(
        [r["score"] for r in ranks], scores[[r["index"] for r in ranks]], atol=1e-6
    )
    assert all(r["text"] == DOCS[r["index"]] for r in ranks)
    assert client.post("/", json=body).json() == ranks  # TEI's POST / is a reranker's /rerank
    raw = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    np.testing.assert_allclose(
        [r["score"] for r in raw], logits[[r["index"] for r in raw]], atol=1e-6
    )
    assert "text" not in raw[0]
    left = client.post(
        "/rerank", json={"query": QUERY, "texts": DOCS, "truncation_direction": "Left"}
    ).json()
    by_index = {r["index"]: r["score"] for r in left}
    assert by_index[2] != pytest.approx(float(scores[2]), abs=1e-7)  # the other end was cut
    assert by_index[3] == pytest.approx(float(scores[3]), abs=1e-6)  # not cut: the same


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"query": QUERY, "texts": ["a"] * 5}, 413, "over the limit of 4"),
        ({"query": QUERY, "texts": []}, 422, "is empty"),
        ({"query": " ", "texts": ["a"]}, 422, "'query' is empty or blank"),
        ({"query": QUERY, "texts": DOCS, "truncate": False}, 422, "longer than max_length=48"),
        ({"query": QUERY, "texts": "a"}, 422, "'texts' must be a list of strings"),
    ],
)
def test_tei_rerank_errors(client: TestClient, body: dict, status: int, words: str) -> None:
    answer = client.post("/rerank", json=body)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"] and answer.json()["error_type"] == "Validation"


def test_cohere_rerank(client: TestClient, expected: tuple[np.ndarray, np.ndarray]) -> None:
    scores, _ = expected
    body = {
        "model": "tiny-reranker",
        "query": QUERY,
        "documents": [DOCS[0], {"text": DOCS[1]}, DOCS[2], DOCS[3]],
        "top_n": 2,
        "return_documents": True,
    }
    answer = client.post("/v1/rerank", json=body)
    assert answer.status_code == 200, answer.text
    out = answer.json()
    best = list(np.argsort(-scores, kind="stable")[:2])
    assert [r["index"] for r in out["results"]] == best
    assert [r["document"]["text"] for r in out["results"]] == [DOCS[i] for i in best]
    np.testing.assert_allclose(
        [r["relevance_score"] for r in out["results"]], scores[best], atol=1e-6
    )
    assert out["model"] == "tiny-reranker" and out["usage"]["total_tokens"] > 0
    wrong = client.post("/v1/rerank", json={**body, "model": "other"})
    assert wrong.status_code == 404 and "'other' does not exist" in wrong.json()["error"]["message"]


def test_embedding_routes_on_a_reranker_name_its_kind(client: TestClient) -> None:
    for path, body in [
        ("/embed", {"input": "a"}),
        ("/embed", {"inputs": "a"}),
        ("/v1/embeddings", {"model": "tiny-reranker", "input": "a"}),
        ("/embed/batch", {"inputs": ["a"]}),
    ]:
        answer = client.post(path, json=body)
        assert answer.status_code in (400, 424), (path, answer.text)
        assert "tiny-reranker is a reranker artifact" in answer.text and "/rerank" in answer.text
    assert client.post("/tokenize", json={"input": "a"}).status_code == 200  # any kind tokenizes
    doc = client.get("/openapi.json").json()
    assert {"/rerank", "/v1/rerank"} <= set(doc["paths"]) and "/v1/embeddings" not in doc["paths"]
    assert doc["paths"]["/rerank"]["post"]["tags"] == ["rerank"]
    info = client.get("/info").json()
    assert info["kind"] == "reranker" and info["score"]["activation"] == "sigmoid"
    for path, body in [  # requests of its own: the test may run alone
        ("/rerank", {"query": QUERY, "texts": DOCS}),
        ("/v1/rerank", {"model": "tiny-reranker", "query": QUERY, "documents": DOCS}),
    ]:
        assert client.post(path, json=body).status_code == 200, path
    metrics = client.get("/metrics").text
    assert 'route="/rerank"' in metrics and 'route="/v1/rerank"' in metrics


def test_rerank_on_an_embedder_names_its_kind(embedder_client: TestClient) -> None:
    tei = embedder_client.post("/rerank", json={"query": "a", "texts": ["b"]})
    assert tei.status_code == 424 and tei.json()["error_type"] == "Backend"
    assert (
        "tiny is an embedder artifact; this route serves reranker artifacts" in tei.json()["error"]
    )
    cohere = embedder_client.post("/v1/rerank", json={"query": "a", "documents": ["b"]})
    assert cohere.status_code == 400 and "POST /embed" in cohere.json()["error"]["message"]
    assert "/v1/rerank" not in embedder_client.get("/openapi.json").json()["paths"]


# -- one real server: httpx, the cohere SDK, gRPC, MCP -----------------------------------------


def test_real_clients(reranker_server: Server, expected: tuple[np.ndarray, np.ndarray]) -> None:
    server = reranker_server
    scores, logits = expected
    order = list(np.argsort(-scores, kind="stable"))

    ranks = httpx.post(
        f"{server.url}/rerank", json={"query": QUERY, "texts": DOCS}, timeout=30
    ).json()
    assert [r["index"] for r in ranks] == order

    import cohere

    co = cohere.Client(api_key="unused", base_url=server.url, timeout=30)
    answer = co.rerank(
        model="tiny-reranker", query=QUERY, documents=DOCS, top_n=3, return_documents=True
    )
    assert [r.index for r in answer.results] == order[:3]
    assert [r.document.text for r in answer.results if r.document] == [DOCS[i] for i in order[:3]]
    np.testing.assert_allclose(
        [r.relevance_score for r in answer.results], scores[order[:3]], atol=1e-6
    )

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = embed_pb2_grpc.EmbedderStub(channel)
        reply = stub.Rerank(
            embed_pb2.RerankRequest(query=QUERY, documents=DOCS, raw_scores=True, input_order=True),
            timeout=30,
        )
        assert [r.index for r in reply.results] == list(range(len(DOCS)))
        np.testing.assert_allclose([r.score for r in reply.results], logits, atol=1e-6)
        assert stub.Info(embed_pb2.InfoRequest(), timeout=30).kind == "reranker"
        with pytest.raises(grpc.RpcError) as refused:
            stub.Embed(embed_pb2.EmbedRequest(inputs=["a"]), timeout=30)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is a reranker artifact" in str(refused.value.details())

    from tests.runtime.serve.test_mcp import http_client

    async def session() -> list[dict]:
        async with http_client(server, key=None) as client:
            listed = {t.name for t in (await client.list_tools()).tools}
            assert listed == {"rank", "info"}
            result = await client.call_tool("rank", {"query": QUERY, "documents": DOCS, "top_k": 2})
            assert not result.is_error, result
            return list(result.structured_content["results"])  # type: ignore[index]

    results = asyncio.run(session())
    assert [r["index"] for r in results] == order[:2]
    np.testing.assert_allclose([r["score"] for r in results], scores[order[:2]], atol=1e-6)
