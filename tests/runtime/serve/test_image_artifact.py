"""The frozen text + image artifact: parity, batch invariance, stats and bad input over CLI, HTTP, gRPC."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from encoderfile import freeze
from encoderfile.proto import embed_pb2, embed_pb2_grpc
from tests.fixtures.artifacts import run_artifact
from tests.fixtures.image_bundle import WIDTH
from tests.fixtures.images import (
    bomb_png,
    data_url,
    independent_stats,
    reference_vectors,
    varied_images,
)
from tests.runtime.serve.conftest import Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image_artifact(
    image_bundle: Path, tmp_path_factory: pytest.TempPathFactory, freeze_work_dir: Path
) -> Path:
    """The text + image bundle frozen into one executable."""
    return freeze.build(image_bundle, tmp_path_factory.mktemp("image-dist"), freeze_work_dir)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return varied_images()


@pytest.fixture(scope="module")
def paths(files: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("images")
    for name, data in files.items():
        (root / name).write_bytes(data)
    return [root / name for name in files]


@pytest.fixture(scope="module")
def cli_vectors(
    image_artifact: Path, paths: list[Path], artifact_env: dict[str, str]
) -> np.ndarray:
    result = run_artifact(image_artifact, "embed", "--image", *map(str, paths), env=artifact_env)
    assert result.returncode == 0, result.stderr.decode()
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["id"] for r in rows] == [str(p) for p in paths]
    return np.asarray([r["embedding"] for r in rows], dtype=np.float32)


@pytest.fixture(scope="module")
def server(
    image_artifact: Path, artifact_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("image-server") / "server.log"
    command = [str(image_artifact), "--threads", "1"]
    server = Server(command, log, env=artifact_env).wait_ready(timeout=120)
    yield server
    assert server.stop() == 0, server.log()


def test_cli_parity_with_transformers_and_torch(
    cli_vectors: np.ndarray, files: dict[str, bytes]
) -> None:
    expected = reference_vectors(files)
    cosines = (cli_vectors * expected).sum(1) / np.linalg.norm(cli_vectors, axis=1)
    assert cosines.min() >= 0.999, dict(zip(files, cosines.round(6), strict=True))
    print(f"frozen artifact: min cosine vs transformers+torch {cosines.min():.7f}")


def test_cli_single_images_equal_the_batch(
    image_artifact: Path, paths: list[Path], cli_vectors: np.ndarray, artifact_env: dict[str, str]
) -> None:
    for i in (0, len(paths) - 1):
        result = run_artifact(image_artifact, "embed", "--image", str(paths[i]), env=artifact_env)
        single = np.asarray(json.loads(result.stdout)["embedding"], dtype=np.float32)
        assert np.abs(single - cli_vectors[i]).max() <= 1e-5


def test_cli_stats_match_an_independent_computation(
    image_artifact: Path, paths: list[Path], files: dict[str, bytes], artifact_env: dict[str, str]
) -> None:
    for path in paths[:4]:
        result = run_artifact(
            image_artifact, "stats", str(path), "--averaging-method", "geometric", env=artifact_env
        )
        assert result.returncode == 0, result.stderr.decode()
        color = json.loads(result.stdout)["color_data"]
        want = independent_stats(files[path.name], "geometric")
        np.testing.assert_allclose(color["avg_color"]["rgb"], want["avg"], rtol=1e-9)
        np.testing.assert_allclose(color["dominant_color"]["rgb"], want["dominant"])


def test_cli_bad_input_exits_2(
    image_artifact: Path, paths: list[Path], tmp_path: Path, artifact_env: dict[str, str]
) -> None:
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(paths[1].read_bytes()[:3000])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    cases = {
        truncated: "truncated",
        text: "supported format",
        bomb: "pixels",
        tmp_path / "missing.png": "cannot read image",
    }
    for path, message in cases.items():
        for command in (["embed", "--image", str(path)], ["stats", str(path)]):
            result = run_artifact(image_artifact, *command, env=artifact_env)
            err = result.stderr.decode()
            assert result.returncode == 2 and message in err and err.count("\n") == 1, err


def test_info_and_verify_cover_both_models(
    image_artifact: Path, artifact_env: dict[str, str]
) -> None:
    verify = run_artifact(image_artifact, "verify", env=artifact_env)
    assert verify.returncode == 0, verify.stderr.decode()
    assert b"golden texts" in verify.stdout and b"golden images" in verify.stdout
    info = json.loads(run_artifact(image_artifact, "info", "--json", env=artifact_env).stdout)
    assert info["image"]["size"] == 224 and info["image"]["golden"]["images"] == 4


def test_http_routes(server: Server, files: dict[str, bytes], cli_vectors: np.ndarray) -> None:
    assert httpx.get(f"{server.url}/health").json()["vision_model"] is True
    contents = [data_url(d) for d in files.values()]
    batch = httpx.post(f"{server.url}/img/batch", json={"contents": contents}, timeout=60)
    assert batch.status_code == 200, batch.text
    got = np.asarray(batch.json()["embeddings"], dtype=np.float32)
    assert np.abs(got - cli_vectors).max() <= 1e-5
    single = httpx.post(f"{server.url}/img/embed", json={"content": contents[2]}, timeout=60)
    assert np.abs(np.asarray(single.json()["embedding"]) - cli_vectors[2]).max() <= 1e-5
    half = httpx.post(
        f"{server.url}/img/embed", json={"content": contents[2], "dim": WIDTH // 2}, timeout=60
    )
    assert len(half.json()["embedding"]) == WIDTH // 2
    stats = httpx.post(
        f"{server.url}/img/stats", json={"content": data_url(files["rotated.jpg"])}, timeout=60
    ).json()
    want = independent_stats(files["rotated.jpg"], "arithmetic")
    np.testing.assert_allclose(stats["color_data"]["avg_color"]["rgb"], want["avg"], rtol=1e-9)
    assert stats["exif_data"]["Model"] == "Model 7"
    bad = httpx.post(f"{server.url}/img/embed", json={"content": "data:image/png;base64,@@"})
    assert bad.status_code == 422 and "base64" in bad.json()["error"]["message"]


def test_grpc_image_rpcs(server: Server, files: dict[str, bytes], cli_vectors: np.ndarray) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        api = embed_pb2_grpc.EmbedderStub(channel)
        assert api.Info(embed_pb2.InfoRequest()).vision_model is True
        reply = api.EmbedImages(embed_pb2.EmbedImagesRequest(images=list(files.values())))
        got = np.asarray([e.values for e in reply.embeddings], dtype=np.float32)
        assert reply.dimensions == WIDTH and np.abs(got - cli_vectors).max() <= 1e-5
        stats = api.ImageStats(
            embed_pb2.ImageStatsRequest(image=files["rotated.jpg"], averaging_method="geometric")
        )
        assert json.loads(stats.exif_json)["Make"] == "EncoderCam"
        assert stats.avg_color.method == "geometric" and stats.dominant_color.hex.startswith("#")
        with pytest.raises(grpc.RpcError) as e:
            api.EmbedImages(embed_pb2.EmbedImagesRequest(images=[b"not an image"]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "supported format" in (e.value.details() or "")


def test_image_only_artifact(
    image_only_bundle: Path,
    tmp_path: Path,
    freeze_work_dir: Path,
    paths: list[Path],
    cli_vectors: np.ndarray,
    artifact_env: dict[str, str],
) -> None:
    """An image model alone freezes and runs; text commands say there is no text model."""
    artifact = freeze.build(image_only_bundle, tmp_path / "dist", freeze_work_dir)
    result = run_artifact(artifact, "embed", "--image", *map(str, paths), env=artifact_env)
    assert result.returncode == 0, result.stderr.decode()
    rows = [json.loads(line)["embedding"] for line in result.stdout.decode().splitlines()]
    assert np.abs(np.asarray(rows, dtype=np.float32) - cli_vectors).max() <= 1e-5
    verify = run_artifact(artifact, "verify", env=artifact_env)
    assert verify.returncode == 0 and b"golden images" in verify.stdout, verify.stderr
    text = run_artifact(artifact, "embed", "hello", env=artifact_env)
    assert text.returncode == 2 and b"no text model" in text.stderr, text.stderr
    info = run_artifact(artifact, "info", env=artifact_env)
    assert info.returncode == 0 and b"image model only" in info.stdout, info.stderr
