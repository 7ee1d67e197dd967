"""Image routes in process (Starlette TestClient): shapes, dim, stats, the 4xx table, no model."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from encoderfile.runtime.artifact import open_bundle
from encoderfile.runtime.serve.http_app import create_app
from encoderfile.runtime.serve.service import Service
from tests.fixtures.image_bundle import WIDTH
from tests.fixtures.images import bomb_png, data_url, encode, varied_images
from tests.runtime.serve.conftest import Server, serving
from tests.runtime.serve.test_docs import json_values, run_block

IMAGE_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


@pytest.fixture(scope="module")
def client(image_bundle: Path) -> Iterator[TestClient]:
    service = Service(open_bundle(image_bundle))
    service.load(threads=1)
    with TestClient(create_app(service)) as client:
        yield client
    service.close(10)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return varied_images()


def test_health_reports_the_vision_model(client: TestClient) -> None:
    assert client.get("/health").json()["vision_model"] is True
    assert client.get("/info").json()["vision_model"] is True
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/img/embed", "/img/batch", "/img/stats"} <= set(paths)


def test_embed_batch_and_dim(client: TestClient, files: dict[str, bytes]) -> None:
    contents = [data_url(d) for d in files.values()]
    singles = []
    for content in contents:
        reply = client.post("/img/embed", json={"content": content})
        assert reply.status_code == 200, reply.text
        assert set(reply.json()) == {"embedding", "time_ms"}
        singles.append(reply.json()["embedding"])
    batch = client.post("/img/batch", json={"contents": contents})
    assert batch.status_code == 200 and set(batch.json()) == {"embeddings", "time_ms"}
    got = np.asarray(batch.json()["embeddings"])
    assert got.shape == (len(files), WIDTH)
    assert np.abs(got - np.asarray(singles)).max() <= 1e-5
    half = client.post("/img/embed", json={"content": contents[0], "dim": WIDTH // 2}).json()
    prefix = got[0, : WIDTH // 2]
    np.testing.assert_allclose(half["embedding"], prefix / np.linalg.norm(prefix), atol=1e-6)
    raw = base64.b64encode(next(iter(files.values()))).decode()
    same = client.post("/img/embed", json={"content": raw}).json()["embedding"]
    np.testing.assert_allclose(same, got[0], atol=1e-7)


def test_stats(client: TestClient, files: dict[str, bytes]) -> None:
    reply = client.post(
        "/img/stats",
        json={"content": data_url(files["rotated.jpg"]), "averaging_method": "geometric"},
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"exif_data", "color_data", "time_ms"}
    assert body["exif_data"]["Make"] == "EncoderCam"
    assert body["color_data"]["avg_color"]["method"] == "geometric"
    assert set(body["color_data"]["dominant_color"]) == {"rgb", "hex"}


PNG = encode(Image.new("RGB", (4, 4), (9, 8, 7)), "PNG")
JPEG = varied_images()["noise.jpg"]


@pytest.mark.parametrize(
    ("path", "body", "status", "match"),
    [
        ("/img/embed", {"content": "%%%"}, 422, "not valid base64"),
        ("/img/embed", {"content": "data:image/png;base64"}, 422, "not a valid data URL"),
        ("/img/embed", {"content": data_url(JPEG[:3000], "image/jpeg")}, 422, "truncated"),
        ("/img/embed", {"content": data_url(b"plain text")}, 422, "supported format"),
        ("/img/embed", {"content": data_url(bomb_png())}, 422, "pixels"),
        ("/img/embed", {"content": data_url(PNG), "dim": 0}, 422, "dim=0 is not offered"),
        ("/img/embed", {"content": 3}, 422, "non-empty string"),
        ("/img/embed", {"content": "http://169.254.169.254/x"}, 422, "does not fetch URLs"),
        ("/img/embed", {"content": data_url(PNG), "url": "x"}, 422, "has no field"),
        ("/img/batch", {"contents": "x"}, 422, "must be a list"),
        ("/img/batch", {"contents": []}, 422, "is empty"),
        ("/img/batch", {"contents": [data_url(PNG), "???"]}, 422, r"contents\[1\]"),
        (
            "/img/stats",
            {"content": data_url(PNG), "averaging_method": "harmonic"},
            422,
            "arithmetic",
        ),
        ("/img/stats", {"content": ""}, 422, "non-empty string"),
    ],
)
def test_bad_input_is_4xx_json(
    client: TestClient, path: str, body: dict[str, object], status: int, match: str
) -> None:
    reply = client.post(path, json=body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert re.search(match, error["message"]), error["message"]


def test_oversized_body_is_413(client: TestClient) -> None:
    reply = client.post("/img/embed", content=b'{"content": "' + b"A" * (33 * 1024 * 1024) + b'"}')
    assert reply.status_code == 413


def test_text_only_artifact_has_no_image_routes(shared_tiny_bundle: Path) -> None:
    service = Service(open_bundle(shared_tiny_bundle))
    service.load(threads=1)
    try:
        with TestClient(create_app(service)) as client:
            assert client.get("/health").json()["vision_model"] is False
            reply = client.post("/img/embed", json={"content": data_url(PNG)})
            assert reply.status_code == 404 and "no image model" in reply.json()["error"]["message"]
            stats = client.post("/img/stats", json={"content": data_url(PNG)})
            assert stats.status_code == 200  # stats need no model
    finally:
        service.close(10)


@pytest.fixture(scope="module")
def image_server(image_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(image_bundle, tmp_path_factory)


def test_documented_image_examples_run(image_server: Server, tmp_path: Path) -> None:
    doc = (Path(__file__).parents[3] / "docs" / "serve.md").read_text()
    # fenced as bash, not sh: test_docs runs every sh block against a text-only server
    block = next(code for code in IMAGE_BLOCK.findall(doc) if "/img/embed" in code)
    (tmp_path / "photo.jpg").write_bytes(varied_images()["rotated.jpg"])
    embed, batch, stats = json_values(run_block("sh", block, image_server, tmp_path))
    assert len(embed["embedding"]) == WIDTH and len(batch["embeddings"]) == 2
    assert stats["color_data"]["avg_color"]["method"] == "geometric"
    assert stats["exif_data"]["Make"] == "EncoderCam"


def test_image_only_artifact_answers_404_on_text_routes(image_only_bundle: Path) -> None:
    service = Service(open_bundle(image_only_bundle))
    service.load(threads=1)
    try:
        with TestClient(create_app(service)) as client:
            health = client.get("/health").json()
            assert health["text_model"] is False and health["vision_model"] is True
            assert client.get("/info").json()["text_model"] is False
            for path, body in [
                ("/embed", {"input": "hello"}),
                ("/embed/batch", {"inputs": ["hello"]}),
                ("/v1/embeddings", {"model": "clip-only", "input": "hello"}),
                ("/v1/embeddings", {"model": "clip-only", "input": [1, 2, 3]}),
                ("/tokenize", {"input": "hello"}),
            ]:
                reply = client.post(path, json=body)
                assert reply.status_code == 404, (path, reply.text)
                assert "no text model" in reply.json()["error"]["message"]
            image = client.post("/img/embed", json={"content": data_url(PNG)})
            assert image.status_code == 200 and len(image.json()["embedding"]) == WIDTH
    finally:
        service.close(10)
