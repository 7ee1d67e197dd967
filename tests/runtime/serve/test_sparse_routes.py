"""kind: sparse served in process (one Service on the real SPLADE bundle, Starlette's TestClient):
TEI's /embed_sparse, return_tokens, the document, and routes of other kinds on either artifact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.embedder import Embedder
from encoderfile.runtime.serve.http_app import create_app
from encoderfile.runtime.serve.service import Limits, Service

TEXTS = ["The cat sleeps on the sofa.", "Where can I buy cheap flights to Lisbon?"]


@pytest.fixture(scope="module")
def service(splade_bundle: Path) -> Iterator[Service]:
    service = Service(open_bundle(splade_bundle), Limits(max_inputs=8))
    service.load(threads=1)
    yield service
    service.close(10)


@pytest.fixture(scope="module")
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(create_app(service)) as client:
        yield client


@pytest.fixture(scope="module")
def dense(splade_bundle: Path) -> np.ndarray:
    return Embedder(open_bundle(splade_bundle), threads=1).embed(TEXTS).vectors


def test_embed_sparse_answers_each_inputs_terms(client: TestClient, dense: np.ndarray) -> None:
    r = client.post("/embed_sparse", json={"inputs": TEXTS})
    assert r.status_code == 200, r.text
    rows = r.json()
    assert len(rows) == 2
    for row, vector in zip(rows, dense, strict=True):
        assert [t["index"] for t in row] == np.flatnonzero(vector).tolist()
        np.testing.assert_allclose([t["value"] for t in row], vector[vector > 0], rtol=1e-6)
    one = client.post("/embed_sparse", json={"inputs": TEXTS[0]}).json()
    assert one == rows[:1]  # a lone string is a batch of one


def test_return_tokens_names_the_vocabulary_terms(client: TestClient) -> None:
    (row,) = client.post("/embed_sparse", json={"inputs": "cat", "return_tokens": True}).json()
    tokens = {t["token"] for t in row}
    assert "cat" in tokens and all(isinstance(t["index"], int) for t in row)


@pytest.mark.parametrize(
    ("body", "status"),
    [({"inputs": []}, 400), ({"inputs": "x", "dimensions": 8}, 422), ({"texts": ["x"]}, 422)],
)
def test_embed_sparse_errors_in_teis_envelope(client: TestClient, body: dict, status: int) -> None:
    r = client.post("/embed_sparse", json=body)
    assert r.status_code == status and r.json()["error_type"] in ("Empty", "Validation")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/embed", {"input": "hello"}),
        ("/embed", {"inputs": "hello"}),
        ("/v1/embeddings", {"input": "hello", "model": "splade-tiny"}),
        ("/embed/batch", {"input": ["hello"]}),
    ],
)
def test_dense_routes_refuse_a_sparse_artifact(client: TestClient, path: str, body: dict) -> None:
    r = client.post(path, json=body)
    assert 400 <= r.status_code < 500
    message = str(r.json())
    assert "splade-tiny is a sparse artifact" in message and "/embed_sparse" in message


def test_embed_sparse_on_an_embedder_is_424_naming_its_routes(shared_tiny_bundle: Path) -> None:
    service = Service(open_bundle(shared_tiny_bundle), Limits())
    service.load(threads=1)
    try:
        with TestClient(create_app(service)) as client:
            r = client.post("/embed_sparse", json={"inputs": "hello"})
            assert r.status_code == 424 and r.json()["error_type"] == "Backend"
            assert "this route serves sparse artifacts" in r.json()["error"]
            paths = client.get("/openapi.json").json()["paths"]
            assert "424" in paths["/embed_sparse"]["post"]["responses"]
    finally:
        service.close(10)


def test_the_document_lists_the_sparse_route_not_the_dense_ones(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    sparse = paths["/embed_sparse"]["post"]
    assert "200" in sparse["responses"] and "requestBody" in sparse
    assert "/v1/embeddings" not in paths and "/embed/batch" not in paths


def test_teis_post_root_is_embed_sparse_here(client: TestClient) -> None:
    assert (
        client.post("/", json={"inputs": TEXTS}).json()
        == client.post("/embed_sparse", json={"inputs": TEXTS}).json()
    )
